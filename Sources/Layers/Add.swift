import Kernels

/// a + b without an activation: the end of MobileNetV2's inverted residual
/// block (ResNet's blocks use `AddReLU`).
///
/// Backward returns dy itself, not a copy: the gradient of a sum is the
/// same for both terms, so the caller passes the returned map to both
/// branches (typically the residual branch's backward, and `accumulate`
/// into the gradient the other branch produces). It is a view of the
/// caller's own dy and lives as long as that does.
public final class Add {
    private let sum = FloatBuffer()

    public init() {}

    public func forward(_ a: FeatureMap, _ b: FeatureMap) -> FeatureMap {
        precondition(a.channels == b.channels && a.batch == b.batch && a.height == b.height && a.width == b.width,
                     "Add: shapes differ")
        let s = a.like(sum)
        let left = a.data, right = b.data, out = s.data
        for i in 0..<a.count { out[i] = left[i] + right[i] }
        return s
    }

    /// dL/da = dL/db = dy.
    public func backward(_ dy: FeatureMap) -> FeatureMap { dy }
}

/// target += source, element-wise, for two maps of one shape: joins the
/// gradients of two branches that read the same input (a residual
/// connection's skip and its block).
public func accumulate(_ source: FeatureMap, into target: FeatureMap) {
    precondition(source.channels == target.channels && source.batch == target.batch
                     && source.height == target.height && source.width == target.width,
                 "accumulate: shapes differ")
    accumulate(source.data, into: target.data, count: source.count)
}
