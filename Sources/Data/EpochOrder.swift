import Kernels

/// The shuffled order of one epoch, cut into global batches and those into
/// micro-batches.
///
/// The order depends only on the seed, the epoch, the number of samples and
/// the global batch size, never on the world size: global batch `step` is
/// cut into `parts` equal, contiguous micro-batches, and rank r running A
/// accumulation steps takes parts r·A ..< r·A + A (see `BatchPartition`).
/// So 1 rank × 4 steps, 2 ranks × 2 steps and 4 ranks × 1 step all train
/// on the same micro-batches.
public struct EpochOrder: Sendable {
    /// Stream tag ("DATA" in ASCII) that keeps the shuffle apart from other
    /// random streams drawn from the same seed.
    public static let streamTag: UInt64 = 0x4441_5441

    public let epoch: Int
    public let globalBatch: Int
    /// Every sample index exactly once, in this epoch's order.
    public let permutation: [Int]

    public init(seed: UInt64, epoch: Int, sampleCount: Int, globalBatch: Int) throws {
        precondition(epoch >= 0, "epoch must not be negative")
        guard globalBatch > 0 else { throw BatchingError.nonPositive(name: "global batch", value: globalBatch) }
        guard globalBatch <= sampleCount else {
            throw BatchingError.batchLargerThanDataset(globalBatch: globalBatch, sampleCount: sampleCount)
        }
        var random = SplitMix64(seed: seed, stream: [EpochOrder.streamTag, UInt64(epoch)])
        self.epoch = epoch
        self.globalBatch = globalBatch
        permutation = random.permutation(sampleCount)
    }

    /// Whole global batches per epoch; the incomplete last one is dropped.
    public static func stepsPerEpoch(sampleCount: Int, globalBatch: Int) -> Int {
        sampleCount / globalBatch
    }

    public var stepsPerEpoch: Int {
        EpochOrder.stepsPerEpoch(sampleCount: permutation.count, globalBatch: globalBatch)
    }

    /// The sample indices of global batch `step`.
    public func indices(step: Int) -> ArraySlice<Int> {
        precondition(step >= 0 && step < stepsPerEpoch, "step \(step) outside 0..<\(stepsPerEpoch)")
        return permutation[step * globalBatch ..< (step + 1) * globalBatch]
    }

    /// Micro-batch `part` of `parts` equal, contiguous slices of global batch
    /// `step`. `parts` must divide the global batch; `BatchPartition`
    /// checks that for user input.
    public func indices(step: Int, part: Int, parts: Int) -> ArraySlice<Int> {
        precondition(parts > 0 && globalBatch % parts == 0,
                     "\(parts) parts do not divide the global batch \(globalBatch)")
        precondition(part >= 0 && part < parts, "part \(part) outside 0..<\(parts)")
        let size = globalBatch / parts
        let batch = indices(step: step)
        return batch[batch.startIndex + part * size ..< batch.startIndex + (part + 1) * size]
    }
}
