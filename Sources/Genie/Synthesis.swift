import Foundation
import Kernels
import Layers

/// Settings of Genie-D data synthesis. The defaults are sized for a small
/// CPU machine; `.reference` is the reference code's setting (1024 images,
/// batch 128, 4000 iterations per batch).
public struct SynthesisOptions: Sendable, Equatable {
    /// Images to synthesise, a multiple of `batchSize`. Reference: 1024.
    public var images = 256
    /// Images per batch; every batch has its own generator and latents.
    /// Reference: 128.
    public var batchSize = 64
    /// Optimisation steps per batch. Reference: 4000.
    public var iterations = 100
    /// With the batch index, the only source of randomness.
    public var seed: UInt64 = 0
    /// Adam on the latents, with a plateau schedule on the loss.
    public var latentLearningRate: Float = 0.1
    public var plateauFactor: Float = 0.1
    public var plateauPatience = 100
    public var minimumLatentLearningRate: Float = 1e-4
    /// Adam on the generator, multiplied by `generatorDecay` every
    /// `generatorDecayEvery` iterations.
    public var generatorLearningRate: Float = 0.01
    public var generatorDecay: Float = 0.95
    public var generatorDecayEvery = 100

    public init() {}

    /// The sizes a run chooses, with every schedule at its default.
    public init(images: Int, batchSize: Int, iterations: Int, seed: UInt64 = 0) {
        self.images = images
        self.batchSize = batchSize
        self.iterations = iterations
        self.seed = seed
    }

    /// The reference code's setting: 1024 images, batch 128, 4000 iterations.
    public static var reference: SynthesisOptions { SynthesisOptions(images: 1024, batchSize: 128, iterations: 4000) }

    public var batches: Int { images / batchSize }

    /// A message for the first invalid setting, nil when all are valid.
    public var problem: String? {
        if batchSize < 2 { return "batch size must be at least 2 (batch norm needs two images), got \(batchSize)" }
        if images <= 0 || images % batchSize != 0 {
            return "the number of images must be a positive multiple of the batch size \(batchSize), got \(images)"
        }
        if iterations <= 0 { return "iterations must be positive, got \(iterations)" }
        for (name, rate) in [("latent", latentLearningRate), ("generator", generatorLearningRate),
                             ("minimum latent", minimumLatentLearningRate)] where !(rate > 0 && rate.isFinite) {
            return "\(name) learning rate must be positive, got \(rate)"
        }
        if !(plateauFactor > 0 && plateauFactor < 1) { return "plateau factor must be in (0, 1), got \(plateauFactor)" }
        if !(generatorDecay > 0 && generatorDecay <= 1) { return "generator decay must be in (0, 1], got \(generatorDecay)" }
        if plateauPatience < 0 || generatorDecayEvery <= 0 {
            return "plateau patience must be 0 or more and the decay interval positive"
        }
        return nil
    }

    /// Everything besides the number of images that decides the images of
    /// a batch; a data set file is resumed only when this matches.
    public var recipe: String {
        "seed=\(seed) iterations=\(iterations) batch=\(batchSize) latent_lr=\(latentLearningRate) "
            + "plateau=\(plateauFactor)/\(plateauPatience)/\(minimumLatentLearningRate) "
            + "generator_lr=\(generatorLearningRate) decay=\(generatorDecay)/\(generatorDecayEvery)"
    }

    /// The generator's learning rate at `iteration` (0-based).
    public func generatorRate(at iteration: Int) -> Float {
        generatorLearningRate * powf(generatorDecay, Float(iteration / generatorDecayEvery))
    }
}

/// One synthesised batch.
public struct SynthesizedBatch: Sendable {
    public var index: Int
    /// [batch, C, H, W], as PyTorch lays images out.
    public var images: [Float]
    /// The loss of the first iteration and of the last one, whose images
    /// are kept.
    public var initialLoss: StatisticsLossValue
    public var finalLoss: StatisticsLossValue
    public var seconds: Double
}

/// Synthesises batches one at a time on this process. A batch depends only
/// on the options (above all the seed), the teacher and its index, never on
/// which batches ran before or where: its generator, latents and swing
/// offsets are drawn from streams of the batch's own seed.
public final class BatchSynthesizer {
    public let options: SynthesisOptions
    public let channels: Int
    public let height: Int
    public let width: Int
    private let loss: BatchNormStatisticsLoss
    private let generator: Generator
    private let latents = FloatBuffer()

    /// `teacher` is copied, not changed. Images are `teacher.spec.inputChannels`
    /// x `height` x `width`.
    public init(teacher: Network, height: Int, width: Int, options: SynthesisOptions) {
        if let problem = options.problem { preconditionFailure(problem) }
        self.options = options
        channels = teacher.spec.inputChannels
        self.height = height
        self.width = width
        loss = BatchNormStatisticsLoss(teacher: teacher)
        generator = Generator(channels: channels, height: height, width: width)
    }

    /// f(run seed, batch index): every random choice of the batch derives from it.
    public static func seed(run: UInt64, batch: Int) -> UInt64 {
        var rng = SplitMix64(seed: run, stream: [0x4745_4E49, UInt64(batch)])
        return rng.next()
    }

    /// The swing crop offsets of one iteration, each in 0...2, for every
    /// strided convolution of the teacher in forward order.
    public static func swingOffsets(batchSeed: UInt64, iteration: Int, layers: Int) -> [(y: Int, x: Int)] {
        var rng = SplitMix64(seed: batchSeed, stream: [0x5357_4E47, UInt64(iteration)])
        return (0..<layers).map { _ in (rng.nextIndex(below: 3), rng.nextIndex(below: 3)) }
    }

    /// Runs the optimisation of batch `index`; `progress` gets the
    /// iteration (1-based) and its loss.
    public func synthesize(batch index: Int,
                           progress: (_ iteration: Int, _ loss: StatisticsLossValue) -> Void = { _, _ in })
        -> SynthesizedBatch {
        let started = Date()
        let n = options.batchSize, dimension = Generator.latentDimension
        let batchSeed = Self.seed(run: options.seed, batch: index)
        var streams = SplitMix64(seed: batchSeed, stream: [0])
        generator.initialize(seed: streams.next())
        let z = FeatureMap(data: latents.reserve(dimension * n), channels: dimension, batch: n, height: 1, width: 1)
        var rng = SplitMix64(seed: batchSeed, stream: [1])
        for i in 0..<z.count { z.data[i] = rng.nextNormal() }

        let latentAdam = Adam(count: z.count)
        let generatorAdam = Adam(count: generator.store.parameterLayout.count)
        var plateau = PlateauSchedule(learningRate: options.latentLearningRate, factor: options.plateauFactor,
                                      minimum: options.minimumLatentLearningRate, patience: options.plateauPatience)
        var initial: StatisticsLossValue?
        var last = StatisticsLossValue(batchNorm: 0, inputPrior: 0)
        var images = z
        for iteration in 0..<options.iterations {
            let offsets = Self.swingOffsets(batchSeed: batchSeed, iteration: iteration, layers: loss.swings.count)
            for (swing, offset) in zip(loss.swings, offsets) { swing.offset = offset }
            images = generator.forward(z)
            let (value, dImages) = loss.valueAndGradient(of: images)
            generator.store.gradients.zero()
            let dz = generator.backward(dImages)
            latentAdam.step(z.data, gradient: dz.data, learningRate: plateau.learningRate)
            let parameters = generator.store.parameters.all, gradients = generator.store.gradients.all
            generatorAdam.step(parameters.baseAddress!, gradient: gradients.baseAddress!,
                               learningRate: options.generatorRate(at: iteration))
            plateau.step(loss: value.total)
            if initial == nil { initial = value }
            last = value
            progress(iteration + 1, value)
        }
        // The images of the last iteration, the ones its loss describes
        // (the reference keeps them too), from CNHW to NCHW.
        let p = height * width
        var out = [Float](repeating: 0, count: n * channels * p)
        out.withUnsafeMutableBufferPointer { dst in
            for c in 0..<channels {
                for j in 0..<n {
                    (dst.baseAddress! + (j * channels + c) * p).update(from: images.data + (c * n + j) * p, count: p)
                }
            }
        }
        return SynthesizedBatch(index: index, images: out, initialLoss: initial!, finalLoss: last,
                                seconds: Date().timeIntervalSince(started))
    }
}
