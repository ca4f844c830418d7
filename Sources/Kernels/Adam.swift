/// Adam (Kingma & Ba) as PyTorch's `torch.optim.Adam` without weight decay,
/// for one contiguous tensor:
///
///     m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
///     p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
///
/// with b1 = 0.9, b2 = 0.999, eps = 1e-8 and t the number of steps taken.
/// Block reconstruction trains its rounding logits and step sizes with it,
/// Genie-D its generators and latents; the learning rate is passed per step
/// so callers can schedule it.
public final class Adam {
    public let count: Int
    public let beta1: Float = 0.9
    public let beta2: Float = 0.999
    public let epsilon: Float = 1e-8
    public private(set) var steps = 0
    private let m: FloatBuffer
    private let v: FloatBuffer

    public init(count: Int) {
        self.count = count
        m = FloatBuffer(capacity: count)
        v = FloatBuffer(capacity: count)
    }

    /// One update of `count` parameters at `p` from their gradient `g`.
    public func step(_ p: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>, learningRate lr: Float) {
        steps += 1
        let t = Float(steps)
        let c1 = 1 - powf(beta1, t), c2 = 1 - powf(beta2, t)
        let (b1, b2, eps) = (beta1, beta2, epsilon)
        let mp = m.pointer, vp = v.pointer
        let rate = lr / c1, inverseC2 = 1 / c2
        for i in 0..<count {
            let gi = g[i]
            let mi = b1 * mp[i] + (1 - b1) * gi
            let vi = b2 * vp[i] + (1 - b2) * gi * gi
            mp[i] = mi
            vp[i] = vi
            p[i] -= rate * mi / ((vi * inverseC2).squareRoot() + eps)
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
