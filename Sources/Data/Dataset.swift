/// An in-memory image classification data set.
///
/// Pixels are stored sample-major (N × C × H × W) and scaled to [0, 1]. The
/// per-channel `mean` and `std` are applied only when a batch is gathered
/// (see `gatherBatch`), so subsets share the statistics of the full set.
public struct Dataset: Sendable {
    public let channels: Int
    public let height: Int
    public let width: Int
    public let classes: Int
    /// Sample-major N × C × H × W values in [0, 1].
    public let pixels: [Float]
    /// One label per sample, in 0..<classes.
    public let labels: [Int32]
    /// Per-channel mean and standard deviation used to normalise pixels.
    public let mean: [Float]
    public let std: [Float]

    public var count: Int { labels.count }
    /// Floats per sample: C × H × W.
    public var sampleSize: Int { channels * height * width }

    /// Checks the shapes agree; readers validate file contents before this,
    /// so a failure here is a programming error.
    public init(
        channels: Int, height: Int, width: Int, classes: Int,
        pixels: [Float], labels: [Int32], mean: [Float], std: [Float]
    ) {
        precondition(channels > 0 && height > 0 && width > 0 && classes > 0,
                     "data set dimensions must be positive")
        precondition(pixels.count == labels.count * channels * height * width,
                     "pixel count does not match labels × C × H × W")
        precondition(mean.count == channels && std.count == channels,
                     "need one mean and one std per channel")
        precondition(std.allSatisfy { $0 > 0 }, "std must be positive")
        precondition(labels.allSatisfy { $0 >= 0 && Int($0) < classes },
                     "labels must lie in 0..<classes")
        self.channels = channels
        self.height = height
        self.width = width
        self.classes = classes
        self.pixels = pixels
        self.labels = labels
        self.mean = mean
        self.std = std
    }

    /// The samples at `indices`, in that order (repeats allowed).
    public func subset(_ indices: some Collection<Int>) -> Dataset {
        let size = sampleSize
        var subsetLabels = [Int32]()
        subsetLabels.reserveCapacity(indices.count)
        let subsetPixels = [Float](unsafeUninitializedCapacity: indices.count * size) {
            destination, initialized in
            pixels.withUnsafeBufferPointer { source in
                for (position, index) in indices.enumerated() {
                    precondition(index >= 0 && index < count, "sample index \(index) out of range")
                    (destination.baseAddress! + position * size)
                        .initialize(from: source.baseAddress! + index * size, count: size)
                    subsetLabels.append(labels[index])
                }
            }
            initialized = indices.count * size
        }
        return Dataset(
            channels: channels, height: height, width: width, classes: classes,
            pixels: subsetPixels, labels: subsetLabels, mean: mean, std: std)
    }
}
