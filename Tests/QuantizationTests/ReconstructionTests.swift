import Distributed
import Foundation
import Kernels
import Layers
import Quantization
import XCTest

/// AdaRound soft rounding in the weight quantizer, and block reconstruction
/// (Genie-M / BRECQ with QDrop) on a tiny ResNet.
final class ReconstructionTests: XCTestCase {
    // MARK: h(V)

    func testRectifiedSigmoidLimits() {
        let h = SoftRounding.rectifiedSigmoid, dh = SoftRounding.rectifiedSigmoidDerivative
        var previous: Float = -1
        for k in -400...400 {
            let v = Float(k) / 20
            let value = h(v)
            XCTAssert(value >= 0 && value <= 1, "h(\(v)) = \(value)")
            XCTAssertGreaterThanOrEqual(value, previous, "h is monotone at \(v)")
            previous = value
            // Clamped to 0 or 1 exactly where the derivative vanishes.
            XCTAssertEqual(dh(v) == 0, value == 0 || value == 1, "h'(\(v)) = \(dh(v)), h = \(value)")
            XCTAssertEqual(SoftRounding.hardRounding(v), value >= 0.5 ? 1 : 0, "hard rounding at \(v)")
        }
        XCTAssertEqual(h(-30), 0)
        XCTAssertEqual(h(30), 1)
        XCTAssertEqual(h(-3), 0)  // sigmoid(-3) * 1.2 - 0.1 < 0
        XCTAssertEqual(h(3), 1)
        XCTAssertEqual(h(0), 0.5, accuracy: 1e-7)
        XCTAssertEqual(dh(0), 0.3, accuracy: 1e-7)  // sigmoid'(0) * (zeta - gamma)

        // V is initialised so that h(V) is the fractional part.
        for k in 0..<1000 {
            let fraction = Float(k) / 1000
            let v = SoftRounding.initialLogit(fraction: fraction)
            XCTAssert(v.isFinite, "V(\(fraction))")
            XCTAssertEqual(h(v), fraction, accuracy: 1e-6, "h(V(\(fraction)))")
            if fraction != 0.5 {  // h(V) = 0.5 to within rounding: either way
                XCTAssertEqual(SoftRounding.hardRounding(v), fraction > 0.5 ? 1 : 0, "hard rounding of \(fraction)")
            }
        }
    }

    // MARK: One soft-rounded layer

    /// A 3x3 conv (3 -> 4 channels) whose weight quantizer is on with
    /// min-max steps on `grid`, and an input for it.
    final class Layer {
        let store = ParameterStore()
        let conv: Conv2d
        let input: OwnedMap

        init(grid: QuantGrid, seed: UInt64, weightRange: ClosedRange<Float> = -1...1) {
            conv = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: 3, padding: 1, store: store,
                          workspace: Workspace())
            store.allocate()
            var rng = SplitMix64(seed: seed)
            fillUniform(store.parameters[conv.weight], &rng, range: weightRange)
            conv.weightQuantizer.grid = grid
            conv.weightQuantizer.enabled = true
            calibrateWeights(of: conv, store: store)
            input = OwnedMap(channels: 3, batch: 2, height: 5, width: 5, random: &rng)
        }

        var weights: UnsafeMutableBufferPointer<Float> { store.parameters[conv.weight] }
        var steps: UnsafeMutableBufferPointer<Float> { store.parameters[conv.weightQuantizer.step] }
        var rowLength: Int { conv.weight.rowLength }

        func output() -> [Float] { Array(conv.forward(input.map).buffer) }
    }

    /// B = floor(W / s0), h(V) = frac(W / s0): at initialisation the soft
    /// weights s0 * (B + h(V)) are the FP32 weights.
    func testInitialisationReproducesTheWeights() {
        let layer = Layer(grid: QuantGrid(bits: 3, signed: true), seed: 3)
        let state = AdaRoundWeights(layer.conv, store: layer.store)
        let K = layer.rowLength
        for i in 0..<state.count {
            let v = layer.weights[i] / layer.steps[i / K]
            XCTAssertEqual(state.base[i], v.rounded(.down), "B[\(i)]")
            XCTAssertEqual(SoftRounding.rectifiedSigmoid(state.logits[i]), v - v.rounded(.down), accuracy: 1e-6, "h(V)[\(i)]")
        }
        layer.conv.weightQuantizer.enabled = false
        let fp32 = layer.output()
        layer.conv.weightQuantizer.enabled = true
        let nearest = layer.output()
        state.attach()
        let soft = layer.output()
        state.detach()
        XCTAssertNil(layer.conv.weightQuantizer.softRounding)
        var softError: Float = 0, nearestError: Float = 0
        for i in fp32.indices {
            softError = max(softError, abs(soft[i] - fp32[i]))
            nearestError = max(nearestError, abs(nearest[i] - fp32[i]))
        }
        XCTAssertLessThan(softError, 1e-4)
        XCTAssertGreaterThan(nearestError, 1e-2, "3-bit rounding changes the output")
    }

    /// dL/dV and dL/ds of soft rounding against central differences of
    /// L = sum(y * r), away from the kinks of h and of the grid's clamp.
    func testSoftRoundingGradients() {
        let grid = QuantGrid(bits: 3, signed: true)
        let layer = Layer(grid: grid, seed: 5)
        let state = AdaRoundWeights(layer.conv, store: layer.store)
        // Steps smaller than calibrated, so some B + h(V) fall outside the grid.
        for r in 0..<layer.steps.count { layer.steps[r] *= 0.6 }
        var rng = SplitMix64(seed: 6)
        fillUniform(state.logits, &rng, range: -3...3)
        state.attach()
        defer { state.detach() }
        let y = layer.conv.forward(layer.input.map)
        let r = OwnedMap(like: y, random: &rng)
        func loss() -> Double {
            let y = layer.conv.forward(layer.input.map)
            return (0..<y.count).reduce(0) { $0 + Double(y.data[$1]) * Double(r.map.data[$1]) }
        }
        layer.store.gradients.zero()
        state.logitGradient.update(repeating: 0)
        _ = layer.conv.forward(layer.input.map)
        _ = layer.conv.backward(r.map)
        XCTAssert(layer.store.gradients[layer.conv.weight].allSatisfy { $0 == 0 }, "W gets no gradient")

        let K = layer.rowLength
        let scale = Double(state.logitGradient.map { abs($0) }.max()!)
        XCTAssertGreaterThan(scale, 0)
        let eps: Float = 1e-2
        var checked = 0, clamped = 0
        for i in 0..<state.count {
            let v = state.logits[i], b = state.base[i]
            let t = b + SoftRounding.rectifiedSigmoid(v)
            if t < grid.qmin || t > grid.qmax {
                XCTAssertEqual(state.logitGradient[i], 0, "clamped weight \(i) gets no dV")
                clamped += 1
                continue
            }
            // Skip where h or the grid clamp has a kink within eps.
            let nearKink = [v - eps, v + eps].contains { w in
                let hw = Float(SoftRounding.rectifiedSigmoid(w))
                let raw = 1 / (1 + expf(-w)) * 1.2 - 0.1
                return raw <= 0 || raw >= 1 || b + hw < grid.qmin || b + hw > grid.qmax
            }
            if nearKink { continue }
            state.logits[i] = v + eps
            let plus = loss()
            state.logits[i] = v - eps
            let minus = loss()
            state.logits[i] = v
            let numeric = (plus - minus) / Double(2 * eps)
            let analytic = Double(state.logitGradient[i])
            XCTAssertEqual(analytic, numeric, accuracy: 1e-2 * max(abs(analytic), abs(numeric)) + 1e-4 * scale,
                           "dL/dV[\(i)]")
            checked += 1
        }
        XCTAssertGreaterThan(checked, state.count / 3, "checked \(checked) of \(state.count)")
        XCTAssertGreaterThan(clamped, 0, "some weights are clamped")

        // W_q is linear in s for fixed V: dW_q/ds = clamp(B + h(V), qmin, qmax).
        let stepGradient = layer.store.gradients[layer.conv.weightQuantizer.step]
        for row in 0..<layer.steps.count {
            let s = layer.steps[row], h = s * 1e-2
            layer.steps[row] = s + h
            let plus = loss()
            layer.steps[row] = s - h
            let minus = loss()
            layer.steps[row] = s
            let numeric = (plus - minus) / Double(2 * h)
            // And from the formula, in Double.
            var formula: Double = 0
            for i in (row * K)..<((row + 1) * K) {
                let q = min(max(state.base[i] + SoftRounding.rectifiedSigmoid(state.logits[i]), grid.qmin), grid.qmax)
                formula += Double(q) * Double(weightGradientOfOutput(layer: layer, r: r.map, index: i))
            }
            XCTAssertEqual(Double(stepGradient[row]), numeric, accuracy: 1e-3 * abs(numeric) + 1e-3, "dL/ds[\(row)]")
            XCTAssertEqual(Double(stepGradient[row]), formula, accuracy: 1e-4 * abs(formula) + 1e-4, "dL/ds[\(row)] formula")
        }
    }

    /// dL/dW_q[i] for L = sum(y * r): the plain layer's weight gradient.
    private func weightGradientOfOutput(layer: Layer, r: FeatureMap, index: Int) -> Float {
        if cachedWeightGradient == nil {
            let store = ParameterStore()
            let plain = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: 3, padding: 1, store: store,
                               workspace: Workspace())
            store.allocate()
            _ = plain.forward(layer.input.map)
            _ = plain.backward(r)
            cachedWeightGradient = Array(store.gradients[plain.weight])
        }
        return cachedWeightGradient![index]
    }
    private var cachedWeightGradient: [Float]?

    /// Baking writes W = s * clamp(B + hard(V)), which the ordinary fake
    /// quantizer with the learned step reproduces exactly.
    func testBakingReproducesTheHardRoundedWeights() {
        for (bits, seed) in [(2, 7), (3, 8), (4, 9), (8, 10)] as [(Int, UInt64)] {
            let grid = QuantGrid(bits: bits, signed: true)
            // Weights beyond the calibrated range too, so the clamp matters.
            let layer = Layer(grid: grid, seed: seed)
            let state = AdaRoundWeights(layer.conv, store: layer.store)
            var rng = SplitMix64(seed: seed, stream: [1])
            fillUniform(state.logits, &rng, range: -2...2)
            for r in 0..<layer.steps.count { layer.steps[r] *= 0.8 + 0.4 * rng.nextUniform() }
            let K = layer.rowLength
            let expected = (0..<state.count).map { i in
                min(max(state.base[i] + SoftRounding.hardRounding(state.logits[i]), grid.qmin), grid.qmax) * layer.steps[i / K]
            }
            // The soft forward with h(V) pushed to exactly 0 or 1.
            let saved = Array(state.logits)
            for i in 0..<state.count { state.logits[i] = state.logits[i] >= 0 ? 100 : -100 }
            state.attach()
            let hardSoft = layer.output()
            for i in 0..<state.count { state.logits[i] = saved[i] }

            let changed = state.bake()
            XCTAssertNil(layer.conv.weightQuantizer.softRounding, "bake leaves soft rounding")
            XCTAssertGreaterThan(changed, 0)
            for i in 0..<state.count {
                let s = layer.steps[i / K], w = layer.weights[i]
                XCTAssertEqual(w, expected[i], "W[\(i)], \(bits) bits")
                XCTAssertEqual(fakeQuantize(w, inverseStep: 1 / s, step: s, zeroPoint: 0, grid: grid), w,
                               "fake quantizer reproduces W[\(i)], \(bits) bits")
            }
            XCTAssertEqual(layer.output(), hardSoft, "\(bits) bits: baked forward = hard soft-rounded forward")
        }
    }

    // MARK: Reconstruction of a tiny ResNet

    /// A tiny network (by default ResNet-8 at widths 4, 8 and 16; 8x8
    /// images, 3 classes) with batch-norm running statistics of its data,
    /// and its calibration images.
    struct Fixture {
        let model: Network
        let images: [Float]  // sample-major, 1 x 8 x 8 per sample
        let count: Int

        init(seed: UInt64 = 1, count: Int = 64, architecture: Architecture = .resnet8, width: Double = 0.25) {
            self.count = count
            model = Network(ModelSpec(architecture: architecture, inputChannels: 1, classes: 3, widthMultiplier: width))
            model.initialize(seed: seed)
            var rng = SplitMix64(seed: seed, stream: [42])
            for norm in model.batchNorms {
                fillUniform(model.store.parameters[norm.weight], &rng, range: 0.5...1.5)
                fillUniform(model.store.parameters[norm.bias], &rng, range: -0.2...0.4)
            }
            // Smooth-ish images: a random blob per sample plus noise.
            var pixels = [Float](repeating: 0, count: count * 64)
            for n in 0..<count {
                let cx = 8 * rng.nextUniform(), cy = 8 * rng.nextUniform(), a = 1 + rng.nextUniform()
                for y in 0..<8 {
                    for x in 0..<8 {
                        let d2 = (Float(x) - cx) * (Float(x) - cx) + (Float(y) - cy) * (Float(y) - cy)
                        pixels[n * 64 + y * 8 + x] = a * expf(-d2 / 6) - 0.3 + 0.2 * rng.nextNormal()
                    }
                }
            }
            images = pixels
            // Running statistics from the data, as a trained model has.
            for _ in 0..<30 {
                let batch = self.batch(Array(rng.permutation(count).prefix(16))[...])
                _ = model.forward(batch.map, training: true)
                model.commitRunningStatistics()
            }
        }

        func batch(_ indices: ArraySlice<Int>) -> (storage: FloatBuffer, map: FeatureMap) {
            let storage = FloatBuffer(capacity: indices.count * 64)
            source.gather(indices, storage.pointer)
            return (storage, FeatureMap(data: storage.pointer, channels: 1, batch: indices.count, height: 8, width: 8))
        }

        var source: ReconstructionImages {
            let pixels = images
            return ReconstructionImages(count: count, channels: 1, height: 8, width: 8) { indices, out in
                // CNHW with one channel: image j at j * 64.
                for (j, n) in indices.enumerated() {
                    for i in 0..<64 { out[j * 64 + i] = pixels[n * 64 + i] }
                }
            }
        }

        /// Applies the policy and calibrates (min-max) on all images.
        func quantize(_ policy: QuantizationPolicy) {
            policy.apply(to: model)
            let all = batch(Array(0..<count)[...])
            Quantization.calibrate(model, communicator: SingleProcessCommunicator()) {
                _ = model.forward(all.map, training: false)
            }
        }

        /// The model's logits on every image.
        func logits() -> [Float] {
            let all = batch(Array(0..<count)[...])
            return Array(model.forward(all.map, training: false).buffer)
        }
    }

    static func options() -> ReconstructionOptions {
        var options = ReconstructionOptions()
        options.samples = 48
        options.batchSize = 16
        options.iterations = 150
        options.seed = 3
        return options
    }

    func meanSquaredError(_ a: [Float], _ b: [Float]) -> Double {
        zip(a, b).reduce(0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) } / Double(a.count)
    }

    /// Every kind of unit gets closer to its FP32 output: the ImageNet stem
    /// with its max-pool, bottlenecks (ResNet-50), inverted residuals with
    /// and without the shortcut, MobileNetV2's last 1x1 convolution, and the
    /// classifiers. Per kind the summed error falls by a tenth or more (60
    /// iterations per unit); a single unit may end up to 10% above
    /// round-to-nearest (QDrop trains it on partly float inputs: measured
    /// +7% on one MobileNetV2 block). The first unit is left out: its
    /// layer is 8-bit with a float input, error ~4e-5, nothing to gain.
    func testReconstructionLowersTheErrorOfEveryKindOfUnit() {
        var options = Self.options()
        options.iterations = 60
        for (architecture, width) in [(Architecture.resnet50, 0.0625), (.mobilenetV2, 0.125)] {
            let fixture = Fixture(architecture: architecture, width: width)
            fixture.quantize(QuantizationPolicy(weightBits: 2, activationBits: 4))
            let report = reconstruct(fixture.model, options: options, communicator: SingleProcessCommunicator(),
                                     images: fixture.source)
            XCTAssertEqual(report.units.map(\.name), fixture.model.units.map(\.name))
            var byKind: [String: (before: Double, after: Double)] = [:]
            for (unit, result) in zip(fixture.model.units, report.units).dropFirst() {
                let kind = "\(type(of: unit))", sums = byKind[kind] ?? (0, 0)
                byKind[kind] = (sums.before + result.errorBefore, sums.after + result.errorAfter)
                XCTAssertLessThan(result.errorAfter, result.errorBefore * 1.1,
                                  "\(architecture.rawValue) \(unit.name): \(result.errorBefore) -> \(result.errorAfter)")
            }
            for (kind, sums) in byKind {
                XCTAssertLessThan(sums.after, 0.9 * sums.before, "\(architecture.rawValue) \(kind): \(sums)")
            }
            let kinds = Set(byKind.keys)
            XCTAssert(kinds.contains("ClassifierHead"), "\(kinds)")
            XCTAssert(kinds.contains("Bottleneck") || kinds.contains("InvertedResidual"), "\(kinds)")
            XCTAssert(fixture.model.layers.allSatisfy { $0.inputQuantizer.dropMask == nil && $0.inputObserver == nil })
            XCTAssert(fixture.model.layers.allSatisfy { $0.gradientRows == [0..<$0.outChannels] })
        }
    }

    /// Reconstruction (with QDrop at the units' inputs and inside them, the
    /// default) lowers every block's output error against the FP32 target
    /// below round-to-nearest with min-max steps, and the logits' error too;
    /// afterwards every weight sits on its (learned) grid and no QDrop mask
    /// is left on a quantizer.
    func testReconstructionBeatsRoundToNearest() {
        let policy = QuantizationPolicy(weightBits: 2, activationBits: 4)
        let fixture = Fixture()
        let fp32 = fixture.logits()
        fixture.quantize(policy)
        let nearest = fixture.logits()

        var messages: [String] = []
        let report = reconstruct(fixture.model, options: Self.options(), communicator: SingleProcessCommunicator(),
                                 images: fixture.source) { messages.append($0) }
        let reconstructed = fixture.logits()

        XCTAssertEqual(report.units.map(\.name), ["stem", "layer1.0", "layer2.0", "layer3.0", "fc"])
        XCTAssertEqual(report.samples, 48)
        XCTAssertEqual(messages.count, report.units.count, "one progress line per unit")
        for unit in report.units {
            XCTAssert(unit.errorBefore.isFinite && unit.errorAfter.isFinite, unit.name)
            XCTAssert(unit.finalLoss.isFinite, unit.name)
            if unit.name.hasPrefix("layer") {
                XCTAssertLessThan(unit.errorAfter, unit.errorBefore * 0.9, "\(unit.name): \(unit.errorBefore) -> \(unit.errorAfter)")
                XCTAssertGreaterThan(unit.changedRoundings, 0, unit.name)
            }
        }
        let before = meanSquaredError(nearest, fp32), after = meanSquaredError(reconstructed, fp32)
        XCTAssertLessThan(after, before, "logits MSE against FP32: \(before) -> \(after)")

        let store = fixture.model.store
        for layer in fixture.model.layers {
            XCTAssertNil(layer.weightQuantizer.softRounding, layer.name)
            XCTAssertNil(layer.inputQuantizer.dropMask, layer.name)
            XCTAssert(layer.weightQuantizer.enabled, layer.name)
            let w = store.parameters[layer.weight], steps = store.parameters[layer.weightQuantizer.step]
            let K = layer.weight.rowLength, grid = layer.weightQuantizer.grid
            for i in w.indices {
                let s = steps[i / K]
                XCTAssertEqual(fakeQuantize(w[i], inverseStep: 1 / s, step: s, zeroPoint: 0, grid: grid), w[i],
                               "\(layer.name).weight[\(i)] is on its grid")
            }
        }
        XCTAssert(store.gradients.all.allSatisfy { $0 == 0 }, "gradients left zeroed")
    }

    /// The same seed gives bit-identical models; two ranks (threads) that
    /// split every batch and sum their gradients end identical to each
    /// other and agree with the single-process run.
    func testDeterministicAndDataParallel() {
        let policy = QuantizationPolicy(weightBits: 3, activationBits: 4)
        let options = { var o = Self.options(); o.iterations = 60; return o }()
        let single = Self.run(policy, options, SingleProcessCommunicator())
        let again = Self.run(policy, options, SingleProcessCommunicator())
        XCTAssertEqual(single.parameters, again.parameters, "same seed, same result")

        var reseeded = options
        reseeded.seed = 4
        let fixture = Fixture()
        fixture.quantize(policy)
        reconstruct(fixture.model, options: reseeded, communicator: SingleProcessCommunicator(), images: fixture.source)
        XCTAssertNotEqual(Array(fixture.model.store.parameters.all), single.parameters, "another seed differs")

        let world = ThreadWorld(size: 2)
        let results = ResultBox()
        let done = DispatchSemaphore(value: 0)
        for rank in 0..<2 {
            let thread = Thread {
                let outcome = Self.run(policy, options, world.communicator(rank: rank))
                results.set(rank, outcome.parameters, outcome.report)
                done.signal()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        done.wait()
        done.wait()
        let (p0, p1) = (results.parameters[0]!, results.parameters[1]!)
        XCTAssertEqual(p0, p1, "both ranks end with identical parameters")
        // Against one process: the same samples, summed in another order.
        var largest: Float = 0
        for i in p0.indices { largest = max(largest, abs(p0[i] - single.parameters[i]) / max(abs(single.parameters[i]), 1e-3)) }
        XCTAssertLessThan(largest, 0.05, "largest relative difference from the single-process run")
        let twoRanks = results.reports[0]!
        for (a, b) in zip(twoRanks.units, single.report.units) {
            XCTAssertEqual(a.errorAfter, b.errorAfter, accuracy: 0.02 * b.errorAfter + 1e-9, "\(a.name) error")
            XCTAssertEqual(Double(a.changedRoundings), Double(b.changedRoundings),
                           accuracy: max(2, Double(b.changedRoundings) / 50), a.name)
        }
    }

    /// QDrop inside a unit. The stem has no input mix (its FP32 and quantized
    /// inputs are the same images), so with its input quantized, anything
    /// QDrop changes in the stem comes from the masks of conv1's input
    /// quantizer. Probability 0 is no QDrop, bit for bit.
    func testQDropInsideTheUnit() {
        var policy = QuantizationPolicy(weightBits: 2, activationBits: 4)
        policy.firstLayer = LayerBits(weight: 4, activation: 4)
        var options = Self.options()
        options.iterations = 60
        var off = options, never = options
        off.qdrop = false
        never.qdropProbability = 0
        let on = Self.run(policy, options, SingleProcessCommunicator())
        let withoutQDrop = Self.run(policy, off, SingleProcessCommunicator())
        XCTAssertEqual(Self.run(policy, never, SingleProcessCommunicator()).parameters, withoutQDrop.parameters,
                       "probability 0 is no QDrop")

        let stem = Fixture().model.layer("conv1")
        func stemParameters(_ all: [Float]) -> [[Float]] {
            [stem.weight, stem.weightQuantizer.step, stem.inputQuantizer.step].map { Array(all[$0.range]) }
        }
        XCTAssertNotEqual(stemParameters(on.parameters), stemParameters(withoutQDrop.parameters),
                          "QDrop inside the stem changes its reconstruction")
        for unit in on.report.units where unit.name.hasPrefix("layer") {
            XCTAssertLessThan(unit.errorAfter, unit.errorBefore, "\(unit.name): \(unit.errorBefore) -> \(unit.errorAfter)")
        }
    }

    /// QDrop's coins depend on the sample alone: a batch's masks are those of
    /// any split of it into parts (as over ranks), interleaved in CNHW
    /// order. About a fraction p is dropped, and each site, iteration, unit
    /// and seed draws other coins.
    func testQDropCoinsDependOnlyOnTheSample() {
        let (channels, pixels) = (3, 37)
        func draw(_ samples: [Int], site: Int = 1, iteration: Int = 7, unit: Int = 2, seed: UInt64 = 3,
                  probability: Double = 0.5) -> [UInt8] {
            var mask = [UInt8](repeating: 9, count: samples.count * channels * pixels)
            let coins = QDropCoins(seed: seed, unit: unit, probability: probability)
            mask.withUnsafeMutableBufferPointer {
                coins.draw(site: site, iteration: iteration, samples: samples, channels: channels, pixels: pixels,
                           into: $0.baseAddress!)
            }
            return mask
        }
        let samples = [5, 17, 2, 40, 11, 0, 33]
        let whole = draw(samples)
        for cut in 1..<samples.count {
            for part in [Array(samples[..<cut]), Array(samples[cut...])] {
                let mask = draw(part)
                for (j, sample) in part.enumerated() {
                    let k = samples.firstIndex(of: sample)!
                    for c in 0..<channels {
                        let row = (c * part.count + j) * pixels, wholeRow = (c * samples.count + k) * pixels
                        XCTAssertEqual(mask[row..<(row + pixels)], whole[wholeRow..<(wholeRow + pixels)],
                                       "sample \(sample), channel \(c), cut at \(cut)")
                    }
                }
            }
        }

        let many = Array(0..<64)
        for p in [0.0, 0.25, 0.5, 0.9, 1.0] {
            let mask = draw(many, probability: p)
            XCTAssert(mask.allSatisfy { $0 <= 1 }, "bytes are 0 or 1")
            let fraction = Double(mask.reduce(0) { $0 + Int($1) }) / Double(mask.count)
            XCTAssertEqual(fraction, p, accuracy: 0.02, "dropped fraction at p = \(p)")
        }
        let reference = draw(many)
        XCTAssertNotEqual(draw(many, site: 2), reference, "site")
        XCTAssertNotEqual(draw(many, iteration: 8), reference, "iteration")
        XCTAssertNotEqual(draw(many, unit: 3), reference, "unit")
        XCTAssertNotEqual(draw(many, seed: 4), reference, "seed")
    }

    /// Quantizes and reconstructs a fresh fixture; returns every parameter.
    static func run(_ policy: QuantizationPolicy, _ options: ReconstructionOptions,
                    _ communicator: Communicator) -> (parameters: [Float], report: ReconstructionReport) {
        let fixture = Fixture()
        fixture.quantize(policy)
        let report = reconstruct(fixture.model, options: options, communicator: communicator, images: fixture.source)
        return (Array(fixture.model.store.parameters.all), report)
    }
}

// MARK: Two ranks in one process

/// Collectives between threads: every rank deposits its values, the last to
/// arrive combines them in rank order, and all read the same result.
final class ThreadWorld: @unchecked Sendable {
    let size: Int
    private let condition = NSCondition()
    private var generation = 0
    private var arrived = 0
    private var contributions: [[Double]]
    private var result: [Double] = []

    init(size: Int) {
        self.size = size
        contributions = Array(repeating: [], count: size)
    }

    func communicator(rank: Int) -> Communicator { ThreadCommunicator(world: self, rank: rank) }

    func exchange(rank: Int, _ values: [Double], combine: ([[Double]]) -> [Double]) -> [Double] {
        condition.lock()
        defer { condition.unlock() }
        let round = generation
        contributions[rank] = values
        arrived += 1
        if arrived == size {
            result = combine(contributions)
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            while generation == round { condition.wait() }
        }
        return result
    }

    func reduce(rank: Int, _ values: [Double], _ op: ReduceOp) -> [Double] {
        exchange(rank: rank, values) { parts in
            var out = parts[0]
            for part in parts.dropFirst() {
                for i in out.indices {
                    switch op {
                    case .sum: out[i] += part[i]
                    case .min: out[i] = min(out[i], part[i])
                    case .max: out[i] = max(out[i], part[i])
                    }
                }
            }
            return out
        }
    }
}

final class ThreadCommunicator: Communicator {
    let world: ThreadWorld
    let rank: Int
    init(world: ThreadWorld, rank: Int) {
        self.world = world
        self.rank = rank
    }
    var size: Int { world.size }
    var localRank: Int { rank }
    var localSize: Int { world.size }

    /// Float sums are formed in Float, rank by rank, as MPI would.
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, _ op: ReduceOp) {
        let bits = buffer.map { Double($0.bitPattern) }
        let parts = world.exchange(rank: rank, bits) { $0.flatMap { $0 } }
        let n = buffer.count
        for i in 0..<n {
            var value = Float(bitPattern: UInt32(parts[i]))
            for r in 1..<size {
                let other = Float(bitPattern: UInt32(parts[r * n + i]))
                switch op {
                case .sum: value += other
                case .min: value = min(value, other)
                case .max: value = max(value, other)
                }
            }
            buffer[i] = value
        }
    }
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, _ op: ReduceOp) {
        let out = world.reduce(rank: rank, Array(buffer), op)
        for i in buffer.indices { buffer[i] = out[i] }
    }
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Int64>, _ op: ReduceOp) {
        let out = world.reduce(rank: rank, buffer.map { Double($0) }, op)
        for i in buffer.indices { buffer[i] = Int64(out[i]) }
    }
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        allReduce(buffer, .sum)
        return .completed()
    }
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
        let mine = buffer.map { Double($0) }
        let parts = world.exchange(rank: rank, mine) { $0.flatMap { $0 } }
        for i in 0..<buffer.count { buffer[i] = UInt8(parts[root * buffer.count + i]) }
    }
    func allGather(_ send: [Float]) -> [[Float]] {
        let lengths = world.reduce(rank: rank, (0..<size).map { $0 == rank ? Double(send.count) : 0 }, .sum)
        let parts = world.exchange(rank: rank, send.map(Double.init)) { $0.flatMap { $0 } }
        var out: [[Float]] = []
        var start = 0
        for length in lengths.map({ Int($0) }) {
            out.append(parts[start..<(start + length)].map { Float($0) })
            start += length
        }
        return out
    }
    func barrier() { _ = world.reduce(rank: rank, [0], .sum) }
    func abort(_ message: String, code: Int32) -> Never { fatalError(message) }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private(set) var parameters: [Int: [Float]] = [:]
    private(set) var reports: [Int: ReconstructionReport] = [:]

    func set(_ rank: Int, _ values: [Float], _ report: ReconstructionReport) {
        lock.lock()
        parameters[rank] = values
        reports[rank] = report
        lock.unlock()
    }
}
