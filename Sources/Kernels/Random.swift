/// Deterministic random numbers that do not depend on the platform, the
/// world size or the Swift standard library's generator: every stream is
/// named by a seed and a few integers (epoch, batch index, layer...), so the
/// same run always draws the same numbers, whichever rank draws them.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// A stream derived from a seed and a path of integers, e.g.
    /// `SplitMix64(seed: 7, stream: [epoch])`.
    public init(seed: UInt64, stream: [UInt64]) {
        var s = SplitMix64(seed: seed)
        var mixed = s.next()
        for part in stream {
            s = SplitMix64(seed: mixed ^ (part &* 0x9E37_79B9_7F4A_7C15))
            mixed = s.next()
        }
        state = mixed
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextUniform() -> Float {
        Float(next() >> 40) * (1.0 / 16_777_216.0)
    }

    /// Standard normal (Box-Muller).
    public mutating func nextNormal() -> Float {
        let u1 = max(Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0), 1e-300)
        let u2 = Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0)
        return Float((-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2))
    }

    /// A uniformly random index in 0..<n without modulo bias.
    public mutating func nextIndex(below n: Int) -> Int {
        Int(next(upperBound: UInt64(n)))
    }

    /// Fisher-Yates shuffle of 0..<n.
    public mutating func permutation(_ n: Int) -> [Int] {
        var p = Array(0..<n)
        if n > 1 {
            for i in stride(from: n - 1, to: 0, by: -1) {
                p.swapAt(i, nextIndex(below: i + 1))
            }
        }
        return p
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
#endif
