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

    @Option(help: "Data set format: \(DatasetFormat.allCases.map(\.rawValue).joined(separator: ", ")).")
    var dataset: DatasetFormat = .mnist5k

    @Option(help: ArgumentHelp("Folder with the data set files (default: the data set's folder in the per-user "
                               + "cache that launch/setup-data.sh fills, $EFQAT_CACHE or "
                               + "${XDG_CACHE_HOME:-~/.cache}/efqat-train: mnist for mnist5k and mnist-idx, else "
                               + "the data set's name, e.g. fashion-mnist)."))
    var dataDir: String?

    @Option(help: "Folder for checkpoints, metrics and the summary.")
    var output = "runs/default"

    @Option(help: "Epochs of FP32 training (skipped when --output has a matching fp32.safetensors, or with --model).")
    var fp32Epochs = 12

    @Option(help: "Epochs of quantization-aware training.")
    var qatEpochs = 3

    @Option(help: "Global batch size (split over ranks and accumulation steps).")
    var batchSize = 128

    @Option(help: "Micro-batches each rank runs per step (gradient accumulation).")
    var accumulation = 1

    @Option(help: "Peak learning rate of FP32 training.")
    var lr: Float = 0.1

    @Option(help: "Peak learning rate of QAT.")
    var qatLr: Float = 0.01

    @Option(help: "SGD momentum.")
    var momentum: Float = 0.9

    @Option(help: "L2 weight decay on conv/linear weights.")
    var weightDecay: Float = 5e-4

    @Option(help: "Shift training images randomly by up to N pixels in x and y (0: no augmentation).")
    var augmentShift = 0

    @Option(help: "Learning-rate schedule: \(LearningRateSchedule.allCases.map(\.rawValue).joined(separator: ", ")).")
    var schedule: LearningRateSchedule = .cosine

    @Option(help: "Weight bits of the quantized layers (first and last layer: 8).")
    var weightBits = 8

    @Option(help: "Activation (layer input) bits of the quantized layers (last layer: 8; the image is not quantized).")
    var activationBits = 8

    @Option(help: "Weight quantizers (per output channel): symmetric (signed grid, zero point 0) or asymmetric (unsigned grid with an integer zero point).")
    var weightScheme: QuantScheme = .symmetric

    @Option(help: "Activation (layer input) quantizers (per tensor): symmetric or asymmetric.")
    var activationScheme: QuantScheme = .asymmetric

    @Option(help: "Per-layer bits, e.g. 'layer1.0.conv1=W4A8,fc=W8A8' (A- keeps the input in float).")
    var layerBits: String?

    @Option(help: ArgumentHelp(
        "A JSON quantization policy: weight_bits, activation_bits, first_layer, last_layer and layers "
            + "(name -> bits), e.g. {\"layers\": {\"layer3.2.conv2\": \"W8A8\"}}. Its values replace --weight-bits and "
            + "--activation-bits; --layer-bits entries win over its layers.",
        valueName: "path"))
    var policy: String?

    @Option(name: .customLong("mixquant"),
            help: "Search per-layer weight bits before calibration (MixQuant): threshold:<multiplier> or budget:<mean bits>; --layer-bits still wins.",
            transform: { try MixQuantRule(parsing: $0) })
    var mixQuant: MixQuantRule?

    @Option(help: "Images used to calibrate the quantizers: a seeded subset of the training set (of the --zero-shot set).")
    var calibrationSamples = 512

    @Option(help: "How weight ranges are chosen per channel: minmax, percentile or lp (L_p clip search, p = 2.4).")
    var weightCalibration: RangeEstimator = .minMax

    @Option(help: "How activation ranges are chosen per tensor: minmax, percentile or lp.")
    var activationCalibration: RangeEstimator = .minMax

    @Option(help: "Percentile kept by --*-calibration percentile.")
    var percentile = 99.99

    @Flag(inversion: .prefixedNo,
          help: ArgumentHelp("After calibration, re-estimate batch-norm running statistics on the quantized model "
                + "(not with --reconstruct, which corrects the blocks' outputs itself)."))
    var bnReestimate = true

    @Flag(help: "After calibration, reconstruct rounding and steps block by block (Genie-M / BRECQ with QDrop).")
    var reconstruct = false

    @Option(help: "Calibration images used by --reconstruct, from the training set or the --zero-shot set (reference: 1024).")
    var reconstructionSamples = 256

    @Option(help: "Iterations per block of --reconstruct (reference: 20000).")
    var reconstructionIterations = 400

    @Option(help: "Batch size of --reconstruct.")
    var reconstructionBatch = 32

    @Option(help: "Weight of the rounding regulariser of --reconstruct (Genie: 1.0, BRECQ: 0.01).")
    var roundingWeight: Float = 1.0

    @Flag(inversion: .prefixedNo,
          help: ArgumentHelp("QDrop during --reconstruct: in training iterations, elements of a block's input and of "
                + "every quantized input inside the block take their float value instead of the quantized one."))
    var qdrop = true

    @Option(help: ArgumentHelp("Probability that QDrop keeps an element in float rather than quantized "
                + "(QDrop, Genie: 0.5; 0 quantizes every element, as --no-qdrop)."))
    var qdropProbability = 0.5

    @Option(help: ArgumentHelp(
        "EfQAT: how channels are ranked by mean |w|: cwpn (all output channels of the network in one ranking), "
            + "cwpl (the top fraction of every layer's channels) or lwpn (whole layers).", valueName: "mode"))
    var efqatMode: SelectionMode = .cwpn

    @Option(help: ArgumentHelp(
        "EfQAT: fraction p of the conv/linear weights trained during QAT, 0 to 1. The rest are frozen (no weight "
            + "gradient, no all-reduce, no update). Activation steps, biases and batch-norm parameters always train. "
            + "1 is full QAT.", valueName: "p"))
    var efqatFraction = 0.1

    @Option(help: ArgumentHelp("EfQAT: re-rank the channels from the current weights: 'epoch' (at every epoch start), "
                               + "a number of steps, or 'never' (only before the first step). Default: epoch.", valueName: "when"),
            transform: { text in
                guard let interval = RefreshInterval(parsing: text) else {
                    throw ValidationError("--efqat-refresh: expected 'epoch', 'never' or a positive step count, got '\(text)'")
                }
                return interval
            })
    var efqatRefresh: RefreshInterval = .epoch

    @Option(help: "Train on a seeded random subset of this many training samples (default: all).")
    var trainSamples: Int?

    @Option(help: ArgumentHelp("Network architecture: \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")). "
                               + "Input channels and classes come from the data set.", valueName: "name"))
    var arch: Architecture = .resnet20

    @Option(help: "Channel width multiplier (resnet20: 1 gives 16/32/64 channels; mobilenet_v2: torchvision's width_mult).")
    var width: Double = 1

    @Option(help: "Seed of initialisation, data order and calibration subset.")
    var seed: UInt64 = 0

    @Option(help: ArgumentHelp("Continue from a checkpoint: a path, or 'auto' for the newest checkpoint in --output "
                               + "that verifies (damaged ones are skipped with a warning; none: start afresh).",
                               valueName: "path|auto"))
    var resume: String?

    @Flag(help: "Train a new FP32 model even if --output holds one.")
    var retrainFP32 = false

    @Option(help: ArgumentHelp("An FP32 model file (fp32.safetensors of an earlier run) to quantize instead of "
                               + "training or reusing one.", valueName: "path"))
    var model: String?

    @Flag(help: ArgumentHelp("Zero-shot quantization: every stage after the FP32 model runs on images without labels "
                             + "(--zero-shot-data) and QAT distils from the FP32 model. --augment-shift then applies to "
                             + "FP32 training only."))
    var zeroShot = false

    @Option(help: ArgumentHelp("Images of --zero-shot: genie (Genie-D, synthesised from the FP32 model's batch-norm "
                               + "statistics unless --synthetic-data is given), noise (N(0, 1) in the normalised input "
                               + "space) or real (training images, labels unused; for comparison).", valueName: "source"))
    var zeroShotData: ZeroShotOptions.Source = .genie

    @Option(help: "Images in the --zero-shot set (genie: synthesised; noise and real: drawn with --seed).")
    var zeroShotImages = ZeroShotOptions().images

    @Option(help: ArgumentHelp("--zero-shot genie: a data set file from `efqat-train synthesize` instead of "
                               + "synthesising --output/genie.safetensors (all its images are used).", valueName: "path"))
    var syntheticData: String?

    @Option(help: "--zero-shot genie: Genie-D optimisation steps per batch when synthesising (reference: 4000).")
    var synthesisIterations = SynthesisOptions().iterations

    @Option(help: "--zero-shot genie: images per synthesis batch, each with its own generator (reference: 128).")
    var synthesisBatchSize = SynthesisOptions().batchSize

    @Option(help: "--zero-shot: temperature T of the distillation loss.")
    var distillationTemperature: Float = 1

    @Option(help: ArgumentHelp(
        "Data-parallel runs: reduce the gradients in buckets by non-blocking all-reduces started while the backward "
            + "pass runs (on), or in one all-reduce after it (off). auto (the default): on with more than one rank "
            + "(docs/benchmarks.md measures it). The result is the same up to float rounding; one process reduces "
            + "nothing.", valueName: "auto|on|off"))
    var overlapReduce: ReductionOverlap = .auto

    @Option(help: "Also checkpoint every N steps (0: at the end of each epoch only).")
    var checkpointEvery = 0

    @Option(help: "Checkpoints kept in --output: the newest K; older ones are deleted once a new one is on disk.")
    var keepCheckpoints = 3

    @OptionGroup var runtime: RuntimeOptions

    @Option(help: "Log a line (and a metrics record) every N steps when not on a terminal.")
    var logEvery = 10

    @Option(help: ArgumentHelp("Testing aid: RANK:STEP makes that rank fail at that QAT step.", visibility: .hidden))
    var injectFailure: String?

    func validate() throws {
        for (name, value) in [("--fp32-epochs", fp32Epochs), ("--qat-epochs", qatEpochs)] where value < 0 {
            throw ValidationError("\(name) must be 0 or more, got \(value)")
        }
        for (name, value) in [("--batch-size", batchSize), ("--accumulation", accumulation),
                              ("--calibration-samples", calibrationSamples), ("--keep-checkpoints", keepCheckpoints)]
            where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        for (name, value) in [("--weight-bits", weightBits), ("--activation-bits", activationBits)] where !(2...8).contains(value) {
            throw ValidationError("\(name) must be between 2 and 8, got \(value)")
        }
        for (name, value) in [("--lr", lr), ("--qat-lr", qatLr)] where !(value > 0 && value.isFinite) {
            throw ValidationError("\(name) must be a positive number, got \(value)")
        }
        if !(0...1).contains(efqatFraction) { throw ValidationError("--efqat-fraction must be between 0 and 1, got \(efqatFraction)") }
        if !(percentile > 50 && percentile <= 100) { throw ValidationError("--percentile must be in (50, 100], got \(percentile)") }
        if reconstruct && weightScheme == .asymmetric {
            throw ValidationError("--reconstruct (AdaRound) supports --weight-scheme symmetric only")
        }
        if augmentShift < 0 { throw ValidationError("--augment-shift must be 0 or more, got \(augmentShift)") }
        if !(width > 0 && width <= 64) { throw ValidationError("--width must be in (0, 64], got \(width)") }
        if let trainSamples, trainSamples <= 0 { throw ValidationError("--train-samples must be positive, got \(trainSamples)") }
        _ = try zeroShotOptions()
        _ = try quantizationPolicy()
        _ = try failure()
    }

    func quantizationPolicy() throws -> QuantizationPolicy {
        var policy = QuantizationPolicy(weightBits: weightBits, activationBits: activationBits)
        policy.weightScheme = weightScheme
        policy.activationScheme = activationScheme
        if let path = self.policy {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationError("--policy: cannot read \(path)")
            }
            do {
                policy = try QuantizationPolicy.parse(json: Array(data), base: policy, source: path)
            } catch {
                throw ValidationError("\(error)")
            }
        }
        for item in (layerBits ?? "").split(separator: ",") {
            let parts = item.split(separator: "=")
            guard parts.count == 2, let bits = QuantizationPolicy.parseBits(String(parts[1])) else {
                throw ValidationError("--layer-bits: cannot read '\(item)'; expected NAME=W<bits>A<bits>, e.g. fc=W8A8")
            }
            policy.overrides[String(parts[0])] = bits
        }
        return policy
    }

    /// The --zero-shot settings, nil without --zero-shot.
    func zeroShotOptions() throws -> ZeroShotOptions? {
        let given = [("--synthetic-data", syntheticData != nil),
                     ("--zero-shot-data", zeroShotData != .genie),
                     ("--zero-shot-images", zeroShotImages != ZeroShotOptions().images),
                     ("--synthesis-iterations", synthesisIterations != SynthesisOptions().iterations),
                     ("--synthesis-batch-size", synthesisBatchSize != SynthesisOptions().batchSize),
                     ("--distillation-temperature", distillationTemperature != 1)].filter(\.1).map(\.0)
        guard zeroShot else {
            if let first = given.first { throw ValidationError("\(first) needs --zero-shot") }
            return nil
        }
        if syntheticData != nil && zeroShotData != .genie {
            throw ValidationError("--synthetic-data is a genie data set; it does not go with --zero-shot-data \(zeroShotData.rawValue)")
        }
        if !(distillationTemperature > 0 && distillationTemperature.isFinite) {
            throw ValidationError("--distillation-temperature must be positive, got \(distillationTemperature)")
        }
        if zeroShotImages <= 0 { throw ValidationError("--zero-shot-images must be positive, got \(zeroShotImages)") }
        var options = ZeroShotOptions()
        options.source = zeroShotData
        options.images = zeroShotImages
        options.syntheticData = syntheticData
        options.temperature = distillationTemperature
        options.synthesis.images = zeroShotImages
        options.synthesis.iterations = synthesisIterations
        options.synthesis.batchSize = synthesisBatchSize
        options.synthesis.seed = seed
        if zeroShotData == .genie, syntheticData == nil, let problem = options.synthesis.problem {
            throw ValidationError("--zero-shot genie synthesis: \(problem) (--zero-shot-images, --synthesis-batch-size, "
                                  + "--synthesis-iterations)")
        }
        return options
    }

    func failure() throws -> (rank: Int, step: Int)? {
        guard let injectFailure else { return nil }
        let parts = injectFailure.split(separator: ":").compactMap { Int($0) }
        guard parts.count == 2, parts[0] >= 0, parts[1] >= 0 else { throw ValidationError("--inject-failure takes RANK:STEP") }
        return (parts[0], parts[1])
    }

    /// The options both training phases share, with a phase's own epochs and rate.
    func phase(_ name: String, epochs: Int, learningRate: Float) -> PhaseOptions {
        var phase = PhaseOptions(name: name, epochs: epochs, globalBatch: batchSize, learningRate: learningRate, seed: seed)
        phase.accumulation = accumulation
        phase.momentum = momentum
        phase.weightDecay = weightDecay
        phase.schedule = schedule
        phase.logEvery = logEvery
        phase.augmentShift = augmentShift
        phase.overlapReduction = overlapReduce
        return phase
    }

    func pipelineOptions(defaultDataDirectory: String) throws -> PipelineOptions {
        let fp32 = phase("fp32", epochs: fp32Epochs, learningRate: lr)
        var qat = phase("qat", epochs: qatEpochs, learningRate: qatLr)
        if zeroShot { qat.augmentShift = 0 }
        var options = PipelineOptions(dataDirectory: dataDir ?? defaultDataDirectory, outputDirectory: output,
                                      fp32: fp32, qat: qat, policy: try quantizationPolicy())
        options.dataset = dataset
        options.architecture = arch
        options.widthMultiplier = width
        options.calibrationSamples = calibrationSamples
        options.calibration = CalibrationOptions(weights: weightCalibration, activations: activationCalibration)
        options.calibration.percentile = percentile
        options.reestimateBatchNorm = bnReestimate
        if reconstruct {
            var reconstruction = ReconstructionOptions()
            reconstruction.samples = reconstructionSamples
            reconstruction.iterations = reconstructionIterations
            reconstruction.batchSize = reconstructionBatch
            reconstruction.roundingWeight = roundingWeight
            reconstruction.qdrop = qdrop
            reconstruction.qdropProbability = qdropProbability
            reconstruction.seed = seed
            if let problem = reconstruction.problem { throw ValidationError(problem) }
            options.reconstruction = reconstruction
        }
        options.efqat = EfqatOptions(mode: efqatMode, fraction: efqatFraction, refresh: efqatRefresh)
        options.mixQuant = mixQuant.map { MixQuantOptions(rule: $0) }
        options.resume = resume
        options.retrainFP32 = retrainFP32
        options.checkpointEvery = checkpointEvery
        options.keepCheckpoints = keepCheckpoints
        options.injectFailure = try failure()
        options.trainSamples = trainSamples
        options.fp32Model = model
        options.zeroShot = try zeroShotOptions()
        return options
    }
}

extension TrainCommand {
    func run(communicator: Communicator) throws {
        try Pipeline(options: try pipelineOptions(defaultDataDirectory: DataCache.directory(for: dataset)),
                     communicator: communicator).run()
    }
}

extension DatasetFormat: ExpressibleByArgument {}
extension Architecture: ExpressibleByArgument {}
extension RangeEstimator: ExpressibleByArgument {}
extension QuantScheme: ExpressibleByArgument {}
extension LearningRateSchedule: ExpressibleByArgument {}
extension SelectionMode: ExpressibleByArgument {}
extension ZeroShotOptions.Source: ExpressibleByArgument {}
extension ReductionOverlap: ExpressibleByArgument {}
