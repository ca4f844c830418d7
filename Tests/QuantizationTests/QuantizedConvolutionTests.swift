import Kernels
import Layers
import XCTest

/// A Conv2d with weight and input quantizers on, against a plain Conv2d
/// fed the fake-quantized weights and input by hand: forward must agree,
/// and backward must turn the plain layer's dW_q and dx_q into LSQ step
/// gradients (scaled by g = 1/sqrt(N * qmax)) and straight-through
/// weight and input gradients.
final class QuantizedConvolutionTests: XCTestCase {
    func check(kernel: Int, stride: Int, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let (cin, cout, batch, height, width) = (2, 3, 2, 4, 5)
        let weightGrid = QuantGrid(bits: 4, signed: true), inputGrid = QuantGrid(bits: 4, signed: false)
        let inputStep: Float = 0.1, zeroPoint: Float = 3  // input range [-0.3, 1.2]

        let store = ParameterStore(), reference = ParameterStore(), workspace = Workspace()
        func make(_ s: ParameterStore) -> Conv2d {
            Conv2d(name: "conv", inChannels: cin, outChannels: cout, kernel: kernel, stride: stride,
                   padding: kernel / 2, store: s, workspace: workspace)
        }
        let conv = make(store), plain = make(reference)
        store.allocate()
        reference.allocate()

        var rng = SplitMix64(seed: seed)
        let w = store.parameters[conv.weight]
        fillUniform(w, &rng, range: -2...2)
        // Steps small enough that some weights are clamped: range [-8s, 7s].
        let steps = store.parameters[conv.weightQuantizer.step]
        fillUniform(steps, &rng, range: 0.08...0.12)
        conv.weightQuantizer.grid = weightGrid
        conv.weightQuantizer.enabled = true
        conv.inputQuantizer.grid = inputGrid
        conv.inputQuantizer.enabled = true
        store.parameters[conv.inputQuantizer.step][0] = inputStep
        store.state[conv.inputQuantizer.zeroPoint][0] = zeroPoint

        let K = cin * kernel * kernel
        let wq = reference.parameters[plain.weight]
        for r in 0..<cout {
            fakeQuantize(w.baseAddress! + r * K, wq.baseAddress! + r * K, count: K, step: steps[r], zeroPoint: 0,
                         grid: weightGrid)
        }
        let x = OwnedMap(channels: cin, batch: batch, height: height, width: width, random: &rng, range: -0.6...1.5)
        let xq = OwnedMap(like: x.map, random: &rng)
        fakeQuantize(x.map.data, xq.map.data, count: x.map.count, step: inputStep, zeroPoint: zeroPoint, grid: inputGrid)

        let yMap = conv.forward(x.map)
        let y = Array(yMap.buffer)
        let yReference = Array(plain.forward(xq.map).buffer)
        XCTAssertEqual(y.count, yReference.count, file: file, line: line)
        for i in y.indices {
            assertClose(Double(y[i]), Double(yReference[i]), tolerance: 1e-5, "y[\(i)]", file: file, line: line)
        }

        let dy = OwnedMap(like: yMap, random: &rng)
        store.gradients.zero()
        reference.gradients.zero()
        let dx = Array(conv.backward(dy.map).buffer)
        let dxq = Array(plain.backward(dy.map).buffer)
        let dWq = reference.gradients[plain.weight]

        // Weights: per-row step gradient g_w * sum(dW_q * ds), STE-masked dW.
        let gw = 1 / (Double(K) * Double(weightGrid.qmax)).squareRoot()
        var clamped = 0
        for r in 0..<cout {
            var stepSum: Double = 0
            for i in (r * K)..<((r + 1) * K) {
                let p = GridPosition(w[i], step: steps[r], zeroPoint: 0, grid: weightGrid)
                stepSum += Double(dWq[i]) * p.stepDerivative
                let expected = p.place == .inside ? Double(dWq[i]) : 0
                if p.place != .inside { clamped += 1 }
                assertClose(Double(store.gradients[conv.weight][i]), expected, tolerance: 1e-5, "dW[\(i)]",
                            file: file, line: line)
            }
            assertClose(Double(store.gradients[conv.weightQuantizer.step][r]), gw * stepSum, tolerance: 1e-5,
                        "weight step gradient of row \(r)", file: file, line: line)
        }
        XCTAssertGreaterThan(clamped, 0, "some weights are clamped", file: file, line: line)

        // Input: one step, N = C * H * W elements per sample.
        let gx = 1 / (Double(cin * height * width) * Double(inputGrid.qmax)).squareRoot()
        var inputSum: Double = 0
        for i in 0..<x.map.count {
            let p = GridPosition(x.map.data[i], step: inputStep, zeroPoint: zeroPoint, grid: inputGrid)
            inputSum += Double(dxq[i]) * p.stepDerivative
            assertClose(Double(dx[i]), p.place == .inside ? Double(dxq[i]) : 0, tolerance: 1e-5, "dx[\(i)]",
                        file: file, line: line)
        }
        let inputStepGradient = Double(store.gradients[conv.inputQuantizer.step][0])
        assertClose(inputStepGradient, gx * inputSum, tolerance: 1e-5, "input step gradient", file: file, line: line)

        // The input step still learns when nothing upstream needs dL/dx.
        conv.needsInputGradient = false
        store.gradients.zero()
        _ = conv.backward(dy.map)
        assertClose(Double(store.gradients[conv.inputQuantizer.step][0]), inputStepGradient, tolerance: 1e-6,
                    "input step gradient without dx", file: file, line: line)
    }

    func test3x3() { check(kernel: 3, stride: 1, seed: 1) }
    func test3x3Stride2() { check(kernel: 3, stride: 2, seed: 2) }
    func testPointwise() { check(kernel: 1, stride: 1, seed: 3) }
    func testDownsample() { check(kernel: 1, stride: 2, seed: 4) }
}
