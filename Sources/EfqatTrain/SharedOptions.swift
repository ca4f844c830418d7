import ArgumentParser
import Genie
import Training

// Option groups that more than one subcommand takes, so the same thing has
// the same name everywhere (`--output`, `--model`, `--seed`, `--threads`,
// the Genie-D settings). Each shows under its title in `--help`.

/// The run folder and the FP32 model in it.
struct RunFolderOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The run's folder: checkpoints, metrics, the summary, and the FP32 model "
                               + "(fp32.safetensors) that the other subcommands read.", valueName: "path"))
    var output = "runs/default"

    @Option(help: ArgumentHelp("An FP32 model file: a fp32.safetensors of efqat-train, or (train only) a PyTorch "
                               + "state_dict of the --arch network. Default: --output/fp32.safetensors (train: trained "
                               + "there, or reused if it matches).", valueName: "path"))
    var model: String?

    /// The FP32 model the subcommand reads.
    var modelPath: String { model ?? output + "/fp32.safetensors" }
}

/// The run's one seed and how often it reports.
struct JobOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The run's seed: initialisation, data order, calibration and zero-shot subsets, "
                               + "reconstruction's QDrop masks, Genie-D's generators."))
    var seed: UInt64 = 0

    @Option(help: "Log a progress line (and a metrics record) every N steps when not on a terminal (0: never).")
    var logEvery = 10

    func validate() throws {
        if logEvery < 0 { throw ValidationError("--log-every must be 0 or more, got \(logEvery)") }
    }
}

/// How many images Genie-D makes, and how.
struct SynthesisArguments: ParsableArguments {
    @Option(help: ArgumentHelp("Images in the zero-shot set (genie: synthesised, a multiple of --synthesis-batch-size; "
                               + "noise and real: drawn with --seed). Reference: 1024."))
    var zeroShotImages = SynthesisOptions().images

    @Option(help: "Genie-D optimisation steps per batch (reference: 4000).")
    var synthesisIterations = SynthesisOptions().iterations

    @Option(help: "Images per Genie-D batch, each batch with its own generator and latents (reference: 128).")
    var synthesisBatchSize = SynthesisOptions().batchSize

    /// Whether any differs from its default.
    var given: [String] {
        let defaults = SynthesisOptions()
        return [("--zero-shot-images", zeroShotImages != defaults.images),
                ("--synthesis-iterations", synthesisIterations != defaults.iterations),
                ("--synthesis-batch-size", synthesisBatchSize != defaults.batchSize)].filter(\.1).map(\.0)
    }

    func options(seed: UInt64) -> SynthesisOptions {
        SynthesisOptions(images: zeroShotImages, batchSize: synthesisBatchSize, iterations: synthesisIterations, seed: seed)
    }

    func validate() throws {
        if zeroShotImages <= 0 { throw ValidationError("--zero-shot-images must be positive, got \(zeroShotImages)") }
    }
}

/// How the rank computes.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "OpenBLAS threads per rank (default: the node's cores shared by its ranks; synthesize: 1).")
    var threads: Int?

    func validate() throws {
        if let threads, threads <= 0 { throw ValidationError("--threads must be positive, got \(threads)") }
    }
}
