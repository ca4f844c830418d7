import Data
import Distributed
import EfQAT
import Kernels
import Layers

/// Backward time of the current (EfQAT) selection against full QAT,
/// measured side by side on the same micro-batch after training, so a
/// run's summary can say what the selection saved on this machine.
///
/// The probe leaves the model as it found it: each configuration's rows are
/// set only inside a scope, and it drops the batch statistics its forward
/// passes gathered and zeroes the gradients.
public struct BackwardProbe: Sendable {
    /// Seconds per backward pass of one micro-batch, averaged over ranks.
    public var selected: Double
    public var full: Double
    /// Images in the probed micro-batch.
    public var batch: Int

    public var speedup: Double { selected > 0 ? full / selected : 0 }

    /// Runs `repetitions` rounds of (selected, full) backward passes on a
    /// seeded micro-batch of `images` (those the phase trained on) and keeps
    /// each configuration's fastest.
    public static func compare(_ model: Network, selection: ChannelSelection, images: ImageSet, microBatch: Int,
                               seed: UInt64, communicator: Communicator, repetitions: Int = 3) -> BackwardProbe {
        var rng = SplitMix64(seed: seed, stream: [0x5052_4F42])
        let indices = Array(rng.permutation(images.count).prefix(microBatch))
        let pixels = FloatBuffer(capacity: indices.count * images.sampleSize)
        images.gatherBatch(indices[...], into: pixels.pointer)
        let x = FeatureMap(data: pixels.pointer, channels: images.channels, batch: indices.count,
                           height: images.height, width: images.width)
        let dLogits = FloatBuffer()
        func timeBackward() -> Double {
            let logits = model.forward(x, training: true)
            // The time does not depend on the gradient's values: a
            // constant one needs no labels and no teacher.
            dLogits.reserve(logits.count).update(repeating: 1 / Float(indices.count), count: logits.count)
            let t0 = monotonicSeconds()
            model.backward(FeatureMap(data: dLogits.pointer, channels: logits.channels, batch: indices.count,
                                      height: 1, width: 1))
            return monotonicSeconds() - t0
        }
        var best = [Double.infinity, Double.infinity]
        for _ in 0..<repetitions {
            best[0] = min(best[0], selection.withRows(of: model.layers, timeBackward))
            best[1] = min(best[1], model.layers.withAllGradientRows(timeBackward))
        }
        for norm in model.batchNorms { norm.discardPendingStatistics() }
        model.store.gradients.zero()
        var mean = best
        communicator.allReduce(&mean, .sum)
        return BackwardProbe(selected: mean[0] / Double(communicator.size), full: mean[1] / Double(communicator.size),
                             batch: indices.count)
    }
}
