import Kernels
import Layers
import XCTest

/// BatchNorm2d's running statistics against PyTorch's rule
/// running = (1 - 0.1) * running + 0.1 * batch statistic, with the unbiased
/// batch variance, and its evaluation mode.
final class BatchNormStatisticsTests: XCTestCase {
    /// Per-channel mean and unbiased variance of a CNHW map, in Double.
    func statistics(_ x: FeatureMap) -> (mean: [Double], variance: [Double]) {
        let m = x.plane
        var means: [Double] = [], variances: [Double] = []
        for c in 0..<x.channels {
            let v = (0..<m).map { Double(x.data[c * m + $0]) }
            let mean = v.reduce(0, +) / Double(m)
            means.append(mean)
            variances.append(v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(m - 1))
        }
        return (means, variances)
    }

    func makeNorm(_ store: ParameterStore, channels: Int = 3) -> BatchNorm2d {
        let bn = BatchNorm2d(name: "bn", channels: channels, store: store)
        store.allocate()
        bn.reset()
        return bn
    }

    /// A random batch whose channels have different means and spreads.
    func batch(_ rng: inout SplitMix64, batch: Int = 3) -> OwnedMap {
        let x = OwnedMap(channels: 3, batch: batch, height: 2, width: 3, random: &rng)
        let m = x.map.plane
        for c in 0..<3 {
            for i in 0..<m { x.map.data[c * m + i] = x.map.data[c * m + i] * Float(c + 1) + Float(c) - 1 }
        }
        return x
    }

    func testResetIsPyTorchInit() {
        let store = ParameterStore()
        let bn = makeNorm(store)
        XCTAssertEqual(Array(store.parameters[bn.weight]), [1, 1, 1])
        XCTAssertEqual(Array(store.parameters[bn.bias]), [0, 0, 0])
        XCTAssertEqual(Array(store.state[bn.runningMean]), [0, 0, 0])
        XCTAssertEqual(Array(store.state[bn.runningVar]), [1, 1, 1])
        XCTAssertEqual(bn.batchesTracked, 0)
    }

    func testOneMicroBatchPerStepIsPyTorchsUpdate() {
        let store = ParameterStore()
        let bn = makeNorm(store)
        var rng = SplitMix64(seed: 1)
        var mean = [Double](repeating: 0, count: 3), variance = [Double](repeating: 1, count: 3)
        for step in 1...3 {
            let x = batch(&rng)
            _ = bn.forward(x.map, training: true)
            bn.commitRunningStatistics()
            let s = statistics(x.map)
            for c in 0..<3 {
                mean[c] = 0.9 * mean[c] + 0.1 * s.mean[c]
                variance[c] = 0.9 * variance[c] + 0.1 * s.variance[c]
                assertClose(Double(store.state[bn.runningMean][c]), mean[c], tolerance: 1e-5, "mean \(c), step \(step)")
                assertClose(Double(store.state[bn.runningVar][c]), variance[c], tolerance: 1e-5, "var \(c), step \(step)")
            }
            XCTAssertEqual(bn.batchesTracked, Int64(step))
        }
    }

    func testTwoMicroBatchesCommitTheAverageOfTheirStatistics() {
        var rng = SplitMix64(seed: 2)
        let x1 = batch(&rng), x2 = batch(&rng, batch: 2)
        let s1 = statistics(x1.map), s2 = statistics(x2.map)
        let startMean: [Float] = [0.5, -0.25, 1], startVar: [Float] = [2, 0.5, 1.5]
        let expectedMean = (0..<3).map { 0.9 * Double(startMean[$0]) + 0.1 * (s1.mean[$0] + s2.mean[$0]) / 2 }
        let expectedVar = (0..<3).map { 0.9 * Double(startVar[$0]) + 0.1 * (s1.variance[$0] + s2.variance[$0]) / 2 }

        func assertExpected(_ store: ParameterStore, _ bn: BatchNorm2d, _ what: String) {
            for c in 0..<3 {
                assertClose(Double(store.state[bn.runningMean][c]), expectedMean[c], tolerance: 1e-5, "\(what) mean \(c)")
                assertClose(Double(store.state[bn.runningVar][c]), expectedVar[c], tolerance: 1e-5, "\(what) var \(c)")
            }
            XCTAssertEqual(bn.batchesTracked, 1, what)
        }

        // Gradient accumulation in one process.
        let store = ParameterStore()
        let bn = makeNorm(store)
        _ = store.state[bn.runningMean].update(fromContentsOf: startMean)
        _ = store.state[bn.runningVar].update(fromContentsOf: startVar)
        _ = bn.forward(x1.map, training: true)
        _ = bn.forward(x2.map, training: true)
        bn.commitRunningStatistics()
        assertExpected(store, bn, "accumulation")

        // Two data-parallel ranks, one micro-batch each, sums added as an
        // all-reduce would.
        let stores = [ParameterStore(), ParameterStore()]
        let norms = stores.map { makeNorm($0) }
        var sums = [Float](repeating: 0, count: norms[0].pendingStatisticsCount)
        for (rank, x) in [x1, x2].enumerated() {
            _ = stores[rank].state[norms[rank].runningMean].update(fromContentsOf: startMean)
            _ = stores[rank].state[norms[rank].runningVar].update(fromContentsOf: startVar)
            _ = norms[rank].forward(x.map, training: true)
            var mine = [Float](repeating: 0, count: sums.count)
            norms[rank].exportPendingStatistics(into: &mine)
            for i in sums.indices { sums[i] += mine[i] }
        }
        for rank in 0..<2 {
            norms[rank].commitRunningStatistics(sums: sums, microBatches: 2)
            assertExpected(stores[rank], norms[rank], "rank \(rank)")
        }
    }

    func testEvaluationUsesRunningStatistics() {
        let store = ParameterStore()
        let bn = makeNorm(store)
        let gamma: [Float] = [1.5, 0.5, -1], beta: [Float] = [0.25, -1, 2]
        let rm: [Float] = [0.5, -0.25, 1], rv: [Float] = [2, 0.5, 1.5]
        _ = store.parameters[bn.weight].update(fromContentsOf: gamma)
        _ = store.parameters[bn.bias].update(fromContentsOf: beta)
        _ = store.state[bn.runningMean].update(fromContentsOf: rm)
        _ = store.state[bn.runningVar].update(fromContentsOf: rv)
        var rng = SplitMix64(seed: 3)
        let x = batch(&rng)
        let y = bn.forward(x.map, training: false)
        let m = x.map.plane
        for c in 0..<3 {
            for i in 0..<m {
                let expected = Double(gamma[c]) * (Double(x.map.data[c * m + i]) - Double(rm[c]))
                    / (Double(rv[c]) + 1e-5).squareRoot() + Double(beta[c])
                assertClose(Double(y.data[c * m + i]), expected, tolerance: 1e-5, "channel \(c) element \(i)")
            }
        }
        // Evaluation contributes nothing to the running statistics.
        bn.commitRunningStatistics()
        XCTAssertEqual(Array(store.state[bn.runningMean]), rm)
        XCTAssertEqual(Array(store.state[bn.runningVar]), rv)
        XCTAssertEqual(bn.batchesTracked, 0)
    }

    func testTrainingNormalisesWithBatchStatistics() {
        let store = ParameterStore()
        let bn = makeNorm(store)
        let gamma: [Float] = [2, 0.5, 1], beta: [Float] = [1, -1, 0]
        _ = store.parameters[bn.weight].update(fromContentsOf: gamma)
        _ = store.parameters[bn.bias].update(fromContentsOf: beta)
        var rng = SplitMix64(seed: 4)
        let x = batch(&rng)
        let s = statistics(x.map)
        let y = bn.forward(x.map, training: true)
        let m = x.map.plane
        for c in 0..<3 {
            let biased = s.variance[c] * Double(m - 1) / Double(m)
            for i in 0..<m {
                let expected = Double(gamma[c]) * (Double(x.map.data[c * m + i]) - s.mean[c])
                    / (biased + 1e-5).squareRoot() + Double(beta[c])
                assertClose(Double(y.data[c * m + i]), expected, tolerance: 1e-5, "channel \(c) element \(i)")
            }
        }
    }
}
