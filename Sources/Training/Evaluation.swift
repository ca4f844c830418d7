import Data
import Distributed
import Kernels
import Layers

/// Test-set accuracy and mean loss.
public struct Evaluation: Sendable {
    public var accuracy: Double
    public var loss: Double
    public var samples: Int
}

/// Evaluates in inference mode (running statistics) on this rank's
/// contiguous shard of `data`, then sums over ranks, so every rank gets the
/// result for the whole set.
public func evaluate(_ model: Network, on data: Dataset, communicator: Communicator,
                     batchSize: Int = 250) -> Evaluation {
    let shard = contiguousShard(count: data.count, rank: communicator.rank, worldSize: communicator.size)
    let images = FloatBuffer(capacity: batchSize * data.sampleSize)
    var labels = [Int32](repeating: 0, count: batchSize)
    var totals: [Double] = [0, 0]  // correct, loss sum
    for start in stride(from: shard.lowerBound, to: shard.upperBound, by: batchSize) {
        let indices = start..<min(start + batchSize, shard.upperBound)
        labels.withUnsafeMutableBufferPointer { l in
            data.gatherBatch(indices, pixels: images.pointer, labels: l.baseAddress!)
        }
        let x = FeatureMap(data: images.pointer, channels: data.channels, batch: indices.count,
                           height: data.height, width: data.width)
        let logits = model.forward(x, training: false)
        let result = labels.withUnsafeBufferPointer {
            softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: nil, gradientScale: 0)
        }
        totals[0] += Double(result.correct)
        totals[1] += Double(result.loss) * Double(indices.count)
    }
    communicator.allReduce(&totals, .sum)
    let n = Double(max(data.count, 1))
    return Evaluation(accuracy: totals[0] / n, loss: totals[1] / n, samples: data.count)
}
