import Kernels

/// Images without labels, fetched by index and normalised as the model's
/// inputs: what the quantization stages calibrate, reconstruct and (when
/// zero-shot) distil on. It has no labels to leak into those stages.
///
/// It either owns its images (synthetic data, noise) or is a view of a
/// labelled data set whose labels it drops.
public struct ImageSet {
    public let count: Int
    public let channels: Int
    public let height: Int
    public let width: Int
    private let gather: (_ indices: ArraySlice<Int>, _ into: UnsafeMutablePointer<Float>) -> Void

    public var sampleSize: Int { channels * height * width }

    /// Owns `pixels`: sample-major N × C × H × W values (PyTorch's layout),
    /// already in the model's input space.
    public init(channels: Int, height: Int, width: Int, pixels: [Float]) {
        precondition(channels > 0 && height > 0 && width > 0, "image dimensions must be positive")
        let size = channels * height * width, plane = height * width
        precondition(pixels.count % size == 0, "pixel count is not a whole number of images")
        self.init(count: pixels.count / size, channels: channels, height: height, width: width) { indices, destination in
            pixels.withUnsafeBufferPointer { source in
                for (n, index) in indices.enumerated() {
                    for c in 0..<channels {
                        (destination + (c * indices.count + n) * plane)
                            .update(from: source.baseAddress! + (index * channels + c) * plane, count: plane)
                    }
                }
            }
        }
    }

    /// A view of the samples of `dataset` at `indices` (all of them when
    /// nil), normalised by `Dataset.gatherBatch`; image i is sample
    /// `indices[i]`. The labels stay behind.
    public init(_ dataset: Dataset, indices: [Int]? = nil) {
        self.init(count: indices?.count ?? dataset.count, channels: dataset.channels, height: dataset.height,
                  width: dataset.width) { chosen, destination in
            var discarded = [Int32](repeating: 0, count: chosen.count)
            discarded.withUnsafeMutableBufferPointer { labels in
                if let indices {
                    dataset.gatherBatch(chosen.lazy.map { indices[$0] }, pixels: destination, labels: labels.baseAddress!)
                } else {
                    dataset.gatherBatch(chosen, pixels: destination, labels: labels.baseAddress!)
                }
            }
        }
    }

    private init(count: Int, channels: Int, height: Int, width: Int,
                 gather: @escaping (ArraySlice<Int>, UnsafeMutablePointer<Float>) -> Void) {
        self.count = count
        self.channels = channels
        self.height = height
        self.width = width
        self.gather = gather
    }

    /// `count` images of independent N(0, 1) values, drawn from `seed`.
    public static func gaussianNoise(count: Int, channels: Int, height: Int, width: Int, seed: UInt64) -> ImageSet {
        var rng = SplitMix64(seed: seed, stream: [0x4E4F_4953])  // "NOIS"
        let pixels = (0..<(count * channels * height * width)).map { _ in rng.nextNormal() }
        return ImageSet(channels: channels, height: height, width: width, pixels: pixels)
    }

    /// Writes the images at `indices` (each in 0..<count) into a caller-owned
    /// CNHW batch of `indices.count` images: element (c, n, y, x) at
    /// ((c · batch + n) · H + y) · W + x.
    public func gatherBatch(_ indices: ArraySlice<Int>, into destination: UnsafeMutablePointer<Float>) {
        precondition(indices.allSatisfy { $0 >= 0 && $0 < count }, "image index out of range 0..<\(count)")
        gather(indices, destination)
    }
}
