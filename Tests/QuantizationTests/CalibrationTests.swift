import Distributed
import Kernels
import Layers
import Quantization
import XCTest

/// QuantizationPolicy and min-max calibration on a tiny ResNet.
final class CalibrationTests: XCTestCase {
    /// Observed input range of every layer, recorded next to the calibrator.
    struct Calibrated {
        let model: Network
        let low: [Float]
        let high: [Float]
    }

    /// Applies `policy` and calibrates on two batches. Records each layer's
    /// input range independently, in a pass of its own, for the checks.
    func calibrate(_ policy: QuantizationPolicy, seed: UInt64 = 1,
                   options: CalibrationOptions = CalibrationOptions()) -> Calibrated {
        let model = tinyResNet(seed: seed)
        policy.apply(to: model)
        let enabled = model.layers.map { ($0.weightQuantizer.enabled, $0.inputQuantizer.enabled) }
        var rng = SplitMix64(seed: seed, stream: [1])
        let batches = [3, 2].map { OwnedMap(channels: 1, batch: $0, height: 6, width: 6, random: &rng, range: -1...2) }
        // The observed input range of every layer, recorded independently.
        var low = [Float](repeating: .infinity, count: model.layers.count)
        var high = [Float](repeating: -.infinity, count: model.layers.count)
        for (i, layer) in model.layers.enumerated() {
            layer.inputObserver = { x in
                for j in 0..<x.count {
                    low[i] = min(low[i], x.data[j])
                    high[i] = max(high[i], x.data[j])
                }
            }
        }
        model.withQuantizationDisabled { for images in batches { _ = model.forward(images.map, training: false) } }
        for layer in model.layers { layer.inputObserver = nil }

        Quantization.calibrate(model, options: options, communicator: SingleProcessCommunicator()) {
            for images in batches { _ = model.forward(images.map, training: false) }
        }
        for (layer, (w, a)) in zip(model.layers, enabled) {
            XCTAssertEqual(layer.weightQuantizer.enabled, w, "\(layer.name): switches kept")
            XCTAssertEqual(layer.inputQuantizer.enabled, a, "\(layer.name): switches kept")
        }
        return Calibrated(model: model, low: low, high: high)
    }

    func testPolicyDefaultsAreTheReferenceRecipe() {
        let model = tinyResNet(seed: 1)
        QuantizationPolicy(weightBits: 4, activationBits: 4).apply(to: model)
        let layers = model.layers
        XCTAssertEqual(layers.count, 1 + 2 + 3 + 3 + 1)
        for (i, layer) in layers.enumerated() {
            let (w, a): (Int, Int?) = i == 0 ? (8, nil) : (i == layers.count - 1 ? (8, 8) : (4, 4))
            XCTAssert(layer.weightQuantizer.enabled, layer.name)
            XCTAssertEqual(layer.weightQuantizer.grid, QuantGrid(bits: w, signed: true), layer.name)
            XCTAssertEqual(layer.inputQuantizer.enabled, a != nil, layer.name)
            if let a { XCTAssertEqual(layer.inputQuantizer.grid, QuantGrid(bits: a, signed: false), layer.name) }
        }
        let inputOn = layers.map(\.inputQuantizer.enabled)
        model.withQuantizationDisabled {
            XCTAssert(layers.allSatisfy { !$0.weightQuantizer.enabled && !$0.inputQuantizer.enabled })
        }
        XCTAssert(layers.allSatisfy(\.weightQuantizer.enabled), "the scope restores the quantizers")
        XCTAssertEqual(layers.map(\.inputQuantizer.enabled), inputOn)
    }

    func testOverridesReplaceTheBitsOfNamedLayers() {
        var policy = QuantizationPolicy(weightBits: 4, activationBits: 4)
        policy.overrides["layer1.0.conv2"] = LayerBits(weight: 2, activation: nil)
        policy.overrides["fc"] = LayerBits(weight: 6, activation: 5)
        XCTAssertEqual(policy.bits(layer: "layer1.0.conv2", index: 2, count: 7), LayerBits(weight: 2, activation: nil))
        XCTAssertEqual(policy.bits(layer: "conv1", index: 0, count: 7), LayerBits(weight: 8, activation: nil))
        XCTAssertEqual(policy.bits(layer: "layer1.0.conv1", index: 1, count: 7), LayerBits(weight: 4, activation: 4))
        let model = tinyResNet(seed: 1)
        policy.apply(to: model)
        let conv2 = model.blocks[0].conv2
        XCTAssertEqual(conv2.weightQuantizer.grid.bits, 2)
        XCTAssertFalse(conv2.inputQuantizer.enabled)
        XCTAssertEqual(model.layer("fc").weightQuantizer.grid.bits, 6)
        XCTAssertEqual(model.layer("fc").inputQuantizer.grid, QuantGrid(bits: 5, signed: false))
    }

    func testParseBits() {
        XCTAssertEqual(QuantizationPolicy.parseBits("W4A8"), LayerBits(weight: 4, activation: 8))
        XCTAssertEqual(QuantizationPolicy.parseBits("w4a-"), LayerBits(weight: 4, activation: nil))
        XCTAssertEqual(QuantizationPolicy.parseBits("w8"), LayerBits(weight: 8, activation: nil))
        XCTAssertEqual(QuantizationPolicy.parseBits("W2A2"), LayerBits(weight: 2, activation: 2))
        for bad in ["W9A4", "W4A9", "W1A4", "x", "", "W", "4A4", "WA4", "W4A", "W4B4", "W4A4A4"] {
            XCTAssertNil(QuantizationPolicy.parseBits(bad), bad)
        }
        XCTAssertEqual(LayerBits(weight: 4, activation: 8).description, "W4A8")
        XCTAssertEqual(LayerBits(weight: 8, activation: nil).description, "W8A-")
    }

    func testMinMaxCalibration() {
        let c = calibrate(QuantizationPolicy(weightBits: 4, activationBits: 4))
        let store = c.model.store, layers = c.model.layers
        for (i, layer) in layers.enumerated() {
            XCTAssertNil(layer.inputObserver, "\(layer.name): observer removed")
            // Weights: symmetric per row, s = max|w_row| / qmax.
            let w = store.parameters[layer.weight], K = layer.weight.rowLength
            let qmax = layer.weightQuantizer.grid.qmax
            XCTAssertEqual(qmax, i == 0 || i == layers.count - 1 ? 127 : 7, layer.name)
            for r in 0..<layer.outChannels {
                let maxAbs = w[(r * K)..<((r + 1) * K)].map { abs($0) }.max()!
                assertClose(Double(store.parameters[layer.weightQuantizer.step][r]), Double(maxAbs / qmax),
                            tolerance: 1e-6, "\(layer.name) row \(r)")
            }
            // Activations: every quantized input follows a ReLU, so the
            // range is [0, max], z = 0 and s = max / (2^b - 1).
            guard layer.inputQuantizer.enabled else {
                XCTAssertEqual(i, 0, "only the first layer keeps a floating-point input")
                continue
            }
            XCTAssertGreaterThanOrEqual(c.low[i], 0, layer.name)
            XCTAssertGreaterThan(c.high[i], 0, layer.name)
            let levels = Float((1 << layer.inputQuantizer.grid.bits) - 1)
            XCTAssertEqual(levels, i == layers.count - 1 ? 255 : 15)
            assertClose(Double(store.parameters[layer.inputQuantizer.step][0]), Double(c.high[i] / levels),
                        tolerance: 1e-6, "\(layer.name) input step")
            XCTAssertEqual(store.state[layer.inputQuantizer.zeroPoint][0], 0, layer.name)
        }
        // Calibration leaves the policy's switches as they were.
        XCTAssert(layers.allSatisfy(\.weightQuantizer.enabled))
        XCTAssertEqual(layers.map(\.inputQuantizer.enabled), [false] + Array(repeating: true, count: layers.count - 1))
    }

    /// An input with negative values gets an asymmetric range:
    /// s = (max - min) / (2^b - 1), z = round(-min / s).
    func testAsymmetricInputRange() {
        var policy = QuantizationPolicy(weightBits: 4, activationBits: 4)
        policy.firstLayer = LayerBits(weight: 8, activation: 8)
        let c = calibrate(policy)
        let first = c.model.layers[0], store = c.model.store
        XCTAssertLessThan(c.low[0], 0)
        XCTAssertGreaterThan(c.high[0], 0)
        let step = (Double(c.high[0]) - Double(c.low[0])) / 255
        let s = store.parameters[first.inputQuantizer.step][0]
        assertClose(Double(s), step, tolerance: 1e-6, "first layer input step")
        let z = store.state[first.inputQuantizer.zeroPoint][0]
        XCTAssertEqual(z, (-c.low[0] / s).rounded(.toNearestOrEven))
        XCTAssert(z > 0 && z < 255)
        // The calibrated grid covers the observed range to within half a step.
        XCTAssertEqual(Double(s * (0 - z)), Double(c.low[0]), accuracy: Double(s) / 2 + 1e-6)
        XCTAssertEqual(Double(s * (255 - z)), Double(c.high[0]), accuracy: Double(s) / 2 + 1e-6)
    }

    /// L_p search never does worse than min-max on its own objective, and
    /// clips a heavy-tailed row well inside its largest value.
    func testLpWeightSearchClipsOutliers() {
        let store = ParameterStore()
        let layer = Conv2d(name: "conv", inChannels: 64, outChannels: 2, kernel: 3, padding: 1,
                           store: store, workspace: Workspace())
        store.allocate()
        layer.weightQuantizer.grid = QuantGrid(bits: 4, signed: true)
        layer.weightQuantizer.enabled = true
        let w = store.parameters[layer.weight], K = layer.weight.rowLength
        var rng = SplitMix64(seed: 11)
        for i in w.indices { w[i] = rng.nextNormal() }
        w[0] = 8  // one outlier in row 0
        func error(row r: Int) -> Float {
            var q = [Float](repeating: 0, count: K)
            fakeQuantize(store.parameters.pointer(layer.weight) + r * K, &q, count: K,
                         step: store.parameters[layer.weightQuantizer.step][r], zeroPoint: 0, grid: layer.weightQuantizer.grid)
            return (0..<K).reduce(0) { $0 + powf(abs(w[r * K + $1] - q[$1]), 2.4) }
        }
        calibrateWeights(of: layer, store: store, options: CalibrationOptions(weights: .minMax, activations: .minMax))
        let minMax = (0..<2).map(error)
        let minMaxStep = store.parameters[layer.weightQuantizer.step][0]
        calibrateWeights(of: layer, store: store, options: CalibrationOptions(weights: .lp, activations: .minMax))
        for r in 0..<2 { XCTAssertLessThanOrEqual(error(row: r), minMax[r] * (1 + 1e-5), "row \(r)") }
        XCTAssertLessThan(error(row: 0), minMax[0] * 0.8)
        XCTAssertLessThan(store.parameters[layer.weightQuantizer.step][0], minMaxStep * 0.9)
    }

    /// Percentile 100 is the min-max range to within a histogram bin; a
    /// lower percentile and the L_p search clip activations tighter.
    func testHistogramEstimators() {
        let policy = QuantizationPolicy(weightBits: 4, activationBits: 4)
        let minMax = calibrate(policy)
        var full = CalibrationOptions(weights: .minMax, activations: .percentile)
        full.percentile = 100
        var clipped = full
        clipped.percentile = 90
        let wide = calibrate(policy, options: full), tight = calibrate(policy, options: clipped)
        let lp = calibrate(policy, options: CalibrationOptions(weights: .minMax, activations: .lp))
        for (i, layer) in minMax.model.layers.enumerated() where layer.inputQuantizer.enabled {
            let step = { (c: Calibrated) in c.model.store.parameters[c.model.layers[i].inputQuantizer.step][0] }
            let bin = (minMax.high[i] - min(minMax.low[i], 0)) / Float(full.histogramBins)
            XCTAssertEqual(step(wide) * 15, step(minMax) * 15, accuracy: bin * 1.01, layer.name)
            XCTAssertLessThan(step(tight), step(minMax), layer.name)
            XCTAssertLessThanOrEqual(step(lp), step(minMax) * (1 + 1e-6), layer.name)
        }
    }
}

/// Quantization policies read from JSON files.
final class PolicyFileTests: XCTestCase {
    func testPolicyFileOverridesTheBase() throws {
        let json = #"{"weight_bits": 3, "first_layer": "W6A-", "layers": {"fc": "W8A8", "layer1.0.conv1": "w2a4"}}"#
        let policy = try QuantizationPolicy.parse(json: Array(json.utf8), base: QuantizationPolicy(weightBits: 8, activationBits: 5),
                                                  source: "p.json")
        XCTAssertEqual(policy.weightBits, 3)
        XCTAssertEqual(policy.activationBits, 5)
        XCTAssertEqual(policy.firstLayer, LayerBits(weight: 6, activation: nil))
        XCTAssertEqual(policy.overrides["layer1.0.conv1"], LayerBits(weight: 2, activation: 4))
        XCTAssertEqual(policy.unknownLayers(in: tinyResNet(seed: 1)), [])
    }

    func testBadPolicyFilesNameTheProblem() {
        let base = QuantizationPolicy(weightBits: 4, activationBits: 4)
        for (json, fragment) in [("{", "not a policy file"), (#"{"weight_bits": 9}"#, "weight_bits must be 2...8"),
                                 (#"{"layers": {"fc": "W9A8"}}"#, "layers.fc is 'W9A8'")] {
            XCTAssertThrowsError(try QuantizationPolicy.parse(json: Array(json.utf8), base: base, source: "p.json")) { error in
                XCTAssertTrue("\(error)".hasPrefix("p.json: "), "\(error)")
                XCTAssertTrue("\(error)".contains(fragment), "\(error)")
            }
        }
        var typo = base
        typo.overrides["layer9.0.conv1"] = LayerBits(weight: 4, activation: 4)
        XCTAssertEqual(typo.unknownLayers(in: tinyResNet(seed: 1)), ["layer9.0.conv1"])
    }
}
