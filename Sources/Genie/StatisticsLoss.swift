import Kernels
import Layers

/// The terms of Genie-D's loss for one batch of images.
public struct StatisticsLossValue: Sendable, Equatable {
    /// Sum over the teacher's batch-norm layers of the statistics mismatch.
    public var batchNorm: Double
    /// The input prior: per-image, per-channel mean towards 0 and std towards 1.
    public var inputPrior: Double
    public var total: Double { batchNorm + inputPrior }
}

/// Genie-D's loss (docs/genie.md) of images fed to a
/// frozen teacher in evaluation mode, and its gradient with respect to the
/// images. For every batch-norm layer l with C_l channels, on its input:
///
///     L_l = ||mu - running_mean||^2 / C_l + ||sigma - sqrt(running_var + 1e-6)||^2 / C_l
///
/// with mu and sigma the per-channel mean and standard deviation of the
/// batch (sigma unbiased, as `torch.std_mean`), plus the input prior
/// ||m||^2 / N + ||s - 1||^2 / N over the per-image, per-channel means m and
/// standard deviations s of the N images.
///
/// The teacher is a private copy of the model with hooks on every batch
/// norm: the forward measures mu and sigma of each input, and the backward
/// adds dL_l/d(input) to the gradient that flows through:
///
///     dL_l/dx = 2/C_l * ((mu - running_mean)/m + (sigma - target) (x - mu) / ((m - 1) sigma))
///
/// over the m = N*H*W values of the channel. No weight gradients are
/// computed. Every strided convolution of the copy carries a
/// `ReflectPadCrop` (`swings`); the caller sets their offsets.
public final class BatchNormStatisticsLoss {
    public let teacher: Network
    /// The swing crops of the strided convolutions, in forward order.
    public let swings: [ReflectPadCrop]
    private let layers: [Statistics]
    private let zeroLogitGradient = FloatBuffer()

    /// sqrt(running_var + eps) is the target standard deviation.
    static let targetEpsilon: Float = 1e-6

    /// Per-channel statistics of one batch-norm input and their targets.
    private final class Statistics {
        let channels: Int
        let targetMean: [Float]
        let targetStd: [Float]
        var mean: [Float]
        var std: [Float]
        var loss: Double = 0

        init(_ norm: BatchNorm2d, store: ParameterStore) {
            channels = norm.channels
            targetMean = Array(store.state[norm.runningMean])
            targetStd = store.state[norm.runningVar].map { ($0 + BatchNormStatisticsLoss.targetEpsilon).squareRoot() }
            mean = Array(repeating: 0, count: channels)
            std = Array(repeating: 0, count: channels)
        }

        func observe(_ x: FeatureMap) {
            let m = x.plane
            var total: Double = 0
            for c in 0..<channels {
                let src = x.data + c * m
                let mu = sum(src, count: m) / Float(m)
                let sigma = (sumOfSquaredDeviations(src, count: m, from: mu) / Float(max(m - 1, 1))).squareRoot()
                mean[c] = mu
                std[c] = sigma
                let dm = Double(mu - targetMean[c]), ds = Double(sigma - targetStd[c])
                total += dm * dm + ds * ds
            }
            loss = total / Double(channels)
        }

        func addGradient(_ x: FeatureMap, into dx: FeatureMap) {
            let m = x.plane
            let scale = 2 / Float(channels)
            for c in 0..<channels {
                let src = x.data + c * m, dst = dx.data + c * m
                let mu = mean[c], sigma = std[c]
                let shift = scale * (mu - targetMean[c]) / Float(m)
                // A constant channel has sigma = 0: take the zero subgradient.
                let slope = sigma > 0 ? scale * (sigma - targetStd[c]) / (Float(max(m - 1, 1)) * sigma) : 0
                for i in 0..<m { dst[i] += shift + slope * (src[i] - mu) }
            }
        }
    }

    /// Copies `model` (which stays untouched) and hooks the copy.
    public init(teacher model: Network) {
        // A private copy, hooked for good: the switches below never reach
        // the caller's model.
        teacher = model.clone()
        for layer in teacher.inputLayers { layer.needsInputGradient = true }
        var swings: [ReflectPadCrop] = []
        for layer in teacher.layers {
            layer.gradientRows = []
            if layer.stride != 1 {
                let swing = ReflectPadCrop()
                layer.swing = swing
                swings.append(swing)
            }
        }
        self.swings = swings
        layers = teacher.batchNorms.map { norm in
            let statistics = Statistics(norm, store: model.store)
            norm.inputObserver = { statistics.observe($0) }
            norm.addInputGradient = { statistics.addGradient($0, into: $1) }
            return statistics
        }
    }

    /// The loss of `images` (forward only).
    public func value(of images: FeatureMap) -> StatisticsLossValue {
        _ = teacher.forward(images, training: false)
        return StatisticsLossValue(batchNorm: layers.reduce(0) { $0 + $1.loss },
                                   inputPrior: inputPrior(images, gradient: nil))
    }

    /// The loss of `images` and its gradient with respect to them (a view
    /// of the teacher's buffer, valid until the next call).
    public func valueAndGradient(of images: FeatureMap) -> (value: StatisticsLossValue, gradient: FeatureMap) {
        let logits = teacher.forward(images, training: false)
        let dLogits = logits.like(zeroLogitGradient)
        dLogits.buffer.update(repeating: 0)
        let dImages = teacher.backward(dLogits)
        let value = StatisticsLossValue(batchNorm: layers.reduce(0) { $0 + $1.loss },
                                        inputPrior: inputPrior(images, gradient: dImages))
        return (value, dImages)
    }

    /// ||m||^2 / N + ||s - 1||^2 / N over every image's channels (s
    /// unbiased over the H*W pixels); adds its gradient to `gradient`.
    private func inputPrior(_ x: FeatureMap, gradient: FeatureMap?) -> Double {
        let p = x.height * x.width, n = Float(x.batch)
        var total: Double = 0
        for plane in 0..<(x.channels * x.batch) {
            let src = x.data + plane * p
            let mu = sum(src, count: p) / Float(p)
            let sigma = (sumOfSquaredDeviations(src, count: p, from: mu) / Float(max(p - 1, 1))).squareRoot()
            total += Double(mu) * Double(mu) + Double(sigma - 1) * Double(sigma - 1)
            guard let gradient else { continue }
            let dst = gradient.data + plane * p
            let shift = 2 * mu / (n * Float(p))
            let slope = sigma > 0 ? 2 * (sigma - 1) / (n * Float(max(p - 1, 1)) * sigma) : 0
            for i in 0..<p { dst[i] += shift + slope * (src[i] - mu) }
        }
        return total / Double(x.batch)
    }
}
