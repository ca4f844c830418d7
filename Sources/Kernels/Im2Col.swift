/// The shape arithmetic of a 2-D convolution with a square kernel.
public struct ConvGeometry: Sendable, Equatable {
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    public let height: Int
    public let width: Int

    public init(inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int,
                height: Int, width: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.height = height
        self.width = width
    }

    public var outHeight: Int { (height + 2 * padding - kernel) / stride + 1 }
    public var outWidth: Int { (width + 2 * padding - kernel) / stride + 1 }
    /// Rows of the patch matrix: C_in * k * k (the GEMM's inner dimension).
    public var patchSize: Int { inChannels * kernel * kernel }
    public var outPixels: Int { outHeight * outWidth }
    /// A 1x1, stride-1, unpadded convolution reads its input as the patch
    /// matrix directly: no im2col copy.
    public var isPointwise: Bool { kernel == 1 && stride == 1 && padding == 0 }

    /// Output columns ow whose input column ow*stride - padding + kx is
    /// inside the image.
    @inline(__always)
    func validColumns(kx: Int) -> Range<Int> {
        let shift = padding - kx
        let lo = shift > 0 ? (shift + stride - 1) / stride : 0
        // Integer division truncates toward zero: a negative last column
        // (the kernel tap is right of every input pixel) means none is valid.
        let last = width - 1 + shift
        let hi = last < 0 ? 0 : min(outWidth, last / stride + 1)
        return lo..<max(lo, hi)
    }
}

/// Copies images `images` of a CNHW input (batch `batch`) into the patch
/// matrix `col` of shape [patchSize, images.count * outPixels]: row
/// (c, ky, kx), column (n, oy, ox) holds x[c, n, oy*s - p + ky, ox*s - p + kx]
/// or 0 in the padding.
public func im2col(_ g: ConvGeometry, input x: UnsafePointer<Float>, batch: Int,
                   images: Range<Int>, col: UnsafeMutablePointer<Float>) {
    let (H, W, OH, OW, s, p, k) = (g.height, g.width, g.outHeight, g.outWidth, g.stride, g.padding, g.kernel)
    let columns = images.count * OH * OW
    for c in 0..<g.inChannels {
        for ky in 0..<k {
            for kx in 0..<k {
                let row = col + ((c * k + ky) * k + kx) * columns
                let valid = g.validColumns(kx: kx)
                for (j, n) in images.enumerated() {
                    let image = x + (c * batch + n) * H * W
                    for oy in 0..<OH {
                        let out = row + (j * OH + oy) * OW
                        let iy = oy * s - p + ky
                        guard iy >= 0, iy < H, !valid.isEmpty else {
                            out.update(repeating: 0, count: OW)
                            continue
                        }
                        out.update(repeating: 0, count: valid.lowerBound)
                        (out + valid.upperBound).update(repeating: 0, count: OW - valid.upperBound)
                        let src = image + iy * W - p + kx
                        if s == 1 {
                            (out + valid.lowerBound).update(from: src + valid.lowerBound, count: valid.count)
                        } else {
                            for ox in valid { out[ox] = src[ox * s] }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: adds every patch-matrix entry back onto the
/// input position it was copied from. `dx` must be zeroed by the caller
/// (once, before the first chunk).
public func col2im(_ g: ConvGeometry, col: UnsafePointer<Float>, batch: Int,
                   images: Range<Int>, inputGradient dx: UnsafeMutablePointer<Float>) {
    let (H, W, OH, OW, s, p, k) = (g.height, g.width, g.outHeight, g.outWidth, g.stride, g.padding, g.kernel)
    let columns = images.count * OH * OW
    for c in 0..<g.inChannels {
        for ky in 0..<k {
            for kx in 0..<k {
                let row = col + ((c * k + ky) * k + kx) * columns
                let valid = g.validColumns(kx: kx)
                if valid.isEmpty { continue }
                for (j, n) in images.enumerated() {
                    let image = dx + (c * batch + n) * H * W
                    for oy in 0..<OH {
                        let iy = oy * s - p + ky
                        guard iy >= 0, iy < H else { continue }
                        let src = row + (j * OH + oy) * OW
                        let dst = image + iy * W - p + kx
                        if s == 1 {
                            for ox in valid { dst[ox] += src[ox] }
                        } else {
                            for ox in valid { dst[ox * s] += src[ox] }
                        }
                    }
                }
            }
        }
    }
}
