/// Fashion-MNIST (Zalando Research): 28 × 28 grey images of clothing in 10
/// classes (T-shirt/top, trouser, pullover, dress, coat, sandal, shirt,
/// sneaker, bag, ankle boot), in MNIST's four IDX files and split: 60,000
/// training images (`train-*`) and 10,000 test images (`t10k-*`).
///
/// The files are read gzipped, as Debian's `dataset-fashion-mnist` ships
/// them (`launch/setup-data.sh fashion-mnist` puts them in the data cache):
/// `train-images-idx3-ubyte.gz` and so on. The same files decompressed (no
/// `.gz`) are read as well; when both are present the gzipped one is read.
public enum FashionMNIST {
    public static let trainImages = MNISTIDX.trainImages + ".gz"
    public static let trainLabels = MNISTIDX.trainLabels + ".gz"
    public static let testImages = MNISTIDX.testImages + ".gz"
    public static let testLabels = MNISTIDX.testLabels + ".gz"

    /// Mean and standard deviation of the 60,000 training images' pixels in
    /// [0, 1] (0.286041 and 0.353024), which normalise training and test
    /// images alike, as `MNISTImage.mean` and `std` do for MNIST.
    public static let mean: [Float] = [0.2860]
    public static let std: [Float] = [0.3530]

    /// Reads the training and test sets from the four files in `directory`.
    /// A missing file is named with its `.gz` name and the setup command.
    public static func load(from directory: String) throws -> (train: Dataset, test: Dataset) {
        try suggestingSetup("launch/setup-data.sh fashion-mnist") {
            try IDXPair.load(gzip: .decompress, mean: mean, std: std) { name in
                let packed = path(name + ".gz", in: directory), plain = path(name, in: directory)
                return !fileExists(packed) && fileExists(plain) ? plain : packed
            }
        }
    }

    /// Reads one pair of image and label files, each gzipped or not, which
    /// must agree in count.
    public static func read(images imagesFile: String, labels labelsFile: String) throws -> Dataset {
        try IDXPair.read(images: imagesFile, labels: labelsFile, gzip: .decompress, mean: mean, std: std)
    }
}
