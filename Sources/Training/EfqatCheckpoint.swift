import Checkpoint
import EfQAT

/// EfQAT's selection in a run checkpoint, so a resumed run trains the same
/// rows until its next re-ranking:
///
/// - `efqat.trainable_rows.<layer>`: uint8 [out_channels], 1 where trained;
/// - metadata `efqat.efqat` (mode, p, refresh) and `efqat.selection_step`
///   (the phase step at which the selection was made).
public enum EfqatCheckpoint {
    public static let settingsKey = "efqat.efqat"
    public static let selectionStepKey = "efqat.selection_step"
    public static let maskPrefix = "efqat.trainable_rows."

    /// Nothing before the first selection.
    public static func tensors(of channels: CriticalChannels) -> [TensorRecord] {
        guard channels.selectedAtStep != nil else { return [] }
        return zip(channels.layers, channels.selection.masks(channels.layers)).map { layer, mask in
            TensorRecord(name: maskPrefix + layer.name, shape: [mask.count], values: mask)
        }
    }

    public static func metadata(of channels: CriticalChannels) -> [String: String] {
        guard let step = channels.selectedAtStep else { return [:] }
        return [settingsKey: channels.options.description, selectionStepKey: String(step)]
    }

    /// Restores the saved selection; a checkpoint from before the first
    /// step has none, and the run then selects afresh. Other EfQAT settings
    /// than the run's are refused: the resumed run would not be the one
    /// that was interrupted.
    public static func restore(_ file: SafeTensorsFile, path: String, into channels: CriticalChannels) throws {
        guard let saved = file.metadata[settingsKey] else { return }
        guard saved == channels.options.description else {
            throw RunError.invalid("\(path): checkpoint trained EfQAT \(saved), this run asks for \(channels.options.description)")
        }
        guard let step = Int(file.metadata[selectionStepKey] ?? "") else {
            throw RunError.invalid("\(path): metadata has EfQAT settings but no \(selectionStepKey)")
        }
        let masks: [[UInt8]] = try channels.layers.map { layer in
            let name = maskPrefix + layer.name
            guard let record = file[name], record.shape == [layer.outChannels], let mask: [UInt8] = try? record.values() else {
                throw RunError.invalid("\(path): tensor \(name) is missing or not uint8 [\(layer.outChannels)]")
            }
            return mask
        }
        channels.restore(ChannelSelection(masks: masks), selectedAt: step)
    }
}
