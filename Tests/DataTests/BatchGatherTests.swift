import Data
import Kernels
import XCTest

final class BatchGatherTests: XCTestCase {
    /// Five 3-channel 4 × 5 samples with random pixels and labels 0...4.
    private func makeDataset() -> Dataset {
        var random = SplitMix64(seed: 3, stream: [1])
        let pixels = (0..<5 * 3 * 4 * 5).map { _ in random.nextUniform() }
        return Dataset(channels: 3, height: 4, width: 5, classes: 5, pixels: pixels,
                       labels: [0, 1, 2, 3, 4], mean: [0.5, 0.25, 0.125], std: [0.2, 0.4, 0.8])
    }

    func testGatherMatchesNaiveCNHW() {
        let set = makeDataset()
        let indices = [4, 0, 2, 4]
        let (batch, c, h, w) = (indices.count, set.channels, set.height, set.width)
        var pixels = [Float](repeating: .nan, count: batch * c * h * w)
        var labels = [Int32](repeating: -1, count: batch)
        pixels.withUnsafeMutableBufferPointer { p in
            labels.withUnsafeMutableBufferPointer { l in
                set.gatherBatch(indices, pixels: p.baseAddress!, labels: l.baseAddress!)
            }
        }
        XCTAssertEqual(labels, [4, 0, 2, 4])
        for channel in 0..<c {
            for n in 0..<batch {
                for y in 0..<h {
                    for x in 0..<w {
                        let source = set.pixels[((indices[n] * c + channel) * h + y) * w + x]
                        let expected = (source - set.mean[channel]) / set.std[channel]
                        let actual = pixels[((channel * batch + n) * h + y) * w + x]
                        XCTAssertEqual(actual, expected, accuracy: 1e-5, "c \(channel) n \(n) y \(y) x \(x)")
                    }
                }
            }
        }
    }

    func testGatherAcceptsEpochOrderSlices() throws {
        let set = makeDataset()
        let order = try EpochOrder(seed: 9, epoch: 0, sampleCount: set.count, globalBatch: 4)
        let part = order.indices(step: 0, part: 1, parts: 2)
        var pixels = [Float](repeating: 0, count: 2 * set.sampleSize)
        var labels = [Int32](repeating: -1, count: 2)
        pixels.withUnsafeMutableBufferPointer { p in
            labels.withUnsafeMutableBufferPointer { l in
                set.gatherBatch(part, pixels: p.baseAddress!, labels: l.baseAddress!)
            }
        }
        XCTAssertEqual(labels, part.map { set.labels[$0] })
    }

    func testSubsetCopiesSamplesInOrder() {
        let set = makeDataset()
        let subset = set.subset([3, 1, 3])
        XCTAssertEqual(subset.count, 3)
        XCTAssertEqual(subset.labels, [3, 1, 3])
        XCTAssertEqual(subset.mean, set.mean)
        XCTAssertEqual(subset.std, set.std)
        let size = set.sampleSize
        for (position, index) in [3, 1, 3].enumerated() {
            XCTAssertEqual(subset.pixels[position * size ..< (position + 1) * size],
                           set.pixels[index * size ..< (index + 1) * size])
        }
        XCTAssertEqual(set.subset([Int]()).count, 0)
    }
}
