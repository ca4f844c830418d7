import ArgumentParser
import Data
import EfQAT
import Foundation
import Layers
import Quantization
import Training

// The option groups of `efqat-train train`, one per concern, in the order
// `--help` shows them. Each checks its own values; what spans groups is
// checked by `TrainCommand.validate`.

struct DataOptions: ParsableArguments {
    @Option(help: "Data set format: \(DatasetFormat.allCases.map(\.rawValue).joined(separator: ", ")).")
    var dataset: DatasetFormat = .mnist5k

    @Option(help: ArgumentHelp("Folder with the data set files (default: the data set's folder in the per-user "
                               + "cache that launch/setup-data.sh fills, $EFQAT_CACHE or "
                               + "${XDG_CACHE_HOME:-~/.cache}/efqat-train: mnist for mnist5k and mnist-idx, else "
                               + "the data set's name, e.g. fashion-mnist)."))
    var dataDir: String?

    @Option(help: "Train on a seeded random subset of this many training samples (default: all).")
    var trainSamples: Int?

    @Option(help: "Shift training images randomly by up to N pixels in x and y (a random crop with N pixels of padding; 0: off).")
    var augmentShift = 0

    @Flag(help: "Mirror training images left to right with probability 1/2.")
    var augmentFlip = false

    var augmentation: Augmentation { Augmentation(maxShift: augmentShift, flip: augmentFlip) }

    func validate() throws {
        if augmentShift < 0 { throw ValidationError("--augment-shift must be 0 or more, got \(augmentShift)") }
        if let trainSamples, trainSamples <= 0 { throw ValidationError("--train-samples must be positive, got \(trainSamples)") }
    }
}

struct NetworkOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Network architecture: \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")). "
                               + "Input channels and classes come from the data set.", valueName: "name"))
    var arch: Architecture = .resnet20

    @Option(help: "Channel width multiplier (resnet20: 1 gives 16/32/64 channels; mobilenet_v2: torchvision's width_mult).")
    var width: Double = 1

    func validate() throws {
        if !(width > 0 && width <= 64) { throw ValidationError("--width must be in (0, 64], got \(width)") }
    }
}

struct TrainingOptions: ParsableArguments {
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

    @Option(help: "Learning-rate schedule: \(LearningRateSchedule.allCases.map(\.rawValue).joined(separator: ", ")).")
    var schedule: LearningRateSchedule = .cosine

    @Flag(help: ArgumentHelp("FP32 training from scratch: start the scale of every residual branch's last batch norm "
                             + "at 0, so each block begins as the identity (torchvision's zero_init_residual); steadies "
                             + "the first steps of deep networks."))
    var zeroInitResidual = false

    @Option(help: ArgumentHelp(
        "Data-parallel runs: reduce the gradients in buckets by non-blocking all-reduces started while the backward "
            + "pass runs (on), or in one all-reduce after it (off). auto (the default): on with more than one rank "
            + "(docs/benchmarks.md measures it). The result is the same up to float rounding; one process reduces "
            + "nothing.", valueName: "auto|on|off"))
    var overlapReduce: ReductionOverlap = .auto

    func validate() throws {
        for (name, value) in [("--fp32-epochs", fp32Epochs), ("--qat-epochs", qatEpochs)] where value < 0 {
            throw ValidationError("\(name) must be 0 or more, got \(value)")
        }
        for (name, value) in [("--batch-size", batchSize), ("--accumulation", accumulation)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        for (name, value) in [("--lr", lr), ("--qat-lr", qatLr)] where !(value > 0 && value.isFinite) {
            throw ValidationError("\(name) must be a positive number, got \(value)")
        }
    }

    /// One phase's options: its epochs and rate, the rest shared.
    func phase(_ name: String, epochs: Int, learningRate: Float, seed: UInt64, logEvery: Int,
               augmentation: Augmentation) -> PhaseOptions {
        var phase = PhaseOptions(name: name, epochs: epochs, globalBatch: batchSize, learningRate: learningRate, seed: seed)
        phase.accumulation = accumulation
        phase.momentum = momentum
        phase.weightDecay = weightDecay
        phase.schedule = schedule
        phase.logEvery = logEvery
        phase.augmentation = augmentation
        phase.overlapReduction = overlapReduce
        return phase
    }
}

struct QuantizationOptions: ParsableArguments {
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

    func validate() throws {
        for (name, value) in [("--weight-bits", weightBits), ("--activation-bits", activationBits)] where !(2...8).contains(value) {
            throw ValidationError("\(name) must be between 2 and 8, got \(value)")
        }
        _ = try quantizationPolicy()
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
}

struct CalibrationArguments: ParsableArguments {
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

    func validate() throws {
        if calibrationSamples <= 0 { throw ValidationError("--calibration-samples must be positive, got \(calibrationSamples)") }
        if !(percentile > 50 && percentile <= 100) { throw ValidationError("--percentile must be in (50, 100], got \(percentile)") }
    }

    var options: CalibrationOptions {
        var options = CalibrationOptions(weights: weightCalibration, activations: activationCalibration)
        options.percentile = percentile
        return options
    }
}

struct ReconstructionArguments: ParsableArguments {
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

    /// The settings of --reconstruct, nil without it.
    func options() throws -> ReconstructionOptions? {
        guard reconstruct else { return nil }
        var options = ReconstructionOptions()
        options.samples = reconstructionSamples
        options.iterations = reconstructionIterations
        options.batchSize = reconstructionBatch
        options.roundingWeight = roundingWeight
        options.qdrop = qdrop
        options.qdropProbability = qdropProbability
        if let problem = options.problem { throw ValidationError(problem) }
        return options
    }

    func validate() throws { _ = try options() }
}

struct EfqatArguments: ParsableArguments {
    @Option(help: ArgumentHelp(
        "How channels are ranked by mean |w|: cwpn (all output channels of the network in one ranking), "
            + "cwpl (the top fraction of every layer's channels) or lwpn (whole layers).", valueName: "mode"))
    var efqatMode: SelectionMode = .cwpn

    @Option(help: ArgumentHelp(
        "Fraction p of the conv/linear weights trained during QAT, 0 to 1. The rest are frozen (no weight "
            + "gradient, no all-reduce, no update). Activation steps, biases and batch-norm parameters always train. "
            + "1 is full QAT.", valueName: "p"))
    var efqatFraction = 0.1

    @Option(help: ArgumentHelp("Re-rank the channels from the current weights: 'epoch' (at every epoch start), "
                               + "a number of steps, or 'never' (only before the first step). Default: epoch.", valueName: "when"),
            transform: { text in
                guard let interval = RefreshInterval(parsing: text) else {
                    throw ValidationError("--efqat-refresh: expected 'epoch', 'never' or a positive step count, got '\(text)'")
                }
                return interval
            })
    var efqatRefresh: RefreshInterval = .epoch

    func validate() throws {
        if !(0...1).contains(efqatFraction) { throw ValidationError("--efqat-fraction must be between 0 and 1, got \(efqatFraction)") }
    }

    var options: EfqatOptions { EfqatOptions(mode: efqatMode, fraction: efqatFraction, refresh: efqatRefresh) }
}

struct ZeroShotArguments: ParsableArguments {
    @Flag(help: ArgumentHelp("Zero-shot quantization: every stage after the FP32 model runs on images without labels "
                             + "(--zero-shot-data) and QAT distils from the FP32 model. --augment-* then apply to "
                             + "FP32 training only."))
    var zeroShot = false

    @Option(help: ArgumentHelp("Images of --zero-shot: genie (Genie-D, synthesised from the FP32 model's batch-norm "
                               + "statistics unless --synthetic-data is given), noise (N(0, 1) in the normalised input "
                               + "space) or real (training images, labels unused; for comparison).", valueName: "source"))
    var zeroShotData: ZeroShotOptions.Source = .genie

    @Option(help: ArgumentHelp("--zero-shot genie: a data set file from `efqat-train synthesize` instead of "
                               + "synthesising --output/genie.safetensors (all its images are used).", valueName: "path"))
    var syntheticData: String?

    @Option(help: "--zero-shot: temperature T of the distillation loss.")
    var distillationTemperature: Float = 1

    func validate() throws {
        if syntheticData != nil && zeroShotData != .genie {
            throw ValidationError("--synthetic-data is a genie data set; it does not go with --zero-shot-data \(zeroShotData.rawValue)")
        }
        if !(distillationTemperature > 0 && distillationTemperature.isFinite) {
            throw ValidationError("--distillation-temperature must be positive, got \(distillationTemperature)")
        }
    }

    /// The options given that only mean something with --zero-shot.
    var given: [String] {
        [("--synthetic-data", syntheticData != nil), ("--zero-shot-data", zeroShotData != .genie),
         ("--distillation-temperature", distillationTemperature != 1)].filter(\.1).map(\.0)
    }
}

struct CheckpointArguments: ParsableArguments {
    @Option(help: ArgumentHelp("Continue from a checkpoint: a path, or 'auto' for the newest checkpoint in --output "
                               + "that verifies (damaged ones are skipped with a warning; none: start afresh).",
                               valueName: "path|auto"))
    var resume: String?

    @Flag(help: "Train a new FP32 model even if --output holds one.")
    var retrainFP32 = false

    @Option(help: "Also checkpoint every N steps (0: at the end of each epoch only).")
    var checkpointEvery = 0

    @Option(help: "Checkpoints kept in --output: the newest K; older ones are deleted once a new one is on disk.")
    var keepCheckpoints = 3

    @Option(help: ArgumentHelp("Testing aid: RANK:STEP makes that rank fail at that QAT step.", visibility: .hidden))
    var injectFailure: String?

    func validate() throws {
        if checkpointEvery < 0 { throw ValidationError("--checkpoint-every must be 0 or more, got \(checkpointEvery)") }
        if keepCheckpoints <= 0 { throw ValidationError("--keep-checkpoints must be positive, got \(keepCheckpoints)") }
        _ = try failure()
    }

    func failure() throws -> (rank: Int, step: Int)? {
        guard let injectFailure else { return nil }
        let parts = injectFailure.split(separator: ":").compactMap { Int($0) }
        guard parts.count == 2, parts[0] >= 0, parts[1] >= 0 else { throw ValidationError("--inject-failure takes RANK:STEP") }
        return (parts[0], parts[1])
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
