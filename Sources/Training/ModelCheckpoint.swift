import Checkpoint
import Foundation
import Kernels
import Layers

/// Maps a model (and optionally its optimizer) to safetensors tensors and
/// back, under PyTorch's names and layouts:
///
/// - every parameter and state slot under its own name (`conv1.weight`,
///   `layer2.0.downsample.1.running_var`, `fc.bias`, and the quantizers'
///   `<layer>.weight_quantizer.step`, `<layer>.input_quantizer.step` and
///   `<layer>.input_quantizer.zero_point`, `<layer>.weight_quantizer.zero_point`);
/// - `<bn>.num_batches_tracked` as a 0-dimensional int64, as PyTorch saves it;
/// - `optimizer.momentum_buffer.<name>` for every trained parameter.
///
/// A model file (`fp32.safetensors`) leaves out quantizer and optimizer
/// tensors, so `load_state_dict` of the torchvision-style model accepts it
/// strictly.
public enum ModelCheckpoint {
    public static let quantizerMarker = "_quantizer."
    public static let momentumPrefix = "optimizer.momentum_buffer."

    public static func tensors(of model: Network, includeQuantizers: Bool, optimizer: SGD?) -> [TensorRecord] {
        let store = model.store
        var records: [TensorRecord] = []
        for slot in store.allSlots where includeQuantizers || !slot.name.contains(quantizerMarker) {
            records.append(TensorRecord(name: slot.name, shape: slot.shape, values: Array(store[slot])))
        }
        for norm in model.batchNorms {
            records.append(TensorRecord(name: "\(norm.name).num_batches_tracked", shape: [], values: [norm.batchesTracked]))
        }
        if let optimizer {
            for slot in store.parameterLayout.slots {
                records.append(TensorRecord(name: momentumPrefix + slot.name, shape: slot.shape,
                                            values: Array(optimizer.velocity[slot])))
            }
        }
        return records
    }

    /// Copies tensors into the model (and optimizer). Every expected tensor
    /// must be present with the right shape; quantizer tensors are required
    /// only when `requireQuantizers` is set. `strict` also refuses tensors
    /// the model does not have, as PyTorch's `load_state_dict(strict=True)`.
    public static func restore(_ file: SafeTensorsFile, path: String, into model: Network,
                               requireQuantizers: Bool, optimizer: SGD?, strict: Bool = false) throws {
        let byName = Dictionary(file.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        if strict {
            let known = Set(tensors(of: model, includeQuantizers: true, optimizer: optimizer).map(\.name))
            if let unexpected = file.tensors.map(\.name).sorted().first(where: { !known.contains($0) }) {
                throw RunError.invalid("\(path): tensor \(unexpected) is not in a \(model.spec.details) model "
                    + "(--arch and --width choose the network)")
            }
        }
        func load(_ name: String, shape: [Int], into target: UnsafeMutableBufferPointer<Float>) throws {
            guard let record = byName[name] else {
                throw RunError.invalid("\(path): tensor \(name) of a \(model.spec.details) model is missing "
                    + "(was it saved from another model?)")
            }
            guard record.shape == shape else {
                throw RunError.invalid("\(path): tensor \(name) has shape \(record.shape), this model needs \(shape)")
            }
            let values: [Float] = try record.values()
            _ = target.update(from: values)
        }
        let store = model.store
        for slot in store.allSlots where requireQuantizers || !slot.name.contains(quantizerMarker) {
            try load(slot.name, shape: slot.shape, into: store[slot])
        }
        for norm in model.batchNorms {
            if let record = byName["\(norm.name).num_batches_tracked"], let v: [Int64] = try? record.values(), let n = v.first {
                norm.batchesTracked = n
            }
        }
        if let optimizer {
            for slot in store.parameterLayout.slots {
                try load(momentumPrefix + slot.name, shape: slot.shape, into: optimizer.velocity[slot])
            }
        }
    }
}
