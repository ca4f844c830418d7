import Distributed
import Foundation
import Kernels
import Layers

// Block reconstruction (BRECQ / Genie-M, with QDrop): post-training
// quantization that trains only the rounding of the weights (AdaRound soft
// bits V) and the quantizer step sizes, one unit of the network at a time,
// so that each quantized unit reproduces its floating-point output.
// docs/reconstruction.md has the method, the formulas and the options.

// MARK: Options, inputs, results

/// Settings of block reconstruction. The defaults are sized for a small CPU
/// machine; `.reference` is the papers' setting (1024 samples, batch 32,
/// 20000 iterations per unit).
public struct ReconstructionOptions: Sendable, Equatable {
    /// Calibration samples: a seeded subset of the images given (all of
    /// them when there are fewer). Reference: 1024.
    public var samples = 256
    /// Samples per iteration (the global batch, split over ranks).
    /// Reference: 32.
    public var batchSize = 32
    /// Iterations per unit. Reference: 20000.
    public var iterations = 400
    /// lambda, the weight of the rounding regulariser: Genie 1.0, BRECQ 0.01.
    public var roundingWeight: Float = 1.0
    /// The regulariser's exponent beta is annealed linearly from
    /// `betaStart` to `betaEnd` after the warm-up.
    public var betaStart: Float = 20
    public var betaEnd: Float = 2
    /// Fraction of the iterations with the regulariser off (and beta held
    /// at `betaStart`).
    public var warmup: Double = 0.2
    /// QDrop: during the training iterations of a unit, each element of its
    /// input and of every quantized input inside it (each conv's input
    /// quantizer) takes its floating-point value instead of the quantized
    /// one with probability `qdropProbability`.
    public var qdrop = true
    /// QDrop's drop probability (QDrop, Genie: 0.5).
    public var qdropProbability = 0.5
    /// Learn the per-channel weight steps with V (Genie-M); false keeps
    /// the calibrated steps (AdaRound / BRECQ).
    public var learnWeightSteps = true
    /// Learn the step of every quantized input inside the unit.
    public var learnActivationSteps = true
    /// Adam learning rates: rounding logits V (constant), weight steps and
    /// activation steps (both cosine-annealed to 0 over a unit's iterations).
    public var roundingLearningRate: Float = 1e-3
    public var weightStepLearningRate: Float = 1e-4
    public var activationStepLearningRate: Float = 4e-5
    /// Seeds the calibration subset, the batch order and the QDrop masks.
    public var seed: UInt64 = 0
    /// Report the losses through `progress` every N iterations (0: only
    /// once per unit).
    public var progressEvery = 0

    public init() {}

    /// The reference setting of BRECQ / Genie: 1024 samples, batch 32,
    /// 20000 iterations per unit (with this type's other defaults, Genie-M).
    public static var reference: ReconstructionOptions {
        var options = ReconstructionOptions()
        options.samples = 1024
        options.batchSize = 32
        options.iterations = 20000
        return options
    }

    /// BRECQ's recipe: lambda = 0.01, fixed weight steps, no QDrop.
    public static var brecq: ReconstructionOptions {
        var options = ReconstructionOptions()
        options.roundingWeight = 0.01
        options.learnWeightSteps = false
        options.qdrop = false
        return options
    }

    /// A message for the first invalid setting, nil when all are valid.
    public var problem: String? {
        if samples <= 0 { return "reconstruction samples must be positive, got \(samples)" }
        if batchSize <= 0 { return "reconstruction batch size must be positive, got \(batchSize)" }
        if iterations < 0 { return "reconstruction iterations must be 0 or more, got \(iterations)" }
        if !(roundingWeight >= 0 && roundingWeight.isFinite) {
            return "rounding weight (lambda) must be 0 or more, got \(roundingWeight)"
        }
        if !(warmup >= 0 && warmup <= 1) { return "warm-up fraction must be in [0, 1], got \(warmup)" }
        if !(qdropProbability >= 0 && qdropProbability <= 1) {
            return "QDrop probability must be in [0, 1], got \(qdropProbability)"
        }
        if !(betaStart >= 1 && betaEnd >= 1) { return "beta must stay at 1 or more, got \(betaStart) -> \(betaEnd)" }
        for (name, rate) in [("rounding", roundingLearningRate), ("weight step", weightStepLearningRate),
                             ("activation step", activationStepLearningRate)] where !(rate >= 0 && rate.isFinite) {
            return "\(name) learning rate must be 0 or more, got \(rate)"
        }
        if progressEvery < 0 { return "progress interval must be 0 or more, got \(progressEvery)" }
        return nil
    }
}

/// Where reconstruction reads its calibration images: `count` samples of
/// `channels x height x width`, fetched by index.
public struct ReconstructionImages {
    public let count: Int
    public let channels: Int
    public let height: Int
    public let width: Int
    /// Writes the images at the given indices (each in 0..<count, at most
    /// the reconstruction's batch size of them) into the buffer as one CNHW
    /// batch of `indices.count` images, normalised as the model expects.
    public let gather: (_ indices: ArraySlice<Int>, _ into: UnsafeMutablePointer<Float>) -> Void

    public init(count: Int, channels: Int, height: Int, width: Int,
                gather: @escaping (_ indices: ArraySlice<Int>, _ into: UnsafeMutablePointer<Float>) -> Void) {
        self.count = count
        self.channels = channels
        self.height = height
        self.width = width
        self.gather = gather
    }
}

/// What reconstruction did to one unit.
public struct UnitReconstruction: Sendable {
    /// "stem", a block's name ("layer2.0"), or "fc".
    public var name: String
    /// Soft-rounded weights in the unit.
    public var weights: Int
    /// Weights whose integer differs from round-to-nearest with the
    /// calibrated step.
    public var changedRoundings: Int
    /// Mean squared error per output element between the quantized unit
    /// (on the quantized path's inputs, without QDrop) and the FP32 unit
    /// (on FP32 inputs), over the calibration samples: with the calibrated
    /// steps and round-to-nearest, and after reconstruction.
    public var errorBefore: Double
    public var errorAfter: Double
    /// The last iteration's reconstruction loss (sum over channels of the
    /// squared error, mean over samples and positions), all ranks together.
    public var finalLoss: Double
    public var seconds: Double
}

public struct ReconstructionReport: Sendable {
    public var units: [UnitReconstruction]
    public var samples: Int
    public var seconds: Double
}

// MARK: Soft rounding of one layer

extension SoftRounding {
    /// The V with h(V) = `fraction` (in [0, 1)):
    /// V = -log((zeta - gamma) / (fraction - gamma) - 1).
    public static func initialLogit(fraction: Float) -> Float {
        let f = Double(fraction), z = Double(zeta), g = Double(gamma)
        return Float(-log((z - g) / (f - g) - 1))
    }

    /// The hard rounding of a soft bit: 1 where h(V) >= 0.5 (V >= 0), else 0.
    @inline(__always)
    public static func hardRounding(_ v: Float) -> Float { v >= 0 ? 1 : 0 }
}

/// The AdaRound state of one conv/linear layer: B = floor(W / s0) frozen
/// from the weights and the calibrated steps s0, the logits V with
/// h(V) = frac(W / s0), and dL/dV. Owned here, not by the model: V is not a
/// model parameter and is never checkpointed.
public final class AdaRoundWeights {
    public let layer: Conv2d
    public let count: Int
    private let store: ParameterStore
    private let storage: FloatBuffer
    /// Round-to-nearest integers with the calibrated step, for the report.
    private let nearest: FloatBuffer

    /// Sets up B and V from the layer's current weights and steps. The
    /// layer's weight quantizer must be on and calibrated.
    public init(_ layer: Conv2d, store: ParameterStore) {
        precondition(layer.weightQuantizer.enabled, "\(layer.name): soft rounding needs its weight quantizer on")
        self.layer = layer
        self.store = store
        count = layer.weight.count
        storage = FloatBuffer(capacity: 3 * count)
        nearest = FloatBuffer(capacity: count)
        let w = store.parameters.pointer(layer.weight), steps = store.parameters[layer.weightQuantizer.step]
        let n = layer.weight.rowLength, grid = layer.weightQuantizer.grid
        for r in 0..<layer.outChannels {
            let s = steps[r], inverse = 1 / steps[r]
            for i in (r * n)..<((r + 1) * n) {
                let v = w[i] / s
                let b = v.rounded(.down)
                base[i] = b
                logits[i] = SoftRounding.initialLogit(fraction: min(max(v - b, 0), 1))
                nearest.pointer[i] = fakeQuantize(w[i], inverseStep: inverse, step: 1, zeroPoint: 0, grid: grid)
            }
        }
    }

    /// B = floor(W / s0).
    public var base: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: storage.pointer, count: count)
    }
    /// V, the rounding logits.
    public var logits: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: storage.pointer + count, count: count)
    }
    /// dL/dV, accumulated by the layer's backward while attached.
    public var logitGradient: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: storage.pointer + 2 * count, count: count)
    }

    /// Switches the layer's weight quantizer to soft rounding with this state.
    public func attach() {
        layer.weightQuantizer.softRounding = SoftRounding(
            base: UnsafePointer(base.baseAddress!), logits: UnsafePointer(logits.baseAddress!),
            logitGradient: logitGradient.baseAddress!)
    }

    public func detach() { layer.weightQuantizer.softRounding = nil }

    /// lambda * sum(1 - |2h(V) - 1|^beta); adds its gradient to `gradient`
    /// (laid out like V) and returns its value.
    @discardableResult
    public func addRegularizer(weight lambda: Float, beta: Float, into gradient: UnsafeMutablePointer<Float>) -> Double {
        let v = logits
        var total: Double = 0
        for i in 0..<count {
            let u = 2 * SoftRounding.rectifiedSigmoid(v[i]) - 1
            let a = abs(u)
            let p = powf(a, beta - 1)
            total += Double(1 - p * a)
            // d/dV (1 - |u|^beta) = -beta |u|^(beta-1) sign(u) * 2 h'(V)
            let dh = SoftRounding.rectifiedSigmoidDerivative(v[i])
            if dh != 0 && a != 0 {
                gradient[i] -= lambda * beta * p * (u > 0 ? 2 : -2) * dh
            }
        }
        return Double(lambda) * total
    }

    /// Hard-rounds h(V) to {0, 1} and writes W = s * clamp(B + h, qmin, qmax)
    /// with the current (learned) steps, so that the ordinary fake quantizer
    /// reproduces these weights exactly; then leaves soft rounding. Returns
    /// how many integers differ from round-to-nearest with the calibrated step.
    @discardableResult
    public func bake() -> Int {
        detach()
        let w = store.parameters.pointer(layer.weight), steps = store.parameters[layer.weightQuantizer.step]
        let n = layer.weight.rowLength, grid = layer.weightQuantizer.grid
        let b = base, v = logits
        var changed = 0
        for r in 0..<layer.outChannels {
            let s = steps[r]
            for i in (r * n)..<((r + 1) * n) {
                let q = min(max(b[i] + SoftRounding.hardRounding(v[i]), grid.qmin), grid.qmax)
                // (q - 0) * s, the very product the fake quantizer forms.
                w[i] = q * s
                if q != nearest.pointer[i] { changed += 1 }
            }
        }
        return changed
    }
}

// MARK: Reconstruction

/// Reconstructs `model` unit by unit, in the order of `model.units` (for a
/// ResNet: the stem, every residual block, the classifier).
///
/// Call it after `QuantizationPolicy.apply(to:)` and `calibrate(...)`: the
/// calibrated steps are the starting point, and the model's weights must
/// still be the FP32 ones (a copy of them is the reference). On return the
/// weights are replaced by their reconstructed quantized values
/// W = s * q, the steps are the learned ones, and soft rounding is off, so
/// the ordinary fake-quantized forward runs the reconstructed model.
///
/// Every rank must call it with the same options and images; each rank
/// runs its contiguous slice of every batch and the gradients are summed
/// over ranks, so all ranks end with identical weights and steps, and the
/// samples each iteration sees do not depend on the number of ranks.
/// `progress` is called on rank 0 only.
@discardableResult
public func reconstruct(_ model: Network, options: ReconstructionOptions = ReconstructionOptions(),
                        communicator: Communicator, images: ReconstructionImages,
                        progress: (String) -> Void = { _ in }) -> ReconstructionReport {
    if let problem = options.problem { preconditionFailure(problem) }
    precondition(images.count > 0, "reconstruction needs calibration images")
    let started = Date()
    func say(_ message: String) { if communicator.isRoot { progress(message) } }

    // The FP32 reference: a copy of the model before any weight changes.
    let reference = model.clone()

    // The calibration samples, and their images cached on every rank.
    var rng = SplitMix64(seed: options.seed, stream: [0x5245_434F])
    let chosen = images.count <= options.samples
        ? Array(0..<images.count) : Array(rng.permutation(images.count).prefix(options.samples))
    let sampleCount = chosen.count
    let chunk = min(options.batchSize, sampleCount)
    let imageCache = SampleCache(count: sampleCount, channels: images.channels, height: images.height, width: images.width)
    let scratch = FloatBuffer()
    for first in stride(from: 0, to: sampleCount, by: chunk) {
        let indices = chosen[first..<min(first + chunk, sampleCount)]
        let pixels = scratch.reserve(indices.count * imageCache.features)
        images.gather(indices, pixels)
        imageCache.store(FeatureMap(data: pixels, channels: images.channels, batch: indices.count,
                                    height: images.height, width: images.width), first: first)
    }

    let units = model.units, referenceUnits = reference.units
    var fpInput = imageCache, quantizedInput = imageCache
    var reports: [UnitReconstruction] = []
    for (u, (unit, referenceUnit)) in zip(units, referenceUnits).enumerated() {
        let unitStarted = Date()
        // FP32 targets, and the quantized unit's error before reconstruction.
        let target = unitPass(referenceUnit, input: fpInput, chunk: chunk, scratch: scratch, compare: nil).output
        let before = unitPass(unit, input: quantizedInput, chunk: chunk, scratch: scratch, compare: target).error

        let trainer = UnitTrainer(unit: unit, model: model, options: options, communicator: communicator,
                                  index: u, fpInput: fpInput, quantizedInput: quantizedInput, target: target)
        let finalLoss = trainer.run { it, rec, round, beta in
            say(String(format: "reconstruct %@ %d/%d: loss %.4g (reconstruction %.4g, rounding %.4g, beta %.2f)",
                       unit.name, it, options.iterations, rec + round, rec, round, beta))
        }
        let changed = trainer.finish()

        let after = unitPass(unit, input: quantizedInput, chunk: chunk, scratch: scratch, compare: target)
        let report = UnitReconstruction(name: unit.name, weights: trainer.weightCount, changedRoundings: changed,
                                        errorBefore: before, errorAfter: after.error, finalLoss: finalLoss,
                                        seconds: Date().timeIntervalSince(unitStarted))
        reports.append(report)
        say(String(format: "reconstruct %@ (%d/%d): output MSE %.4g -> %.4g, %d of %d roundings changed, %.1f s",
                   unit.name, u + 1, units.count, report.errorBefore, report.errorAfter, changed,
                   report.weights, report.seconds))
        fpInput = target
        quantizedInput = after.output
    }
    model.store.gradients.zero()
    return ReconstructionReport(units: reports, samples: sampleCount, seconds: Date().timeIntervalSince(started))
}

/// Runs `unit` forward over every cached sample in chunks; returns the
/// outputs and, given `compare`, the mean squared error against it.
private func unitPass(_ unit: any NetworkUnit, input: SampleCache, chunk: Int, scratch: FloatBuffer,
                      compare: SampleCache?) -> (output: SampleCache, error: Double) {
    var output: SampleCache?
    var total: Double = 0
    let expected = FloatBuffer()
    for first in stride(from: 0, to: input.count, by: chunk) {
        let samples = first..<min(first + chunk, input.count)
        let y = unit.forward(input.gather(samples, into: scratch), training: false)
        let out = output ?? SampleCache(count: input.count, channels: y.channels, height: y.height, width: y.width)
        output = out
        out.store(y, first: first)
        if let compare {
            let t = compare.gather(samples, into: expected)
            total += Double(sumOfSquaredDifferences(y.data, t.data, count: y.count))
        }
    }
    let out = output!
    return (out, total / Double(out.count * out.features))
}

private func sumOfSquaredDifferences(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int) -> Double {
    var total: Double = 0
    for i in 0..<count {
        let d = Double(a[i]) - Double(b[i])
        total += d * d
    }
    return total
}

// MARK: Training one unit

/// The optimisation of one unit: soft-rounded weights, Adam on V and the
/// steps, gradients all-reduced in one packed buffer per iteration.
private final class UnitTrainer {
    let unit: any NetworkUnit
    let options: ReconstructionOptions
    let communicator: Communicator
    let store: ParameterStore
    let index: Int
    let fpInput: SampleCache
    let quantizedInput: SampleCache
    let target: SampleCache
    let rounded: [AdaRoundWeights]
    let weightStepLayers: [Conv2d]
    let activationStepLayers: [Conv2d]
    /// QDrop inside the unit: indices (in `unit.convolutions`) of the
    /// convolutions whose input is quantized; empty without QDrop.
    let droppedInputs: [Int]
    private let coins: QDropCoins
    private let masks: DropMasks
    private let fpScratch = FloatBuffer()
    /// The samples and iteration of the forward under way, for QDrop's coins.
    private var current: (samples: [Int], iteration: Int) = ([], 0)

    init(unit: any NetworkUnit, model: Network, options: ReconstructionOptions, communicator: Communicator, index: Int,
         fpInput: SampleCache, quantizedInput: SampleCache, target: SampleCache) {
        self.unit = unit
        self.options = options
        self.communicator = communicator
        store = model.store
        self.index = index
        self.fpInput = fpInput
        self.quantizedInput = quantizedInput
        self.target = target
        let layers = unit.convolutions
        rounded = layers.filter { $0.weightQuantizer.enabled }.map { AdaRoundWeights($0, store: model.store) }
        weightStepLayers = options.learnWeightSteps ? rounded.map(\.layer) : []
        activationStepLayers = options.learnActivationSteps ? layers.filter { $0.inputQuantizer.enabled } : []
        droppedInputs = options.qdrop ? layers.indices.filter { layers[$0].inputQuantizer.enabled } : []
        coins = QDropCoins(seed: options.seed, unit: index, probability: options.qdropProbability)
        masks = DropMasks(sites: layers.count + 1)
    }

    var weightCount: Int { rounded.reduce(0) { $0 + $1.count } }

    /// Trains the unit; returns the last iteration's reconstruction loss.
    /// Inside, every layer of the unit computes dW for all its rows, the
    /// layers reading the unit's input skip dL/dx where they can, and QDrop
    /// draws the masks of the quantized inputs; all of it is undone after.
    func run(progress: (_ iteration: Int, _ reconstruction: Double, _ rounding: Double, _ beta: Float) -> Void) -> Double {
        guard options.iterations > 0, !(rounded.isEmpty && activationStepLayers.isEmpty) else { return .nan }
        let layers = unit.convolutions
        let dropped = droppedInputs.map { layers[$0] }
        return layers.withAllGradientRows {
            unit.inputLayers.withInputGradient(false) {
                dropped.withDropMasks({ self.dropMask(site: self.droppedInputs[$0] + 1, input: $1) }) {
                    train(progress: progress)
                }
            }
        }
    }

    private func train(progress: (_ iteration: Int, _ reconstruction: Double, _ rounding: Double, _ beta: Float) -> Void)
        -> Double {
        let iterations = options.iterations
        for r in rounded { r.attach() }

        // Packed gradients: [dV of every layer | weight steps | activation steps | loss].
        let vCount = weightCount
        let wCount = weightStepLayers.reduce(0) { $0 + $1.outChannels }
        let packed = FloatBuffer(capacity: vCount + wCount + activationStepLayers.count + 1)
        let lossIndex = vCount + wCount + activationStepLayers.count
        let vAdam = rounded.map { Adam(count: $0.count) }
        let wAdam = weightStepLayers.map { Adam(count: $0.outChannels) }
        let aAdam = activationStepLayers.map { _ in Adam(count: 1) }

        let batch = min(options.batchSize, fpInput.count)
        let shard = rankSlice(count: batch, rank: communicator.rank, worldSize: communicator.size)
        var sampler = BatchSampler(count: fpInput.count, batch: batch, seed: options.seed, unit: index)
        let input = FloatBuffer(), expected = FloatBuffer(), outputGradient = FloatBuffer()
        let mixInputs = options.qdrop && fpInput !== quantizedInput
        let warmupEnd = options.warmup * Double(iterations)
        var lastLoss = Double.nan

        for t in 0..<iterations {
            let it = t + 1
            let samples = Array(sampler.batch(t)[shard])  // positions in the global batch
            store.gradients.zero()
            for r in rounded { r.logitGradient.update(repeating: 0) }
            var localLoss: Double = 0
            if !samples.isEmpty {
                let x = mixInputs
                    ? mixedInput(samples, iteration: t, into: input)
                    : quantizedInput.gather(samples, into: input)
                current = (samples, t)
                let y = unit.forward(x, training: false)
                let goal = target.gather(samples, into: expected)
                // L = sum over the global batch of (y - t)^2 / (B * H * W).
                let scale = 1 / Float(batch * y.height * y.width)
                let dy = y.like(outputGradient)
                for i in 0..<y.count {
                    let d = y.data[i] - goal.data[i]
                    localLoss += Double(d * d)
                    dy.data[i] = 2 * scale * d
                }
                localLoss *= Double(scale)
                _ = unit.backward(dy)  // the parameter gradients; dL/dx is not needed
            }

            // Pack, reduce over ranks.
            let g = packed.pointer
            var offset = 0
            for r in rounded {
                (g + offset).update(from: r.logitGradient.baseAddress!, count: r.count)
                offset += r.count
            }
            for layer in weightStepLayers {
                (g + offset).update(from: store.gradients.pointer(layer.weightQuantizer.step), count: layer.outChannels)
                offset += layer.outChannels
            }
            for layer in activationStepLayers {
                g[offset] = store.gradients[layer.inputQuantizer.step][0]
                offset += 1
            }
            g[lossIndex] = Float(localLoss)
            communicator.allReduce(UnsafeMutableBufferPointer(start: g, count: lossIndex + 1), .sum)
            lastLoss = Double(g[lossIndex])

            // The rounding regulariser, identical on every rank.
            let beta = self.beta(iteration: it, warmupEnd: warmupEnd)
            var roundingLoss: Double = 0
            offset = 0
            for r in rounded {
                if Double(it) >= warmupEnd && options.roundingWeight > 0 {
                    roundingLoss += r.addRegularizer(weight: options.roundingWeight, beta: beta, into: g + offset)
                }
                offset += r.count
            }

            // Adam steps.
            let cosine = Float(0.5 * (1 + cos(Double.pi * Double(t) / Double(iterations))))
            offset = 0
            for (r, adam) in zip(rounded, vAdam) {
                adam.step(r.logits.baseAddress!, gradient: g + offset, learningRate: options.roundingLearningRate)
                offset += r.count
            }
            for (layer, adam) in zip(weightStepLayers, wAdam) {
                let steps = store.parameters.pointer(layer.weightQuantizer.step)
                adam.step(steps, gradient: g + offset, learningRate: options.weightStepLearningRate * cosine)
                for i in 0..<layer.outChannels { steps[i] = max(steps[i], 1e-8) }
                offset += layer.outChannels
            }
            for (layer, adam) in zip(activationStepLayers, aAdam) {
                let step = store.parameters.pointer(layer.inputQuantizer.step)
                adam.step(step, gradient: g + offset, learningRate: options.activationStepLearningRate * cosine)
                step[0] = max(step[0], 1e-8)
                offset += 1
            }

            if options.progressEvery > 0 && (it % options.progressEvery == 0 || it == 1) {
                progress(it, lastLoss, roundingLoss, beta)
            }
        }
        store.gradients.zero()
        return lastLoss
    }

    /// beta: `betaStart` during the warm-up, then linearly down to `betaEnd`
    /// at the last iteration.
    func beta(iteration it: Int, warmupEnd: Double) -> Float {
        let d = Double(it)
        guard d >= warmupEnd else { return options.betaStart }
        let span = Double(options.iterations) - warmupEnd
        let progress = span > 0 ? min((d - warmupEnd) / span, 1) : 1
        return options.betaEnd + (options.betaStart - options.betaEnd) * Float(1 - progress)
    }

    /// Bakes the hard rounding into the weights; returns the number of
    /// changed roundings.
    func finish() -> Int { rounded.reduce(0) { $0 + $1.bake() } }

    /// The unit's input for `samples` with QDrop: the quantized path's
    /// value, or the FP32 one where site 0's coin drops the element.
    func mixedInput(_ samples: [Int], iteration: Int, into buffer: FloatBuffer) -> FeatureMap {
        let x = quantizedInput.gather(samples, into: buffer), fp = fpInput.gather(samples, into: fpScratch)
        let drop = masks.reserve(site: 0, count: x.count)
        coins.draw(site: 0, iteration: iteration, samples: samples, channels: x.channels,
                   pixels: x.height * x.width, into: drop)
        for i in 0..<x.count where drop[i] != 0 { x.data[i] = fp.data[i] }
        return x
    }

    /// QDrop inside the unit: the mask of one quantized input `x` of this
    /// iteration's forward (site l + 1 for the unit's convolution l).
    func dropMask(site: Int, input x: FeatureMap) -> UnsafePointer<UInt8> {
        let (samples, iteration) = current
        precondition(x.batch == samples.count, "\(unit.name): QDrop expected a batch of \(samples.count)")
        let mask = masks.reserve(site: site, count: x.count)
        coins.draw(site: site, iteration: iteration, samples: samples, channels: x.channels,
                   pixels: x.height * x.width, into: mask)
        return UnsafePointer(mask)
    }
}

/// The contiguous part of a batch of `count` that rank `rank` runs (the
/// first `count % worldSize` ranks take one more).
private func rankSlice(count: Int, rank: Int, worldSize: Int) -> Range<Int> {
    let base = count / worldSize, extra = count % worldSize
    let start = rank * base + min(rank, extra)
    return start..<(start + base + (rank < extra ? 1 : 0))
}

/// Batches of a unit's iterations: epochs of a permutation seeded by
/// (seed, unit, epoch) over the calibration samples, cut into batches
/// (a last partial batch is dropped).
private struct BatchSampler {
    let count: Int
    let batch: Int
    let seed: UInt64
    let unit: Int
    private var epoch = -1
    private var order: [Int] = []

    init(count: Int, batch: Int, seed: UInt64, unit: Int) {
        self.count = count
        self.batch = batch
        self.seed = seed
        self.unit = unit
    }

    mutating func batch(_ iteration: Int) -> [Int] {
        let perEpoch = max(count / batch, 1)
        let (e, j) = iteration.quotientAndRemainder(dividingBy: perEpoch)
        if e != epoch {
            var rng = SplitMix64(seed: seed, stream: [0x4241_5443, UInt64(unit), UInt64(e)])
            order = rng.permutation(count)
            epoch = e
        }
        return Array(order[(j * batch)..<((j + 1) * batch)])
    }
}

// MARK: QDrop masks

/// QDrop's coin flips: which elements of a feature map take their
/// floating-point value instead of the quantized one ("drop"), each with
/// probability p. Element e of sample n, in (channel, y, x) order, is
/// dropped when the e-th 16-bit chunk of the stream
/// `SplitMix64(seed, [0x5144524F, unit, site, iteration, n])` (4 chunks per
/// draw, low bits first) is below p * 2^16. A sample's coins therefore do
/// not depend on the batch it is in, on the rank that runs it, or on the
/// number of ranks.
public struct QDropCoins: Sendable {
    public let seed: UInt64
    public let unit: Int
    /// p * 2^16, rounded.
    public let threshold: UInt32

    public init(seed: UInt64, unit: Int, probability: Double) {
        precondition(probability >= 0 && probability <= 1, "QDrop probability must be in [0, 1], got \(probability)")
        self.seed = seed
        self.unit = unit
        threshold = UInt32((probability * 65536).rounded())
    }

    /// Writes the masks of `samples` (calibration sample indices) as one
    /// CNHW batch of `channels` x `pixels` per sample: 1 where the element is
    /// dropped, else 0. Site 0 is the unit's input, site l + 1 the input of
    /// the unit's convolution l.
    public func draw(site: Int, iteration: Int, samples: [Int], channels: Int, pixels: Int,
                     into mask: UnsafeMutablePointer<UInt8>) {
        let n = samples.count
        for (j, sample) in samples.enumerated() {
            var rng = SplitMix64(seed: seed, stream: [0x5144_524F, UInt64(unit), UInt64(site), UInt64(iteration),
                                                      UInt64(sample)])
            var bits: UInt64 = 0
            var e = 0
            for channel in 0..<channels {
                let out = mask + (channel * n + j) * pixels
                for position in 0..<pixels {
                    if e & 3 == 0 { bits = rng.next() }
                    out[position] = UInt32(bits & 0xFFFF) < threshold ? 1 : 0
                    bits >>= 16
                    e += 1
                }
            }
        }
    }
}

/// One byte buffer per QDrop site of a unit, grown to the largest batch seen.
private final class DropMasks {
    private var masks: [UnsafeMutableBufferPointer<UInt8>]

    init(sites: Int) { masks = Array(repeating: UnsafeMutableBufferPointer(start: nil, count: 0), count: sites) }

    deinit { for mask in masks { mask.deallocate() } }

    func reserve(site: Int, count: Int) -> UnsafeMutablePointer<UInt8> {
        if masks[site].count < count {
            masks[site].deallocate()
            masks[site] = .allocate(capacity: count)
        }
        return masks[site].baseAddress!
    }
}

// MARK: Cached feature maps

/// Feature maps of every calibration sample, sample-major: sample n's
/// (c, y, x) element at n * features + (c * H + y) * W + x.
final class SampleCache {
    let count: Int
    let channels: Int
    let height: Int
    let width: Int
    private let storage: FloatBuffer

    init(count: Int, channels: Int, height: Int, width: Int) {
        self.count = count
        self.channels = channels
        self.height = height
        self.width = width
        storage = FloatBuffer(capacity: count * channels * height * width)
    }

    var plane: Int { height * width }
    var features: Int { channels * plane }

    func sample(_ n: Int) -> UnsafeMutablePointer<Float> { storage.pointer + n * features }

    /// Stores a CNHW batch as samples first ..< first + batch.
    func store(_ y: FeatureMap, first: Int) {
        precondition(y.channels == channels && y.height == height && y.width == width && first + y.batch <= count)
        for n in 0..<y.batch {
            for c in 0..<channels {
                (sample(first + n) + c * plane).update(from: y.data + (c * y.batch + n) * plane, count: plane)
            }
        }
    }

    /// The given samples as one CNHW batch in `buffer`.
    func gather<C: Collection<Int>>(_ samples: C, into buffer: FloatBuffer) -> FeatureMap {
        let n = samples.count
        let x = FeatureMap(data: buffer.reserve(n * features), channels: channels, batch: n, height: height, width: width)
        for (j, s) in samples.enumerated() {
            for c in 0..<channels {
                (x.data + (c * n + j) * plane).update(from: sample(s) + c * plane, count: plane)
            }
        }
        return x
    }
}
