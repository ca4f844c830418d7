import Data
import Distributed
import EfQAT
import Foundation
import Kernels
import Layers

/// Hyper-parameters of one training phase (FP32 pre-training or QAT).
public struct PhaseOptions: Sendable {
    public var name: String
    public var epochs: Int
    public var globalBatch: Int
    /// Micro-batches each rank runs per step (gradient accumulation).
    public var accumulation: Int = 1
    public var learningRate: Float
    public var momentum: Float = 0.9
    public var weightDecay: Float = 5e-4
    public var schedule: LearningRateSchedule = .cosine
    public var seed: UInt64
    public var logEvery: Int = 10
    /// Random translation and mirroring of the training images (labelled data only).
    public var augmentation = Augmentation()
    /// Whether the gradient all-reduce overlaps the backward pass.
    public var overlapReduction: ReductionOverlap = .auto

    public init(name: String, epochs: Int, globalBatch: Int, learningRate: Float, seed: UInt64) {
        self.name = name
        self.epochs = epochs
        self.globalBatch = globalBatch
        self.learningRate = learningRate
        self.seed = seed
    }
}

/// Whether a data-parallel step reduces its gradients in buckets while the
/// backward pass runs (non-blocking all-reduces) or in one blocking
/// all-reduce after it. A world of one reduces nothing either way.
public enum ReductionOverlap: String, Sendable, CaseIterable {
    case auto, on, off

    /// Whether a world of `worldSize` ranks overlaps. `auto` is `on`: the
    /// bandwidth study (docs/benchmarks.md) found it halving the exposed
    /// communication on a 20 Mbit/s link and no difference beyond the
    /// machine's noise at 1 Gbit/s.
    public func isOn(worldSize: Int) -> Bool {
        switch self {
        case .on, .auto: worldSize > 1
        case .off: false
        }
    }
}

/// Where a phase is: the next step to run. Exact to the step.
public struct TrainingPosition: Sendable, Equatable, Codable {
    public var epoch: Int
    public var step: Int
    public init(epoch: Int = 0, step: Int = 0) {
        self.epoch = epoch
        self.step = step
    }
}

/// Where this rank's step time goes, summed over the steps it ran.
public struct StepTimes: Sendable {
    /// Forward passes and the loss.
    public var forward: Double = 0
    /// Backward passes.
    public var backward: Double = 0
    /// The gradient all-reduce (including waiting for slower ranks).
    public var communication: Double = 0
    /// The optimizer update.
    public var update: Double = 0
}

/// What a finished phase measured.
public struct PhaseReport: Sendable {
    public var seconds: Double = 0
    public var samples: Int = 0
    public var bytesReduced: Int = 0
    public var steps: Int = 0
    public var lastLoss: Float = .nan
    public var times = StepTimes()
    /// Floats of the last step's all-reduce.
    public var floatsPerStep = 0
    /// Gradient buckets whose all-reduce started during the backward pass
    /// (0 without overlap).
    public var bucketsStartedEarly = 0
    /// Fraction of all conv/linear weights the last step trained.
    public var trainedWeightFraction = 1.0
    public var samplesPerSecond: Double { seconds > 0 ? Double(samples) / seconds : 0 }
    /// Mean backward time per step, seconds.
    public var backwardPerStep: Double { steps > 0 ? times.backward / Double(steps) : 0 }
}

/// Training without labels (zero-shot QAT): the student matches the
/// softened logits of a teacher on the same images (`softmaxDistillation`).
public struct Distillation {
    /// The FP32 model, run in evaluation mode (running statistics); it is
    /// never changed.
    public let teacher: Network
    /// T of softmax(logits / T); 1 compares the plain output distributions.
    public let temperature: Float

    public init(teacher: Network, temperature: Float = 1) {
        precondition(temperature > 0 && temperature.isFinite, "distillation temperature must be positive")
        self.teacher = teacher
        self.temperature = temperature
    }
}

/// What a phase trains on and what it minimises.
enum TrainingSamples {
    /// Labelled samples: softmax cross-entropy against the labels.
    case labeled(Dataset)
    /// Images alone: distillation from a teacher.
    case distilled(ImageSet, Distillation)

    var count: Int {
        switch self {
        case .labeled(let data): data.count
        case .distilled(let images, _): images.count
        }
    }

    var sampleSize: Int {
        switch self {
        case .labeled(let data): data.sampleSize
        case .distilled(let images, _): images.sampleSize
        }
    }
}

/// Data-parallel training of a model for one phase: every rank runs its
/// micro-batches of each global batch, an all-reduce (whole, or in buckets
/// during the backward pass) averages what is trained, and every rank
/// applies the same update, so all ranks hold
/// identical weights after every step.
public final class Trainer {
    public let model: Network
    public let options: PhaseOptions
    public let optimizer: SGD
    public private(set) var position = TrainingPosition()
    private let communicator: Communicator
    private let samples: TrainingSamples
    private let log: RunLog
    private let partition: BatchPartition
    private let reducer: GradientReducer
    /// Whether steps overlap the all-reduce with the backward pass.
    public let overlapsReduction: Bool
    /// EfQAT's channel selection; nil trains everything (full QAT, FP32).
    public let channels: CriticalChannels?
    /// The selection generation `reducer.spans` was made from.
    private var spansGeneration = 0
    private var times = StepTimes()
    private let images: FloatBuffer
    private var labels: [Int32]
    private let logitGradient = FloatBuffer()

    /// Trains on labelled samples with cross-entropy.
    public convenience init(model: Network, data: Dataset, options: PhaseOptions, communicator: Communicator,
                            log: RunLog, channels: CriticalChannels? = nil) throws {
        try self.init(model: model, samples: .labeled(data), options: options, communicator: communicator, log: log,
                      channels: channels)
    }

    /// Trains on images without labels by distillation from `distillation.teacher`.
    public convenience init(model: Network, images: ImageSet, distillation: Distillation, options: PhaseOptions,
                            communicator: Communicator, log: RunLog, channels: CriticalChannels? = nil) throws {
        guard options.augmentation.isIdentity else {
            throw RunError.invalid("distillation trains on the images as given: augmentation (\(options.augmentation.recipe)) must be off")
        }
        try self.init(model: model, samples: .distilled(images, distillation), options: options,
                      communicator: communicator, log: log, channels: channels)
    }

    init(model: Network, samples: TrainingSamples, options: PhaseOptions, communicator: Communicator,
         log: RunLog, channels: CriticalChannels?) throws {
        self.model = model
        self.samples = samples
        self.options = options
        self.communicator = communicator
        self.log = log
        partition = try BatchPartition(globalBatch: options.globalBatch, worldSize: communicator.size,
                                       accumulationSteps: options.accumulation)
        guard options.globalBatch <= samples.count else {
            throw RunError.invalid("global batch \(options.globalBatch) exceeds the \(samples.count) training samples")
        }
        optimizer = SGD(layout: model.store.parameterLayout, momentum: options.momentum,
                        weightDecay: options.weightDecay)
        self.channels = channels
        reducer = GradientReducer(spans: model.store.allTrainedSpans, norms: model.batchNorms, extras: 2)
        overlapsReduction = options.overlapReduction.isOn(worldSize: communicator.size)
        images = FloatBuffer(capacity: partition.microBatchSize * samples.sampleSize)
        labels = Array(repeating: 0, count: partition.microBatchSize)
    }

    /// Images in one forward/backward pass of one rank.
    public var microBatchSize: Int { partition.microBatchSize }
    /// Micro-batches per global batch, over all ranks (ranks × accumulation).
    public var microBatchesPerStep: Int { partition.parts }
    /// Training samples in the data set this phase trains on.
    public var sampleCount: Int { samples.count }

    public var stepsPerEpoch: Int { EpochOrder.stepsPerEpoch(sampleCount: samples.count, globalBatch: options.globalBatch) }
    public var totalSteps: Int { stepsPerEpoch * options.epochs }
    public var isFinished: Bool { position.epoch >= options.epochs }

    /// Called after every optimizer step (a testing aid: failure injection).
    public var afterStep: (Trainer) throws -> Void = { _ in }

    /// Optimizer steps taken in this phase, counting those before a resume.
    public var completedSteps: Int { position.epoch * stepsPerEpoch + position.step }

    /// Continues from a saved position (the optimizer state is restored by the caller).
    public func resume(at position: TrainingPosition) { self.position = position }

    /// Runs the phase to its end. `checkpoint` is called at the end of every
    /// epoch (and every `checkpointEvery` steps if > 0) with the position
    /// of the next step.
    public func run(checkpointEvery: Int = 0, checkpoint: (Trainer) throws -> Void) throws -> PhaseReport {
        var report = PhaseReport()
        let start = Date()
        while !isFinished {
            let epoch = position.epoch
            let order = try EpochOrder(seed: options.seed, epoch: epoch, sampleCount: samples.count,
                                       globalBatch: options.globalBatch)
            while position.epoch == epoch {
                let globalStep = position.epoch * stepsPerEpoch + position.step
                let lr = options.schedule.rate(step: globalStep, totalSteps: totalSteps, peak: options.learningRate)
                if let channels {
                    channels.prepare(step: globalStep, stepInEpoch: position.step, communicator: communicator)
                    if channels.generation != spansGeneration {
                        reducer.spans = channels.spans
                        spansGeneration = channels.generation
                        log.record("efqat_selection", ["step": globalStep, "selected_at": channels.selectedAtStep ?? 0,
                                                       "trained_weight_fraction": channels.trainedWeightFraction,
                                                       "floats_per_step": reducer.packedCount])
                    }
                }
                let step = { self.trainStep(order: order, step: self.position.step, learningRate: lr) }
                let (loss, accuracy) = channels.map { $0.withSelectedRows(step) } ?? step()
                report.steps += 1
                report.samples += options.globalBatch
                report.lastLoss = loss
                position.step += 1
                try afterStep(self)
                let detail = String(format: "epoch %d/%d loss %.4f acc %.3f lr %.4f",
                                    position.epoch + 1, options.epochs, loss, accuracy, lr)
                log.progress(options.name, done: globalStep + 1, total: totalSteps, every: options.logEvery, detail: detail)
                if options.logEvery > 0, (globalStep + 1) % options.logEvery == 0 || position.step == stepsPerEpoch {
                    log.record("step", ["phase": options.name, "epoch": position.epoch, "step": globalStep + 1,
                                        "loss": Double(loss), "accuracy": Double(accuracy), "lr": Double(lr)])
                }
                if position.step == stepsPerEpoch {
                    position = TrainingPosition(epoch: position.epoch + 1, step: 0)
                    try checkpoint(self)
                } else if checkpointEvery > 0, position.step % checkpointEvery == 0 {
                    try checkpoint(self)
                }
            }
        }
        report.seconds = Date().timeIntervalSince(start)
        report.bytesReduced = reducer.bytesReduced
        report.times = times
        report.floatsPerStep = reducer.packedCount
        report.bucketsStartedEarly = reducer.bucketsStartedEarly
        report.trainedWeightFraction = channels?.trainedWeightFraction ?? 1
        return report
    }

    /// One optimizer step on global batch `step`: forward and backward over
    /// this rank's micro-batches, the all-reduce (overlapping the last
    /// backward pass when `overlapsReduction`), one update. Returns the
    /// global-batch mean loss and accuracy.
    public func trainStep(order: EpochOrder, step: Int, learningRate: Float) -> (Float, Float) {
        let store = model.store
        store.gradients.zero()
        let micro = partition.microBatchSize
        var scalars: [Float] = [0, 0]
        let parts = partition.parts(ofRank: communicator.rank)
        for part in parts {
            let indices = order.indices(step: step, part: part, parts: partition.parts)
            let t0 = monotonicSeconds()
            let result = forwardAndLoss(indices, epoch: order.epoch)
            scalars[0] += result.loss
            scalars[1] += Float(result.correct)
            let t1 = monotonicSeconds()
            // Only the last pass leaves a gradient final.
            let overlapped = overlapsReduction && part == parts.last
            if overlapped { reducer.begin(gradients: store.gradients, scalars: scalars, communicator: communicator) }
            let t2 = monotonicSeconds()
            model.backward(FeatureMap(data: logitGradient.pointer, channels: model.spec.classes, batch: micro,
                                      height: 1, width: 1),
                           finished: overlapped ? reducer.finished : nil)
            let t3 = monotonicSeconds()
            times.forward += t1 - t0
            times.communication += t2 - t1
            times.backward += t3 - t2
        }
        let t0 = monotonicSeconds()
        if overlapsReduction {
            reducer.end(scalars: &scalars, microBatches: partition.parts)
        } else {
            reducer.reduce(gradients: store.gradients, scalars: &scalars, microBatches: partition.parts,
                           communicator: communicator)
        }
        let t1 = monotonicSeconds()
        optimizer.step(parameters: store.parameters, gradients: store.gradients, spans: reducer.spans,
                       learningRate: learningRate)
        times.communication += t1 - t0
        times.update += monotonicSeconds() - t1
        return (scalars[0] / Float(partition.parts), scalars[1] / Float(options.globalBatch))
    }

    /// Gathers the micro-batch at `indices`, runs the training forward pass
    /// and the loss, and leaves dL/dlogits (of the micro-batch mean) in
    /// `logitGradient`. `correct` counts agreement with the labels, or with
    /// the teacher when distilling.
    private func forwardAndLoss(_ indices: ArraySlice<Int>, epoch: Int) -> CrossEntropyResult {
        let micro = indices.count
        switch samples {
        case .labeled(let data):
            labels.withUnsafeMutableBufferPointer { data.gatherBatch(indices, pixels: images.pointer, labels: $0.baseAddress!) }
            options.augmentation.apply(to: images.pointer, indices: indices, epoch: epoch, seed: options.seed, dataset: data)
            let logits = model.forward(FeatureMap(data: images.pointer, channels: data.channels, batch: micro,
                                                  height: data.height, width: data.width), training: true)
            return labels.withUnsafeBufferPointer {
                softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!,
                                    gradient: logitGradient.reserve(logits.count), gradientScale: 1 / Float(micro))
            }
        case .distilled(let set, let distillation):
            set.gatherBatch(indices, into: images.pointer)
            let x = FeatureMap(data: images.pointer, channels: set.channels, batch: micro,
                               height: set.height, width: set.width)
            let target = distillation.teacher.forward(x, training: false)
            let logits = model.forward(x, training: true)
            return softmaxDistillation(student: logits, teacher: target, temperature: distillation.temperature,
                                       gradient: logitGradient.reserve(logits.count), gradientScale: 1 / Float(micro))
        }
    }
}

/// Seconds on a monotonic clock, for intervals.
public func monotonicSeconds() -> Double {
    Double(DispatchTime.now().uptimeNanoseconds) / 1e9
}
