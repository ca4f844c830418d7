/// The image shape and classes of both MNIST readers and Fashion-MNIST, and
/// MNIST's statistics.
enum MNISTImage {
    static let height = 28
    static let width = 28
    static let classes = 10
    /// Mean and standard deviation of the MNIST training pixels in [0, 1].
    static let mean: [Float] = [0.1307]
    static let std: [Float] = [0.3081]
}
