import Checkpoint
import Data
import Distributed
import EfQAT
import Foundation
import Kernels
import Layers
import Quantization

/// Everything the default job needs to know.
public struct PipelineOptions: Sendable {
    public var dataset: DatasetFormat = .mnist5k
    public var dataDirectory: String
    public var outputDirectory: String
    /// The network to build; its input channels and classes come from the data set.
    public var architecture: Architecture = .resnet20
    public var widthMultiplier: Double = 1
    public var fp32: PhaseOptions
    public var qat: PhaseOptions
    public var policy: QuantizationPolicy
    /// Training samples whose activations set the quantizer ranges.
    public var calibrationSamples = 512
    public var calibration = CalibrationOptions()
    /// Run the MixQuant bit search on the FP32 model before calibration and
    /// use its per-layer weight bits (explicit `policy.overrides` still win).
    public var mixQuant: MixQuantOptions?
    /// Re-estimate batch-norm running statistics on the quantized model
    /// after calibration, before reconstruction.
    public var reestimateBatchNorm = true
    /// EfQAT during QAT: which channels train (p = 1 trains everything).
    public var efqat = EfqatOptions()
    /// Block reconstruction (Genie-M / BRECQ) after calibration; nil: off.
    public var reconstruction: ReconstructionOptions?
    /// A checkpoint to continue from: a path, or "auto" for the run's own.
    public var resume: String?
    /// Train the FP32 model even if the output folder has one.
    public var retrainFP32 = false
    /// An FP32 model file to start from instead of training or reusing one.
    public var fp32Model: String?
    /// Also checkpoint every N steps (0: only at epoch ends).
    public var checkpointEvery = 0
    /// Run checkpoints kept in the output folder (the newest ones).
    public var keepCheckpoints = 3
    /// Train on a seeded random subset of this many samples (nil: all).
    public var trainSamples: Int?
    /// Zero-shot quantization: every stage after the FP32 model sees images
    /// only (synthetic by default) and QAT distils from the FP32 model; nil:
    /// the stages use the labelled training set.
    public var zeroShot: ZeroShotOptions?
    /// Testing aid: this rank fails at this QAT step.
    public var injectFailure: (rank: Int, step: Int)?

    public init(dataDirectory: String, outputDirectory: String, fp32: PhaseOptions, qat: PhaseOptions,
                policy: QuantizationPolicy) {
        self.dataDirectory = dataDirectory
        self.outputDirectory = outputDirectory
        self.fp32 = fp32
        self.qat = qat
        self.policy = policy
    }
}

/// One row of the summary table.
public struct StageResult: Sendable {
    public var name: String
    public var accuracy: Double = .nan
    public var seconds: Double = 0
    /// What training measured, for the stages that train.
    public var training: PhaseReport?

    public init(name: String) { self.name = name }
}

/// The default job: pre-train (or reuse) the FP32 model, calibrate fake
/// quantization, evaluate the PTQ model, run QAT, evaluate and save.
/// Every rank runs it; rank 0 alone writes files and talks.
public final class Pipeline {
    public let options: PipelineOptions
    private let communicator: Communicator
    private let log: RunLog
    private var results: [StageResult] = []

    public init(options: PipelineOptions, communicator: Communicator) throws {
        self.options = options
        self.communicator = communicator
        log = RunLog(active: communicator.isRoot, metricsPath: options.outputDirectory + "/metrics.jsonl")
    }

    private var checkpoints: CheckpointFolder {
        CheckpointFolder(path: options.outputDirectory, keep: options.keepCheckpoints)
    }
    /// Where the FP32 model is read from (`fp32Model`, else the output
    /// folder's) and, when trained, written to.
    private var fp32Path: String { options.fp32Model ?? options.outputDirectory + "/fp32.safetensors" }
    private var finalPath: String { options.outputDirectory + "/final.safetensors" }

    @discardableResult
    public func run() throws -> [StageResult] {
        let started = Date()
        if let failure = options.injectFailure, failure.rank >= communicator.size {
            throw RunError.invalid("--inject-failure: rank \(failure.rank) does not exist in a job of \(communicator.size)")
        }
        if communicator.isRoot { try checkpoints.checkWritable() }
        var (train, test) = try options.dataset.load(from: options.dataDirectory)
        if let limit = options.trainSamples, limit < train.count {
            var rng = SplitMix64(seed: options.fp32.seed, stream: [0x5355_4253])
            train = train.subset(rng.permutation(train.count).prefix(limit).sorted())
        }
        let spec = ModelSpec(architecture: options.architecture, inputChannels: train.channels, classes: train.classes,
                             widthMultiplier: options.widthMultiplier)
        if let problem = spec.problem { throw RunError.invalid(problem) }
        let model = Network(spec)
        model.initialize(seed: options.fp32.seed)
        let unknown = options.policy.unknownLayers(in: model)
        guard unknown.isEmpty else {
            throw RunError.invalid("the quantization policy names layers this model does not have: "
                + unknown.joined(separator: ", ") + " (\(spec)'s layers are \(model.layers.first!.name) ... "
                + "\(model.layers.last!.name); `efqat-train search-bits` lists them all)")
        }
        log.say("efqat-train: \(spec) on \(options.dataset.rawValue) (\(train.count) train, \(test.count) test), "
                + "\(communicator.size) rank(s), global batch \(options.qat.globalBatch)")

        let modelJSON = Self.json(spec)
        let resumed = try loadResumeCheckpoint(spec: spec, trainSamples: train.count)
        var resumePhase = resumed?.metadata["efqat.phase"]

        // 1. FP32 model.
        var fp32Stage = StageResult(name: "FP32")
        if resumePhase == "qat", let resumed {
            fp32Stage.name = "FP32 (earlier run)"
            fp32Stage.accuracy = Double(resumed.metadata["efqat.fp32_accuracy"] ?? "") ?? .nan
        } else if resumePhase == nil, options.fp32Model != nil {
            let file = try SafeTensorsFile.read(from: fp32Path)
            if file.metadata["efqat.model"] == nil {
                // A state_dict from elsewhere (PyTorch, torchvision): it must
                // hold exactly this network's tensors, by name and shape.
                try ModelCheckpoint.restore(file, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil,
                                            strict: true)
                log.say("starting from the state_dict in \(fp32Path), loaded strictly as \(spec.details)")
            } else {
                try Self.checkModel(file.metadata["efqat.model"], in: fp32Path, against: spec)
                guard file.metadata["efqat.dataset"] == options.dataset.rawValue else {
                    throw RunError.invalid("\(fp32Path): a model trained on \(file.metadata["efqat.dataset"] ?? "?"); "
                        + "this run uses \(options.dataset.rawValue)")
                }
                try ModelCheckpoint.restore(file, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil)
                log.say("starting from the FP32 model in \(fp32Path)")
            }
            fp32Stage.name = "FP32 (given)"
            fp32Stage.accuracy = evaluate(model, on: test, communicator: communicator).accuracy
        } else if resumePhase == nil, !options.retrainFP32, let reused = try reusableFP32(modelJSON: modelJSON) {
            try ModelCheckpoint.restore(reused, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil)
            log.say("reusing the FP32 model in \(fp32Path) (--retrain-fp32 trains a new one)")
            fp32Stage.name = "FP32 (reused)"
            fp32Stage.accuracy = evaluate(model, on: test, communicator: communicator).accuracy
        } else {
            let trainer = try Trainer(model: model, data: train, options: options.fp32, communicator: communicator, log: log)
            if resumePhase == "fp32", let resumed {
                try restore(resumed, into: model, trainer: trainer, quantized: false)
                resumePhase = nil
            }
            let report = try trainer.run(checkpointEvery: options.checkpointEvery) { t in
                try self.saveRunCheckpoint(model: model, trainer: t, phase: .fp32, extra: [:])
            }
            fp32Stage.seconds = report.seconds
            fp32Stage.training = report
            fp32Stage.accuracy = evaluate(model, on: test, communicator: communicator).accuracy
            try rootWrites {
                let tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: false, optimizer: nil)
                try SafeTensorsFile(tensors: tensors, metadata: self.metadata(model: modelJSON, phase: "fp32-final", extra: [
                    "efqat.fp32_recipe": self.fp32Recipe, "efqat.fp32_accuracy": String(fp32Stage.accuracy),
                ])).write(to: self.fp32Path)
            }
        }
        results.append(fp32Stage)
        log.say(String(format: "FP32 test accuracy %.2f%%", fp32Stage.accuracy * 100))
        log.record("eval", ["stage": "fp32", "accuracy": fp32Stage.accuracy])

        // 2. Calibration (PTQ), unless a QAT checkpoint carries it.
        var policy = options.policy
        var bitsLabel = "W\(policy.weightBits)A\(policy.activationBits)"
        if let mixQuant = options.mixQuant {
            // The search needs FP32 weights, which a QAT resume has not loaded.
            let fp32Model = resumePhase == "qat" ? try fp32Copy(of: model, fromFile: true) : model
            let search = try MixQuant.search(fp32Model, policy: policy, options: mixQuant, calibration: options.calibration)
            policy.overrides = search.overrides.merging(policy.overrides) { _, explicit in explicit }
            log.say(search.render())
            log.record("mixquant", search.record)
            bitsLabel = String(format: "MixQuant W%.2fA%d", search.meanBits, policy.activationBits)
        }
        // Zero-shot: from here on the stages see images only, and the FP32
        // model teaches QAT.
        let zeroShot = try options.zeroShot.map {
            try prepareZeroShot($0, model: model, train: train, resumedQAT: resumePhase == "qat" ? resumed : nil)
        }
        let images = zeroShot?.data.images ?? ImageSet(train)
        let dataLabel = options.zeroShot.map { " (zero-shot, \($0.source.rawValue))" } ?? ""

        policy.apply(to: model)
        var ptqStage = StageResult(name: "PTQ \(bitsLabel)\(dataLabel)")
        let channels = CriticalChannels(layers: model.layers, store: model.store, options: options.efqat)
        let qatTrainer = try zeroShot.map {
            try Trainer(model: model, images: images, distillation: $0.teacher, options: options.qat,
                        communicator: communicator, log: log, channels: channels)
        } ?? Trainer(model: model, data: train, options: options.qat, communicator: communicator, log: log,
                     channels: channels)
        if resumePhase == "qat", let resumed {
            try restore(resumed, into: model, trainer: qatTrainer, quantized: true)
            try EfqatCheckpoint.restore(resumed, path: resumedPath ?? "", into: channels)
            ptqStage.accuracy = Double(resumed.metadata["efqat.ptq_accuracy"] ?? "") ?? .nan
        } else {
            let t0 = Date()
            calibrate(model, on: images)
            // Reconstruction matches each block to the FP32 model's output
            // with the FP32 running statistics, which already corrects what
            // re-estimation would (re-estimating before it corrupts its
            // targets, after it measured 1 point worse at W3A3).
            if let reconstruction = options.reconstruction {
                reconstruct(model, on: images, options: reconstruction)
            } else if options.reestimateBatchNorm {
                reestimateBatchNormStatistics(model, communicator: communicator) {
                    forwardCalibrationSamples(model, images, training: true)
                }
            }
            ptqStage.seconds = Date().timeIntervalSince(t0)
            ptqStage.accuracy = evaluate(model, on: test, communicator: communicator).accuracy
        }
        results.append(ptqStage)
        log.say(String(format: "PTQ %@ test accuracy %.2f%% (weights %@, activations %@, %d calibration images%@)",
                       bitsLabel, ptqStage.accuracy * 100, options.calibration.weights.rawValue,
                       options.calibration.activations.rawValue, min(options.calibrationSamples, images.count),
                       zeroShot.map { " of " + $0.data.description } ?? ""))
        log.record("eval", ["stage": "ptq", "accuracy": ptqStage.accuracy])

        // 3. QAT: EfQAT trains the critical channels (all of them at p = 1).
        var extra = ["efqat.fp32_accuracy": String(fp32Stage.accuracy), "efqat.ptq_accuracy": String(ptqStage.accuracy)]
        extra["efqat.zero_shot"] = zeroShot?.data.description
        if let failure = options.injectFailure, failure.rank == communicator.rank {
            qatTrainer.afterStep = { t in
                if t.completedSteps >= failure.step {
                    throw RunError.invalid("injected failure after QAT step \(t.completedSteps)")
                }
            }
        }
        let report = try qatTrainer.run(checkpointEvery: options.checkpointEvery) { t in
            try self.saveRunCheckpoint(model: model, trainer: t, phase: .qat, extra: extra)
        }
        // With --qat-epochs 0 the run ends at PTQ: no QAT row, no probe.
        let trained = options.qat.epochs > 0
        let backward = trained && options.efqat.fraction < 1
            ? BackwardProbe.compare(model, images: images, microBatch: qatTrainer.microBatchSize, seed: options.qat.seed,
                                    communicator: communicator)
            : nil
        channels.release()
        if trained {
            var qatStage = StageResult(name: (options.efqat.fraction < 1
                                       ? "EfQAT \(bitsLabel) \(options.efqat.mode.rawValue) p=\(options.efqat.fractionLabel)"
                                       : "QAT \(bitsLabel) (full)") + dataLabel)
            qatStage.accuracy = evaluate(model, on: test, communicator: communicator).accuracy
            qatStage.seconds = report.seconds
            qatStage.training = report
            results.append(qatStage)
            log.record("eval", ["stage": "qat", "accuracy": qatStage.accuracy])
        }
        try rootWrites {
            let tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: true, optimizer: nil)
            try SafeTensorsFile(tensors: tensors, metadata: self.metadata(model: modelJSON, phase: "qat-final", extra: extra))
                .write(to: self.finalPath)
        }
        // The selection too: ranks must also agree on what they trained.
        let checksum = weightChecksum(model, also: channels.selection.masks(channels.layers).flatMap { $0 })
        let agree = ranksAgree(on: checksum, communicator: communicator)
        log.record("weights", ["checksum": String(checksum, radix: 16), "ranks_agree": agree])
        if !agree { throw RunError.invalid("ranks ended with different weights: data-parallel training diverged") }
        printSummary(totalSeconds: Date().timeIntervalSince(started),
                     efqat: efqatComparison(model: model, report: report, backward: backward),
                     zeroShot: zeroShot?.data)
        return results
    }

    /// Min-max calibration on a fixed, seeded subset of `images`, sharded
    /// over ranks; the ranges are reduced so all ranks agree.
    private func calibrate(_ model: Network, on images: ImageSet) {
        Quantization.calibrate(model, options: options.calibration, communicator: communicator) {
            forwardCalibrationSamples(model, images, training: false)
        }
    }

    /// Forward passes over this rank's shard of a fixed, seeded subset of
    /// `images` (the training set's, or the zero-shot set), in batches of
    /// 128 (32 in training mode, so batch norm sees batches of the size it
    /// was trained with).
    private func forwardCalibrationSamples(_ model: Network, _ images: ImageSet, training: Bool) {
        var rng = SplitMix64(seed: options.qat.seed, stream: [0x4341_4C49])
        let chosen = Array(rng.permutation(images.count).prefix(options.calibrationSamples))
        let shard = contiguousShard(count: chosen.count, rank: communicator.rank, worldSize: communicator.size)
        let batch = training ? 32 : 128
        let pixels = FloatBuffer(capacity: batch * images.sampleSize)
        for start in stride(from: shard.lowerBound, to: shard.upperBound, by: batch) {
            let indices = chosen[start..<min(start + batch, shard.upperBound)]
            images.gatherBatch(indices, into: pixels.pointer)
            _ = model.forward(FeatureMap(data: pixels.pointer, channels: images.channels, batch: indices.count,
                                         height: images.height, width: images.width), training: training)
        }
    }

    /// Genie-M / BRECQ block reconstruction on a seeded subset of `images`.
    private func reconstruct(_ model: Network, on images: ImageSet, options reconstruction: ReconstructionOptions) {
        let source = ReconstructionImages(count: images.count, channels: images.channels, height: images.height,
                                          width: images.width, gather: images.gatherBatch)
        let report = Quantization.reconstruct(model, options: reconstruction, communicator: communicator,
                                              images: source) { self.log.say($0) }
        log.record("reconstruction", [
            "seconds": report.seconds, "samples": report.samples, "iterations": reconstruction.iterations,
            "units": report.units.map { ["unit": $0.name, "mse_before": $0.errorBefore, "mse_after": $0.errorAfter,
                                         "changed": $0.changedRoundings, "weights": $0.weights, "seconds": $0.seconds] },
        ])
    }

    /// The images of a zero-shot run and its FP32 teacher, made (or read)
    /// before calibration while `model` still holds the FP32 weights, or
    /// after a QAT resume (`resumedQAT`) from fp32.safetensors; a resume must
    /// use the images its checkpoint was trained on.
    private func prepareZeroShot(_ zeroShot: ZeroShotOptions, model: Network, train: Dataset,
                                 resumedQAT: SafeTensorsFile?) throws -> (data: ZeroShotData, teacher: Distillation) {
        let fp32 = try fp32Copy(of: model, fromFile: resumedQAT != nil)
        let data = try ZeroShotData(options: zeroShot, teacher: fp32, teacherPath: fp32Path, train: train,
                                    dataset: options.dataset, seed: options.qat.seed,
                                    outputDirectory: options.outputDirectory, communicator: communicator, log: log,
                                    logEvery: options.qat.logEvery)
        if let resumedQAT, resumedQAT.metadata["efqat.zero_shot"] != data.description {
            throw RunError.invalid("\(resumedPath ?? ""): checkpoint was trained on "
                + "\(resumedQAT.metadata["efqat.zero_shot"] ?? "the labelled training set"), this run uses \(data.description)")
        }
        log.say("zero-shot: the quantization stages run on \(data.description); "
                + "QAT distils from the FP32 model (T = \(zeroShot.temperature)); no labels")
        log.record("zero_shot", ["data": zeroShot.source.rawValue, "images": data.images.count,
                                 "description": data.description, "temperature": Double(zeroShot.temperature)])
        return (data, Distillation(teacher: fp32, temperature: zeroShot.temperature))
    }

    /// A separate FP32 model (the distillation teacher, the data
    /// synthesiser, MixQuant's input): a copy of `model` while it holds the
    /// FP32 weights, or read from fp32.safetensors once a QAT resume has
    /// replaced them.
    private func fp32Copy(of model: Network, fromFile: Bool) throws -> Network {
        guard fromFile else { return model.clone() }
        let copy = Network(model.spec)
        try ModelCheckpoint.restore(try rootReads(fp32Path), path: fp32Path, into: copy,
                                    requireQuantizers: false, optimizer: nil)
        return copy
    }

    // MARK: Checkpoints

    private var resumedPath: String?

    /// The checkpoint to continue from, checked against this run. Rank 0
    /// picks and reads it and every rank gets its bytes, so all resume the
    /// same file even when only rank 0's disk holds it.
    private func loadResumeCheckpoint(spec: ModelSpec, trainSamples: Int) throws -> SafeTensorsFile? {
        guard let resume = options.resume else { return nil }
        let found = try rootShares {
            guard resume == "auto" else { return (resume, try SafeTensorsFile.readBytes(from: resume)) }
            let newest = self.checkpoints.newestValid { self.log.say("warning: --resume auto: \($0)") }
            if newest == nil {
                self.log.say("--resume auto: no valid checkpoint in \(self.options.outputDirectory), starting afresh")
            }
            return newest
        }
        guard let (path, file) = found else { return nil }
        resumedPath = path
        let m = file.metadata
        guard let phase = m["efqat.phase"], CheckpointPosition.Phase(rawValue: phase) != nil else {
            throw RunError.invalid("\(path): not a training checkpoint (no resumable phase in its metadata)")
        }
        // What makes the resumed run another run: model, data, data order, batch-norm batches.
        try Self.checkModel(m["efqat.model"], in: path, against: spec)
        let microBatches = communicator.size * options.qat.accumulation
        let expected: [(key: String, value: String, problem: String)] = [
            ("efqat.dataset", options.dataset.rawValue, "the checkpoint trained on another data set"),
            ("efqat.train_samples", String(trainSamples), "the checkpoint trained on another number of samples (--train-samples)"),
            ("efqat.seed", String(options.qat.seed), "the checkpoint has another seed, so another data order"),
            ("efqat.global_batch", String(options.qat.globalBatch), "the checkpoint has another global batch, so another data order"),
            ("efqat.micro_batches", String(microBatches),
             "the checkpoint cut the global batch into another number of micro-batches, and batch norm would see "
                + "batches of another size: make ranks x --accumulation equal to it (this run: "
                + "\(communicator.size) x \(options.qat.accumulation))"),
        ]
        for (key, value, problem) in expected {
            if let saved = m[key], saved != value {
                throw RunError.invalid("\(path): \(problem); \(key) is \(saved), this run has \(value)")
            }
        }
        log.say("resuming from \(path): phase \(phase), epoch \(m["efqat.epoch"] ?? "?"), step \(m["efqat.step"] ?? "?")")
        log.record("resume", ["path": path, "phase": phase, "epoch": Int(m["efqat.epoch"] ?? "") ?? -1,
                              "step": Int(m["efqat.step"] ?? "") ?? -1, "world_size": communicator.size,
                              "saved_world_size": Int(m["efqat.world_size"] ?? "") ?? -1])
        return file
    }

    /// A file that rank 0 finds (nil: none) and reads, verified and decoded
    /// by every rank from the bytes rank 0 broadcasts: ranks need no access
    /// to rank 0's disk, and all get the same file. Errors on rank 0 end the
    /// job; a damaged file fails on every rank alike.
    private func rootShares(_ find: () throws -> (path: String, bytes: [UInt8])?) throws
        -> (path: String, file: SafeTensorsFile)? {
        let found = communicator.isRoot ? try find() : nil
        let path = communicator.broadcast(found?.path ?? "")
        guard let bytes = communicator.broadcast(found?.bytes) else { return nil }
        return (path, try SafeTensorsFile(decoding: bytes, path: path))
    }

    /// The file at `path`, read by rank 0 and shared with every rank (never
    /// nil: rank 0 either reads it or fails).
    private func rootReads(_ path: String) throws -> SafeTensorsFile {
        try rootShares { (path, try SafeTensorsFile.readBytes(from: path)) }!.file
    }

    /// Refuses a file whose model is not the one this run builds, in one
    /// line that names both.
    static func checkModel(_ saved: String?, in path: String, against spec: ModelSpec) throws {
        guard let saved else {
            throw RunError.invalid("\(path): no model description (efqat.model) in its metadata; not written by efqat-train")
        }
        guard saved != json(spec) else { return }
        let theirs = (try? JSONDecoder().decode(ModelSpec.self, from: Data(saved.utf8)))?.details ?? saved
        throw RunError.invalid("\(path): holds a \(theirs) model; this run builds a \(spec.details) model "
            + "(--arch and --width choose the network, the data set its channels and classes)")
    }

    private func restore(_ file: SafeTensorsFile, into model: Network, trainer: Trainer, quantized: Bool) throws {
        let path = resumedPath ?? ""
        if quantized, let bits = file.metadata["efqat.bits"], bits != Self.json(layerBits(model)) {
            throw RunError.invalid("\(path): checkpoint was quantized as \(bits), this run asks for \(Self.json(layerBits(model)))")
        }
        try ModelCheckpoint.restore(file, path: path, into: model, requireQuantizers: quantized, optimizer: trainer.optimizer)
        guard let epoch = Int(file.metadata["efqat.epoch"] ?? ""), let step = Int(file.metadata["efqat.step"] ?? "") else {
            throw RunError.invalid("\(path): metadata has no training position")
        }
        trainer.resume(at: TrainingPosition(epoch: epoch, step: step))
    }

    private func layerBits(_ model: Network) -> [String: String] {
        Dictionary(uniqueKeysWithValues: model.layers.map { layer in
            (layer.name, "W\(layer.weightQuantizer.grid.bits)A" + (layer.inputQuantizer.enabled ? "\(layer.inputQuantizer.grid.bits)" : "-"))
        })
    }

    private func metadata(model: String, phase: String, extra: [String: String]) -> [String: String] {
        var m = extra
        m["efqat.model"] = model
        m["efqat.phase"] = phase
        m["efqat.seed"] = String(options.qat.seed)
        m["efqat.global_batch"] = String(options.qat.globalBatch)
        m["efqat.world_size"] = String(communicator.size)
        m["efqat.dataset"] = options.dataset.rawValue
        return m
    }

    /// A resumable checkpoint named after its position, keeping the newest
    /// `keepCheckpoints` (rank 0).
    private func saveRunCheckpoint(model: Network, trainer: Trainer, phase: CheckpointPosition.Phase,
                                   extra: [String: String]) throws {
        try rootWrites {
            var m = self.metadata(model: Self.json(model.spec), phase: phase.rawValue, extra: extra)
            m["efqat.epoch"] = String(trainer.position.epoch)
            m["efqat.step"] = String(trainer.position.step)
            m["efqat.micro_batches"] = String(trainer.microBatchesPerStep)
            m["efqat.train_samples"] = String(trainer.sampleCount)
            var tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: true, optimizer: trainer.optimizer)
            if phase == .qat { m["efqat.bits"] = Self.json(self.layerBits(model)) }
            if let channels = trainer.channels {
                tensors += EfqatCheckpoint.tensors(of: channels)
                m.merge(EfqatCheckpoint.metadata(of: channels)) { _, new in new }
            }
            let position = CheckpointPosition(phase: phase, epoch: trainer.position.epoch, step: trainer.position.step)
            try self.checkpoints.save(SafeTensorsFile(tensors: tensors, metadata: m), at: position) {
                self.log.say("warning: \($0)")
            }
        }
    }

    /// Everything that shapes the FP32 model besides the model, data set and
    /// seed: a saved FP32 model is reused only when this matches.
    private var fp32Recipe: String {
        let o = options.fp32
        return "epochs=\(o.epochs) batch=\(o.globalBatch) lr=\(o.learningRate) momentum=\(o.momentum) "
            + "wd=\(o.weightDecay) schedule=\(o.schedule.rawValue) shift=\(o.augmentShift) "
            + "samples=\(options.trainSamples.map(String.init) ?? "all")"
    }

    /// The FP32 model of an earlier run with the same model, data and recipe
    /// (read by rank 0, shared with all).
    private func reusableFP32(modelJSON: String) throws -> SafeTensorsFile? {
        let path = fp32Path
        let found = try rootShares {
            FileManager.default.fileExists(atPath: path) ? (path, try SafeTensorsFile.readBytes(from: path)) : nil
        }
        guard let file = found?.file else { return nil }
        let m = file.metadata
        guard m["efqat.model"] == modelJSON, m["efqat.dataset"] == options.dataset.rawValue,
              m["efqat.seed"] == String(options.fp32.seed), m["efqat.fp32_recipe"] == fp32Recipe
        else {
            log.say("\(fp32Path) was trained with other settings: training a new FP32 model")
            return nil
        }
        return file
    }

    /// Runs `body` on rank 0 only; its errors end the job there (the caller
    /// aborts all ranks).
    private func rootWrites(_ body: () throws -> Void) throws {
        guard communicator.isRoot else { return }
        try FileManager.default.createDirectory(atPath: options.outputDirectory, withIntermediateDirectories: true)
        try body()
    }

    static func json<T: Encodable>(_ value: T) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self)
    }

    // MARK: Summary

    /// EfQAT against full QAT on this run: trained weights, backward time
    /// (probed side by side on one micro-batch) and all-reduce size.
    private func efqatComparison(model: Network, report: PhaseReport, backward: BackwardProbe?) -> String? {
        guard let backward else { return nil }
        let fullFloats = GradientReducer(spans: model.store.allTrainedSpans, norms: model.batchNorms, extras: 2).packedCount
        let weights = model.layers.reduce(0) { $0 + $1.weight.count }
        return [
            "EfQAT (\(options.efqat)) against full QAT:",
            String(format: "  trained weights   %.1f%% of %d", report.trainedWeightFraction * 100, weights),
            String(format: "  backward          %.1f ms against %.1f ms per micro-batch of %d (%.2fx faster)",
                   backward.selected * 1000, backward.full * 1000, backward.batch, backward.speedup),
            String(format: "  all-reduced       %@ against %@ per step (%.1f%%)",
                   SummaryTable.bytes(report.floatsPerStep * 4), SummaryTable.bytes(fullFloats * 4),
                   100 * Double(report.floatsPerStep) / Double(fullFloats)),
        ].joined(separator: "\n")
    }

    private func printSummary(totalSeconds: Double, efqat: String?, zeroShot: ZeroShotData?) {
        guard communicator.isRoot else { return }
        let text = SummaryTable(rows: results).render() + "\n"
            + (efqat.map { $0 + "\n" } ?? "")
            + (zeroShot.map { "zero-shot: PTQ and QAT on \($0.description), QAT by distillation from the FP32 model; "
                + "the FP32 model alone was trained with labels\n" } ?? "")
            + String(format: "total wall time %.1f s on %d rank(s); outputs in %@", totalSeconds, communicator.size,
                     options.outputDirectory)
        log.say("")
        log.say(text)
        try? (text + "\n").write(toFile: options.outputDirectory + "/summary.txt", atomically: true, encoding: .utf8)
        log.record("summary", [
            "stages": results.map { r -> [String: Any] in
                var row: [String: Any] = ["stage": r.name, "accuracy": r.accuracy, "seconds": r.seconds]
                if let t = r.training {
                    row["samples_per_s"] = t.samplesPerSecond
                    row["bytes_reduced"] = t.bytesReduced
                    row["bytes_per_step"] = t.floatsPerStep * 4
                    row["trained_weight_fraction"] = t.trainedWeightFraction
                    row["backward_s_per_step"] = t.backwardPerStep
                    row["forward_s"] = t.times.forward
                    row["backward_s"] = t.times.backward
                    row["communication_s"] = t.times.communication
                    row["update_s"] = t.times.update
                    row["buckets_started_early"] = t.bucketsStartedEarly
                }
                return row
            },
            "total_seconds": totalSeconds, "world_size": communicator.size,
            "zero_shot": zeroShot?.description ?? NSNull(),
        ])
    }
}

/// A 64-bit FNV-1a hash of a model's parameters and state, and of `also`:
/// equal on every rank exactly when the ranks hold bit-identical models.
public func weightChecksum(_ model: Network, also extra: [UInt8] = []) -> UInt64 {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    func mix(_ byte: UInt8) { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
    for arena in [model.store.parameters, model.store.state] {
        UnsafeRawBufferPointer(arena.all).forEach(mix)
    }
    extra.forEach(mix)
    return hash
}

/// True when every rank holds the same checksum.
public func ranksAgree(on checksum: UInt64, communicator: Communicator) -> Bool {
    var low = [Int64(bitPattern: checksum)], high = low
    communicator.allReduce(&low, .min)
    communicator.allReduce(&high, .max)
    return low == high
}
