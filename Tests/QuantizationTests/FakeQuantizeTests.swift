import Kernels
import XCTest

/// fakeQuantize and fakeQuantizeBackward (kernels shared by weight and
/// activation quantizers). Lengths include ones that are not multiples of
/// the vector width (remainder loops) and ones longer than the backward's
/// 1024-element blocks.
final class FakeQuantizeTests: XCTestCase {
    /// Grids with their zero points: symmetric signed, asymmetric unsigned.
    let grids: [(grid: QuantGrid, zeroPoint: Float)] = [
        (QuantGrid(bits: 4, signed: true), 0),
        (QuantGrid(bits: 8, signed: true), 0),
        (QuantGrid(bits: 2, signed: true), 0),
        (QuantGrid(bits: 4, signed: false), 0),
        (QuantGrid(bits: 4, signed: false), 3),
        (QuantGrid(bits: 8, signed: false), 100),
    ]
    let counts = [1, 7, 15, 16, 17, 37, 50, 1024, 2500]

    func testGridRanges() {
        for bits in 2...8 {
            let signed = QuantGrid(bits: bits, signed: true), unsigned = QuantGrid(bits: bits, signed: false)
            XCTAssertEqual(signed.qmin, -Float(1 << (bits - 1)), "W\(bits)")
            XCTAssertEqual(signed.qmax, Float((1 << (bits - 1)) - 1), "W\(bits)")
            XCTAssertEqual(unsigned.qmin, 0, "A\(bits)")
            XCTAssertEqual(unsigned.qmax, Float((1 << bits) - 1), "A\(bits)")
            XCTAssertEqual(signed.qmax - signed.qmin, unsigned.qmax, "both have 2^b levels")
            assertClose(Double(signed.lsqGradientScale(elements: 144)), 1 / (144 * Double(signed.qmax)).squareRoot(),
                        tolerance: 1e-6)
        }
        XCTAssertEqual(QuantGrid(bits: 4, signed: true).qmin, -8)
        XCTAssertEqual(QuantGrid(bits: 4, signed: true).qmax, 7)
        XCTAssertEqual(QuantGrid(bits: 8, signed: false).qmax, 255)
    }

    func testGridValuesAreFixedPoints() {
        for (grid, z) in grids {
            for step: Float in [0.1, 0.037, 0.5] {
                // Every grid point, repeated to at least 40 values so both
                // the vector loop and the remainder see them.
                let points = Array(stride(from: grid.qmin, through: grid.qmax, by: 1)).map { ($0 - z) * step }
                let x = (0..<max(points.count + 1, 40)).map { points[$0 % points.count] }
                XCTAssertEqual(fakeQuantized(x, step: step, zeroPoint: z, grid: grid), x, "\(grid) z \(z) step \(step)")
            }
        }
    }

    func testOutputStaysInRangeAndNearTheInput() {
        var rng = SplitMix64(seed: 1)
        for (grid, z) in grids {
            let step: Float = 0.1
            let lo = step * (grid.qmin - z), hi = step * (grid.qmax - z)
            for count in counts {
                let x = uniformValues(count, &rng, range: (lo - 1)...(hi + 1))
                let y = fakeQuantized(x, step: step, zeroPoint: z, grid: grid)
                for i in 0..<count {
                    XCTAssert(y[i] >= lo && y[i] <= hi, "\(y[i]) outside [\(lo), \(hi)]")
                    if x[i] >= lo && x[i] <= hi {
                        XCTAssertLessThanOrEqual(abs(y[i] - x[i]), step / 2 * 1.0001, "error above half a step")
                    } else {
                        XCTAssertEqual(y[i], x[i] < lo ? lo : hi, "clamped to the range")
                    }
                }
            }
        }
    }

    func testIdempotent() {
        var rng = SplitMix64(seed: 2)
        for (grid, z) in grids {
            for step: Float in [0.1, 0.037, 0.25] {
                let x = uniformValues(53, &rng, range: -3...3)
                let once = fakeQuantized(x, step: step, zeroPoint: z, grid: grid)
                XCTAssertEqual(fakeQuantized(once, step: step, zeroPoint: z, grid: grid), once, "\(grid) z \(z) step \(step)")
            }
        }
    }

    func testRoundHalfToEven() {
        let grid = QuantGrid(bits: 8, signed: true)
        let ties: [Float] = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 4.5, 5.5, -6.5]
        let even: [Float] = [0, 2, 2, 4, 0, -2, -2, -4, 4, 6, -6]
        // 33 values: ties in the vector loop and in the remainder.
        let x = Array(repeating: ties, count: 3).flatMap { $0 }
        let expected = Array(repeating: even, count: 3).flatMap { $0 }
        XCTAssertEqual(fakeQuantized(x, step: 1, grid: grid), expected)
        XCTAssertEqual(fakeQuantized(x.map { $0 * 0.25 }, step: 0.25, grid: grid), expected.map { $0 * 0.25 })
        // The tie is broken on round(x/s) before the zero point is added:
        // round(2.5) + 5 = 7, not round(7.5) = 8.
        let unsigned = QuantGrid(bits: 4, signed: false)
        XCTAssertEqual(fakeQuantized([2.5, 3.5, -2.5], step: 1, zeroPoint: 5, grid: unsigned), [2, 4, -2])
    }

    func testBackwardMatchesTheFormula() {
        var rng = SplitMix64(seed: 3)
        for (grid, z) in grids {
            let step: Float = 0.1
            let lo = step * (grid.qmin - z), hi = step * (grid.qmax - z)
            var places = Set<String>()
            for count in counts {
                let x = uniformValues(count, &rng, range: (lo - 0.5)...(hi + 0.5))
                let dy = uniformValues(count, &rng)
                let expected = referenceBackward(x, dy, step: step, zeroPoint: z, grid: grid)
                var g = dy
                let stepGradient = fakeQuantizeBackward(x, gradient: &g, count: count, step: step, zeroPoint: z, grid: grid)
                assertClose(Double(stepGradient), expected.stepGradient, tolerance: 1e-5, "\(grid) z \(z) count \(count)")
                XCTAssertEqual(g, expected.dx, "straight-through dx, \(grid) z \(z) count \(count)")
                for i in 0..<count {
                    places.insert("\(GridPosition(x[i], step: step, zeroPoint: z, grid: grid).place)")
                }
            }
            XCTAssertEqual(places, ["below", "inside", "above"], "\(grid) z \(z): every case was exercised")
        }
    }

    /// The LSQ step gradient against a finite difference in s of
    /// F(s) = sum(dy * fakeQuantize(x; s)), on values away from rounding and
    /// clamping boundaries so that F is locally linear in s. s and s +- h are
    /// dyadic (h = 2^-8), so every fake-quantized value and F itself are
    /// exact and the difference quotient is the derivative.
    ///
    /// F's true derivative is round(v) inside the range (and qmin - z, qmax - z
    /// outside); LSQ passes round() straight through, which adds -v inside:
    /// step gradient = dF/ds - sum over inside values of dy * v. With a QDrop
    /// mask, dropped values (y = x) do not depend on s at all.
    func testStepGradientAgainstFiniteDifference() {
        var rng = SplitMix64(seed: 4)
        for (grid, z) in grids where grid.bits <= 4 {
            for masked in [false, true] {
                let step: Float = 0.25
                var x: [Float] = []
                for _ in 0..<41 {
                    switch rng.nextIndex(below: 4) {
                    case 0:  // below the range by at least one step
                        x.append(step * (grid.qmin - z - 1 - 3 * rng.nextUniform()))
                    case 1:  // above it
                        x.append(step * (grid.qmax - z + 1 + 3 * rng.nextUniform()))
                    default:  // inside, within 0.25 of a grid point
                        let k = grid.qmin - z + Float(rng.nextIndex(below: Int(grid.qmax - grid.qmin) + 1))
                        x.append(step * (k + 0.5 * rng.nextUniform() - 0.25))
                    }
                }
                let dy = uniformValues(x.count, &rng)
                let mask = masked ? randomDropMask(x.count, &rng) : nil
                func F(_ s: Float) -> Double {
                    zip(fakeQuantized(x, step: s, zeroPoint: z, grid: grid, dropMask: mask), dy)
                        .reduce(0) { $0 + Double($1.0) * Double($1.1) }
                }
                // |v| <= 16, so v moves by at most 16/64 = 0.25 over s +- h: no
                // value crosses a rounding or clamping boundary.
                let h: Float = 1.0 / 256
                let derivative = (F(step + h) - F(step - h)) / (Double(step + h) - Double(step - h))
                var g = dy
                let stepGradient = fakeQuantizeBackward(x, gradient: &g, step: step, zeroPoint: z, grid: grid,
                                                        dropMask: mask)
                var straightThrough: Double = 0
                for i in x.indices where (mask?[i] ?? 0) == 0 {
                    let p = GridPosition(x[i], step: step, zeroPoint: z, grid: grid)
                    if p.place == .inside { straightThrough += Double(dy[i]) * p.v }
                }
                assertClose(Double(stepGradient), derivative - straightThrough, tolerance: 1e-5,
                            "\(grid) z \(z) masked \(masked)")
            }
        }
    }

    /// QDrop: where the mask byte is not 0 the value skips the quantizer,
    /// y = x, dL/dx = dL/dy and no share of the step gradient; elsewhere
    /// the unmasked kernels' results, bit for bit.
    func testDropMask() {
        var rng = SplitMix64(seed: 5)
        for (grid, z) in grids {
            let step: Float = 0.1
            let lo = step * (grid.qmin - z), hi = step * (grid.qmax - z)
            for count in counts {
                let x = uniformValues(count, &rng, range: (lo - 0.5)...(hi + 0.5))
                let dy = uniformValues(count, &rng)
                let mask = randomDropMask(count, &rng)
                let label = "\(grid) z \(z) count \(count)"

                let quantized = fakeQuantized(x, step: step, zeroPoint: z, grid: grid)
                let y = fakeQuantized(x, step: step, zeroPoint: z, grid: grid, dropMask: mask)
                XCTAssertEqual(y, x.indices.map { mask[$0] == 0 ? quantized[$0] : x[$0] }, "forward, \(label)")

                var dx = dy
                let stepGradient = fakeQuantizeBackward(x, gradient: &dx, step: step, zeroPoint: z, grid: grid,
                                                        dropMask: mask)
                // The reference on the kept values alone.
                let kept = x.indices.filter { mask[$0] == 0 }
                let expected = referenceBackward(kept.map { x[$0] }, kept.map { dy[$0] }, step: step, zeroPoint: z,
                                                 grid: grid)
                assertClose(Double(stepGradient), expected.stepGradient, tolerance: 1e-5, label)
                var expectedDx = dy
                for (k, i) in kept.enumerated() { expectedDx[i] = expected.dx[k] }
                XCTAssertEqual(dx, expectedDx, "dx, \(label)")

                // An all-keep mask is the unmasked kernel.
                let keepAll = [UInt8](repeating: 0, count: count)
                XCTAssertEqual(fakeQuantized(x, step: step, zeroPoint: z, grid: grid, dropMask: keepAll), quantized, label)
                var plain = dy, masked = dy
                let plainStep = fakeQuantizeBackward(x, gradient: &plain, step: step, zeroPoint: z, grid: grid)
                let maskedStep = fakeQuantizeBackward(x, gradient: &masked, step: step, zeroPoint: z, grid: grid,
                                                      dropMask: keepAll)
                XCTAssertEqual(maskedStep, plainStep, label)
                XCTAssertEqual(masked, plain, label)
            }
        }
    }
}
