import Distributed
import Kernels
import Layers

/// Re-estimates every batch-norm layer's running statistics on the
/// quantized model: quantization shifts and shrinks the conv outputs that
/// the FP32 statistics were measured on, and normalising with stale
/// statistics costs accuracy at low bit widths.
///
/// `runBatches` runs training-mode forward passes over this rank's
/// calibration samples (no backward, no update). The statistics of every
/// micro-batch are summed over ranks, so all ranks end with the same
/// running statistics: the average of the micro-batch means and variances.
public func reestimateBatchNormStatistics(_ model: Network, communicator: Communicator, runBatches: () -> Void) {
    let norms = model.batchNorms
    // Statistics of an earlier training-mode forward must not count.
    for norm in norms { norm.discardPendingStatistics() }
    runBatches()
    var sums = [Float](repeating: 0, count: norms.reduce(0) { $0 + $1.pendingStatisticsCount })
    var offset = 0
    for norm in norms {
        sums.withUnsafeMutableBufferPointer { norm.exportPendingStatistics(into: $0.baseAddress! + offset) }
        offset += norm.pendingStatisticsCount
    }
    let microBatches = communicator.allReduce(norms.first?.pendingMicroBatches ?? 0, .sum)
    communicator.allReduce(&sums, .sum)
    offset = 0
    for norm in norms {
        sums.withUnsafeBufferPointer { norm.setRunningStatistics(sums: $0.baseAddress! + offset, microBatches: microBatches) }
        offset += norm.pendingStatisticsCount
    }
}
