import Data
import XCTest

final class EpochOrderTests: XCTestCase {
    func testPermutationCoversEverySampleOnce() throws {
        let order = try EpochOrder(seed: 42, epoch: 0, sampleCount: 1000, globalBatch: 64)
        XCTAssertEqual(order.permutation.sorted(), Array(0..<1000))
        XCTAssertNotEqual(order.permutation, Array(0..<1000))
    }

    func testDeterministicAndDifferentPerEpochAndSeed() throws {
        func permutation(seed: UInt64, epoch: Int) throws -> [Int] {
            try EpochOrder(seed: seed, epoch: epoch, sampleCount: 500, globalBatch: 50).permutation
        }
        XCTAssertEqual(try permutation(seed: 1, epoch: 3), try permutation(seed: 1, epoch: 3))
        XCTAssertNotEqual(try permutation(seed: 1, epoch: 3), try permutation(seed: 1, epoch: 4))
        XCTAssertNotEqual(try permutation(seed: 1, epoch: 3), try permutation(seed: 2, epoch: 3))
    }

    func testStepsDropTheIncompleteLastBatch() throws {
        let order = try EpochOrder(seed: 0, epoch: 0, sampleCount: 100, globalBatch: 16)
        XCTAssertEqual(order.stepsPerEpoch, 6)
        XCTAssertEqual(EpochOrder.stepsPerEpoch(sampleCount: 4500, globalBatch: 128), 35)
        let used = (0..<order.stepsPerEpoch).flatMap { order.indices(step: $0) }
        XCTAssertEqual(used, Array(order.permutation.prefix(96)))
    }

    /// 1 rank × 4 accumulation steps, 2 × 2 and 4 × 1 train on the same
    /// micro-batches: the data order does not depend on the world size.
    func testMicroBatchesDoNotDependOnWorldSize() throws {
        let order = try EpochOrder(seed: 7, epoch: 2, sampleCount: 103, globalBatch: 24)
        var layouts = [[[Int]]]()  // [step * 4 + part] -> indices, one per layout
        for (worldSize, accumulation) in [(1, 4), (2, 2), (4, 1)] {
            let partition = try BatchPartition(globalBatch: 24, worldSize: worldSize, accumulationSteps: accumulation)
            XCTAssertEqual(partition.parts, 4)
            XCTAssertEqual(partition.microBatchSize, 6)
            var microBatches = Array(repeating: [Int](), count: order.stepsPerEpoch * partition.parts)
            for step in 0..<order.stepsPerEpoch {
                for rank in 0..<worldSize {
                    for part in partition.parts(ofRank: rank) {
                        microBatches[step * partition.parts + part] =
                            Array(order.indices(step: step, part: part, parts: partition.parts))
                    }
                }
                let wholeStep = microBatches[step * 4 ..< step * 4 + 4].flatMap { $0 }
                XCTAssertEqual(wholeStep, Array(order.indices(step: step)))
            }
            layouts.append(microBatches)
        }
        XCTAssertEqual(layouts[0], layouts[1])
        XCTAssertEqual(layouts[0], layouts[2])
        XCTAssertEqual(Set(layouts[0].joined()).count, 4 * 24)
    }

    func testRanksTakeContiguousParts() throws {
        let partition = try BatchPartition(globalBatch: 36, worldSize: 2, accumulationSteps: 3)
        XCTAssertEqual(partition.parts(ofRank: 0), 0..<3)
        XCTAssertEqual(partition.parts(ofRank: 1), 3..<6)
    }

    func testInvalidLayoutsGiveClearErrors() {
        let indivisible = expectError(BatchingError.self) {
            _ = try BatchPartition(globalBatch: 30, worldSize: 4, accumulationSteps: 1)
        }
        XCTAssertEqual(indivisible, .partsDoNotDivideBatch(globalBatch: 30, worldSize: 4, accumulationSteps: 1))
        XCTAssertTrue(indivisible?.description.contains("multiple of 4") ?? false)

        let zero = expectError(BatchingError.self) {
            _ = try BatchPartition(globalBatch: 32, worldSize: 2, accumulationSteps: 0)
        }
        XCTAssertEqual(zero?.description, "accumulation steps must be positive, got 0")

        let tooLarge = expectError(BatchingError.self) {
            _ = try EpochOrder(seed: 0, epoch: 0, sampleCount: 100, globalBatch: 128)
        }
        XCTAssertEqual(tooLarge, .batchLargerThanDataset(globalBatch: 128, sampleCount: 100))
    }

    func testContiguousShardsCoverEverythingEvenly() {
        XCTAssertEqual((0..<3).map { contiguousShard(count: 10, rank: $0, worldSize: 3) }, [0..<4, 4..<7, 7..<10])
        for (count, worldSize) in [(500, 1), (500, 3), (2, 4), (0, 2), (4501, 8)] {
            let shards = (0..<worldSize).map { contiguousShard(count: count, rank: $0, worldSize: worldSize) }
            XCTAssertEqual(shards.flatMap { Array($0) }, Array(0..<count))
            let sizes = shards.map(\.count)
            XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1)
        }
    }
}
