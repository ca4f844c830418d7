import Distributed
import Kernels
import Layers
import Quantization
import XCTest

final class BatchNormReestimationTests: XCTestCase {
    /// Re-estimation replaces each running statistic by the average of the
    /// micro-batch statistics of the given forwards, and nothing else:
    /// statistics pending from an earlier forward do not count.
    func testRunningStatisticsBecomeTheAverageOfTheBatches() {
        let model = tinyResNet(seed: 4)
        var rng = SplitMix64(seed: 9)
        let batches = [3, 3].map { OwnedMap(channels: 1, batch: $0, height: 6, width: 6, random: &rng, range: -1...2) }
        let stale = OwnedMap(channels: 1, batch: 2, height: 6, width: 6, random: &rng, range: 5...9)

        // Expected: the per-channel means of each batch's BN inputs, averaged.
        let reference = tinyResNet(seed: 4)
        for images in batches { _ = reference.forward(images.map, training: true) }
        let norm = reference.norm("bn1")
        var sums = [Float](repeating: 0, count: norm.pendingStatisticsCount)
        norm.exportPendingStatistics(into: &sums)

        _ = model.forward(stale.map, training: true)
        reestimateBatchNormStatistics(model, communicator: SingleProcessCommunicator()) {
            for images in batches { _ = model.forward(images.map, training: true) }
        }
        let mean = model.store.state[model.norm("bn1").runningMean], variance = model.store.state[model.norm("bn1").runningVar]
        for c in 0..<norm.channels {
            XCTAssertEqual(mean[c], sums[c] / 2, accuracy: 1e-6)
            XCTAssertEqual(variance[c], sums[norm.channels + c] / 2, accuracy: 1e-6)
        }
        XCTAssert(model.batchNorms.allSatisfy { $0.pendingMicroBatches == 0 })
    }
}
