import ArgumentParser
import Data
import Distributed
import Foundation
import Genie
import Training

/// `efqat-train synthesize`: Genie-D zero-shot data synthesis from a trained
/// FP32 model's batch-norm statistics, data-parallel over batches.
struct SynthesizeCommand: RankCommand {
    static let configuration = CommandConfiguration(
        commandName: "synthesize",
        abstract: "Genie-D: synthesise a calibration data set from the batch-norm statistics of a trained FP32 model.",
        discussion: """
        Every batch gets a fresh generator and fresh latents z ~ N(0, I) (dimension 256), both trained with Adam \
        so that the model's batch-norm inputs on the generated images match its running statistics: \
        sum over batch-norm layers of ||mu - running_mean||^2 / C + ||sigma - sqrt(running_var + 1e-6)||^2 / C, \
        plus a prior pulling each image's per-channel mean to 0 and std to 1. The model runs in evaluation mode; \
        every strided convolution shifts its input by a random -1..1 pixels with reflected borders (swing \
        convolution). Latents: Adam lr 0.1, reduced x0.1 after 100 iterations without improvement (down to 1e-4); \
        generator: Adam lr 0.01, x0.95 every 100 iterations.

        The defaults are sized for a small CPU machine. The reference setting is --zero-shot-images 1024 \
        --synthesis-batch-size 128 --synthesis-iterations 4000.

        Batches are independent and split over the ranks; each batch's randomness derives from --seed and its \
        index only, so any number of ranks writes the same images. Rank 0 rewrites --output/genie.safetensors \
        (tensor `images` [N, C, H, W], float32, normalised as the model's inputs; genie.* metadata) after every \
        round of batches, so a rerun with the same settings continues where an interrupted one stopped. Losses per \
        batch go to --output/genie.jsonl, and a grid of samples to --grid-png. See docs/genie.md.
        """)

    @OptionGroup(title: "Run folder") var folder: RunFolderOptions
    @OptionGroup(title: "Genie-D synthesis") var synthesis: SynthesisArguments

    @Option(help: "PNG file with a grid of up to 64 samples (default: --output/genie-samples.png).")
    var gridPng: String?

    @OptionGroup(title: "Job") var job: JobOptions
    @OptionGroup(title: "Runtime") var runtime: RuntimeOptions

    var options: SynthesisOptions { synthesis.options(seed: job.seed) }

    func validate() throws {
        if let problem = options.problem { throw ValidationError(problem) }
    }

    /// One: OpenBLAS's multi-threaded GEMMs round differently from its
    /// single-threaded ones, and the images must not depend on how many ranks
    /// share the cores. Ranks use the cores instead.
    func defaultThreads(cores: Int, ranksOnNode: Int) -> Int { 1 }

    func run(communicator: Communicator) throws {
        let (output, modelPath, logEvery) = (folder.output, folder.modelPath, job.logEvery)
        let (teacher, record) = try loadModel(modelPath)
        let (height, width) = record.dataset.imageSize
        let log = RunLog(active: communicator.isRoot, metricsPath: output + "/genie.jsonl")
        if communicator.isRoot { try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true) }
        let path = output + "/genie.safetensors"
        let options = self.options
        log.say("genie: \(options.images) images of \(teacher.spec.inputChannels)x\(height)x\(width) for "
                + "\(teacher.spec) (\(modelPath)), \(options.batches) batches of \(options.batchSize), "
                + "\(options.iterations) iterations each, \(communicator.size) rank(s)")

        let report = try synthesizeDataset(
            teacher: teacher, height: height, width: width, options: options, communicator: communicator,
            path: path, metadata: RunMetadata.syntheticImages(teacher: teacher.spec, dataset: record.dataset,
                                                              teacherPath: modelPath).entry) { event in
            reportSynthesis(event, log: log, path: path, batches: options.batches, logEvery: logEvery)
        }
        guard communicator.isRoot else { return }
        let grid = gridPng ?? output + "/genie-samples.png"
        let png = sampleGridPNG(images: report.images, channels: teacher.spec.inputChannels, height: height,
                                width: width)
        guard FileManager.default.createFile(atPath: grid, contents: Data(png)) else { throw RunError.unwritable(grid) }
        let perImage = report.synthesizedBatches > 0
            ? report.seconds / Double(report.synthesizedBatches * options.batchSize) : 0
        log.record("genie_summary", [
            "images": options.images, "batches": options.batches, "resumed_batches": report.resumedBatches,
            "seconds": report.seconds, "seconds_per_image": perImage, "world_size": communicator.size,
            "mean_loss": report.batchLosses.reduce(0, +) / Double(max(report.batchLosses.count, 1)),
        ])
        log.say(String(format: "wrote %@ (%d images) and %@ in %.1f s (%.3f s per image on %d rank(s))",
                       path, options.images, grid, report.seconds, perImage, communicator.size))
    }
}
