/// How a global batch is shared out in data-parallel training: it is cut
/// into `worldSize × accumulationSteps` equal micro-batches, and each rank
/// runs a contiguous run of `accumulationSteps` of them before the gradients
/// are averaged.
public struct BatchPartition: Sendable, Equatable {
    public let globalBatch: Int
    public let worldSize: Int
    public let accumulationSteps: Int

    public init(globalBatch: Int, worldSize: Int, accumulationSteps: Int) throws {
        for (name, value) in [("global batch", globalBatch), ("world size", worldSize),
                              ("accumulation steps", accumulationSteps)] where value <= 0 {
            throw BatchingError.nonPositive(name: name, value: value)
        }
        guard globalBatch % (worldSize * accumulationSteps) == 0 else {
            throw BatchingError.partsDoNotDivideBatch(
                globalBatch: globalBatch, worldSize: worldSize, accumulationSteps: accumulationSteps)
        }
        self.globalBatch = globalBatch
        self.worldSize = worldSize
        self.accumulationSteps = accumulationSteps
    }

    /// Micro-batches per global batch.
    public var parts: Int { worldSize * accumulationSteps }

    /// Samples per micro-batch.
    public var microBatchSize: Int { globalBatch / parts }

    /// The micro-batches rank `rank` runs, in order: r·A ..< r·A + A.
    public func parts(ofRank rank: Int) -> Range<Int> {
        precondition(rank >= 0 && rank < worldSize, "rank \(rank) outside 0..<\(worldSize)")
        return rank * accumulationSteps ..< (rank + 1) * accumulationSteps
    }
}

/// A batch layout that cannot work, with a message saying what to change.
public enum BatchingError: Error, CustomStringConvertible, Equatable, Sendable {
    case nonPositive(name: String, value: Int)
    case batchLargerThanDataset(globalBatch: Int, sampleCount: Int)
    case partsDoNotDivideBatch(globalBatch: Int, worldSize: Int, accumulationSteps: Int)

    public var description: String {
        switch self {
        case .nonPositive(let name, let value):
            return "\(name) must be positive, got \(value)"
        case .batchLargerThanDataset(let globalBatch, let sampleCount):
            return "global batch \(globalBatch) is larger than the data set (\(sampleCount) samples)"
        case .partsDoNotDivideBatch(let globalBatch, let worldSize, let accumulationSteps):
            let parts = worldSize * accumulationSteps
            return "global batch \(globalBatch) cannot be cut into \(parts) equal micro-batches "
                + "(world size \(worldSize) × accumulation steps \(accumulationSteps)); "
                + "use a global batch that is a multiple of \(parts)"
        }
    }
}

/// The contiguous range of `count` items that rank `rank` of `worldSize`
/// handles, e.g. its share of the test set. Shares differ in size by at
/// most one: the first `count % worldSize` ranks take one extra item.
public func contiguousShard(count: Int, rank: Int, worldSize: Int) -> Range<Int> {
    precondition(worldSize > 0 && rank >= 0 && rank < worldSize, "rank \(rank) outside 0..<\(worldSize)")
    let base = count / worldSize, extra = count % worldSize
    let start = rank * base + min(rank, extra)
    return start ..< start + base + (rank < extra ? 1 : 0)
}
