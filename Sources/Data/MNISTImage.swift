/// Shape and statistics shared by both MNIST readers.
enum MNISTImage {
    static let height = 28
    static let width = 28
    static let classes = 10
    /// Mean and standard deviation of the MNIST training pixels in [0, 1].
    static let mean: [Float] = [0.1307]
    static let std: [Float] = [0.3081]
}
