import Kernels

/// How a quantizer maps real values onto its integer grid, as in PyTorch
/// (`qint8` per-channel symmetric weights, `quint8` affine activations) and
/// AIMET (`use_symmetric_encodings`).
///
/// - `symmetric`: signed grid -2^(b-1) ... 2^(b-1)-1, zero point 0.
/// - `asymmetric`: unsigned grid 0 ... 2^b-1 with an integer zero point.
///
/// A quantizer's scheme is its grid's signedness: `QuantizationPolicy`
/// sets the grids, calibration reads the scheme back from them.
public enum QuantScheme: String, Sendable, CaseIterable, Codable {
    case symmetric
    case asymmetric

    /// The scheme of a grid: signed grids are symmetric.
    public init(grid: QuantGrid) { self = grid.signed ? .symmetric : .asymmetric }

    /// The grid of this scheme at `bits` bits.
    public func grid(bits: Int) -> QuantGrid { QuantGrid(bits: bits, signed: self == .symmetric) }
}

/// Per-output-channel weight fake quantization with learnable (LSQ) steps
/// and calibrated integer zero points (all 0 for the symmetric scheme).
///
/// Off until calibrated: a model starts in FP32 and `enabled` turns its
/// layers into fake-quantized ones without changing the arena layout, so
/// FP32 and quantized checkpoints share tensor names.
public final class WeightQuantizer {
    /// One step per output channel: `<layer>.weight_quantizer.step`.
    public let step: ParameterSlot
    /// One zero point per output channel, saved, not trained:
    /// `<layer>.weight_quantizer.zero_point` (0 for symmetric weights).
    public let zeroPoint: ParameterSlot
    public var grid: QuantGrid
    public var enabled = false
    /// AdaRound soft rounding instead of round-to-nearest while set (block
    /// reconstruction); applies only when `enabled`. See `SoftRounding`.
    public var softRounding: SoftRounding?

    init(layer: String, rows: Int, store: ParameterStore) {
        step = store.register("\(layer).weight_quantizer.step", shape: [rows], role: .weightStep)
        zeroPoint = store.register("\(layer).weight_quantizer.zero_point", shape: [rows], role: .zeroPoint)
        grid = QuantGrid(bits: 8, signed: true)
    }

    /// Symmetric for a signed grid, asymmetric for an unsigned one.
    public var scheme: QuantScheme { QuantScheme(grid: grid) }

    /// Writes the fake-quantized rows of `weight` (rows x rowLength) into `out`.
    func forward(_ weight: UnsafePointer<Float>, rows: Int, rowLength: Int,
                 steps: UnsafePointer<Float>, zeroPoints: UnsafePointer<Float>,
                 into out: UnsafeMutablePointer<Float>) {
        if let softRounding {
            precondition(grid.signed, "soft rounding (AdaRound) supports symmetric weights only")
            softRounding.forward(rows: rows, rowLength: rowLength, steps: steps, grid: grid, into: out)
            return
        }
        for r in 0..<rows {
            fakeQuantize(weight + r * rowLength, out + r * rowLength, count: rowLength,
                         step: steps[r], zeroPoint: zeroPoints[r], grid: grid)
        }
    }

    /// Turns dL/dW_q of the selected rows into dL/dW, added to
    /// `weightGradient`, and LSQ step gradients, added to `stepGradient`.
    /// `selectedGradient` is compact: its row j is the j-th row of `rows`.
    func backward(_ weight: UnsafePointer<Float>, rows: [Range<Int>], rowLength: Int,
                  steps: UnsafePointer<Float>, zeroPoints: UnsafePointer<Float>,
                  selectedGradient: UnsafeMutablePointer<Float>,
                  weightGradient: UnsafeMutablePointer<Float>, stepGradient: UnsafeMutablePointer<Float>) {
        if let softRounding {
            softRounding.backward(rows: rows, rowLength: rowLength, steps: steps, grid: grid,
                                  selectedGradient: selectedGradient, stepGradient: stepGradient)
            return
        }
        let scale = grid.lsqGradientScale(elements: rowLength)
        var g = selectedGradient
        for run in rows {
            for r in run {
                let ds = fakeQuantizeBackward(weight + r * rowLength, gradient: g, count: rowLength,
                                              step: steps[r], zeroPoint: zeroPoints[r], grid: grid)
                stepGradient[r] += scale * ds
                g += rowLength
            }
        }
        addRows(selectedGradient, rows: rows, rowLength: rowLength, into: weightGradient)
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
    /// QDrop (block reconstruction only): while set, the input elements
    /// whose byte is not 0 pass unquantized, forward and backward. One byte
    /// per element of the layer's input, laid out like its FeatureMap
    /// (CNHW). The caller owns the bytes, sets them before the forward and
    /// keeps them until the backward is done; nil quantizes every element.
    public var dropMask: UnsafePointer<UInt8>?

    init(layer: String, store: ParameterStore) {
        step = store.register("\(layer).input_quantizer.step", shape: [1], role: .activationStep)
        zeroPoint = store.register("\(layer).input_quantizer.zero_point", shape: [1], role: .zeroPoint)
        grid = QuantGrid(bits: 8, signed: false)
    }

    /// Symmetric for a signed grid, asymmetric for an unsigned one.
    public var scheme: QuantScheme { QuantScheme(grid: grid) }
}

/// AdaRound soft rounding with a learned step (Genie-M): the weight
/// quantizer's mode during block reconstruction. With h the rectified
/// sigmoid h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),
///
///     W_q = s * clamp(B + h(V), qmin, qmax)      (symmetric, z = 0)
///
/// where B = floor(W / s0) is frozen and V (one logit per weight) and the
/// per-row step s are learned. Backward gives
///     dL/dV = dL/dW_q * s * h'(V)   where qmin <= B + h(V) <= qmax, else 0,
///     dL/ds = sum over the row of dL/dW_q * clamp(B + h(V), qmin, qmax),
/// with h'(V) = sigmoid'(V) * (zeta - gamma) where 0 < h < 1, else 0; the
/// step gradient is not LSQ-scaled and W itself gets no gradient.
/// The buffers (rows x rowLength, laid out like the weight) belong to the
/// caller and must outlive the mode. Symmetric weights (signed grid) only:
/// the weight quantizer refuses soft rounding on an asymmetric grid.
public struct SoftRounding {
    public static let zeta: Float = 1.1
    public static let gamma: Float = -0.1

    /// B = floor(W / s0), integers held as Float.
    public var base: UnsafePointer<Float>
    /// V, the rounding logits.
    public var logits: UnsafePointer<Float>
    /// Backward adds dL/dV here.
    public var logitGradient: UnsafeMutablePointer<Float>

    public init(base: UnsafePointer<Float>, logits: UnsafePointer<Float>, logitGradient: UnsafeMutablePointer<Float>) {
        self.base = base
        self.logits = logits
        self.logitGradient = logitGradient
    }

    @inline(__always)
    static func sigmoid(_ v: Float) -> Float { 1 / (1 + expf(-v)) }

    /// h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1).
    @inline(__always)
    public static func rectifiedSigmoid(_ v: Float) -> Float {
        min(max(sigmoid(v) * (zeta - gamma) + gamma, 0), 1)
    }

    /// dh/dV: sigmoid'(V) * (zeta - gamma) where 0 < h(V) < 1, else 0.
    @inline(__always)
    public static func rectifiedSigmoidDerivative(_ v: Float) -> Float {
        let p = sigmoid(v)
        let h = p * (zeta - gamma) + gamma
        return h > 0 && h < 1 ? p * (1 - p) * (zeta - gamma) : 0
    }

    func forward(rows: Int, rowLength: Int, steps: UnsafePointer<Float>, grid: QuantGrid,
                 into out: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let s = steps[r]
            for i in (r * rowLength)..<((r + 1) * rowLength) {
                out[i] = min(max(base[i] + Self.rectifiedSigmoid(logits[i]), grid.qmin), grid.qmax) * s
            }
        }
    }

    /// `selectedGradient` is compact: its row j is the j-th row of `rows`.
    func backward(rows: [Range<Int>], rowLength: Int, steps: UnsafePointer<Float>, grid: QuantGrid,
                  selectedGradient: UnsafePointer<Float>, stepGradient: UnsafeMutablePointer<Float>) {
        var g = selectedGradient
        for run in rows {
            for r in run {
                let s = steps[r]
                var ds: Double = 0
                for j in 0..<rowLength {
                    let i = r * rowLength + j
                    let v = logits[i]
                    let t = base[i] + Self.rectifiedSigmoid(v)
                    let c = min(max(t, grid.qmin), grid.qmax)
                    ds += Double(g[j]) * Double(c)
                    if c == t { logitGradient[i] += g[j] * s * Self.rectifiedSigmoidDerivative(v) }
                }
                stepGradient[r] += Float(ds)
                g += rowLength
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
