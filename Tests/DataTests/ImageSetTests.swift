import Data
import Kernels
import XCTest

final class ImageSetTests: XCTestCase {
    /// Five 2-channel 3 × 4 samples with random pixels.
    private func makeDataset() -> Dataset {
        var random = SplitMix64(seed: 4, stream: [1])
        let pixels = (0..<5 * 2 * 3 * 4).map { _ in random.nextUniform() }
        return Dataset(channels: 2, height: 3, width: 4, classes: 5, pixels: pixels,
                       labels: [0, 1, 2, 3, 4], mean: [0.5, 0.25], std: [0.2, 0.4])
    }

    private func gather(_ images: ImageSet, _ indices: [Int]) -> [Float] {
        var out = [Float](repeating: .nan, count: indices.count * images.sampleSize)
        out.withUnsafeMutableBufferPointer { images.gatherBatch(indices[...], into: $0.baseAddress!) }
        return out
    }

    /// A view of a data set gathers what `Dataset.gatherBatch` does, through
    /// its index map.
    func testViewOfDatasetMatchesGatherBatch() {
        let data = makeDataset()
        let view = ImageSet(data, indices: [3, 1, 4])
        XCTAssertEqual(view.count, 3)
        var expected = [Float](repeating: 0, count: 2 * data.sampleSize)
        var labels = [Int32](repeating: 0, count: 2)
        expected.withUnsafeMutableBufferPointer { data.gatherBatch([4, 3], pixels: $0.baseAddress!, labels: &labels) }
        XCTAssertEqual(gather(view, [2, 0]), expected)
        XCTAssertEqual(gather(ImageSet(data), [4, 3]), expected)
    }

    /// Owned images are sample-major (N, C, H, W) and come out as CNHW batches.
    func testOwnedImagesAreGatheredChannelMajor() {
        let (n, c, h, w) = (3, 2, 2, 3)
        let pixels = (0..<n * c * h * w).map(Float.init)
        let images = ImageSet(channels: c, height: h, width: w, pixels: pixels)
        XCTAssertEqual(images.count, n)
        let batch = gather(images, [2, 0])
        for channel in 0..<c {
            for (k, index) in [2, 0].enumerated() {
                for p in 0..<(h * w) {
                    XCTAssertEqual(batch[(channel * 2 + k) * h * w + p], pixels[(index * c + channel) * h * w + p])
                }
            }
        }
    }

    /// Noise is standard normal and depends only on the seed.
    func testGaussianNoiseIsSeededAndStandard() {
        let a = ImageSet.gaussianNoise(count: 64, channels: 1, height: 8, width: 8, seed: 9)
        let b = ImageSet.gaussianNoise(count: 64, channels: 1, height: 8, width: 8, seed: 9)
        let c = ImageSet.gaussianNoise(count: 64, channels: 1, height: 8, width: 8, seed: 10)
        let all = Array(0..<64)
        let values = gather(a, all)
        XCTAssertEqual(values, gather(b, all))
        XCTAssertNotEqual(values, gather(c, all))
        let mean = values.reduce(0, +) / Float(values.count)
        let variance = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Float(values.count)
        XCTAssertEqual(mean, 0, accuracy: 0.05)
        XCTAssertEqual(variance, 1, accuracy: 0.08)
    }
}
