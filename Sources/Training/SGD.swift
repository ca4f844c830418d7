import Kernels

/// SGD with momentum and decoupled-from-nothing L2 weight decay, as
/// PyTorch's `torch.optim.SGD`: g += wd * w (weights only); v = m * v + g;
/// w -= lr * v. It touches only the spans it is given, so frozen parameters
/// and their momentum stay exactly as they were.
///
/// Weight decay applies to conv/linear weights only, not to biases,
/// batch-norm parameters or quantizer steps. Quantizer steps are kept
/// positive after each update.
public final class SGD {
    public var momentum: Float
    public var weightDecay: Float
    /// Momentum buffers, laid out like the parameters.
    public let velocity: Arena

    public init(layout: ArenaLayout, momentum: Float, weightDecay: Float) {
        self.momentum = momentum
        self.weightDecay = weightDecay
        velocity = Arena(layout: layout)
    }

    public func step(parameters: Arena, gradients: Arena, spans: [TrainedSpan], learningRate lr: Float) {
        let w = parameters.storage.pointer, g = gradients.storage.pointer, v = velocity.storage.pointer
        let m = momentum
        for span in spans {
            let decay: Float = span.role == .weight ? weightDecay : 0
            for i in span.range {
                let grad = g[i] + decay * w[i]
                v[i] = m * v[i] + grad
                w[i] -= lr * v[i]
            }
            if span.role == .weightStep || span.role == .activationStep {
                for i in span.range { w[i] = max(w[i], 1e-8) }
            }
        }
    }
}
