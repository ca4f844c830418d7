import Kernels

/// min(max(x, 0), 6), as PyTorch's `ReLU6` (MobileNetV2).
///
/// Backward passes dy where 0 < y < 6 and gives 0 elsewhere, including at
/// exactly 0 and 6. PyTorch's `hardtanh_backward` tests the input,
/// 0 < x < 6 (or the output for the in-place module); the two conditions
/// are the same, since y = x exactly on (0, 6) and y is 0 or 6 outside it.
/// This layer reads its own kept output, so it does not depend on the
/// input buffer surviving until backward.
public final class ReLU6 {
    public static let upperBound: Float = 6

    private let output = FloatBuffer()
    private var outputMap: FeatureMap?
    private let inputGradient = FloatBuffer()

    public init() {}

    public func forward(_ x: FeatureMap) -> FeatureMap {
        let y = x.like(output)
        let source = x.data, out = y.data
        for i in 0..<x.count { out[i] = min(max(source[i], 0), Self.upperBound) }
        outputMap = y
        return y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let y = outputMap else { preconditionFailure("ReLU6: backward before forward") }
        precondition(dy.count == y.count, "ReLU6: gradient shape differs from the output's")
        let dx = y.like(inputGradient)
        let output = y.data, gradient = dy.data, out = dx.data
        // A 0/1 factor rather than a select between dy and 0, so the loop
        // vectorizes (as in `rectifierBackward`).
        for i in 0..<y.count {
            let v = output[i]
            let inside: Float = v > 0 && v < Self.upperBound ? 1 : 0
            out[i] = gradient[i] * inside
        }
        return dx
    }
}
