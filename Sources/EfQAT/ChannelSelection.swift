import Kernels
import Layers

/// Which output channels (weight rows) of each conv/linear layer EfQAT
/// trains, as sorted runs of rows, one list per layer.
///
/// Importance of a block of weights is its mean |w| (docs/efqat.md):
/// blocks are output channels for CWPL and CWPN, whole layers for LWPN.
/// Ties go to the earlier layer, then the lower row, so the ranking is a
/// pure function of the weights.
public struct ChannelSelection: Sendable, Equatable {
    /// `rows[l]`: the selected rows of layer l, sorted, as maximal runs.
    public var rows: [[Range<Int>]]

    public init(rows: [[Range<Int>]]) { self.rows = rows }

    /// Ranks the channels of `layers` by the weights in `store` and keeps
    /// the top ones under `mode` and `fraction`.
    public static func select(_ layers: [Conv2d], store: ParameterStore, mode: SelectionMode,
                              fraction: Double) -> ChannelSelection {
        precondition((0...1).contains(fraction), "EfQAT fraction must be in [0, 1]")
        let scores = layers.map { rowImportance($0, store: store) }
        var chosen = layers.map { [Bool](repeating: false, count: $0.outChannels) }
        let totalWeights = layers.reduce(0) { $0 + $1.weight.count }
        let budget = fraction * Double(totalWeights)

        switch mode {
        case .cwpl:
            for (l, layer) in layers.enumerated() where fraction > 0 {
                let keep = min(layer.outChannels, max(1, Int((fraction * Double(layer.outChannels)).rounded())))
                for r in rankedIndices(scores[l]).prefix(keep) { chosen[l][r] = true }
            }
        case .cwpn:
            var channels: [(score: Double, layer: Int, row: Int)] = []
            for (l, layerScores) in scores.enumerated() {
                for (r, score) in layerScores.enumerated() { channels.append((score, l, r)) }
            }
            channels.sort { ($0.score, -$0.layer, -$0.row) > ($1.score, -$1.layer, -$1.row) }
            var taken = 0
            for channel in channels where Double(taken) < budget {
                chosen[channel.layer][channel.row] = true
                taken += layers[channel.layer].weight.rowLength
            }
        case .lwpn:
            let layerScores = zip(layers, scores).map { layer, rowScores in
                rowScores.reduce(0, +) / Double(layer.outChannels)
            }
            var taken = 0
            for l in rankedIndices(layerScores) where Double(taken) < budget {
                chosen[l] = [Bool](repeating: true, count: layers[l].outChannels)
                taken += layers[l].weight.count
            }
        }
        return ChannelSelection(rows: chosen.map(runs))
    }

    /// Mean |w| of every output channel of a layer (every row of length
    /// C_in*k*k has the same count, so it ranks like the sum).
    static func rowImportance(_ layer: Conv2d, store: ParameterStore) -> [Double] {
        let w = store.parameters.pointer(layer.weight), length = layer.weight.rowLength
        return (0..<layer.outChannels).map { r in
            var total: Double = 0
            for i in (r * length)..<((r + 1) * length) { total += Double(abs(w[i])) }
            return total / Double(length)
        }
    }

    /// Indices by descending score, ties by ascending index.
    static func rankedIndices(_ scores: [Double]) -> [Int] {
        scores.indices.sorted { (scores[$0], -$0) > (scores[$1], -$1) }
    }

    /// Sorted maximal runs of the set positions.
    static func runs(_ set: [Bool]) -> [Range<Int>] {
        var result: [Range<Int>] = []
        var start: Int?
        for (i, on) in set.enumerated() {
            if on, start == nil { start = i }
            if !on, let s = start { result.append(s..<i); start = nil }
        }
        if let s = start { result.append(s..<set.count) }
        return result
    }

    // MARK: What it trains

    /// Selected rows per layer.
    public func selectedRows(ofLayer l: Int) -> Int { rows[l].reduce(0) { $0 + $1.count } }

    /// Weights in the selected rows.
    public func selectedWeights(_ layers: [Conv2d]) -> Int {
        zip(layers, rows.indices).reduce(0) { $0 + selectedRows(ofLayer: $1.1) * $1.0.weight.rowLength }
    }

    /// Runs `body` (a backward pass) with `layers` computing dW for the
    /// selected rows only; their rows are put back after.
    @discardableResult
    public func withRows<R>(of layers: [Conv2d], _ body: () throws -> R) rethrows -> R {
        try layers.withGradientRows(rows, body)
    }

    /// The parameter spans one EfQAT step trains, in arena order: the
    /// selected weight rows and their weight steps, and always the
    /// activation steps, biases and batch-norm affine parameters. Steps of
    /// quantizers that are off are left alone.
    public func spans(_ layers: [Conv2d], store: ParameterStore) -> [TrainedSpan] {
        var spans: [TrainedSpan] = []
        for (layer, runs) in zip(layers, rows) {
            let length = layer.weight.rowLength, weight = layer.weight.offset
            let step = layer.weightQuantizer.step.offset
            for run in runs {
                spans.append(TrainedSpan(range: (weight + run.lowerBound * length)..<(weight + run.upperBound * length),
                                         role: .weight))
                if layer.weightQuantizer.enabled {
                    spans.append(TrainedSpan(range: (step + run.lowerBound)..<(step + run.upperBound), role: .weightStep))
                }
            }
            if layer.inputQuantizer.enabled {
                spans.append(TrainedSpan(range: layer.inputQuantizer.step.range, role: .activationStep))
            }
        }
        for slot in store.parameterLayout.slots where [.bias, .normScale, .normShift].contains(slot.role) {
            spans.append(TrainedSpan(range: slot.range, role: slot.role))
        }
        return spans.sorted { $0.range.lowerBound < $1.range.lowerBound }
    }

    // MARK: As bytes (checkpoints, broadcast)

    /// Per layer, one byte per output channel: 1 when it is trained.
    public func masks(_ layers: [Conv2d]) -> [[UInt8]] {
        zip(layers, rows).map { layer, runs in
            var mask = [UInt8](repeating: 0, count: layer.outChannels)
            for run in runs { for r in run { mask[r] = 1 } }
            return mask
        }
    }

    /// The selection the masks describe (nonzero: trained).
    public init(masks: [[UInt8]]) {
        self.init(rows: masks.map { mask in Self.runs(mask.map { $0 != 0 }) })
    }
}
