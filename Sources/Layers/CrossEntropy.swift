import Kernels

/// Softmax cross-entropy over logits stored class-major, [classes, N].
public struct CrossEntropyResult {
    /// Mean loss over the batch.
    public var loss: Float
    /// Samples whose arg-max logit equals the label.
    public var correct: Int
}

/// Loss and its gradient dL/dlogits = (softmax - onehot) * gradientScale
/// (written into `gradient`, same layout as the logits). The caller picks
/// `gradientScale`, usually 1/N for the mean over the batch.
public func softmaxCrossEntropy(logits: FeatureMap, labels: UnsafePointer<Int32>,
                                gradient: UnsafeMutablePointer<Float>?,
                                gradientScale: Float) -> CrossEntropyResult {
    let classes = logits.channels, n = logits.batch
    var total: Double = 0
    var correct = 0
    var p = [Float](repeating: 0, count: classes)
    for j in 0..<n {
        var best = 0
        var top = -Float.infinity
        for c in 0..<classes {
            let v = logits.data[c * n + j]
            if v > top { top = v; best = c }
        }
        var z: Float = 0
        for c in 0..<classes {
            p[c] = expf(logits.data[c * n + j] - top)
            z += p[c]
        }
        let label = Int(labels[j])
        total += Double(logf(z) - (logits.data[label * n + j] - top))
        if best == label { correct += 1 }
        if let gradient {
            for c in 0..<classes {
                gradient[c * n + j] = (p[c] / z - (c == label ? 1 : 0)) * gradientScale
            }
        }
    }
    return CrossEntropyResult(loss: Float(total / Double(max(n, 1))), correct: correct)
}

#if canImport(Glibc)
import Glibc
#endif
