import Kernels

/// Batch normalisation over each channel of a CNHW map, as PyTorch's
/// BatchNorm2d: y = gamma * (x - mean) / sqrt(var + eps) + beta, with
/// batch statistics in training and running statistics in evaluation.
///
/// Running statistics: with several micro-batches per optimizer step
/// (gradient accumulation, or ranks of a data-parallel job) each micro-batch
/// contributes its statistics and `commitRunningStatistics()` applies the
/// momentum update once with their average. One micro-batch per step gives
/// exactly PyTorch's update; several give what averaging the running
/// statistics of data-parallel ranks gives, whatever the world size.
public final class BatchNorm2d {
    public let name: String
    public let channels: Int
    public let eps: Float = 1e-5
    public let momentum: Float = 0.1
    /// False: PyTorch's `affine=False`. Gamma and beta keep their initial
    /// 1 and 0 because backward never writes their gradients.
    public let affine: Bool
    public let weight: ParameterSlot
    public let bias: ParameterSlot
    public let runningMean: ParameterSlot
    public let runningVar: ParameterSlot
    /// PyTorch's `num_batches_tracked`: optimizer steps with an update.
    public var batchesTracked: Int64 = 0
    /// Called with the input of every forward: Genie-D measures the
    /// statistics of every batch-norm input through it.
    public var inputObserver: ((FeatureMap) -> Void)?
    /// Called at the end of backward with the input and dL/dx, to add the
    /// gradient of a loss on the input itself (Genie-D's statistics loss).
    public var addInputGradient: ((_ input: FeatureMap, _ gradient: FeatureMap) -> Void)?

    private let store: ParameterStore
    private var input: FeatureMap?
    private var training = true
    private var mean: [Float]
    private var inverseStd: [Float]
    private var pendingMean: [Float]
    private var pendingVar: [Float]
    private var pendingCount = 0
    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()

    public init(name: String, channels: Int, affine: Bool = true, store: ParameterStore) {
        self.name = name
        self.channels = channels
        self.affine = affine
        self.store = store
        weight = store.register("\(name).weight", shape: [channels], role: .normScale)
        bias = store.register("\(name).bias", shape: [channels], role: .normShift)
        runningMean = store.register("\(name).running_mean", shape: [channels], role: .runningMean)
        runningVar = store.register("\(name).running_var", shape: [channels], role: .runningVar)
        mean = Array(repeating: 0, count: channels)
        inverseStd = Array(repeating: 1, count: channels)
        pendingMean = Array(repeating: 0, count: channels)
        pendingVar = Array(repeating: 0, count: channels)
    }

    /// Sets gamma = 1, beta = 0, running mean 0 and variance 1 (PyTorch's init).
    public func reset() {
        store.parameters[weight].update(repeating: 1)
        store.parameters[bias].update(repeating: 0)
        store.state[runningMean].update(repeating: 0)
        store.state[runningVar].update(repeating: 1)
        batchesTracked = 0
    }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        precondition(x.channels == channels, "\(name): expected \(channels) channels, got \(x.channels)")
        input = x
        self.training = training
        inputObserver?(x)
        let y = x.like(output)
        let m = x.plane
        let gamma = store.parameters[weight], beta = store.parameters[bias]
        let rm = store.state[runningMean], rv = store.state[runningVar]
        for c in 0..<channels {
            let src = x.data + c * m
            if training {
                let mu = sum(src, count: m) / Float(m)
                let ss = sumOfSquaredDeviations(src, count: m, from: mu)
                mean[c] = mu
                inverseStd[c] = 1 / (ss / Float(m) + eps).squareRoot()
                pendingMean[c] += mu
                pendingVar[c] += ss / Float(max(m - 1, 1))  // unbiased, as PyTorch
            } else {
                mean[c] = rm[c]
                inverseStd[c] = 1 / (rv[c] + eps).squareRoot()
            }
            let a = gamma[c] * inverseStd[c]
            let b = beta[c] - mean[c] * a
            let dst = y.data + c * m
            for i in 0..<m { dst[i] = src[i] * a + b }
        }
        if training { pendingCount += 1 }
        return y
    }

    /// The slots whose gradients `backward` adds to.
    public var trainableSlots: [ParameterSlot] { [weight, bias] }

    /// Values `exportPendingStatistics` writes: the sums of this step's
    /// micro-batch means, then of their variances.
    public var pendingStatisticsCount: Int { 2 * channels }

    /// Writes this rank's sums of micro-batch means and variances, so ranks
    /// can add them up before `commitRunningStatistics(sums:microBatches:)`.
    public func exportPendingStatistics(into out: UnsafeMutablePointer<Float>) {
        for c in 0..<channels {
            out[c] = pendingMean[c]
            out[channels + c] = pendingVar[c]
        }
    }

    /// Applies the momentum update once with the average of the statistics
    /// of `microBatches` micro-batches, given their sums (as exported and
    /// summed over ranks), and clears this rank's pending statistics.
    public func commitRunningStatistics(sums: UnsafePointer<Float>, microBatches: Int) {
        guard microBatches > 0 else { return }
        let rm = store.state[runningMean], rv = store.state[runningVar]
        let k = Float(microBatches)
        for c in 0..<channels {
            rm[c] = (1 - momentum) * rm[c] + momentum * sums[c] / k
            rv[c] = (1 - momentum) * rv[c] + momentum * sums[channels + c] / k
        }
        pendingMean.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        pendingVar.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        pendingCount = 0
        batchesTracked += 1
    }

    /// Replaces the running statistics by the average of `microBatches`
    /// micro-batch statistics given as sums (BN re-estimation after
    /// quantization), and clears the pending ones.
    public func setRunningStatistics(sums: UnsafePointer<Float>, microBatches: Int) {
        precondition(microBatches > 0, "\(name): no statistics to set")
        let rm = store.state[runningMean], rv = store.state[runningVar]
        for c in 0..<channels {
            rm[c] = sums[c] / Float(microBatches)
            rv[c] = sums[channels + c] / Float(microBatches)
        }
        discardPendingStatistics()
    }

    /// Forgets the statistics of forwards since the last commit.
    public func discardPendingStatistics() {
        pendingMean.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        pendingVar.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        pendingCount = 0
    }

    /// Micro-batches whose statistics are pending.
    public var pendingMicroBatches: Int { pendingCount }

    /// Folds this process's pending statistics into the running ones (one
    /// process, no reduction).
    public func commitRunningStatistics() {
        var sums = [Float](repeating: 0, count: pendingStatisticsCount)
        exportPendingStatistics(into: &sums)
        commitRunningStatistics(sums: sums, microBatches: pendingCount)
    }

    /// Backward of the last forward. Training mode: with
    /// xhat = (x - mean) * istd and g = dy * gamma,
    /// dx = istd * (g - mean(g) - xhat * mean(g * xhat)).
    /// Evaluation mode (fixed running statistics): dx = gamma * istd * dy.
    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        let dx = x.like(inputGradient)
        let m = x.plane
        let gamma = store.parameters[weight]
        let dGamma = store.gradients[weight], dBeta = store.gradients[bias]
        for c in 0..<channels {
            let src = x.data + c * m, g = dy.data + c * m, out = dx.data + c * m
            let mu = mean[c], istd = inverseStd[c]
            let sumDy = sum(g, count: m)
            // sum(dy * xhat) = istd * (sum(dy * x) - mu * sum(dy))
            let sumDyXhat = istd * (dot(g, src, count: m) - mu * sumDy)
            if affine {
                dGamma[c] += sumDyXhat
                dBeta[c] += sumDy
            }
            let a = gamma[c] * istd
            if training {
                let meanDy = sumDy / Float(m), meanDyXhat = sumDyXhat / Float(m)
                for i in 0..<m {
                    let xhat = (src[i] - mu) * istd
                    out[i] = a * (g[i] - meanDy - xhat * meanDyXhat)
                }
            } else {
                for i in 0..<m { out[i] = a * g[i] }
            }
        }
        addInputGradient?(x, dx)
        return dx
    }
}
