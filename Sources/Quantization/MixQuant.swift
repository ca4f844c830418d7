import Foundation
import Kernels
import Layers

/// How MixQuant turns per-layer roundoff errors into weight bit widths.
///
/// - `threshold(multiplier: m)`: E_ref = mean over the searched layers of
///   E_l(b_t) at the target bits b_t; layer l gets the smallest candidate b
///   with E_l(b) <= m * E_ref (the largest candidate if none qualifies).
/// - `budget(meanBits: B)`: minimise sum_l n_l * E_l(b_l) subject to
///   sum_l n_l * b_l <= B * sum_l n_l over the searched layers, greedily.
public enum MixQuantRule: Sendable, Equatable, CustomStringConvertible {
    case threshold(multiplier: Float)
    case budget(meanBits: Float)

    /// Parses "threshold:1.5" or "budget:4.5" (the command-line form).
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let parts = trimmed.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw MixQuantError.invalidRule("'\(text)': expected threshold:<multiplier> (e.g. threshold:1.5) "
                                            + "or budget:<mean weight bits> (e.g. budget:4)")
        }
        let kind = parts[0].trimmingCharacters(in: .whitespaces).lowercased()
        let valueText = parts[1].trimmingCharacters(in: .whitespaces)
        guard kind == "threshold" || kind == "budget" else {
            throw MixQuantError.invalidRule("'\(text)': unknown rule '\(parts[0])'; expected threshold:<multiplier> "
                                            + "or budget:<mean weight bits>")
        }
        guard let value = Float(valueText), value.isFinite else {
            throw MixQuantError.invalidRule("'\(text)': '\(valueText)' is not a number")
        }
        self = kind == "threshold" ? .threshold(multiplier: value) : .budget(meanBits: value)
        try validate()
    }

    /// Throws unless the multiplier is >= 1 or the budget lies within the candidate bits.
    public func validate() throws {
        switch self {
        case .threshold(let m):
            guard m.isFinite, m >= 1 else {
                throw MixQuantError.invalidRule("threshold multiplier must be a number >= 1, got \(Self.format(m))")
            }
        case .budget(let bits):
            let c = MixQuant.candidateBits
            guard bits.isFinite, Float(c.lowerBound) <= bits, bits <= Float(c.upperBound) else {
                throw MixQuantError.invalidRule("budget must be a mean weight bit width between \(c.lowerBound) "
                                                + "and \(c.upperBound), got \(Self.format(bits))")
            }
        }
    }

    public var description: String {
        switch self {
        case .threshold(let m): return "threshold:\(Self.format(m))"
        case .budget(let bits): return "budget:\(Self.format(bits))"
        }
    }

    static func format(_ x: Float) -> String { String(format: "%g", Double(x)) }
}

public enum MixQuantError: Error, Equatable, CustomStringConvertible, LocalizedError {
    case invalidRule(String)

    public var description: String {
        switch self {
        case .invalidRule(let message): return message
        }
    }

    public var errorDescription: String? { description }
}

/// Settings of a MixQuant search.
public struct MixQuantOptions: Sendable, Equatable {
    public var rule: MixQuantRule
    /// Also search the first and last layer, which the reference recipe
    /// otherwise keeps at the policy's first/last bits (8).
    public var includeFirstLast = false

    public init(rule: MixQuantRule, includeFirstLast: Bool = false) {
        self.rule = rule
        self.includeFirstLast = includeFirstLast
    }
}

/// One layer of a search: its chosen weight bits and roundoff errors.
public struct MixQuantRow: Sendable, Equatable {
    public var name: String
    /// n_l, the number of weights.
    public var weights: Int
    /// Chosen weight bits (searched layers) or the policy's (the others).
    public var bits: Int
    /// The policy's input bits, kept as they are (nil: input not quantized).
    public var activationBits: Int?
    /// False for layers whose bits the search did not choose (first/last,
    /// explicit overrides).
    public var searched: Bool
    /// E_l(bits), the relative roundoff error at the chosen bits.
    public var error: Float
    /// E_l(b) for every b in `MixQuant.candidateBits`, in order.
    public var errors: [Float]

    public func error(atBits b: Int) -> Float? {
        MixQuant.candidateBits.contains(b) ? errors[b - MixQuant.candidateBits.lowerBound] : nil
    }
}

/// The outcome of a search: per-layer bits, model size, and what to merge
/// into `QuantizationPolicy.overrides`.
public struct MixQuantResult: Sendable, Equatable {
    public var rule: MixQuantRule
    public var targetBits: Int
    public var weightCalibration: RangeEstimator
    /// E_ref of the threshold rule (nil for the budget rule or no searched layer).
    public var referenceError: Float?
    /// Every conv/linear layer of the model, in forward order.
    public var rows: [MixQuantRow]

    /// sum_l n_l * b_l over all quantized layers (first and last included).
    public var sizeBits: Int { rows.reduce(0) { $0 + $1.weights * $1.bits } }
    public var weightCount: Int { rows.reduce(0) { $0 + $1.weights } }
    /// Weight-count-weighted mean bit width of the whole model.
    public var meanBits: Double { Double(sizeBits) / Double(max(weightCount, 1)) }
    /// Weight-count-weighted mean bit width of the searched layers (what the budget rule bounds).
    public var searchedMeanBits: Double {
        let searched = rows.filter(\.searched)
        let n = searched.reduce(0) { $0 + $1.weights }
        return Double(searched.reduce(0) { $0 + $1.weights * $1.bits }) / Double(max(n, 1))
    }
    /// The size with every searched layer at the target bits (the uniform policy).
    public var uniformSizeBits: Int {
        rows.reduce(0) { $0 + $1.weights * ($1.searched ? targetBits : $1.bits) }
    }

    /// Weight bits of the searched layers with each layer's input bits kept,
    /// to merge into `QuantizationPolicy.overrides`.
    public var overrides: [String: LayerBits] {
        Dictionary(uniqueKeysWithValues: rows.filter(\.searched).map {
            ($0.name, LayerBits(weight: $0.bits, activation: $0.activationBits))
        })
    }

    /// The searched layers' bits in `--layer-bits` form, e.g. "layer1.0.conv1=W3A8,...".
    public var layerBitsArgument: String {
        rows.filter(\.searched).map { "\($0.name)=\(LayerBits(weight: $0.bits, activation: $0.activationBits))" }
            .joined(separator: ",")
    }

    /// A plain-text table: one line per layer, then the model size.
    public func render() -> String {
        let target = "E(W\(targetBits))"
        let header = ["layer", "weights", "bits", "rel. error", target, ""]
        let body = rows.map { r in
            [r.name, String(r.weights), "W\(r.bits)", Self.scientific(r.error),
             r.error(atBits: targetBits).map(Self.scientific) ?? "-", r.searched ? "" : "fixed"]
        }
        let widths = header.indices.map { c in ([header] + body).map { $0[c].count }.max()! }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { c, text in
                c == 0 || c == cells.count - 1
                    ? text.padding(toLength: widths[c], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[c] - text.count) + text
            }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        }
        let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
            .replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
        var title = "MixQuant \(self.rule), target W\(targetBits), \(weightCalibration.rawValue) weight calibration"
        if let referenceError { title += ", E_ref \(Self.scientific(referenceError))" }
        let footer = [
            String(format: "model size %ld bits (%.1f KiB) for %ld weights: mean %.3f bits/weight",
                   sizeBits, Double(sizeBits) / 8192, weightCount, meanBits),
            String(format: "searched layers: mean %.3f bits/weight; uniform W%ld would be %ld bits (%.1f KiB)",
                   searchedMeanBits, targetBits, uniformSizeBits, Double(uniformSizeBits) / 8192),
        ]
        return ([title, line(header), rule] + body.map(line) + footer).joined(separator: "\n")
    }

    /// The result as JSON-ready values (also the "mixquant" metrics record).
    public var record: [String: Any] {
        var object: [String: Any] = [
            "rule": rule.description,
            "target_bits": targetBits,
            "weight_calibration": weightCalibration.rawValue,
            "size_bits": sizeBits,
            "weights": weightCount,
            "mean_bits": meanBits,
            "searched_mean_bits": searchedMeanBits,
            "uniform_size_bits": uniformSizeBits,
            "layer_bits": layerBitsArgument,
            "layers": rows.map { r -> [String: Any] in
                var errors: [String: Any] = [:]
                for (b, e) in zip(MixQuant.candidateBits, r.errors) { errors[String(b)] = Self.number(e) }
                return ["name": r.name, "weights": r.weights, "bits": r.bits,
                        "activation_bits": r.activationBits.map { $0 as Any } ?? NSNull(),
                        "searched": r.searched, "error": Self.number(r.error), "errors": errors]
            },
        ]
        if let referenceError { object["reference_error"] = Self.number(referenceError) }
        return object
    }

    /// `record` as pretty-printed JSON with sorted keys.
    public func json() throws -> String {
        let data = try JSONSerialization.data(withJSONObject: record, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }

    static func scientific(_ x: Float) -> String { String(format: "%.3e", Double(x)) }

    /// The shortest decimal of a Float as a Double (JSON numbers without float noise).
    static func number(_ x: Float) -> Any { x.isFinite ? (Double("\(x)") ?? Double(x)) as Any : NSNull() }
}

/// MixQuant: per-layer weight bit widths chosen from the relative
/// quantize-dequantize roundoff error of each layer's weights.
public enum MixQuant {
    /// The bit widths a layer may get.
    public static let candidateBits = 2...8

    /// E(b) = ||W - Q_b(W)||^2 / ||W||^2 for every b in `candidateBits`, in
    /// order, with Q_b the layer's per-channel symmetric weight quantizer at
    /// b bits and steps from `calibrateWeights` under `calibration`.
    ///
    /// The layer's own quantizer (grid, on/off, steps) is saved first and
    /// restored afterwards, so the model is left as it was.
    public static func relativeErrors(of layer: Conv2d, store: ParameterStore,
                                      calibration: CalibrationOptions = CalibrationOptions(),
                                      bits: ClosedRange<Int> = candidateBits) -> [Float] {
        let quantizer = layer.weightQuantizer
        let savedGrid = quantizer.grid, savedEnabled = quantizer.enabled
        let stepSlot = quantizer.step
        let savedSteps = Array(store.parameters[stepSlot])
        let savedZeroPoints = Array(store.state[quantizer.zeroPoint])
        defer {
            quantizer.grid = savedGrid
            quantizer.enabled = savedEnabled
            _ = store.parameters[stepSlot].update(from: savedSteps)
            _ = store.state[quantizer.zeroPoint].update(from: savedZeroPoints)
        }

        let w = store.parameters.pointer(layer.weight)
        let rows = layer.outChannels, n = layer.weight.rowLength
        var norm: Double = 0
        for r in 0..<rows { norm += Double(dot(w + r * n, w + r * n, count: n)) }
        let steps = store.parameters.pointer(stepSlot)

        return withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { scratch in
            let d = scratch.baseAddress!
            return bits.map { b in
                let grid = QuantGrid(bits: b, signed: true)
                quantizer.grid = grid
                quantizer.enabled = true
                calibrateWeights(of: layer, store: store, options: calibration)
                var error: Double = 0
                for r in 0..<rows {
                    let row = w + r * n
                    fakeQuantize(row, d, count: n, step: steps[r], zeroPoint: 0, grid: grid)
                    for i in 0..<n { d[i] = row[i] - d[i] }
                    error += Double(dot(d, d, count: n))
                }
                return norm > 0 ? Float(error / norm) : 0
            }
        }
    }

    /// The threshold rule on a table of errors (`errors[l][b - 2]` = E_l(b)):
    /// E_ref = mean_l E_l(targetBits); layer l gets the smallest candidate b
    /// with E_l(b) <= multiplier * E_ref, or the largest candidate if none.
    public static func thresholdBits(errors: [[Float]], targetBits: Int,
                                     multiplier: Float) -> (bits: [Int], reference: Float) {
        precondition(candidateBits.contains(targetBits), "target bits \(targetBits) outside \(candidateBits)")
        guard !errors.isEmpty else { return ([], .nan) }
        let t = targetBits - candidateBits.lowerBound
        let reference = Float(errors.reduce(0.0) { $0 + Double($1[t]) } / Double(errors.count))
        let limit = multiplier * reference
        let bits = errors.map { e in
            candidateBits.first { e[$0 - candidateBits.lowerBound] <= limit } ?? candidateBits.upperBound
        }
        return (bits, reference)
    }

    /// The budget rule on a table of errors (`errors[l][b - 2]` = E_l(b)) and
    /// weight counts n_l: minimise sum_l n_l * E_l(b_l) subject to
    /// sum_l n_l * b_l <= meanBits * sum_l n_l.
    ///
    /// Greedy, not exact: every layer starts at the smallest candidate; then,
    /// while some layer can take one more bit within the budget, the layer
    /// with the best objective drop per added weight bit gets one more bit.
    /// Adding k bits to layer l at b costs n_l * k bits and lowers the
    /// objective by n_l * (E_l(b) - E_l(b + k)), so its gain per bit is
    /// (E_l(b) - E_l(b + k)) / k; a layer's gain is the best over the k that
    /// fit the budget. With error curves whose drops shrink from bit to bit
    /// (the usual case) that is k = 1, the plain one-bit drop; looking further
    /// lets a layer cross a plateau (e.g. a heavy-tailed layer whose 2- and
    /// 3-bit grids both round almost everything to zero). Ties go to the
    /// larger layer, then the earlier one. Layers with no positive gain get
    /// no more bits, so the budget may be left partly unspent.
    public static func budgetBits(errors: [[Float]], weights: [Int], meanBits: Float) -> [Int] {
        precondition(errors.count == weights.count)
        let lowest = candidateBits.lowerBound, highest = candidateBits.upperBound
        var bits = [Int](repeating: lowest, count: errors.count)
        let total = weights.reduce(0, +)
        // A relative tolerance absorbs the Float rounding of e.g. 4.1.
        let allowance = Int((Double(meanBits) * Double(total) * (1 + 1e-7)).rounded(.down))
        var used = lowest * total
        precondition(used <= allowance, "budget \(meanBits) is below the smallest candidate \(lowest)")
        while true {
            var best: (layer: Int, gain: Float)?
            for l in errors.indices where bits[l] < highest && used + weights[l] <= allowance {
                let e = errors[l], b = bits[l]
                var gain = -Float.infinity
                for k in 1...(highest - b) where used + k * weights[l] <= allowance {
                    gain = max(gain, (e[b - lowest] - e[b + k - lowest]) / Float(k))
                }
                guard gain > 0 else { continue }
                if let current = best, gain < current.gain || (gain == current.gain && weights[l] <= weights[current.layer]) {
                    continue
                }
                best = (l, gain)
            }
            guard let chosen = best else { break }
            bits[chosen.layer] += 1
            used += weights[chosen.layer]
        }
        return bits
    }

    /// Searches per-layer weight bits for `model` under `policy`.
    ///
    /// Searched layers: every layer without an explicit override in
    /// `policy.overrides`, except the first and last unless
    /// `options.includeFirstLast`. The others keep the policy's bits and
    /// count in the model size. Each layer keeps the policy's input bits.
    /// The model's weights and quantizer state are left unchanged.
    public static func search(_ model: Network, policy: QuantizationPolicy, options: MixQuantOptions,
                              calibration: CalibrationOptions = CalibrationOptions()) throws -> MixQuantResult {
        try options.rule.validate()
        guard candidateBits.contains(policy.weightBits) else {
            throw MixQuantError.invalidRule("target weight bits \(policy.weightBits) outside \(candidateBits)")
        }
        let layers = model.layers
        var rows: [MixQuantRow] = layers.enumerated().map { i, layer in
            let bits = policy.bits(layer: layer.name, index: i, count: layers.count)
            let isEnd = i == 0 || i == layers.count - 1
            let searched = policy.overrides[layer.name] == nil && (options.includeFirstLast || !isEnd)
            let errors = relativeErrors(of: layer, store: model.store, calibration: calibration)
            return MixQuantRow(name: layer.name, weights: layer.weight.count, bits: bits.weight,
                               activationBits: bits.activation, searched: searched, error: .nan, errors: errors)
        }
        let searched = rows.indices.filter { rows[$0].searched }
        let table = searched.map { rows[$0].errors }
        var reference: Float?
        let chosen: [Int]
        switch options.rule {
        case .threshold(let multiplier):
            let result = thresholdBits(errors: table, targetBits: policy.weightBits, multiplier: multiplier)
            chosen = result.bits
            reference = searched.isEmpty ? nil : result.reference
        case .budget(let meanBits):
            chosen = budgetBits(errors: table, weights: searched.map { rows[$0].weights }, meanBits: meanBits)
        }
        for (i, b) in zip(searched, chosen) { rows[i].bits = b }
        for i in rows.indices {
            rows[i].error = rows[i].error(atBits: rows[i].bits)
                ?? relativeErrors(of: layers[i], store: model.store, calibration: calibration,
                                  bits: rows[i].bits...rows[i].bits)[0]
        }
        return MixQuantResult(rule: options.rule, targetBits: policy.weightBits,
                              weightCalibration: calibration.weights, referenceError: reference, rows: rows)
    }
}
