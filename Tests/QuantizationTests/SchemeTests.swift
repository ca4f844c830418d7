import Distributed
import Kernels
import Layers
import Quantization
import XCTest

/// Symmetric and asymmetric quantizer schemes: policy grids, calibration
/// of weights and activations, and the quantized convolution with weight
/// zero points.
final class SchemeTests: XCTestCase {
    func makeConv(_ store: ParameterStore, outChannels: Int = 3, workspace: Workspace = Workspace()) -> Conv2d {
        Conv2d(name: "conv", inChannels: 2, outChannels: outChannels, kernel: 3, padding: 1,
               store: store, workspace: workspace)
    }

    func squaredError(_ row: [Float], step: Float, zeroPoint: Float, grid: QuantGrid) -> Double {
        let q = fakeQuantized(row, step: step, zeroPoint: zeroPoint, grid: grid)
        return zip(row, q).reduce(0) { $0 + Double(($1.0 - $1.1) * ($1.0 - $1.1)) }
    }

    func testPolicyApplySetsGridsOfTheSchemes() {
        for weightScheme in QuantScheme.allCases {
            for activationScheme in QuantScheme.allCases {
                let model = tinyResNet(seed: 1)
                var policy = QuantizationPolicy(weightBits: 4, activationBits: 6)
                policy.weightScheme = weightScheme
                policy.activationScheme = activationScheme
                policy.apply(to: model)
                for (i, layer) in model.layers.enumerated() {
                    let w = i == 0 || i == model.layers.count - 1 ? 8 : 4
                    XCTAssertEqual(layer.weightQuantizer.grid, QuantGrid(bits: w, signed: weightScheme == .symmetric), layer.name)
                    XCTAssertEqual(layer.weightQuantizer.scheme, weightScheme, layer.name)
                    if layer.inputQuantizer.enabled {
                        let a = i == model.layers.count - 1 ? 8 : 6
                        XCTAssertEqual(layer.inputQuantizer.grid, QuantGrid(bits: a, signed: activationScheme == .symmetric), layer.name)
                        XCTAssertEqual(layer.inputQuantizer.scheme, activationScheme, layer.name)
                    }
                }
            }
        }
        let defaults = QuantizationPolicy(weightBits: 4, activationBits: 4)
        XCTAssertEqual(defaults.weightScheme, .symmetric)
        XCTAssertEqual(defaults.activationScheme, .asymmetric)
    }

    func testWeightZeroPointSlot() {
        let model = tinyResNet(seed: 1)
        let slot = model.store.allSlots.first { $0.name == "conv1.weight_quantizer.zero_point" }
        XCTAssertEqual(slot?.shape, [model.layers[0].outChannels])
        XCTAssertEqual(slot?.role, .zeroPoint)
    }

    /// A row of positive weights: the asymmetric grid maps [0, max] onto all
    /// of 0 ... 15, the symmetric one wastes its negative half.
    func testAsymmetricWeightsUseTheFullGridOnAPositiveRow() {
        let store = ParameterStore()
        let conv = makeConv(store, outChannels: 2)
        store.allocate()
        let K = conv.weight.rowLength
        var rng = SplitMix64(seed: 3)
        let positive = uniformValues(K, &rng, range: 0.1...1), mixed = uniformValues(K, &rng, range: -1...0.5)
        let w = store.parameters[conv.weight]
        _ = w.update(from: positive + mixed)
        let pHigh = positive.max()!
        let (mLow, mHigh) = (mixed.min()!, mixed.max()!)
        conv.weightQuantizer.enabled = true
        let steps = store.parameters[conv.weightQuantizer.step], zeros = store.state[conv.weightQuantizer.zeroPoint]

        conv.weightQuantizer.grid = QuantScheme.symmetric.grid(bits: 4)
        calibrateWeights(of: conv, store: store)
        XCTAssertEqual(Array(zeros), [0, 0])
        let symmetricError = squaredError(positive, step: steps[0], zeroPoint: 0, grid: conv.weightQuantizer.grid)

        let grid = QuantScheme.asymmetric.grid(bits: 4)
        conv.weightQuantizer.grid = grid
        calibrateWeights(of: conv, store: store)
        // Row 0: [0, max] (widened to 0), z = 0, s = max / 15.
        XCTAssertEqual(zeros[0], 0)
        XCTAssertEqual(steps[0], pHigh / 15, accuracy: 1e-7)
        let codes = positive.map { ($0 / steps[0]).rounded() + zeros[0] }
        XCTAssertEqual(codes.max(), 15)
        XCTAssertGreaterThanOrEqual(codes.min()!, 0)
        let asymmetricError = squaredError(positive, step: steps[0], zeroPoint: zeros[0], grid: grid)
        XCTAssertLessThan(asymmetricError, symmetricError * 0.5)
        // Row 1: [min, max], s = (max - min) / 15, z = round(-min / s).
        XCTAssertEqual(steps[1], (mHigh - mLow) / 15, accuracy: 1e-6)
        XCTAssertEqual(zeros[1], (-mLow / steps[1]).rounded())
        XCTAssert(zeros[1] > 0 && zeros[1] < 15)

        // Clipping estimators stay on the grid and never do worse on their
        // own objective (L_p) than min-max.
        let minMaxSteps = Array(steps)
        for estimator in [RangeEstimator.percentile, .lp] {
            var options = CalibrationOptions(weights: estimator, activations: .minMax)
            options.percentile = 90
            calibrateWeights(of: conv, store: store, options: options)
            for r in 0..<2 {
                XCTAssertLessThanOrEqual(steps[r], minMaxSteps[r] * (1 + 1e-5), "\(estimator) row \(r)")
                XCTAssert(zeros[r] >= grid.qmin && zeros[r] <= grid.qmax && zeros[r] == zeros[r].rounded(), "\(estimator) row \(r)")
            }
            if estimator == .percentile { XCTAssertLessThan(steps[0], minMaxSteps[0], "percentile 90 clips") }
        }

        // Back to symmetric: zero points return to 0.
        conv.weightQuantizer.grid = QuantScheme.symmetric.grid(bits: 4)
        calibrateWeights(of: conv, store: store)
        XCTAssertEqual(Array(zeros), [0, 0])
    }

    /// Symmetric activations on an input with negative values: signed grid,
    /// z = 0, s = max(|lo|, |hi|) / qmax.
    func testSymmetricActivationsOnNegativeInput() {
        let model = tinyResNet(seed: 2)
        var policy = QuantizationPolicy(weightBits: 4, activationBits: 4)
        policy.activationScheme = .symmetric
        policy.firstLayer = LayerBits(weight: 8, activation: 8)  // quantize the image, range -1...2
        policy.apply(to: model)
        var rng = SplitMix64(seed: 5)
        let images = OwnedMap(channels: 1, batch: 3, height: 6, width: 6, random: &rng, range: -1.5...1)
        let pixels = Array(images.map.buffer)
        let (lo, hi) = (pixels.min()!, pixels.max()!)
        XCTAssertLessThan(lo, -1)

        func calibrated(_ estimator: RangeEstimator) -> (step: Float, zero: Float) {
            Quantization.calibrate(model, options: CalibrationOptions(weights: .minMax, activations: estimator),
                                   communicator: SingleProcessCommunicator()) {
                _ = model.forward(images.map, training: false)
            }
            let q = model.layers[0].inputQuantizer
            return (model.store.parameters[q.step][0], model.store.state[q.zeroPoint][0])
        }
        let first = model.layers[0].inputQuantizer
        XCTAssertEqual(first.grid, QuantGrid(bits: 8, signed: true))
        let minMax = calibrated(.minMax)
        XCTAssertEqual(minMax.zero, 0)
        XCTAssertEqual(minMax.step, max(-lo, hi) / 127, accuracy: 1e-7)
        for layer in model.layers where layer.inputQuantizer.enabled {
            XCTAssertEqual(model.store.state[layer.inputQuantizer.zeroPoint][0], 0, layer.name)
        }
        for estimator in [RangeEstimator.percentile, .lp] {
            let (step, zero) = calibrated(estimator)
            XCTAssertEqual(zero, 0, "\(estimator)")
            XCTAssertLessThanOrEqual(step, minMax.step * (1 + 1e-4), "\(estimator)")
            XCTAssertGreaterThan(step, 0, "\(estimator)")
        }
    }

    /// A quantized conv against a plain conv fed hand-quantized weights and
    /// input, for both schemes; asymmetric weights get nonzero per-row zero
    /// points, and the LSQ step gradient uses qmin - z / qmax - z outside.
    func check(_ scheme: QuantScheme, file: StaticString = #filePath, line: UInt = #line) {
        let store = ParameterStore(), reference = ParameterStore(), workspace = Workspace()
        let conv = makeConv(store, workspace: workspace), plain = makeConv(reference, workspace: workspace)
        store.allocate()
        reference.allocate()
        let K = conv.weight.rowLength, rows = conv.outChannels
        var rng = SplitMix64(seed: 9)
        let w = store.parameters[conv.weight]
        fillUniform(w, &rng, range: -1.5...2)
        let weightGrid = scheme.grid(bits: 4), inputGrid = scheme.grid(bits: 4)
        conv.weightQuantizer.grid = weightGrid
        conv.weightQuantizer.enabled = true
        conv.inputQuantizer.grid = inputGrid
        conv.inputQuantizer.enabled = true
        let steps = store.parameters[conv.weightQuantizer.step], zeros = store.state[conv.weightQuantizer.zeroPoint]
        // Steps small enough that some weights are clamped at both ends.
        fillUniform(steps, &rng, range: 0.1...0.14)
        for r in 0..<rows { zeros[r] = scheme == .symmetric ? 0 : Float(4 + 2 * r) }
        let inputStep: Float = 0.1, inputZero: Float = scheme == .symmetric ? 0 : 5
        store.parameters[conv.inputQuantizer.step][0] = inputStep
        store.state[conv.inputQuantizer.zeroPoint][0] = inputZero

        let wq = reference.parameters[plain.weight]
        for r in 0..<rows {
            fakeQuantize(w.baseAddress! + r * K, wq.baseAddress! + r * K, count: K, step: steps[r],
                         zeroPoint: zeros[r], grid: weightGrid)
        }
        let x = OwnedMap(channels: 2, batch: 2, height: 4, width: 5, random: &rng, range: -0.8...1.2)
        let xq = OwnedMap(like: x.map, random: &rng)
        fakeQuantize(x.map.data, xq.map.data, count: x.map.count, step: inputStep, zeroPoint: inputZero, grid: inputGrid)

        let yMap = conv.forward(x.map)
        let y = Array(yMap.buffer), yReference = Array(plain.forward(xq.map).buffer)
        XCTAssertEqual(y.count, yReference.count, file: file, line: line)
        for i in y.indices {
            assertClose(Double(y[i]), Double(yReference[i]), tolerance: 1e-5, "\(scheme) y[\(i)]", file: file, line: line)
        }

        let dy = OwnedMap(like: yMap, random: &rng)
        store.gradients.zero()
        reference.gradients.zero()
        _ = conv.backward(dy.map)
        _ = plain.backward(dy.map)
        let dWq = reference.gradients[plain.weight]
        let g = 1 / (Double(K) * Double(weightGrid.qmax)).squareRoot()
        var below = 0, above = 0
        for r in 0..<rows {
            var stepSum: Double = 0
            for i in (r * K)..<((r + 1) * K) {
                let p = GridPosition(w[i], step: steps[r], zeroPoint: zeros[r], grid: weightGrid)
                stepSum += Double(dWq[i]) * p.stepDerivative
                if p.place == .below { below += 1 }
                if p.place == .above { above += 1 }
                assertClose(Double(store.gradients[conv.weight][i]), p.place == .inside ? Double(dWq[i]) : 0,
                            tolerance: 1e-5, "\(scheme) dW[\(i)]", file: file, line: line)
            }
            assertClose(Double(store.gradients[conv.weightQuantizer.step][r]), g * stepSum, tolerance: 1e-5,
                        "\(scheme) weight step gradient of row \(r)", file: file, line: line)
        }
        XCTAssertGreaterThan(below, 0, "\(scheme): some weights clamped below", file: file, line: line)
        XCTAssertGreaterThan(above, 0, "\(scheme): some weights clamped above", file: file, line: line)
    }

    func testQuantizedConvolutionSymmetric() { check(.symmetric) }
    func testQuantizedConvolutionAsymmetric() { check(.asymmetric) }

    /// Whole-model calibration with asymmetric weights: every row gets an
    /// integer zero point on the grid, and the quantized model runs.
    func testAsymmetricWeightCalibrationOfAModel() {
        let model = tinyResNet(seed: 4)
        var policy = QuantizationPolicy(weightBits: 4, activationBits: 4)
        policy.weightScheme = .asymmetric
        policy.apply(to: model)
        var rng = SplitMix64(seed: 6)
        let images = OwnedMap(channels: 1, batch: 2, height: 6, width: 6, random: &rng, range: -1...2)
        Quantization.calibrate(model, communicator: SingleProcessCommunicator()) {
            _ = model.forward(images.map, training: false)
        }
        var nonzero = 0
        for layer in model.layers {
            let grid = layer.weightQuantizer.grid
            for z in model.store.state[layer.weightQuantizer.zeroPoint] {
                XCTAssert(z >= grid.qmin && z <= grid.qmax && z == z.rounded(), "\(layer.name): z = \(z)")
                if z != 0 { nonzero += 1 }
            }
        }
        XCTAssertGreaterThan(nonzero, 0)
        let logits = model.forward(images.map, training: false)
        XCTAssert(logits.buffer.allSatisfy(\.isFinite))
    }
}
