import Checkpoint
import EfQAT

/// EfQAT's selection in a run checkpoint, so a resumed run trains the same
/// rows until its next re-ranking:
///
/// - `efqat.trainable_rows.<layer>`: uint8 [out_channels], 1 where trained;
/// - `RunMetadata.efqat`: the settings (mode, p, refresh) and the phase step
///   at which the selection was made.
public enum EfqatCheckpoint {
    public static let maskPrefix = "efqat.trainable_rows."

    /// Nothing before the first selection.
    public static func tensors(of channels: CriticalChannels) -> [TensorRecord] {
        guard channels.selectedAtStep != nil else { return [] }
        return zip(channels.layers, channels.selection.masks(channels.layers)).map { layer, mask in
            TensorRecord(name: maskPrefix + layer.name, shape: [mask.count], values: mask)
        }
    }

    public static func metadata(of channels: CriticalChannels) -> RunMetadata.EfqatSelection? {
        channels.selectedAtStep.map { RunMetadata.EfqatSelection(settings: channels.options.description, selectedAtStep: $0) }
    }

    /// Restores the saved selection; a checkpoint from before the first
    /// step has none, and the run then selects afresh. Other EfQAT settings
    /// than the run's are refused: the resumed run would not be the one
    /// that was interrupted.
    public static func restore(_ file: SafeTensorsFile, metadata: RunMetadata, path: String,
                               into channels: CriticalChannels) throws {
        guard let saved = metadata.efqat else { return }
        guard saved.settings == channels.options.description else {
            throw RunError.invalid("\(path): checkpoint trained EfQAT \(saved.settings), this run asks for "
                                   + channels.options.description)
        }
        let masks: [[UInt8]] = try channels.layers.map { layer in
            let name = maskPrefix + layer.name
            guard let record = file[name], record.shape == [layer.outChannels], let mask: [UInt8] = try? record.values() else {
                throw RunError.invalid("\(path): tensor \(name) is missing or not uint8 [\(layer.outChannels)]")
            }
            return mask
        }
        channels.restore(ChannelSelection(masks: masks), selectedAt: saved.selectedAtStep)
    }
}
