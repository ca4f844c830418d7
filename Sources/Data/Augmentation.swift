import Kernels

/// Data augmentation of training images: a random translation by up to
/// `maxShift` pixels in x and y (a random crop of the image padded by
/// `maxShift` on every side; the uncovered border takes the normalised value
/// of a zero pixel), then, with `flip`, a mirror image left to right with
/// probability 1/2.
///
/// What a sample gets depends only on (seed, epoch, sample index), so it is
/// the same whichever rank or micro-batch processes the sample.
public struct Augmentation: Sendable, Equatable {
    public static let streamTag: UInt64 = 0x5348_4946  // "SHIF"
    public var maxShift: Int
    public var flip: Bool

    public init(maxShift: Int = 0, flip: Bool = false) {
        self.maxShift = maxShift
        self.flip = flip
    }

    /// Whether it leaves every image as it is.
    public var isIdentity: Bool { maxShift == 0 && !flip }

    /// The settings as recorded with an FP32 model ("shift=2 flip").
    public var recipe: String { "shift=\(maxShift)" + (flip ? " flip" : "") }

    /// Transforms, in place, the CNHW batch that `Dataset.gatherBatch` wrote for `indices`.
    public func apply(to pixels: UnsafeMutablePointer<Float>, indices: some Collection<Int>, epoch: Int, seed: UInt64,
                      dataset: Dataset) {
        guard !isIdentity else { return }
        let h = dataset.height, w = dataset.width, plane = h * w
        let batch = indices.count
        let fill = (0..<dataset.channels).map { -dataset.mean[$0] / dataset.std[$0] }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: plane) { scratch in
            let copy = scratch.baseAddress!
            for (n, index) in indices.enumerated() {
                var rng = SplitMix64(seed: seed, stream: [Self.streamTag, UInt64(epoch), UInt64(index)])
                let dy = rng.nextIndex(below: 2 * maxShift + 1) - maxShift
                let dx = rng.nextIndex(below: 2 * maxShift + 1) - maxShift
                let mirror = flip && rng.nextIndex(below: 2) == 1
                for c in 0..<dataset.channels {
                    let image = pixels + (c * batch + n) * plane
                    if dx != 0 || dy != 0 {
                        translate(image, by: (dy, dx), height: h, width: w, fill: fill[c], scratch: copy)
                    }
                    if mirror {
                        for y in 0..<h {
                            var row = UnsafeMutableBufferPointer(start: image + y * w, count: w)
                            row.reverse()
                        }
                    }
                }
            }
        }
    }

    /// Output (y, x) reads input (y - dy, x - dx); outside the input reads `fill`.
    private func translate(_ image: UnsafeMutablePointer<Float>, by shift: (dy: Int, dx: Int), height h: Int,
                           width w: Int, fill: Float, scratch copy: UnsafeMutablePointer<Float>) {
        copy.update(from: image, count: h * w)
        let xs = max(0, shift.dx)..<min(w, w + shift.dx)
        for y in 0..<h {
            let row = image + y * w
            let sy = y - shift.dy
            guard sy >= 0, sy < h else {
                row.update(repeating: fill, count: w)
                continue
            }
            row.update(repeating: fill, count: xs.lowerBound)
            (row + xs.upperBound).update(repeating: fill, count: w - xs.upperBound)
            (row + xs.lowerBound).update(from: copy + sy * w + xs.lowerBound - shift.dx, count: xs.count)
        }
    }
}
