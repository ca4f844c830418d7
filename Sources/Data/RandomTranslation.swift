import Kernels

/// Data augmentation by random translation: every sample moves by up to
/// `maxShift` pixels in x and y, and the border it uncovers is filled with
/// the normalised value of a zero pixel.
///
/// The shift of a sample depends only on (seed, epoch, sample index), so it
/// is the same whichever rank or micro-batch processes the sample.
public struct RandomTranslation: Sendable {
    public static let streamTag: UInt64 = 0x5348_4946  // "SHIF"
    public var maxShift: Int
    public var seed: UInt64

    public init(maxShift: Int, seed: UInt64) {
        self.maxShift = maxShift
        self.seed = seed
    }

    /// Shifts, in place, the CNHW batch that `Dataset.gatherBatch` wrote for `indices`.
    public func apply(to pixels: UnsafeMutablePointer<Float>, indices: some Collection<Int>, epoch: Int, dataset: Dataset) {
        guard maxShift > 0 else { return }
        let h = dataset.height, w = dataset.width, plane = h * w
        let batch = indices.count
        let fill = (0..<dataset.channels).map { -dataset.mean[$0] / dataset.std[$0] }
        withUnsafeTemporaryAllocation(of: Float.self, capacity: plane) { scratch in
            let copy = scratch.baseAddress!
            for (n, index) in indices.enumerated() {
                var rng = SplitMix64(seed: seed, stream: [Self.streamTag, UInt64(epoch), UInt64(index)])
                let dy = rng.nextIndex(below: 2 * maxShift + 1) - maxShift
                let dx = rng.nextIndex(below: 2 * maxShift + 1) - maxShift
                if dx == 0 && dy == 0 { continue }
                for c in 0..<dataset.channels {
                    let image = pixels + (c * batch + n) * plane
                    copy.update(from: image, count: plane)
                    // Output (y, x) reads input (y - dy, x - dx).
                    let xs = max(0, dx)..<min(w, w + dx)
                    for y in 0..<h {
                        let row = image + y * w
                        let sy = y - dy
                        guard sy >= 0, sy < h else {
                            row.update(repeating: fill[c], count: w)
                            continue
                        }
                        row.update(repeating: fill[c], count: xs.lowerBound)
                        (row + xs.upperBound).update(repeating: fill[c], count: w - xs.upperBound)
                        (row + xs.lowerBound).update(from: copy + sy * w + xs.lowerBound - dx, count: xs.count)
                    }
                }
            }
        }
    }
}
