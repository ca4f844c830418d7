import Checkpoint
import Data
import Distributed
import Foundation
import Genie
import Kernels
import Layers

/// Zero-shot quantization: calibration, batch-norm re-estimation, block
/// reconstruction and QAT see images only, never a label; QAT learns by
/// distillation from the FP32 model. See docs/genie.md.
public struct ZeroShotOptions: Sendable {
    /// Where the images come from.
    public enum Source: String, CaseIterable, Sendable {
        /// Genie-D images synthesised from the FP32 model's batch-norm statistics.
        case genie
        /// N(0, 1) noise in the model's input space: the floor to beat.
        case noise
        /// A seeded subset of the real training images (labels dropped): the
        /// ceiling, for comparison.
        case real
    }

    public var source: Source = .genie
    /// Images in the set (genie: to synthesise; ignored for `syntheticData`,
    /// whose images are all used).
    public var images = SynthesisOptions().images
    /// Genie-D settings when the set is synthesised (`images` replaces theirs).
    public var synthesis = SynthesisOptions()
    /// A data set file written by `efqat-train synthesize` to use instead of
    /// synthesising `--output/genie.safetensors`.
    public var syntheticData: String?
    /// T of the distillation loss.
    public var temperature: Float = 1

    public init() {}
}

/// The images of a zero-shot run, identical on every rank, and what they are.
struct ZeroShotData {
    let images: ImageSet
    /// For logs, the summary and checkpoints, e.g. "genie, 256 images (runs/x/genie.safetensors)".
    let description: String

    /// Makes (or reads) the images. `teacher` is the FP32 model (read from
    /// `teacherPath`); it is not changed. Genie images are synthesised into `outputDirectory` unless
    /// `options.syntheticData` names a file; an existing file made with the
    /// same settings and teacher is reused (and completed if interrupted).
    init(options: ZeroShotOptions, teacher: Network, teacherPath: String, train: Dataset, dataset: DatasetFormat,
         seed: UInt64, outputDirectory: String, communicator: Communicator, log: RunLog, logEvery: Int) throws {
        let (channels, height, width) = (train.channels, train.height, train.width)
        switch options.source {
        case .noise:
            images = .gaussianNoise(count: options.images, channels: channels, height: height, width: width, seed: seed)
            description = "noise, \(options.images) images of N(0, 1)"
        case .real:
            guard options.images <= train.count else {
                throw RunError.invalid("--zero-shot-images \(options.images): the training set has only \(train.count) images")
            }
            var rng = SplitMix64(seed: seed, stream: [0x5245_414C])  // "REAL"
            images = ImageSet(train, indices: Array(rng.permutation(train.count).prefix(options.images)))
            description = "real, \(options.images) training images (labels unused)"
        case .genie:
            let path: String
            var pixels: [Float]
            if let file = options.syntheticData {
                path = file
                pixels = communicator.isRoot ? try Self.read(file, shape: [channels, height, width]) : []
            } else {
                path = outputDirectory + "/genie.safetensors"
                var synthesis = options.synthesis
                synthesis.images = options.images
                if communicator.isRoot {
                    try FileManager.default.createDirectory(atPath: outputDirectory, withIntermediateDirectories: true)
                }
                log.say("genie: \(synthesis.images) images in \(path), synthesised where missing (\(synthesis.batches) "
                        + "batches of \(synthesis.batchSize), \(synthesis.iterations) iterations each, \(communicator.size) rank(s))")
                let report = try synthesizeDataset(
                    teacher: teacher, height: height, width: width, options: synthesis, communicator: communicator,
                    path: path, metadata: RunMetadata.syntheticImages(teacher: teacher.spec, dataset: dataset,
                                                                      teacherPath: teacherPath).entry) { event in
                    reportSynthesis(event, log: log, path: path, batches: synthesis.batches, logEvery: logEvery)
                }
                log.record("genie_summary", ["images": synthesis.images, "seconds": report.seconds,
                                             "resumed_batches": report.resumedBatches, "world_size": communicator.size])
                pixels = report.images
            }
            // Rank 0 holds the images; every rank needs them.
            var count = [Int64(pixels.count)]
            communicator.broadcast(&count)
            if !communicator.isRoot { pixels = [Float](repeating: 0, count: Int(count[0])) }
            communicator.broadcast(&pixels)
            images = ImageSet(channels: channels, height: height, width: width, pixels: pixels)
            description = "genie, \(images.count) images (\(path))"
        }
    }

    /// The `images` tensor of a synthetic data set file, [N, C, H, W] with
    /// [C, H, W] == `shape`.
    static func read(_ path: String, shape: [Int]) throws -> [Float] {
        guard FileManager.default.fileExists(atPath: path) else {
            throw RunError.invalid("--synthetic-data: no file at \(path) (efqat-train synthesize writes one)")
        }
        let file = try SafeTensorsFile.read(from: path)
        guard let record = file["images"], record.dtype == .f32, record.shape.count == 4,
              record.shape.dropFirst().elementsEqual(shape), record.shape[0] > 0 else {
            throw RunError.invalid("\(path): expected a float32 tensor `images` of [N, \(shape.map(String.init).joined(separator: ", "))] "
                                   + "(a file from efqat-train synthesize for this model's data set)")
        }
        return try record.values()
    }
}

/// Tells the user (and the metrics file) how synthesis goes; `synthesize`
/// and the zero-shot pipeline share it.
public func reportSynthesis(_ event: SynthesisEvent, log: RunLog, path: String, batches: Int, logEvery: Int) {
    switch event {
    case .resumed(let done, let total):
        log.say("resuming: \(done) of \(total) batches are already in \(path)")
    case .iteration(let batch, let iteration, let total, let loss):
        log.progress("batch \(batch + 1)/\(batches)", done: iteration, total: total, every: logEvery,
                     detail: String(format: "loss %.4g (batch norm %.4g, prior %.4g)",
                                    loss.total, loss.batchNorm, loss.inputPrior))
    case .finished(let index, let initial, let final, let seconds, let done, let total):
        log.say(String(format: "batch %d done (%d/%d): loss %.4g -> %.4g (batch norm %.4g, prior %.4g), %.1f s",
                       index + 1, done, total, initial.total, final.total, final.batchNorm, final.inputPrior, seconds))
        log.record("genie_batch", [
            "batch": index, "loss_initial": initial.total, "loss": final.total,
            "loss_batch_norm": final.batchNorm, "loss_prior": final.inputPrior, "seconds": seconds,
        ])
    }
}
