import Distributed
import Kernels
import Layers

/// Min-max calibration of every quantizer that a policy turned on.
///
/// Weights: per output channel, symmetric, s = max|w| / qmax.
/// Activations: per tensor, the running min and max of the layer's
/// floating-point input over the calibration batches, widened to include 0,
/// reduced over all ranks (MPI_MIN / MPI_MAX) so every rank ends with the
/// same parameters: s = (max - min) / (2^b - 1), z = round(-min / s).
public final class MinMaxCalibrator {
    private let model: ResNet
    private var low: [Float]
    private var high: [Float]

    /// Installs input observers; run forward passes (quantization off), then `finish`.
    public init(model: ResNet) {
        self.model = model
        let layers = model.layers
        low = Array(repeating: .infinity, count: layers.count)
        high = Array(repeating: -.infinity, count: layers.count)
        for (i, layer) in layers.enumerated() {
            layer.inputObserver = { [unowned self] x in
                let (lo, hi) = extrema(x.data, count: x.count)
                low[i] = min(low[i], lo)
                high[i] = max(high[i], hi)
            }
        }
    }

    /// Reduces the observed ranges across ranks and writes every quantizer's
    /// step and zero point. Removes the observers.
    public func finish(communicator: Communicator) {
        let layers = model.layers
        communicator.allReduce(&low, .min)
        communicator.allReduce(&high, .max)
        let store = model.store
        for (i, layer) in layers.enumerated() {
            layer.inputObserver = nil
            calibrateWeights(of: layer, store: store)
            guard layer.inputQuantizer.enabled else { continue }
            precondition(low[i] <= high[i], "\(layer.name): no calibration data was observed")
            let q = layer.inputQuantizer
            let lo = min(low[i], 0), hi = max(high[i], 0)
            let levels = q.grid.qmax - q.grid.qmin
            let step = max((hi - lo) / levels, 1e-8)
            store.parameters[q.step][0] = step
            store.state[q.zeroPoint][0] = min(max((-lo / step).rounded(.toNearestOrEven) + q.grid.qmin, q.grid.qmin), q.grid.qmax)
        }
    }
}

/// Per-channel symmetric min-max steps of a layer's weights.
public func calibrateWeights(of layer: Conv2d, store: ParameterStore) {
    let w = store.parameters.pointer(layer.weight)
    let steps = store.parameters[layer.weightQuantizer.step]
    let rowLength = layer.weight.rowLength
    for r in 0..<layer.outChannels {
        let (lo, hi) = extrema(w + r * rowLength, count: rowLength)
        steps[r] = max(max(-lo, hi) / layer.weightQuantizer.grid.qmax, 1e-8)
    }
}
