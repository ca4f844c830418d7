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
    /// Start every residual branch's last batch-norm scale at 0, so each
    /// block begins as the identity (part of the FP32 recipe).
    public var zeroInitResidual = false
    /// The run's one seed: initialisation, data order, the calibration,
    /// reconstruction and zero-shot subsets, Genie-D synthesis. The pipeline
    /// gives it to every stage in place of the stage options' own.
    public var seed: UInt64 = 0
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

/// The default job, stage by stage: the FP32 model (trained, reused or
/// given), PTQ (MixQuant, calibration, batch-norm re-estimation or block
/// reconstruction), QAT (EfQAT or full), then evaluation and the final
/// files. Every rank runs it; rank 0 alone writes files and talks.
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

    /// What the stages of one run share.
    private struct Run {
        let train: Dataset
        let test: Dataset
        let model: Network
        /// The checkpoint the run continues from, until a stage has restored it.
        var resumed: ResumedCheckpoint?
    }

    private struct ResumedCheckpoint {
        let path: String
        let file: SafeTensorsFile
        let metadata: RunMetadata
        var phase: CheckpointPosition.Phase { metadata.content.resumablePhase! }
    }

    /// What quantization starts from: the bits, and the images the
    /// quantization stages see (the training set's, or a zero-shot set).
    private struct QuantizationSetup {
        let bitsLabel: String
        let images: ImageSet
        let zeroShot: (data: ZeroShotData, teacher: Distillation)?
        var dataLabel: String
    }

    @discardableResult
    public func run() throws -> [StageResult] {
        let started = Date()
        var run = try startRun()
        let fp32 = try fp32Stage(&run)
        results.append(fp32)
        let setup = try quantizationSetup(run)
        let channels = CriticalChannels(layers: run.model.layers, store: run.model.store, options: options.efqat)
        let trainer = try qatTrainer(run, setup, channels: channels)
        let ptq = try ptqStage(run, setup, trainer: trainer, channels: channels)
        results.append(ptq)
        var record = runMetadata(.quantizedModel, model: run.model)
        record.fp32Accuracy = fp32.accuracy
        record.ptqAccuracy = ptq.accuracy
        record.zeroShot = setup.zeroShot?.data.description
        let (report, backward) = try qatStage(run, setup, trainer: trainer, channels: channels, record: record)
        try finish(run, record: record, channels: channels)
        printSummary(totalSeconds: Date().timeIntervalSince(started),
                     efqat: efqatComparison(model: run.model, report: report, backward: backward),
                     zeroShot: setup.zeroShot?.data)
        return results
    }

    // MARK: Stages

    /// Checks the job, loads the data, builds the network and finds the
    /// checkpoint to resume.
    private func startRun() throws -> Run {
        if let failure = options.injectFailure, failure.rank >= communicator.size {
            throw RunError.invalid("--inject-failure: rank \(failure.rank) does not exist in a job of \(communicator.size)")
        }
        if communicator.isRoot { try checkpoints.checkWritable() }
        var (train, test) = try options.dataset.load(from: options.dataDirectory)
        if let limit = options.trainSamples, limit < train.count {
            var rng = SplitMix64(seed: options.seed, stream: [0x5355_4253])
            train = train.subset(rng.permutation(train.count).prefix(limit).sorted())
        }
        let spec = ModelSpec(architecture: options.architecture, inputChannels: train.channels, classes: train.classes,
                             widthMultiplier: options.widthMultiplier)
        if let problem = spec.problem { throw RunError.invalid(problem) }
        let model = Network(spec)
        model.initialize(seed: options.seed, zeroInitResidual: options.zeroInitResidual)
        let unknown = options.policy.unknownLayers(in: model)
        guard unknown.isEmpty else {
            throw RunError.invalid("the quantization policy names layers this model does not have: "
                + unknown.joined(separator: ", ") + " (\(spec)'s layers are \(model.layers.first!.name) ... "
                + "\(model.layers.last!.name); `efqat-train search-bits` lists them all)")
        }
        log.say("efqat-train: \(spec) on \(options.dataset.rawValue) (\(train.count) train, \(test.count) test), "
                + "\(communicator.size) rank(s), global batch \(options.qat.globalBatch)")
        return Run(train: train, test: test, model: model,
                   resumed: try loadResumeCheckpoint(spec: spec, trainSamples: train.count))
    }

    /// 1. The FP32 model: from the resumed QAT checkpoint's run, given by
    /// `--model`, reused from the output folder, or trained (and saved).
    private func fp32Stage(_ run: inout Run) throws -> StageResult {
        let model = run.model
        var stage = StageResult(name: "FP32")
        if let resumed = run.resumed, resumed.phase == .qat {
            stage.name = "FP32 (earlier run)"
            stage.accuracy = resumed.metadata.fp32Accuracy ?? .nan
        } else if run.resumed == nil, options.fp32Model != nil {
            try loadGivenFP32(into: model)
            stage.name = "FP32 (given)"
            stage.accuracy = evaluate(model, on: run.test, communicator: communicator).accuracy
        } else if run.resumed == nil, !options.retrainFP32, let reused = try reusableFP32(spec: model.spec) {
            try ModelCheckpoint.restore(reused, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil)
            log.say("reusing the FP32 model in \(fp32Path) (--retrain-fp32 trains a new one)")
            stage.name = "FP32 (reused)"
            stage.accuracy = evaluate(model, on: run.test, communicator: communicator).accuracy
        } else {
            let trainer = try Trainer(model: model, data: run.train, options: seeded(options.fp32),
                                      communicator: communicator, log: log)
            if let resumed = run.resumed {
                try restore(resumed, into: model, trainer: trainer, quantized: false)
                run.resumed = nil
            }
            let report = try trainer.run(checkpointEvery: options.checkpointEvery) { t in
                try self.saveRunCheckpoint(model: model, trainer: t, record: self.runMetadata(.fp32Checkpoint, model: model))
            }
            stage.seconds = report.seconds
            stage.training = report
            stage.accuracy = evaluate(model, on: run.test, communicator: communicator).accuracy
            var record = runMetadata(.fp32Model, model: model)
            record.fp32Recipe = fp32Recipe
            record.fp32Accuracy = stage.accuracy
            try rootWrites {
                let tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: false, optimizer: nil)
                try SafeTensorsFile(tensors: tensors, metadata: record.entry).write(to: self.fp32Path)
            }
        }
        log.say(String(format: "FP32 test accuracy %.2f%%", stage.accuracy * 100))
        log.record("eval", ["stage": "fp32", "accuracy": stage.accuracy])
        return stage
    }

    /// `--model`: an FP32 model file of efqat-train for this network and
    /// data set, or a state_dict from elsewhere (PyTorch, torchvision) that
    /// must hold exactly this network's tensors, by name and shape.
    private func loadGivenFP32(into model: Network) throws {
        let file = try SafeTensorsFile.read(from: fp32Path)
        if let record = try RunMetadata.of(file, path: fp32Path) {
            try record.check(model: model.spec, in: fp32Path)
            guard record.dataset == options.dataset else {
                throw RunError.invalid("\(fp32Path): a model trained on \(record.dataset.rawValue); "
                    + "this run uses \(options.dataset.rawValue)")
            }
            try ModelCheckpoint.restore(file, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil)
            log.say("starting from the FP32 model in \(fp32Path)")
        } else {
            try ModelCheckpoint.restore(file, path: fp32Path, into: model, requireQuantizers: false, optimizer: nil,
                                        strict: true)
            log.say("starting from the state_dict in \(fp32Path), loaded strictly as \(model.spec.details)")
        }
    }

    /// 2a. The bits (MixQuant's search on the FP32 weights when asked), and
    /// for zero-shot runs the images and the FP32 teacher, made while the
    /// model still holds the FP32 weights; then the quantizers go in.
    private func quantizationSetup(_ run: Run) throws -> QuantizationSetup {
        let model = run.model
        let resumedQAT = run.resumed.flatMap { $0.phase == .qat ? $0 : nil }
        var policy = options.policy
        var bitsLabel = "W\(policy.weightBits)A\(policy.activationBits)"
        if let mixQuant = options.mixQuant {
            // The search needs FP32 weights, which a QAT resume has not loaded.
            let fp32Model = try fp32Copy(of: model, fromFile: resumedQAT != nil)
            let search = try MixQuant.search(fp32Model, policy: policy, options: mixQuant, calibration: options.calibration)
            policy.overrides = search.overrides.merging(policy.overrides) { _, explicit in explicit }
            log.say(search.render())
            log.record("mixquant", search.record)
            bitsLabel = String(format: "MixQuant W%.2fA%d", search.meanBits, policy.activationBits)
        }
        let zeroShot = try options.zeroShot.map {
            try prepareZeroShot($0, model: model, train: run.train, resumedQAT: resumedQAT)
        }
        policy.apply(to: model)
        return QuantizationSetup(bitsLabel: bitsLabel, images: zeroShot?.data.images ?? ImageSet(run.train),
                                 zeroShot: zeroShot,
                                 dataLabel: options.zeroShot.map { " (zero-shot, \($0.source.rawValue))" } ?? "")
    }

    /// The QAT phase's trainer: on labelled data, or by distillation from
    /// the FP32 teacher on the zero-shot images.
    private func qatTrainer(_ run: Run, _ setup: QuantizationSetup, channels: CriticalChannels) throws -> Trainer {
        let phase = seeded(options.qat)
        let trainer = try setup.zeroShot.map {
            try Trainer(model: run.model, images: setup.images, distillation: $0.teacher, options: phase,
                        communicator: communicator, log: log, channels: channels)
        } ?? Trainer(model: run.model, data: run.train, options: phase, communicator: communicator, log: log,
                     channels: channels)
        if let failure = options.injectFailure, failure.rank == communicator.rank {
            trainer.afterStep = { t in
                if t.completedSteps >= failure.step {
                    throw RunError.invalid("injected failure after QAT step \(t.completedSteps)")
                }
            }
        }
        return trainer
    }

    /// 2b. PTQ: calibration, then block reconstruction or batch-norm
    /// re-estimation, and the PTQ model's accuracy; or, on a QAT resume,
    /// the checkpoint's quantized model and EfQAT selection.
    private func ptqStage(_ run: Run, _ setup: QuantizationSetup, trainer: Trainer,
                          channels: CriticalChannels) throws -> StageResult {
        let model = run.model
        var stage = StageResult(name: "PTQ \(setup.bitsLabel)\(setup.dataLabel)")
        if let resumed = run.resumed, resumed.phase == .qat {
            try restore(resumed, into: model, trainer: trainer, quantized: true)
            try EfqatCheckpoint.restore(resumed.file, metadata: resumed.metadata, path: resumed.path, into: channels)
            stage.accuracy = resumed.metadata.ptqAccuracy ?? .nan
        } else {
            let t0 = Date()
            calibrate(model, on: setup.images)
            // Reconstruction matches each block to the FP32 model's output
            // with the FP32 running statistics, which already corrects what
            // re-estimation would (re-estimating before it corrupts its
            // targets, after it measured 1 point worse at W3A3).
            if let reconstruction = options.reconstruction {
                reconstruct(model, on: setup.images, options: reconstruction)
            } else if options.reestimateBatchNorm {
                reestimateBatchNormStatistics(model, communicator: communicator) {
                    forwardCalibrationSamples(model, setup.images, training: true)
                }
            }
            stage.seconds = Date().timeIntervalSince(t0)
            stage.accuracy = evaluate(model, on: run.test, communicator: communicator).accuracy
        }
        log.say(String(format: "PTQ %@ test accuracy %.2f%% (weights %@, activations %@, %d calibration images%@)",
                       setup.bitsLabel, stage.accuracy * 100, options.calibration.weights.rawValue,
                       options.calibration.activations.rawValue, min(options.calibrationSamples, setup.images.count),
                       setup.zeroShot.map { " of " + $0.data.description } ?? ""))
        log.record("eval", ["stage": "ptq", "accuracy": stage.accuracy])
        return stage
    }

    /// 3. QAT: EfQAT trains the critical channels (all of them at p = 1),
    /// checkpointing as it goes; then the accuracy and, for EfQAT, the
    /// backward time of the selection against full QAT. With `--qat-epochs
    /// 0` the run ends at PTQ: no QAT row, no probe.
    private func qatStage(_ run: Run, _ setup: QuantizationSetup, trainer: Trainer, channels: CriticalChannels,
                          record: RunMetadata) throws -> (PhaseReport, BackwardProbe?) {
        let model = run.model
        var checkpointRecord = record
        checkpointRecord.content = .qatCheckpoint
        let report = try trainer.run(checkpointEvery: options.checkpointEvery) { t in
            try self.saveRunCheckpoint(model: model, trainer: t, record: checkpointRecord)
        }
        guard options.qat.epochs > 0 else { return (report, nil) }
        let backward = options.efqat.fraction < 1
            ? BackwardProbe.compare(model, selection: channels.selection, images: setup.images,
                                    microBatch: trainer.microBatchSize, seed: options.seed, communicator: communicator)
            : nil
        var stage = StageResult(name: (options.efqat.fraction < 1
                                       ? "EfQAT \(setup.bitsLabel) \(options.efqat.mode.rawValue) p=\(options.efqat.fractionLabel)"
                                       : "QAT \(setup.bitsLabel) (full)") + setup.dataLabel)
        stage.accuracy = evaluate(model, on: run.test, communicator: communicator).accuracy
        stage.seconds = report.seconds
        stage.training = report
        results.append(stage)
        log.record("eval", ["stage": "qat", "accuracy": stage.accuracy])
        return (report, backward)
    }

    /// 4. The quantized model file, and the check that every rank ended with
    /// the same weights and the same EfQAT selection.
    private func finish(_ run: Run, record: RunMetadata, channels: CriticalChannels) throws {
        var record = record
        record.layerBits = RunMetadata.layerBits(of: run.model)
        try rootWrites {
            let tensors = ModelCheckpoint.tensors(of: run.model, includeQuantizers: true, optimizer: nil)
            try SafeTensorsFile(tensors: tensors, metadata: record.entry).write(to: self.finalPath)
        }
        let checksum = weightChecksum(run.model, also: channels.selection.masks(channels.layers).flatMap { $0 })
        let agree = ranksAgree(on: checksum, communicator: communicator)
        log.record("weights", ["checksum": String(checksum, radix: 16), "ranks_agree": agree])
        if !agree { throw RunError.invalid("ranks ended with different weights: data-parallel training diverged") }
    }

    /// A phase's options with the run's seed.
    private func seeded(_ phase: PhaseOptions) -> PhaseOptions {
        var phase = phase
        phase.seed = options.seed
        return phase
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
        var rng = SplitMix64(seed: options.seed, stream: [0x4341_4C49])
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
        var reconstruction = reconstruction
        reconstruction.seed = options.seed
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
                                 resumedQAT: ResumedCheckpoint?) throws -> (data: ZeroShotData, teacher: Distillation) {
        let fp32 = try fp32Copy(of: model, fromFile: resumedQAT != nil)
        var zeroShot = zeroShot
        zeroShot.synthesis.seed = options.seed
        let data = try ZeroShotData(options: zeroShot, teacher: fp32, teacherPath: fp32Path, train: train,
                                    dataset: options.dataset, seed: options.seed,
                                    outputDirectory: options.outputDirectory, communicator: communicator, log: log,
                                    logEvery: options.qat.logEvery)
        if let resumedQAT, resumedQAT.metadata.zeroShot != data.description {
            throw RunError.invalid("\(resumedQAT.path): checkpoint was trained on "
                + "\(resumedQAT.metadata.zeroShot ?? "the labelled training set"), this run uses \(data.description)")
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

    /// The checkpoint to continue from, checked against this run. Rank 0
    /// picks and reads it and every rank gets its bytes, so all resume the
    /// same file even when only rank 0's disk holds it.
    private func loadResumeCheckpoint(spec: ModelSpec, trainSamples: Int) throws -> ResumedCheckpoint? {
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
        guard let m = try RunMetadata.of(file, path: path), let phase = m.content.resumablePhase,
              let training = m.training else {
            throw RunError.invalid("\(path): not a training checkpoint (no resumable phase in its metadata)")
        }
        // What makes the resumed run another run: model, data, data order, batch-norm batches.
        try m.check(model: spec, in: path)
        let microBatches = communicator.size * options.qat.accumulation
        let differences: [(saved: String, run: String, problem: String)] = [
            (m.dataset.rawValue, options.dataset.rawValue, "the checkpoint trained on another data set"),
            (String(training.trainSamples), String(trainSamples),
             "the checkpoint trained on another number of samples (--train-samples)"),
            (m.seed.map(String.init) ?? "none", String(options.seed), "the checkpoint has another seed, so another data order"),
            (m.globalBatch.map(String.init) ?? "none", String(options.qat.globalBatch),
             "the checkpoint has another global batch, so another data order"),
            (String(training.microBatches), String(microBatches),
             "the checkpoint cut the global batch into another number of micro-batches, and batch norm would see "
                + "batches of another size: make ranks x --accumulation equal to it (this run: "
                + "\(communicator.size) x \(options.qat.accumulation))"),
        ]
        for (saved, run, problem) in differences where saved != run {
            throw RunError.invalid("\(path): \(problem); it has \(saved), this run \(run)")
        }
        log.say("resuming from \(path): phase \(phase.rawValue), epoch \(training.position.epoch), "
                + "step \(training.position.step)")
        log.record("resume", ["path": path, "phase": phase.rawValue, "epoch": training.position.epoch,
                              "step": training.position.step, "world_size": communicator.size,
                              "saved_world_size": m.worldSize ?? -1])
        return ResumedCheckpoint(path: path, file: file, metadata: m)
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

    private func restore(_ resumed: ResumedCheckpoint, into model: Network, trainer: Trainer, quantized: Bool) throws {
        let bits = RunMetadata.layerBits(of: model)
        if quantized, let saved = resumed.metadata.layerBits, saved != bits {
            let differing = bits.keys.sorted().filter { saved[$0] != bits[$0] }
                .map { "\($0) \(saved[$0] ?? "-") against \(bits[$0]!)" }
            throw RunError.invalid("\(resumed.path): checkpoint was quantized with other bits than this run asks for: "
                + differing.prefix(3).joined(separator: ", ")
                + (differing.count > 3 ? " and \(differing.count - 3) more layers" : ""))
        }
        try ModelCheckpoint.restore(resumed.file, path: resumed.path, into: model, requireQuantizers: quantized,
                                    optimizer: trainer.optimizer)
        trainer.resume(at: resumed.metadata.training!.position)
    }

    /// The record every file of this run starts from.
    private func runMetadata(_ content: RunMetadata.Content, model: Network) -> RunMetadata {
        var record = RunMetadata(content: content, model: model.spec, dataset: options.dataset)
        record.seed = options.seed
        record.globalBatch = options.qat.globalBatch
        record.worldSize = communicator.size
        return record
    }

    /// A resumable checkpoint named after its position, keeping the newest
    /// `keepCheckpoints` (rank 0).
    private func saveRunCheckpoint(model: Network, trainer: Trainer, record: RunMetadata) throws {
        try rootWrites {
            var record = record
            record.training = RunMetadata.TrainingState(position: trainer.position,
                                                        microBatches: trainer.microBatchesPerStep,
                                                        trainSamples: trainer.sampleCount)
            var tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: true, optimizer: trainer.optimizer)
            let phase = record.content.resumablePhase!
            if phase == .qat { record.layerBits = RunMetadata.layerBits(of: model) }
            if let channels = trainer.channels {
                tensors += EfqatCheckpoint.tensors(of: channels)
                record.efqat = EfqatCheckpoint.metadata(of: channels)
            }
            let position = CheckpointPosition(phase: phase, epoch: trainer.position.epoch, step: trainer.position.step)
            try self.checkpoints.save(SafeTensorsFile(tensors: tensors, metadata: record.entry), at: position) {
                self.log.say("warning: \($0)")
            }
        }
    }

    private var fp32Recipe: RunMetadata.FP32Recipe {
        RunMetadata.FP32Recipe(phase: options.fp32, trainSamples: options.trainSamples,
                               zeroInitResidual: options.zeroInitResidual)
    }

    /// The FP32 model of an earlier run with the same network, data, seed
    /// and recipe (read by rank 0, shared with all).
    private func reusableFP32(spec: ModelSpec) throws -> SafeTensorsFile? {
        let path = fp32Path
        let found = try rootShares {
            FileManager.default.fileExists(atPath: path) ? (path, try SafeTensorsFile.readBytes(from: path)) : nil
        }
        guard let file = found?.file else { return nil }
        let m = try? RunMetadata.of(file, path: path)
        guard let m, m.content == .fp32Model, m.model == spec, m.dataset == options.dataset, m.seed == options.seed,
              m.fp32Recipe == fp32Recipe
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
