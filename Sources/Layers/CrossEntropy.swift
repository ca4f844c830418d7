import Kernels

/// Softmax cross-entropy over logits stored class-major, [classes, N].
public struct CrossEntropyResult {
    /// Mean loss over the batch.
    public var loss: Float
    /// Samples whose arg-max logit equals the label (distillation: the
    /// teacher's arg-max).
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

/// Knowledge distillation without labels: the batch mean of
///
///     T^2 * KL(softmax(teacher / T) || softmax(student / T))
///
/// over logits stored class-major, [classes, N], and its gradient
/// dL/dstudent = T * (softmax(student / T) - softmax(teacher / T)) *
/// gradientScale (written into `gradient`; the caller picks
/// `gradientScale`, usually 1/N for the mean). T^2 keeps the gradient's
/// size independent of T (Hinton et al.). `correct` counts the samples
/// whose student arg-max equals the teacher's.
public func softmaxDistillation(student: FeatureMap, teacher: FeatureMap, temperature: Float,
                                gradient: UnsafeMutablePointer<Float>?,
                                gradientScale: Float) -> CrossEntropyResult {
    precondition(student.count == teacher.count && student.channels == teacher.channels,
                 "student and teacher logits must have one shape")
    let classes = student.channels, n = student.batch
    let inverse = 1 / temperature
    var total: Double = 0
    var correct = 0
    var logP = [Float](repeating: 0, count: classes), logQ = logP
    /// log softmax(logits / T) of sample j into `out`; returns the arg-max.
    func logSoftmax(_ logits: FeatureMap, _ j: Int, into out: inout [Float]) -> Int {
        var best = 0
        var top = -Float.infinity
        for c in 0..<classes where logits.data[c * n + j] > top {
            top = logits.data[c * n + j]
            best = c
        }
        var z: Float = 0
        for c in 0..<classes {
            out[c] = (logits.data[c * n + j] - top) * inverse
            z += expf(out[c])
        }
        let logZ = logf(z)
        for c in 0..<classes { out[c] -= logZ }
        return best
    }
    for j in 0..<n {
        let teacherBest = logSoftmax(teacher, j, into: &logP)
        let studentBest = logSoftmax(student, j, into: &logQ)
        if teacherBest == studentBest { correct += 1 }
        var kl: Double = 0
        for c in 0..<classes { kl += Double(expf(logP[c])) * Double(logP[c] - logQ[c]) }
        total += kl
        if let gradient {
            let scale = temperature * gradientScale
            for c in 0..<classes { gradient[c * n + j] = (expf(logQ[c]) - expf(logP[c])) * scale }
        }
    }
    let t2 = Double(temperature) * Double(temperature)
    return CrossEntropyResult(loss: Float(t2 * total / Double(max(n, 1))), correct: correct)
}

#if canImport(Glibc)
import Glibc
#endif
