import Kernels

/// Scratch memory shared by the layers of one model: a layer uses it only
/// inside one forward or backward call, so one buffer serves them all.
public final class Workspace {
    public let patches = FloatBuffer()
    /// dW of a conv's selected rows, compact.
    public let weightGradient = FloatBuffer()
    /// The selected rows of a conv's dY, gathered (EfQAT).
    public let selectedOutputGradient = FloatBuffer()
    /// The same dW as [|S|·k², C_in], when it comes from dY's patches.
    public let weightGradientByTap = FloatBuffer()

    /// Patch-matrix elements per chunk of images. Convolutions im2col a few
    /// images at a time so the patch matrix stays in cache while the GEMM
    /// reads it.
    public var chunkElements = 1 << 18

    public init() {}
}
