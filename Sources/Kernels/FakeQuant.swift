/// The integer grid of a uniform quantizer.
public struct QuantGrid: Sendable, Equatable {
    public let bits: Int
    public let signed: Bool
    public let qmin: Float
    public let qmax: Float

    /// Signed: -2^(b-1) ... 2^(b-1)-1 (symmetric weights). Unsigned: 0 ... 2^b-1.
    public init(bits: Int, signed: Bool) {
        precondition((2...16).contains(bits), "bits must be in 2...16, got \(bits)")
        self.bits = bits
        self.signed = signed
        if signed {
            qmin = -Float(1 << (bits - 1))
            qmax = Float((1 << (bits - 1)) - 1)
        } else {
            qmin = 0
            qmax = Float((1 << bits) - 1)
        }
    }

    /// LSQ's step-gradient scale 1/sqrt(N * qmax) for N elements sharing a step.
    public func lsqGradientScale(elements: Int) -> Float {
        1 / (Float(elements) * qmax).squareRoot()
    }
}

/// Round half to even by the float adder: for |v| < 2^22, (v + 1.5*2^23) -
/// 1.5*2^23 rounds v to an integer in the default rounding mode. Inputs are
/// first clamped to +-2^22, far outside any quantization grid, so the
/// result is exact. Unlike `rounded(.toNearestOrEven)`, which becomes a
/// library call per element, this lets the loops below vectorize.
@inline(__always)
func roundToEven(_ v: Float) -> Float {
    (min(max(v, -4_194_304), 4_194_304) + 12_582_912) - 12_582_912
}

// The kernels below are plain element loops with no branches and no
// reductions across iterations, written so that LLVM vectorizes them
// (Swift's generic SIMD min/max/select are not lowered to vector
// instructions and are an order of magnitude slower).

/// Uniform fake quantization, y = s * (clamp(round(x/s) + z, qmin, qmax) - z),
/// on a contiguous run of `count` values sharing step `s` and zero point `z`.
/// `z` is an integer held as Float; round is round-half-to-even like PyTorch.
///
/// With a `dropMask` (QDrop, one byte per value), values whose byte is not
/// 0 skip the quantizer: y = x there.
public func fakeQuantize(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int,
    step: Float, zeroPoint z: Float, grid: QuantGrid, dropMask: UnsafePointer<UInt8>? = nil
) {
    let inv = 1 / step
    if let drop = dropMask {
        for i in 0..<count {
            let q = fakeQuantize(x[i], inverseStep: inv, step: step, zeroPoint: z, grid: grid)
            y[i] = drop[i] == 0 ? q : x[i]
        }
    } else {
        for i in 0..<count {
            y[i] = fakeQuantize(x[i], inverseStep: inv, step: step, zeroPoint: z, grid: grid)
        }
    }
}

/// One value through the fake quantizer; `inverseStep` is 1 / step, passed
/// in so loops compute it once.
@inline(__always)
public func fakeQuantize(_ x: Float, inverseStep: Float, step: Float, zeroPoint z: Float, grid: QuantGrid) -> Float {
    (min(max(roundToEven(x * inverseStep) + z, grid.qmin), grid.qmax) - z) * step
}

/// Backward of `fakeQuantize` with the straight-through estimator and LSQ.
///
/// On entry `gradient` holds dL/dy; on exit dL/dx (dL/dy where the value
/// fell inside the grid, 0 where it was clamped). Returns the unscaled step
/// gradient sum(dL/dy * dy/ds), where dy/ds is round(v) - v inside the grid,
/// qmin - z below it and qmax - z above it (v = x/s); the caller applies
/// LSQ's gradient scale.
///
/// With the forward's `dropMask`, a dropped value (y = x) keeps dL/dx = dL/dy
/// and adds nothing to the step gradient.
@discardableResult
public func fakeQuantizeBackward(
    _ x: UnsafePointer<Float>, gradient g: UnsafeMutablePointer<Float>, count: Int,
    step: Float, zeroPoint z: Float, grid: QuantGrid, dropMask: UnsafePointer<UInt8>? = nil
) -> Float {
    let inv = 1 / step
    let block = 1024
    return withUnsafeTemporaryAllocation(of: Float.self, capacity: block) { terms in
        let t = terms.baseAddress!
        var total: Float = 0
        for start in stride(from: 0, to: count, by: block) {
            let n = min(block, count - start)
            let xs = x + start, gs = g + start
            if let dropMask {
                let drop = dropMask + start
                for i in 0..<n {
                    let dy = gs[i]
                    let (ds, dx) = fakeQuantizeGradients(xs[i], dy, inverseStep: inv, zeroPoint: z, grid: grid)
                    // A 0/1 factor, not a select (which LLVM turns into a
                    // branch and does not vectorize); exact, as dx is dy or 0.
                    let kept: Float = drop[i] == 0 ? 1 : 0
                    t[i] = kept * ds
                    gs[i] = dy + kept * (dx - dy)
                }
            } else {
                for i in 0..<n {
                    (t[i], gs[i]) = fakeQuantizeGradients(xs[i], gs[i], inverseStep: inv, zeroPoint: z, grid: grid)
                }
            }
            total += sum(t, count: n)
        }
        return total
    }
}

/// One value's share of the backward, from x and dy = dL/dy: the step
/// gradient term dy * dy/ds and dL/dx.
@inline(__always)
func fakeQuantizeGradients(_ x: Float, _ dy: Float, inverseStep: Float, zeroPoint z: Float,
                           grid: QuantGrid) -> (step: Float, input: Float) {
    let v = x * inverseStep
    let r = roundToEven(v)
    let q = r + z
    let clamped = min(max(q, grid.qmin), grid.qmax)
    let inside = clamped == q
    // Below the grid clamped - z = qmin - z, above it qmax - z.
    return (dy * (inside ? r - v : clamped - z), inside ? dy : 0)
}
