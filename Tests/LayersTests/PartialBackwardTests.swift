import Kernels
import Layers
import XCTest

/// EfQAT's cheaper backward: `gradientRows` restricts dW to selected output
/// channels, `needsInputGradient` skips dx. Neither may change the values
/// that are still computed.
final class PartialBackwardTests: XCTestCase {
    /// A conv with random weights, a random input it has seen in forward, and
    /// a random upstream gradient.
    struct Fixture {
        let store = ParameterStore()
        let conv: Conv2d
        let x: OwnedMap
        let dy: OwnedMap

        init(kernel: Int, stride: Int, padding: Int? = nil, inChannels: Int = 3, quantizedWeights: Bool = false,
             chunkElements: Int? = nil, seed: UInt64) {
            let workspace = Workspace()
            if let chunkElements { workspace.chunkElements = chunkElements }
            conv = Conv2d(name: "conv", inChannels: inChannels, outChannels: 7, kernel: kernel, stride: stride,
                          padding: padding ?? kernel / 2, store: store, workspace: workspace)
            store.allocate()
            var rng = SplitMix64(seed: seed)
            fillUniform(store.parameters[conv.weight], &rng)
            if quantizedWeights {
                conv.weightQuantizer.grid = QuantGrid(bits: 4, signed: true)
                conv.weightQuantizer.enabled = true
                // Steps small enough that some weights are clamped.
                fillUniform(store.parameters[conv.weightQuantizer.step], &rng, range: 0.08...0.2)
            }
            x = OwnedMap(channels: inChannels, batch: 3, height: 5, width: 6, random: &rng)
            dy = OwnedMap(like: conv.forward(x.map), random: &rng)
        }

        /// Runs backward from zeroed gradients; returns dx, dW and the weight
        /// step gradients.
        func backward() -> (dx: [Float], dW: [Float], steps: [Float]) {
            store.gradients.zero()
            let dx = Array(conv.backward(dy.map).buffer)
            return (dx, Array(store.gradients[conv.weight]), Array(store.gradients[conv.weightQuantizer.step]))
        }
    }

    static let geometries: [(kernel: Int, stride: Int)] = [(3, 1), (3, 2), (1, 1), (1, 2)]

    func testSelectedRowsMatchTheFullGradient() {
        for quantized in [false, true] {
            for (i, g) in Self.geometries.enumerated() {
                let f = Fixture(kernel: g.kernel, stride: g.stride, quantizedWeights: quantized, seed: UInt64(i))
                checkSelectedRows(f, "k\(g.kernel) s\(g.stride) quantized \(quantized)")
            }
        }
    }

    /// Fewer selected rows than input channels at stride 1: dW comes from
    /// the patches of dY's selected rows (every padding the identity
    /// allows, same-size and not, in one chunk and in several).
    func testSelectedRowsFromOutputPatchesMatchTheFullGradient() {
        let cases: [(kernel: Int, padding: Int)] = [(3, 1), (3, 0), (3, 2), (5, 2), (5, 1), (2, 0), (2, 1)]
        for quantized in [false, true] {
            for (i, c) in cases.enumerated() {
                for chunk in [nil, 1, 6 * 30 * 2] as [Int?] {
                    let f = Fixture(kernel: c.kernel, stride: 1, padding: c.padding, inChannels: 6,
                                    quantizedWeights: quantized, chunkElements: chunk, seed: UInt64(40 + i))
                    // Another summation order: a few ulp apart.
                    checkSelectedRows(f, "k\(c.kernel) p\(c.padding) chunk \(chunk ?? 0) quantized \(quantized)",
                                      tolerance: 1e-5)
                }
            }
        }
    }

    /// Rows 1, 2 and 5 against the full backward; the other rows untouched.
    func checkSelectedRows(_ f: Fixture, _ what: String, tolerance: Double = 1e-6,
                           file: StaticString = #filePath, line: UInt = #line) {
        let full = f.backward()
        f.conv.gradientRows = [1..<3, 5..<6]
        let partial = f.backward()
        let rowLength = f.conv.weight.rowLength
        for row in 0..<7 {
            let rows = (row * rowLength)..<((row + 1) * rowLength)
            if [1, 2, 5].contains(row) {
                assertAllClose(Array(partial.dW[rows]), Array(full.dW[rows]), tolerance: tolerance, "\(what) dW row \(row)",
                               file: file, line: line)
                assertClose(Double(partial.steps[row]), Double(full.steps[row]), tolerance: tolerance,
                            "\(what) step gradient of row \(row)", file: file, line: line)
            } else {
                XCTAssert(partial.dW[rows].allSatisfy { $0 == 0 }, "\(what): frozen row \(row) got a gradient",
                          file: file, line: line)
                XCTAssertEqual(partial.steps[row], 0, "\(what): frozen row \(row) got a step gradient",
                       file: file, line: line)
            }
        }
        XCTAssert(full.dW.contains { $0 != 0 }, file: file, line: line)
        assertAllClose(partial.dx, full.dx, tolerance: 1e-6, "\(what) dx", file: file, line: line)
    }

    func testNoRowsLeavesWeightGradientUntouched() {
        for quantized in [false, true] {
            for (i, g) in Self.geometries.enumerated() {
                let f = Fixture(kernel: g.kernel, stride: g.stride, quantizedWeights: quantized, seed: UInt64(10 + i))
                let full = f.backward()
                f.conv.gradientRows = []
                f.store.gradients.zero()
                // Sentinels: backward must neither write nor add to them.
                f.store.gradients[f.conv.weight].update(repeating: 7)
                f.store.gradients[f.conv.weightQuantizer.step].update(repeating: 3)
                let dx = Array(f.conv.backward(f.dy.map).buffer)
                let what = "k\(g.kernel) s\(g.stride) quantized \(quantized)"
                XCTAssert(f.store.gradients[f.conv.weight].allSatisfy { $0 == 7 }, "\(what): dW was touched")
                XCTAssert(f.store.gradients[f.conv.weightQuantizer.step].allSatisfy { $0 == 3 },
                          "\(what): step gradients were touched")
                assertAllClose(dx, full.dx, tolerance: 1e-6, "\(what) dx")
            }
        }
    }

    func testWithoutInputGradientWeightsStillGetTheirGradient() {
        for (i, g) in Self.geometries.enumerated() {
            let f = Fixture(kernel: g.kernel, stride: g.stride, seed: UInt64(20 + i))
            let full = f.backward()
            f.conv.needsInputGradient = false
            let partial = f.backward()
            assertAllClose(partial.dW, full.dW, tolerance: 1e-6, "k\(g.kernel) s\(g.stride) dW")
            f.conv.gradientRows = [2..<4]
            let both = f.backward()
            let rowLength = f.conv.weight.rowLength
            assertAllClose(Array(both.dW[(2 * rowLength)..<(4 * rowLength)]),
                           Array(full.dW[(2 * rowLength)..<(4 * rowLength)]), tolerance: 1e-6,
                           "k\(g.kernel) s\(g.stride) dW rows 2..<4 without dx")
        }
    }

    /// Gradients accumulate: two backward passes give twice the gradient.
    func testGradientsAccumulate() {
        let f = Fixture(kernel: 3, stride: 1, seed: 30)
        let once = f.backward()
        _ = f.conv.backward(f.dy.map)
        assertAllClose(Array(f.store.gradients[f.conv.weight]), once.dW.map { 2 * $0 }, tolerance: 1e-6, "2 x dW")
    }
}
