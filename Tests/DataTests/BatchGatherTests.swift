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

final class AugmentationTests: XCTestCase {
    /// A shifted image is the original moved by (dy, dx) with the border
    /// filled by the normalised zero pixel; the shift depends on the sample
    /// index, not on its position in the batch.
    func testShiftMovesPixelsAndFillsTheBorder() {
        let h = 5, w = 6
        let pixels = (0..<(2 * h * w)).map { Float($0 % 29) / 29 }
        let data = Dataset(channels: 1, height: h, width: w, classes: 2, pixels: pixels, labels: [0, 1],
                           mean: [0.5], std: [0.25])
        var original = [Float](repeating: 0, count: 2 * h * w), labels: [Int32] = [0, 0]
        data.gatherBatch([0, 1], pixels: &original, labels: &labels)
        var shifted = original
        let augment = Augmentation(maxShift: 2)
        augment.apply(to: &shifted, indices: [0, 1], epoch: 3, seed: 9, dataset: data)
        XCTAssertNotEqual(shifted, original)
        for n in 0..<2 {
            // Recover the shift by matching the original against the output.
            var matched = false
            for dy in -2...2 {
                for dx in -2...2 {
                    var ok = true
                    for y in 0..<h {
                        for x in 0..<w {
                            let sy = y - dy, sx = x - dx
                            let expected = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? original[n * h * w + sy * w + sx] : -2
                            if shifted[n * h * w + y * w + x] != expected { ok = false }
                        }
                    }
                    if ok { matched = true }
                }
            }
            XCTAssertTrue(matched, "sample \(n) is not a translation of the original")
        }
        // The same sample alone in a batch gets the same shift.
        var single = Array(original[(h * w)...]), label: [Int32] = [0]
        data.gatherBatch([1], pixels: &single, labels: &label)
        augment.apply(to: &single, indices: [1], epoch: 3, seed: 9, dataset: data)
        XCTAssertEqual(single, Array(shifted[(h * w)...]))
    }

    /// With flip alone, every image is itself or its mirror image; over
    /// 64 samples both occur, and each sample's choice is kept per epoch.
    func testFlipMirrorsAboutHalfOfTheImages() {
        let h = 3, w = 4, count = 64
        let pixels = (0..<(count * h * w)).map { Float($0 % 37) }
        let data = Dataset(channels: 1, height: h, width: w, classes: 2, pixels: pixels,
                           labels: [Int32](repeating: 0, count: count), mean: [0], std: [1])
        var original = [Float](repeating: 0, count: count * h * w), labels = [Int32](repeating: 0, count: count)
        data.gatherBatch(Array(0..<count), pixels: &original, labels: &labels)
        let flip = Augmentation(flip: true)
        var flipped = original
        flip.apply(to: &flipped, indices: Array(0..<count), epoch: 1, seed: 4, dataset: data)
        var mirrored = 0
        for n in 0..<count {
            let image = Array(original[(n * h * w)..<((n + 1) * h * w)])
            let out = Array(flipped[(n * h * w)..<((n + 1) * h * w)])
            let mirror = (0..<h).flatMap { y in image[(y * w)..<((y + 1) * w)].reversed() }
            XCTAssertTrue(out == image || out == mirror, "sample \(n) is neither the image nor its mirror")
            if out == mirror { mirrored += 1 }
        }
        XCTAssertTrue((16...48).contains(mirrored), "\(mirrored) of \(count) mirrored")
        var again = original
        flip.apply(to: &again, indices: Array(0..<count), epoch: 1, seed: 4, dataset: data)
        XCTAssertEqual(again, flipped)
    }
}
