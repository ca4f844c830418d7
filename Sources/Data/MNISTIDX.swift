/// The original MNIST files in IDX format (decompressed):
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (see `IDXPair`).
public enum MNISTIDX {
    public static let trainImages = "train-images-idx3-ubyte"
    public static let trainLabels = "train-labels-idx1-ubyte"
    public static let testImages = "t10k-images-idx3-ubyte"
    public static let testLabels = "t10k-labels-idx1-ubyte"

    /// Reads the training and test sets from the four files in `directory`.
    /// If only `NAME.gz` is present, the error says to decompress it.
    public static func load(from directory: String) throws -> (train: Dataset, test: Dataset) {
        try IDXPair.load(gzip: .refuse, mean: MNISTImage.mean, std: MNISTImage.std) { name in
            let plain = path(name, in: directory)
            return !fileExists(plain) && fileExists(plain + ".gz") ? plain + ".gz" : plain
        }
    }

    /// Reads one pair of image and label files, which must agree in count.
    public static func read(images imagesFile: String, labels labelsFile: String) throws -> Dataset {
        try IDXPair.read(images: imagesFile, labels: labelsFile, gzip: .refuse,
                         mean: MNISTImage.mean, std: MNISTImage.std)
    }
}
