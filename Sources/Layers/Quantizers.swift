import Kernels

/// Per-output-channel weight fake quantization with learnable (LSQ) steps.
///
/// Off until calibrated: a model starts in FP32 and `enabled` turns its
/// layers into fake-quantized ones without changing the arena layout, so
/// FP32 and quantized checkpoints share tensor names.
public final class WeightQuantizer {
    /// One step per output channel: `<layer>.weight_quantizer.step`.
    public let step: ParameterSlot
    public var grid: QuantGrid
    public var enabled = false

    init(layer: String, rows: Int, store: ParameterStore) {
        step = store.register("\(layer).weight_quantizer.step", shape: [rows], role: .weightStep)
        grid = QuantGrid(bits: 8, signed: true)
    }

    /// Writes the fake-quantized rows of `weight` (rows x rowLength) into `out`.
    func forward(_ weight: UnsafePointer<Float>, rows: Int, rowLength: Int,
                 steps: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            fakeQuantize(weight + r * rowLength, out + r * rowLength, count: rowLength,
                         step: steps[r], zeroPoint: 0, grid: grid)
        }
    }

    /// Turns dL/dW_q of the given rows (in `scratch`) into dL/dW, added to
    /// `weightGradient`, and the LSQ step gradients, added to `stepGradient`.
    func backward(_ weight: UnsafePointer<Float>, rows: [Range<Int>], rowLength: Int,
                  steps: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>,
                  weightGradient: UnsafeMutablePointer<Float>, stepGradient: UnsafeMutablePointer<Float>) {
        let scale = grid.lsqGradientScale(elements: rowLength)
        for run in rows {
            for r in run {
                let g = scratch + r * rowLength
                let ds = fakeQuantizeBackward(weight + r * rowLength, gradient: g, count: rowLength,
                                              step: steps[r], zeroPoint: 0, grid: grid)
                stepGradient[r] += scale * ds
                let dw = weightGradient + r * rowLength
                for i in 0..<rowLength { dw[i] += g[i] }
            }
        }
    }
}

/// Per-tensor fake quantization of a layer's input, with a learnable (LSQ)
/// step and a calibrated integer zero point (0 for non-negative inputs).
public final class ActivationQuantizer {
    /// `<layer>.input_quantizer.step`, shape [1].
    public let step: ParameterSlot
    /// `<layer>.input_quantizer.zero_point`, shape [1], saved, not trained.
    public let zeroPoint: ParameterSlot
    public var grid: QuantGrid
    public var enabled = false

    init(layer: String, store: ParameterStore) {
        step = store.register("\(layer).input_quantizer.step", shape: [1], role: .activationStep)
        zeroPoint = store.register("\(layer).input_quantizer.zero_point", shape: [1], role: .zeroPoint)
        grid = QuantGrid(bits: 8, signed: false)
    }
}
