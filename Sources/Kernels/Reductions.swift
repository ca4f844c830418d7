/// Sums of contiguous runs with 16 independent accumulators: Swift does not
/// reorder float additions by itself, so a plain loop would not vectorize.
@inline(__always)
public func sum(_ x: UnsafePointer<Float>, count: Int) -> Float {
    var acc = SIMD16<Float>.zero
    var i = 0
    while i + 16 <= count {
        acc += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
        i += 16
    }
    var tail: Float = 0
    while i < count { tail += x[i]; i += 1 }
    return acc.sum() + tail
}

/// sum((x - c)^2)
@inline(__always)
public func sumOfSquaredDeviations(_ x: UnsafePointer<Float>, count: Int, from c: Float) -> Float {
    var acc = SIMD16<Float>.zero
    let vc = SIMD16<Float>(repeating: c)
    var i = 0
    while i + 16 <= count {
        let d = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) - vc
        acc += d * d
        i += 16
    }
    var tail: Float = 0
    while i < count { let d = x[i] - c; tail += d * d; i += 1 }
    return acc.sum() + tail
}

/// sum(x * y)
@inline(__always)
public func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count: Int) -> Float {
    var acc = SIMD16<Float>.zero
    var i = 0
    while i + 16 <= count {
        acc += UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
            * UnsafeRawPointer(y + i).loadUnaligned(as: SIMD16<Float>.self)
        i += 16
    }
    var tail: Float = 0
    while i < count { tail += x[i] * y[i]; i += 1 }
    return acc.sum() + tail
}

/// y += x, 16 lanes at a time (the compiler cannot rule out overlap).
@inline(__always)
public func accumulate(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 16 <= count {
        let sum = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD16<Float>.self)
            + UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self)
        UnsafeMutableRawPointer(y + i).storeBytes(of: sum, as: SIMD16<Float>.self)
        i += 16
    }
    while i < count { y[i] += x[i]; i += 1 }
}

/// (min, max) of a non-empty run. Used for calibration only, so a plain loop.
public func extrema(_ x: UnsafePointer<Float>, count: Int) -> (min: Float, max: Float) {
    precondition(count > 0)
    var lo = x[0], hi = x[0]
    for i in 1..<count {
        lo = Swift.min(lo, x[i])
        hi = Swift.max(hi, x[i])
    }
    return (lo, hi)
}
