import Checkpoint
import Distributed
import Foundation
import Layers

/// A problem with a synthetic data set file or the settings, in one message.
public struct SynthesisError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What rank 0 hears while a data set is synthesised.
public enum SynthesisEvent {
    /// Finished batches found in the data set file.
    case resumed(batches: Int, of: Int)
    /// An iteration of a batch that rank 0 runs itself (1-based).
    case iteration(batch: Int, iteration: Int, of: Int, loss: StatisticsLossValue)
    /// A batch finished by any rank; `done` batches of `total` are in the file.
    case finished(index: Int, initialLoss: StatisticsLossValue, finalLoss: StatisticsLossValue,
                  seconds: Double, done: Int, total: Int)
}

public struct SynthesisReport: Sendable {
    /// Rank 0: every image, [N, C, H, W]; other ranks: empty.
    public var images: [Float]
    /// Rank 0: the final loss of every batch.
    public var batchLosses: [Double]
    /// Batches taken from an earlier run's file, and made by this run.
    public var resumedBatches: Int
    public var synthesizedBatches: Int
    public var seconds: Double
}

/// The synthetic data set file: tensor `images` [n, C, H, W] (float32,
/// PyTorch's layout) holding the finished batches in order, and metadata
/// (`genie.*`) saying how they were made. See docs/genie.md.
struct SyntheticDataFile {
    var images: [Float]
    /// Final total loss of every finished batch.
    var batchLosses: [Double]
    var metadata: [String: String]

    static let recipeKeys = ["genie.recipe", "genie.image_shape", "genie.teacher_crc32"]

    var finishedBatches: Int { batchLosses.count }

    func write(to path: String, shape: [Int]) throws {
        var m = metadata
        m["genie.finished_batches"] = String(finishedBatches)
        m["genie.batch_losses"] = "[" + batchLosses.map { String($0) }.joined(separator: ", ") + "]"
        let count = images.count / shape.reduce(1, *)
        try SafeTensorsFile(tensors: [TensorRecord(name: "images", shape: [count] + shape, values: images)],
                            metadata: m).write(to: path)
    }

    /// The file at `path`, which must have been made with the recipe in `metadata`.
    static func read(from path: String, matching metadata: [String: String], shape: [Int]) throws -> SyntheticDataFile {
        let file = try SafeTensorsFile.read(from: path)
        for key in recipeKeys where file.metadata[key] != metadata[key] {
            throw SynthesisError("\(path) was made with other settings (\(key): \(file.metadata[key] ?? "none"), "
                                 + "this run: \(metadata[key] ?? "none")); remove it or choose another output folder")
        }
        let losses = (file.metadata["genie.batch_losses"] ?? "")
            .trimmingCharacters(in: CharacterSet(charactersIn: "[]")).split(separator: ",")
            .compactMap { Double($0.trimmingCharacters(in: .whitespaces)) }
        guard let record = file["images"], record.dtype == .f32, record.shape.dropFirst().elementsEqual(shape),
              Int(file.metadata["genie.finished_batches"] ?? "") == losses.count,
              let batch = Int(file.metadata["genie.batch_size"] ?? ""), record.shape.first == losses.count * batch
        else {
            throw SynthesisError("\(path): not a synthetic data set of \(shape) images (tensor `images` or "
                                 + "its genie.* metadata is missing or inconsistent)")
        }
        return SyntheticDataFile(images: try record.values(), batchLosses: losses, metadata: file.metadata)
    }
}

/// Synthesises `options.images` images for `teacher` into the file at
/// `path`, data-parallel: batch b goes to rank b mod W, each round of W
/// batches is gathered on rank 0, which rewrites the file (atomically)
/// after every round. Batches already in the file are kept, so an
/// interrupted run continues where it stopped. Every rank must call this
/// with the same arguments; `metadata` is added to the file's (e.g. the
/// teacher's description). `events` is called on rank 0 only.
public func synthesizeDataset(teacher: Network, height: Int, width: Int, options: SynthesisOptions,
                              communicator: Communicator, path: String, metadata extra: [String: String] = [:],
                              events: (SynthesisEvent) -> Void = { _ in }) throws -> SynthesisReport {
    if let problem = options.problem { throw SynthesisError(problem) }
    guard height % 4 == 0, width % 4 == 0, height >= 8, width >= 8 else {
        throw SynthesisError("the generator needs image sides that are multiples of 4 (at least 8), got \(height)x\(width)")
    }
    let started = Date()
    let shape = [teacher.spec.inputChannels, height, width]
    let imageSize = shape.reduce(1, *)
    var metadata = extra
    metadata["genie.recipe"] = options.recipe
    metadata["genie.image_shape"] = "\(shape)"
    metadata["genie.teacher_crc32"] = teacherChecksum(teacher)
    metadata["genie.seed"] = String(options.seed)
    metadata["genie.iterations"] = String(options.iterations)
    metadata["genie.batch_size"] = String(options.batchSize)
    metadata["genie.images"] = String(options.images)

    // Rank 0 reads what an earlier run finished and tells the others.
    var file = SyntheticDataFile(images: [], batchLosses: [], metadata: metadata)
    if communicator.isRoot, FileManager.default.fileExists(atPath: path) {
        file = try SyntheticDataFile.read(from: path, matching: metadata, shape: shape)
        file.metadata = metadata
    }
    var finished = [Int64(file.finishedBatches)]
    communicator.broadcast(&finished)
    let total = options.batches
    let resumed = min(Int(finished[0]), total)
    if communicator.isRoot, resumed > 0 { events(.resumed(batches: resumed, of: total)) }

    let synthesizer = BatchSynthesizer(teacher: teacher, height: height, width: width, options: options)
    // A rank's part of a round: batch index, seconds, initial and final
    // loss terms (batch norm, prior), then the batch's images; empty when
    // the rank has no batch left. Through Float for every world size alike.
    let header = 6
    for first in stride(from: resumed, to: total, by: communicator.size) {
        let mine = first + communicator.rank
        var payload: [Float] = []
        if mine < total {
            let batch = synthesizer.synthesize(batch: mine) { iteration, loss in
                if communicator.isRoot {
                    events(.iteration(batch: mine, iteration: iteration, of: options.iterations, loss: loss))
                }
            }
            payload = [Float(mine), Float(batch.seconds),
                       Float(batch.initialLoss.batchNorm), Float(batch.initialLoss.inputPrior),
                       Float(batch.finalLoss.batchNorm), Float(batch.finalLoss.inputPrior)] + batch.images
        }
        // Parts arrive in rank order, which is batch order.
        let parts = communicator.allGather(payload)
        guard communicator.isRoot else { continue }
        for part in parts where !part.isEmpty {
            let initial = StatisticsLossValue(batchNorm: Double(part[2]), inputPrior: Double(part[3]))
            let final = StatisticsLossValue(batchNorm: Double(part[4]), inputPrior: Double(part[5]))
            file.images += part[header...]
            file.batchLosses.append(final.total)
            events(.finished(index: Int(part[0]), initialLoss: initial, finalLoss: final, seconds: Double(part[1]),
                             done: file.finishedBatches, total: total))
        }
        try file.write(to: path, shape: shape)
    }
    let kept = communicator.isRoot ? total : 0
    return SynthesisReport(images: Array(file.images.prefix(kept * options.batchSize * imageSize)),
                           batchLosses: Array(file.batchLosses.prefix(kept)), resumedBatches: resumed,
                           synthesizedBatches: total - resumed, seconds: Date().timeIntervalSince(started))
}

/// CRC-32 of the teacher's parameters and running statistics: a data set is
/// resumed only for the very same teacher.
func teacherChecksum(_ model: Network) -> String {
    var crc = CRC32()
    for arena in [model.store.parameters, model.store.state] { crc.update(UnsafeRawBufferPointer(arena.all)) }
    return crc.hexValue
}
