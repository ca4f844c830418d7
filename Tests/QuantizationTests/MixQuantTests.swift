import Foundation
import Kernels
import Layers
import Quantization
import XCTest

/// MixQuant: roundoff errors, the threshold and budget rules, parsing and the table.
final class MixQuantTests: XCTestCase {
    /// ResNet-8 with widths 4, 8 and 16: conv1 (36 weights), layer1.0.conv1
    /// and conv2 (144 each), layer2.0.conv1 (288), layer2.0.conv2 (576),
    /// layer2.0.downsample.0 (32), layer3.0.conv1 (1152), layer3.0.conv2
    /// (2304), layer3.0.downsample.0 (128), fc (48).
    func smallModel(seed: UInt64 = 3) -> Network {
        let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.25))
        model.initialize(seed: seed)
        return model
    }

    func layer(_ model: Network, _ name: String) -> Conv2d {
        model.layers.first { $0.name == name }!
    }

    let uniformLayer = "layer1.0.conv1"
    let heavyLayer = "layer2.0.conv1"

    /// One layer uniform on [-1, 1], another standard normal with one large
    /// outlier (+-25) in every output channel.
    func modelWithHeavyTail(seed: UInt64 = 3) -> Network {
        let model = smallModel(seed: seed)
        var rng = SplitMix64(seed: seed, stream: [77])
        fillUniform(model.store.parameters[layer(model, uniformLayer).weight], &rng)
        let heavy = layer(model, heavyLayer)
        let w = model.store.parameters[heavy.weight]
        let n = heavy.weight.rowLength
        for i in w.indices { w[i] = rng.nextNormal() }
        for r in 0..<heavy.outChannels { w[r * n + rng.nextIndex(below: n)] = r % 2 == 0 ? 25 : -25 }
        return model
    }

    // MARK: Roundoff errors

    func testErrorsMatchAReferenceAndDecreaseWithBits() {
        let model = modelWithHeavyTail()
        for layer in model.layers {
            let errors = MixQuant.relativeErrors(of: layer, store: model.store)
            XCTAssertEqual(errors.count, MixQuant.candidateBits.count)
            // Reference: per-channel symmetric min-max, s = max|w| / qmax, in Double.
            let w = Array(model.store.parameters[layer.weight])
            let n = layer.weight.rowLength
            for (b, error) in zip(MixQuant.candidateBits, errors) {
                let grid = QuantGrid(bits: b, signed: true)
                var num = 0.0, den = 0.0
                for r in 0..<layer.outChannels {
                    let row = Array(w[(r * n)..<((r + 1) * n)])
                    let step = max(row.map { abs($0) }.max()! / grid.qmax, 1e-8)
                    for (x, q) in zip(row, fakeQuantized(row, step: step, grid: grid)) {
                        num += Double(x - q) * Double(x - q)
                        den += Double(x) * Double(x)
                    }
                }
                assertClose(Double(error), num / den, tolerance: 1e-4, "\(layer.name) W\(b)")
            }
            // Strictly decreasing, except that the heavy-tailed layer has a
            // plateau: at 2 and 3 bits the outliers' grid rounds all else to 0.
            for b in 1..<errors.count {
                if layer.name == heavyLayer {
                    XCTAssertLessThanOrEqual(errors[b], errors[b - 1], "\(layer.name): E(\(b + 2)) <= E(\(b + 1))")
                } else {
                    XCTAssertLessThan(errors[b], errors[b - 1], "\(layer.name): E(\(b + 2)) < E(\(b + 1))")
                }
            }
            XCTAssertLessThan(errors[8 - 2], errors[5 - 2], layer.name)
            XCTAssertLessThan(errors[5 - 2], errors[2 - 2], layer.name)
        }
    }

    func testErrorsDecreaseWithBitsUnderEveryCalibration() {
        let model = modelWithHeavyTail()
        for estimator in RangeEstimator.allCases {
            var calibration = CalibrationOptions()
            calibration.weights = estimator
            calibration.percentile = 99
            for layer in model.layers {
                let errors = MixQuant.relativeErrors(of: layer, store: model.store, calibration: calibration)
                XCTAssert(errors.allSatisfy { $0.isFinite && $0 >= 0 && $0 < 1.5 }, "\(estimator) \(layer.name): \(errors)")
                // A 99th-percentile clip leaves an error that more bits do not
                // remove; once it dominates (6 bits and up), rounding noise
                // moves the total by a few percent either way.
                for b in 1..<errors.count {
                    let slack: Float = estimator == .percentile && b + 2 >= 6 ? 1.05 : 1.0001
                    XCTAssertLessThanOrEqual(errors[b], errors[b - 1] * slack, "\(estimator) \(layer.name): \(errors)")
                }
                XCTAssertLessThan(errors.last!, errors.first!, "\(estimator) \(layer.name)")
            }
        }
    }

    func testSearchLeavesTheModelUntouched() throws {
        let model = modelWithHeavyTail()
        QuantizationPolicy(weightBits: 3, activationBits: 5).apply(to: model)
        for layer in model.layers { calibrateWeights(of: layer, store: model.store) }
        model.blocks[0].conv2.weightQuantizer.enabled = false
        let parameters = Array(model.store.parameters.all), state = Array(model.store.state.all)
        let quantizers = model.layers.map { ($0.weightQuantizer.grid, $0.weightQuantizer.enabled) }

        var calibration = CalibrationOptions()
        calibration.weights = .lp
        _ = try MixQuant.search(model, policy: QuantizationPolicy(weightBits: 4, activationBits: 8),
                                options: MixQuantOptions(rule: .threshold(multiplier: 1.5), includeFirstLast: true),
                                calibration: calibration)
        XCTAssertEqual(Array(model.store.parameters.all), parameters)
        XCTAssertEqual(Array(model.store.state.all), state)
        for (layer, (grid, enabled)) in zip(model.layers, quantizers) {
            XCTAssertEqual(layer.weightQuantizer.grid, grid, layer.name)
            XCTAssertEqual(layer.weightQuantizer.enabled, enabled, layer.name)
        }
    }

    // MARK: Threshold rule

    func testThresholdGivesTheHeavyTailedLayerMoreBits() throws {
        let model = modelWithHeavyTail()
        let policy = QuantizationPolicy(weightBits: 4, activationBits: 8)
        let result = try MixQuant.search(model, policy: policy, options: MixQuantOptions(rule: .threshold(multiplier: 1.5)))
        let row = { (name: String) in result.rows.first { $0.name == name }! }
        let uniform = row(uniformLayer), heavy = row(heavyLayer)
        XCTAssertGreaterThan(heavy.errors[4 - 2], uniform.errors[4 - 2], "outliers stretch the grid")
        XCTAssertGreaterThan(heavy.bits, uniform.bits, result.render())
        XCTAssertLessThanOrEqual(uniform.bits, 4, result.render())

        // The rule itself: E_ref is the mean at the target, each layer the smallest b under m * E_ref.
        let searched = result.rows.filter(\.searched)
        XCTAssertEqual(searched.map(\.name), model.layers.dropFirst().dropLast().map(\.name))
        let reference = searched.map { Double($0.errors[4 - 2]) }.reduce(0, +) / Double(searched.count)
        assertClose(Double(result.referenceError!), reference, tolerance: 1e-5)
        for r in searched {
            let limit = 1.5 * result.referenceError!
            if r.bits < 8 { XCTAssertLessThanOrEqual(r.error, limit, r.name) }
            if r.bits > 2 { XCTAssertGreaterThan(r.errors[r.bits - 3], limit, "\(r.name): a smaller b would do") }
            XCTAssertEqual(r.error, r.errors[r.bits - 2], r.name)
        }
        // First and last keep the policy's 8 bits.
        XCTAssertEqual(result.rows.first!.bits, 8)
        XCTAssertEqual(result.rows.last!.bits, 8)
        XCTAssertFalse(result.rows.first!.searched || result.rows.last!.searched)
    }

    func testThresholdRuleOnATable() {
        // Three layers; E at 4 bits: 0.01, 0.02, 0.09 -> E_ref = 0.04.
        let errors: [[Float]] = [
            [0.3, 0.05, 0.01, 0.003, 0.001, 0.0003, 0.0001],
            [0.4, 0.08, 0.02, 0.005, 0.001, 0.0003, 0.0001],
            [0.9, 0.5, 0.09, 0.07, 0.05, 0.03, 0.02],
        ]
        var (bits, reference) = MixQuant.thresholdBits(errors: errors, targetBits: 4, multiplier: 1)
        assertClose(Double(reference), 0.04, tolerance: 1e-6)
        XCTAssertEqual(bits, [4, 4, 7])
        (bits, _) = MixQuant.thresholdBits(errors: errors, targetBits: 4, multiplier: 2)
        XCTAssertEqual(bits, [3, 3, 5])
        // No candidate under the limit (E_ref = 0.04 at 8 bits): the largest candidate.
        (bits, _) = MixQuant.thresholdBits(errors: [[0.5, 0.4, 0.3, 0.2, 0.1, 0.09, 0.08], [0.01, 0, 0, 0, 0, 0, 0]],
                                           targetBits: 8, multiplier: 1)
        XCTAssertEqual(bits, [8, 2])
    }

    // MARK: Budget rule

    func testBudgetIsRespectedOnTheModel() throws {
        let model = modelWithHeavyTail()
        let policy = QuantizationPolicy(weightBits: 4, activationBits: 8)
        for budget: Float in [2, 3, 3.5, 4, 4.5, 6, 8] {
            for includeFirstLast in [false, true] {
                let result = try MixQuant.search(model, policy: policy,
                                                 options: MixQuantOptions(rule: .budget(meanBits: budget),
                                                                          includeFirstLast: includeFirstLast))
                let searched = result.rows.filter(\.searched)
                let n = searched.reduce(0) { $0 + $1.weights }
                let used = searched.reduce(0) { $0 + $1.weights * $1.bits }
                XCTAssertLessThanOrEqual(Double(used), Double(budget) * Double(n), "budget \(budget)")
                XCTAssertLessThanOrEqual(result.searchedMeanBits, Double(budget) + 1e-12)
                XCTAssert(searched.allSatisfy { MixQuant.candidateBits.contains($0.bits) })
                // Greedy leaves no bit unspent that would fit and help: no layer
                // can take one more bit within the budget and lower its error.
                for r in searched where r.bits < 8 && used + r.weights <= Int(budget * Float(n)) {
                    XCTAssertFalse(r.errors[r.bits - 2] - r.errors[r.bits - 1] > 0,
                                   "budget \(budget): \(r.name) could still take a bit\n\(result.render())")
                }
                if budget == 8 { XCTAssert(searched.allSatisfy { $0.bits == 8 }) }
                if budget == 2 { XCTAssert(searched.allSatisfy { $0.bits == 2 }) }
            }
        }
    }

    func testBudgetSpendsBitsWhereTheErrorDropIsLargest() {
        // Equal sizes: layer 0's error barely moves, layer 1's quarters per
        // bit, layer 2's halves per bit.
        let flat: [Float] = [0.10, 0.099, 0.098, 0.097, 0.096, 0.095, 0.094]
        let quarter: [Float] = (0..<7).map { 0.5 * powf(0.25, Float($0)) }
        let half: [Float] = (0..<7).map { 0.3 * powf(0.5, Float($0)) }
        // Budget 3 bits mean over 3 layers of 10: 30 bits above the 2-bit start.
        var bits = MixQuant.budgetBits(errors: [flat, quarter, half], weights: [10, 10, 10], meanBits: 3)
        // Drops: quarter 0.375, 0.094, 0.023...; half 0.15, 0.075, 0.0375...
        // Order: quarter (0.375), half (0.15), quarter (0.094) -> 3 bits spent.
        XCTAssertEqual(bits, [2, 4, 3])
        bits = MixQuant.budgetBits(errors: [flat, quarter, half], weights: [10, 10, 10], meanBits: 2)
        XCTAssertEqual(bits, [2, 2, 2])

        // A large layer costs more bits per added bit of width: the small
        // one, with the same drop, fits where the large one does not.
        bits = MixQuant.budgetBits(errors: [quarter, quarter], weights: [100, 10], meanBits: 2.1)
        XCTAssertEqual(bits, [2, 3])
        // Equal gains: the larger layer first (it lowers the weighted objective more).
        bits = MixQuant.budgetBits(errors: [quarter, quarter], weights: [10, 100], meanBits: 2 + 100.0 / 110)
        XCTAssertEqual(bits, [2, 3])

        // A plateau (no drop from 2 to 3 bits, then a large one) is crossed.
        let plateau: [Float] = [0.2, 0.2, 0.01, 0.005, 0.002, 0.001, 0.0005]
        bits = MixQuant.budgetBits(errors: [plateau, flat], weights: [10, 10], meanBits: 3)
        XCTAssertEqual(bits, [4, 2])
    }

    func testBudgetMinimisesTheWeightedErrorAmongNeighbours() throws {
        // On the model, moving one bit from one searched layer to another of
        // the same size never lowers sum n_l E_l (a local check of the greedy).
        let model = modelWithHeavyTail()
        let result = try MixQuant.search(model, policy: QuantizationPolicy(weightBits: 4, activationBits: 8),
                                         options: MixQuantOptions(rule: .budget(meanBits: 4)))
        let rows = result.rows.filter(\.searched)
        for a in rows.indices { for b in rows.indices where a != b && rows[a].weights == rows[b].weights {
            guard rows[a].bits > 2, rows[b].bits < 8 else { continue }
            let before = rows[a].errors[rows[a].bits - 2] + rows[b].errors[rows[b].bits - 2]
            let after = rows[a].errors[rows[a].bits - 3] + rows[b].errors[rows[b].bits - 1]
            XCTAssertGreaterThanOrEqual(after, before * 0.9999, "\(rows[a].name) -> \(rows[b].name)\n\(result.render())")
        } }
    }

    // MARK: Parsing

    func testRuleParsing() throws {
        XCTAssertEqual(try MixQuantRule(parsing: "threshold:1.5"), .threshold(multiplier: 1.5))
        XCTAssertEqual(try MixQuantRule(parsing: "budget:4"), .budget(meanBits: 4))
        XCTAssertEqual(try MixQuantRule(parsing: " Budget: 4.5 "), .budget(meanBits: 4.5))
        XCTAssertEqual(try MixQuantRule(parsing: "threshold:1"), .threshold(multiplier: 1))
        XCTAssertEqual(MixQuantRule.threshold(multiplier: 1.5).description, "threshold:1.5")
        XCTAssertEqual(MixQuantRule.budget(meanBits: 4).description, "budget:4")
        XCTAssertEqual(try MixQuantRule(parsing: MixQuantRule.budget(meanBits: 4.25).description), .budget(meanBits: 4.25))

        let cases: [(String, String)] = [
            ("threshold", "expected threshold:<multiplier>"),
            ("1.5", "expected threshold:<multiplier>"),
            ("threshold:", "is not a number"),
            ("threshold:abc", "'abc' is not a number"),
            ("threshold:nan", "is not a number"),
            ("budget:inf", "is not a number"),
            ("threshold:0.5", "must be a number >= 1, got 0.5"),
            ("budget:1.5", "between 2 and 8, got 1.5"),
            ("budget:9", "between 2 and 8, got 9"),
            ("size:4", "unknown rule 'size'"),
        ]
        for (text, message) in cases {
            XCTAssertThrowsError(try MixQuantRule(parsing: text), text) { error in
                XCTAssert("\(error)".contains(message), "\(text): '\(error)' should say '\(message)'")
                XCTAssertEqual((error as? LocalizedError)?.errorDescription, "\(error)")
            }
        }
        XCTAssertThrowsError(try MixQuant.search(smallModel(), policy: QuantizationPolicy(weightBits: 4, activationBits: 8),
                                                 options: MixQuantOptions(rule: .budget(meanBits: 1))))
    }

    // MARK: Result, table, overrides

    func testTableListsEveryLayerAndTheSizeAddsUp() throws {
        let model = modelWithHeavyTail()
        let policy = QuantizationPolicy(weightBits: 4, activationBits: 6)
        let result = try MixQuant.search(model, policy: policy, options: MixQuantOptions(rule: .threshold(multiplier: 1.5)))
        let layers = model.layers
        XCTAssertEqual(result.rows.map(\.name), layers.map(\.name))
        XCTAssertEqual(result.rows.map(\.weights), layers.map(\.weight.count))
        XCTAssertEqual(result.rows.map(\.weights), [36, 144, 144, 288, 576, 32, 1152, 2304, 128, 48])
        let size = zip(layers, result.rows).reduce(0) { $0 + $1.0.weight.count * $1.1.bits }
        XCTAssertEqual(result.sizeBits, size)
        XCTAssertEqual(result.weightCount, 36 + 144 + 144 + 288 + 576 + 32 + 1152 + 2304 + 128 + 48)
        XCTAssertEqual(result.meanBits, Double(size) / Double(result.weightCount), accuracy: 1e-12)
        XCTAssertEqual(result.uniformSizeBits, 8 * (36 + 48) + 4 * (144 + 144 + 288 + 576 + 32 + 1152 + 2304 + 128))

        let table = result.render()
        let lines = table.split(separator: "\n").map(String.init)
        for r in result.rows {
            let line = lines.first { $0.hasPrefix(r.name + " ") }
            XCTAssertNotNil(line, "\(r.name) missing from\n\(table)")
            XCTAssert(line?.contains(" \(r.weights) ") == true && line?.contains(" W\(r.bits) ") == true, line ?? "")
        }
        XCTAssert(table.contains("model size \(size) bits"), table)
        // Columns line up: every body line is as long as the header's rule
        // (once trailing blanks are gone), and the weights column ends in one place.
        let body = lines.filter { line in result.rows.contains { line.hasPrefix($0.name + " ") } }
        XCTAssertEqual(Set(body.map { $0.range(of: " W")!.lowerBound.utf16Offset(in: $0) }).count, 1, table)

        // Overrides: weight bits of the searched layers, their input bits kept.
        let overrides = result.overrides
        XCTAssertEqual(Set(overrides.keys), Set(layers.dropFirst().dropLast().map(\.name)))
        for r in result.rows where r.searched { XCTAssertEqual(overrides[r.name], LayerBits(weight: r.bits, activation: 6)) }
        var mixed = policy
        mixed.overrides = overrides
        mixed.apply(to: model)
        for (layer, r) in zip(layers, result.rows) { XCTAssertEqual(layer.weightQuantizer.grid.bits, r.bits, r.name) }
        XCTAssertFalse(model.layer("conv1").inputQuantizer.enabled)
        XCTAssertEqual(model.layer("fc").inputQuantizer.grid.bits, 8)

        // JSON carries the same numbers.
        let json = try JSONSerialization.jsonObject(with: Data(try result.json().utf8)) as! [String: Any]
        XCTAssertEqual(json["size_bits"] as? Int, size)
        XCTAssertEqual(json["rule"] as? String, "threshold:1.5")
        let rows = json["layers"] as! [[String: Any]]
        XCTAssertEqual(rows.map { $0["name"] as! String }, layers.map(\.name))
        XCTAssertEqual(rows.map { $0["bits"] as! Int }, result.rows.map(\.bits))
        XCTAssert(rows.first!["activation_bits"] is NSNull)
        XCTAssertEqual(json["layer_bits"] as? String, result.layerBitsArgument)
        XCTAssertEqual(result.layerBitsArgument.split(separator: ",").count, 8)
    }

    func testFirstLastAndExplicitOverrides() throws {
        let model = modelWithHeavyTail()
        var policy = QuantizationPolicy(weightBits: 4, activationBits: 8)
        policy.overrides["layer2.0.conv2"] = LayerBits(weight: 6, activation: 4)
        let result = try MixQuant.search(model, policy: policy,
                                         options: MixQuantOptions(rule: .budget(meanBits: 3), includeFirstLast: true))
        let byName = Dictionary(uniqueKeysWithValues: result.rows.map { ($0.name, $0) })
        XCTAssertEqual(byName["layer2.0.conv2"]?.searched, false)
        XCTAssertEqual(byName["layer2.0.conv2"]?.bits, 6)
        XCTAssertEqual(byName["conv1"]?.searched, true)
        XCTAssertEqual(byName["fc"]?.searched, true)
        XCTAssertNil(result.overrides["layer2.0.conv2"])
        // First layer keeps its float input, last its 8-bit input.
        XCTAssertEqual(result.overrides["conv1"]?.activation, nil)
        XCTAssertEqual(result.overrides["fc"]?.activation, 8)
        XCTAssertLessThanOrEqual(result.searchedMeanBits, 3)
        // The error at chosen bits of a fixed layer is its E at those bits.
        XCTAssertEqual(byName["layer2.0.conv2"]!.error, byName["layer2.0.conv2"]!.errors[6 - 2])
    }
}
