import Distributed
import Kernels
import Layers

/// EfQAT's state during training: the current channel selection, when it
/// was made, and what it makes the step train.
///
/// Rank 0 ranks the channels and broadcasts the result, so every rank
/// trains the same rows even if its weights were to differ in the last
/// bit. A selection is recomputed only at the steps `options.refresh`
/// names; a resumed run restores the saved one and re-ranks exactly where
/// the uninterrupted run would have.
public final class CriticalChannels {
    public let options: EfqatOptions
    public let layers: [Conv2d]
    private let store: ParameterStore
    public private(set) var selection: ChannelSelection
    /// The phase step at which `selection` was made (nil: not yet).
    public private(set) var selectedAtStep: Int?
    /// Counts selections installed (made or restored), so users of `spans`
    /// can tell theirs are stale.
    public private(set) var generation = 0

    public init(layers: [Conv2d], store: ParameterStore, options: EfqatOptions) {
        self.layers = layers
        self.store = store
        self.options = options
        selection = ChannelSelection(rows: layers.map { _ in [] })
    }

    /// Puts the selection for the step about to run in place, re-ranking
    /// if it is due.
    public func prepare(step: Int, stepInEpoch: Int, communicator: Communicator) {
        let due = selectedAtStep == nil || (options.refresh.isDue(step: step, stepInEpoch: stepInEpoch) && selectedAtStep != step)
        guard due else { return }
        var flat = communicator.isRoot
            ? ChannelSelection.select(layers, store: store, mode: options.mode, fraction: options.fraction).masks(layers).flatMap { $0 }
            : [UInt8](repeating: 0, count: layers.reduce(0) { $0 + $1.outChannels })
        flat.withUnsafeMutableBytes { communicator.broadcast($0, root: 0) }
        var masks: [[UInt8]] = [], start = 0
        for layer in layers {
            masks.append(Array(flat[start..<(start + layer.outChannels)]))
            start += layer.outChannels
        }
        install(ChannelSelection(masks: masks), selectedAt: step)
    }

    /// A selection saved by an earlier run, made at phase step `step`.
    public func restore(_ saved: ChannelSelection, selectedAt step: Int) {
        precondition(saved.rows.count == layers.count)
        install(saved, selectedAt: step)
    }

    private func install(_ new: ChannelSelection, selectedAt step: Int) {
        selection = new
        selectedAtStep = step
        generation += 1
    }

    /// Runs `body` (a training step) with the layers computing dW for the
    /// selected rows only.
    public func withSelectedRows<R>(_ body: () throws -> R) rethrows -> R {
        try selection.withRows(of: layers, body)
    }

    /// What the step trains under the current selection.
    public var spans: [TrainedSpan] { selection.spans(layers, store: store) }

    /// Fraction of all conv/linear weights the current selection trains.
    public var trainedWeightFraction: Double {
        Double(selection.selectedWeights(layers)) / Double(layers.reduce(0) { $0 + $1.weight.count })
    }
}
