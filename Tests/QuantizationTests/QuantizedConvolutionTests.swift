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

    /// QDrop in the input quantizer. An all-keep mask is the layer without
    /// a mask and an all-drop mask the layer with its input quantizer off,
    /// bit for bit (forward, dx, step gradient); with a mixed mask the GEMMs
    /// see x where dropped and x_q elsewhere, dropped elements pass dL/dx
    /// straight through and only kept ones make the step gradient.
    func testDropMask() {
        let (cin, cout, batch, height, width) = (2, 3, 2, 4, 5)
        let grid = QuantGrid(bits: 3, signed: false)
        let step: Float = 0.2, zeroPoint: Float = 2  // input range [-0.4, 1.0]
        let store = ParameterStore(), reference = ParameterStore(), workspace = Workspace()
        func make(_ s: ParameterStore) -> Conv2d {
            Conv2d(name: "conv", inChannels: cin, outChannels: cout, kernel: 3, padding: 1, store: s, workspace: workspace)
        }
        let conv = make(store), plain = make(reference)
        store.allocate()
        reference.allocate()
        var rng = SplitMix64(seed: 11)
        fillUniform(store.parameters[conv.weight], &rng)
        reference.parameters[plain.weight].baseAddress!.update(from: store.parameters.pointer(conv.weight),
                                                               count: conv.weight.count)
        conv.inputQuantizer.grid = grid
        conv.inputQuantizer.enabled = true
        store.parameters[conv.inputQuantizer.step][0] = step
        store.state[conv.inputQuantizer.zeroPoint][0] = zeroPoint
        let x = OwnedMap(channels: cin, batch: batch, height: height, width: width, random: &rng, range: -0.7...1.3)
        let dy = OwnedMap(like: conv.forward(x.map), random: &rng)
        let n = x.map.count

        /// Output, dL/dx and input step gradient of `conv` with `mask`.
        func run(_ mask: [UInt8]?) -> (y: [Float], dx: [Float], step: Float) {
            store.gradients.zero()
            return withOptionalPointer(mask) { drop in
                conv.inputQuantizer.dropMask = drop
                defer { conv.inputQuantizer.dropMask = nil }
                let y = Array(conv.forward(x.map).buffer)
                let dx = Array(conv.backward(dy.map).buffer)
                return (y, dx, store.gradients[conv.inputQuantizer.step][0])
            }
        }

        let unmasked = run(nil), keepAll = run([UInt8](repeating: 0, count: n))
        XCTAssertEqual(keepAll.y, unmasked.y, "all kept: y")
        XCTAssertEqual(keepAll.dx, unmasked.dx, "all kept: dx")
        XCTAssertEqual(keepAll.step, unmasked.step, "all kept: step gradient")
        XCTAssertNotEqual(unmasked.step, 0)

        let dropAll = run([UInt8](repeating: 1, count: n))
        conv.inputQuantizer.enabled = false
        let float = run(nil)
        conv.inputQuantizer.enabled = true
        XCTAssertEqual(dropAll.y, float.y, "all dropped: y")
        XCTAssertEqual(dropAll.dx, float.dx, "all dropped: dx")
        XCTAssertEqual(dropAll.step, 0, "all dropped: no step gradient")
        XCTAssertNotEqual(unmasked.y, float.y, "quantization changes the output")

        // A mixed mask against the plain layer fed the mixed input by hand.
        let mask = randomDropMask(n, &rng)
        let mixed = run(mask)
        let quantized = fakeQuantized(Array(x.map.buffer), step: step, zeroPoint: zeroPoint, grid: grid)
        let input = OwnedMap(like: x.map, random: &rng)
        for i in 0..<n { input.map.data[i] = mask[i] == 0 ? quantized[i] : x.map.data[i] }
        reference.gradients.zero()
        XCTAssertEqual(mixed.y, Array(plain.forward(input.map).buffer), "mixed: y")
        let dInput = Array(plain.backward(dy.map).buffer)
        var stepSum: Double = 0
        var places = Set<String>()
        for i in 0..<n {
            let p = GridPosition(x.map.data[i], step: step, zeroPoint: zeroPoint, grid: grid)
            let kept = mask[i] == 0
            if kept { stepSum += Double(dInput[i]) * p.stepDerivative }
            places.insert("\(kept ? "kept" : "dropped") \(p.place)")
            XCTAssertEqual(mixed.dx[i], kept && p.place != .inside ? 0 : dInput[i], "mixed: dx[\(i)]")
        }
        XCTAssertEqual(places.count, 6, "every case was exercised: \(places)")
        let g = Double(grid.lsqGradientScale(elements: cin * height * width))
        assertClose(Double(mixed.step), g * stepSum, tolerance: 1e-5, "mixed: step gradient")
    }

    func test3x3() { check(kernel: 3, stride: 1, seed: 1) }
    func test3x3Stride2() { check(kernel: 3, stride: 2, seed: 2) }
    func testPointwise() { check(kernel: 1, stride: 1, seed: 3) }
    func testDownsample() { check(kernel: 1, stride: 2, seed: 4) }
}
