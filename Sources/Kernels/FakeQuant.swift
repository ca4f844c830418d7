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

/// Uniform fake quantization, y = s * (clamp(round(x/s) + z, qmin, qmax) - z),
/// on a contiguous run of `count` values sharing step `s` and zero point `z`.
/// `z` is an integer held as Float; round is round-half-to-even like PyTorch.
public func fakeQuantize(
    _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int,
    step: Float, zeroPoint z: Float, grid: QuantGrid
) {
    let inv = 1 / step
    let lo = grid.qmin, hi = grid.qmax
    var i = 0
    let vInv = SIMD16<Float>(repeating: inv), vS = SIMD16<Float>(repeating: step)
    let vZ = SIMD16<Float>(repeating: z), vLo = SIMD16<Float>(repeating: lo), vHi = SIMD16<Float>(repeating: hi)
    while i + 16 <= count {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
        var q = (v * vInv).rounded(.toNearestOrEven) + vZ
        q = q.clamped(lowerBound: vLo, upperBound: vHi)
        UnsafeMutableRawPointer(y + i).storeBytes(of: (q - vZ) * vS, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count {
        let q = min(max((x[i] * inv).rounded(.toNearestOrEven) + z, lo), hi)
        y[i] = (q - z) * step
        i += 1
    }
}

/// Backward of `fakeQuantize` with the straight-through estimator and LSQ.
///
/// On entry `gradient` holds dL/dy; on exit dL/dx (dL/dy where the value
/// fell inside the grid, 0 where it was clamped). Returns the unscaled step
/// gradient sum(dL/dy * dy/ds), where dy/ds is round(v) - v inside the grid,
/// qmin - z below it and qmax - z above it (v = x/s); the caller applies
/// LSQ's gradient scale.
@discardableResult
public func fakeQuantizeBackward(
    _ x: UnsafePointer<Float>, gradient g: UnsafeMutablePointer<Float>, count: Int,
    step: Float, zeroPoint z: Float, grid: QuantGrid
) -> Float {
    let inv = 1 / step
    let lo = grid.qmin, hi = grid.qmax
    let vInv = SIMD16<Float>(repeating: inv), vZ = SIMD16<Float>(repeating: z)
    let vLo = SIMD16<Float>(repeating: lo), vHi = SIMD16<Float>(repeating: hi)
    let below = SIMD16<Float>(repeating: lo - z), above = SIMD16<Float>(repeating: hi - z)
    var stepSum = SIMD16<Float>.zero
    var i = 0
    while i + 16 <= count {
        let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) * vInv
        let r = v.rounded(.toNearestOrEven)
        let q = r + vZ
        let dy = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
        let isBelow = q .< vLo, isAbove = q .> vHi
        var ds = r - v
        ds.replace(with: below, where: isBelow)
        ds.replace(with: above, where: isAbove)
        stepSum += dy * ds
        var dx = dy
        dx.replace(with: 0, where: isBelow .| isAbove)
        UnsafeMutableRawPointer(g + i).storeBytes(of: dx, as: SIMD16<Float>.self)
        i += 16
    }
    var tail: Float = 0
    while i < count {
        let v = x[i] * inv
        let r = v.rounded(.toNearestOrEven)
        let q = r + z
        if q < lo {
            tail += g[i] * (lo - z)
            g[i] = 0
        } else if q > hi {
            tail += g[i] * (hi - z)
            g[i] = 0
        } else {
            tail += g[i] * (r - v)
        }
        i += 1
    }
    return stepSum.sum() + tail
}
