import ArgumentParser
import Data
import Distributed
import EfQAT
import Foundation
import Genie
import Layers
import Quantization
import Training

/// `efqat-train [train]`: the default job. Every option has a default, so
/// running it with no arguments trains, quantizes and evaluates ResNet-20
/// on MNIST.
struct TrainCommand: RankCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "The default job: FP32 training (or reuse), PTQ calibration, then EfQAT (quantization-aware "
            + "training of the most critical channels), data-parallel over MPI.",
        discussion: """
        Run it alone for one process, or under mpirun or srun for data parallelism; launch/run.sh \
        runs `mpirun -n 8` with oversubscription, one OpenBLAS thread per rank and yielding waits.

        The global batch is cut into (ranks x --accumulation) equal micro-batches, so the data order \
        and the result do not depend on the number of ranks.

        Outputs in --output: fp32.safetensors (the FP32 model), checkpoint-<phase>-e<epoch>-s<step>.safetensors \
        (resumable; the newest --keep-checkpoints are kept), final.safetensors (the quantized model with its \
        quantizer steps), metrics.jsonl and summary.txt.

        --zero-shot quantizes without labels: calibration, batch-norm re-estimation, --reconstruct and QAT run on \
        images alone (Genie-D images synthesised from the FP32 model into --output/genie.safetensors, or \
        --synthetic-data, or --zero-shot-data noise|real for comparison), and QAT distils from the FP32 model: \
        loss T^2 * KL(softmax(teacher / T) || softmax(student / T)). The FP32 model itself is trained with labels \
        (or reused, or given by --model); the test set evaluates every stage. See docs/genie.md.
        """)

    @OptionGroup(title: "Run folder") var folder: RunFolderOptions
    @OptionGroup(title: "Data") var data: DataOptions
    @OptionGroup(title: "Network") var network: NetworkOptions
    @OptionGroup(title: "Training") var training: TrainingOptions
    @OptionGroup(title: "Quantization") var quantization: QuantizationOptions
    @OptionGroup(title: "Calibration") var calibration: CalibrationArguments
    @OptionGroup(title: "Block reconstruction") var reconstruction: ReconstructionArguments
    @OptionGroup(title: "EfQAT") var efqat: EfqatArguments
    @OptionGroup(title: "Zero-shot") var zeroShot: ZeroShotArguments
    @OptionGroup(title: "Genie-D synthesis (--zero-shot)") var synthesis: SynthesisArguments
    @OptionGroup(title: "Checkpoints") var checkpoints: CheckpointArguments
    @OptionGroup(title: "Job") var job: JobOptions
    @OptionGroup(title: "Runtime") var runtime: RuntimeOptions

    /// What spans groups; each group checks its own values.
    func validate() throws {
        if reconstruction.reconstruct && quantization.weightScheme == .asymmetric {
            throw ValidationError("--reconstruct (AdaRound) supports --weight-scheme symmetric only")
        }
        _ = try zeroShotOptions()
    }

    /// The --zero-shot settings, nil without --zero-shot.
    func zeroShotOptions() throws -> ZeroShotOptions? {
        guard zeroShot.zeroShot else {
            if let first = (zeroShot.given + synthesis.given).first { throw ValidationError("\(first) needs --zero-shot") }
            return nil
        }
        var options = ZeroShotOptions()
        options.source = zeroShot.zeroShotData
        options.images = synthesis.zeroShotImages
        options.syntheticData = zeroShot.syntheticData
        options.temperature = zeroShot.distillationTemperature
        options.synthesis = synthesis.options(seed: job.seed)
        if options.source == .genie, options.syntheticData == nil, let problem = options.synthesis.problem {
            throw ValidationError("--zero-shot genie synthesis: \(problem) (--zero-shot-images, --synthesis-batch-size, "
                                  + "--synthesis-iterations)")
        }
        return options
    }

    func pipelineOptions(defaultDataDirectory: String) throws -> PipelineOptions {
        let zeroShot = try zeroShotOptions()
        let fp32 = training.phase("fp32", epochs: training.fp32Epochs, learningRate: training.lr, seed: job.seed,
                                  logEvery: job.logEvery, augmentation: data.augmentation)
        // Distillation trains on the zero-shot images as they are.
        let qat = training.phase("qat", epochs: training.qatEpochs, learningRate: training.qatLr, seed: job.seed,
                                 logEvery: job.logEvery, augmentation: zeroShot == nil ? data.augmentation : Augmentation())
        var options = PipelineOptions(dataDirectory: data.dataDir ?? defaultDataDirectory, outputDirectory: folder.output,
                                      fp32: fp32, qat: qat, policy: try quantization.quantizationPolicy())
        options.seed = job.seed
        options.dataset = data.dataset
        options.trainSamples = data.trainSamples
        options.architecture = network.arch
        options.widthMultiplier = network.width
        options.zeroInitResidual = training.zeroInitResidual
        options.calibrationSamples = calibration.calibrationSamples
        options.calibration = calibration.options
        options.reestimateBatchNorm = calibration.bnReestimate
        options.reconstruction = try reconstruction.options()
        options.efqat = efqat.options
        options.mixQuant = quantization.mixQuant.map { MixQuantOptions(rule: $0) }
        options.resume = checkpoints.resume
        options.retrainFP32 = checkpoints.retrainFP32
        options.checkpointEvery = checkpoints.checkpointEvery
        options.keepCheckpoints = checkpoints.keepCheckpoints
        options.injectFailure = try checkpoints.failure()
        options.fp32Model = folder.model
        options.zeroShot = zeroShot
        return options
    }
}

extension TrainCommand {
    func run(communicator: Communicator) throws {
        try Pipeline(options: try pipelineOptions(defaultDataDirectory: DataCache.directory(for: data.dataset)),
                     communicator: communicator).run()
    }
}
