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
    /// Stride 1 with "same" padding: output pixel (y, x) of tap (ky, kx)
    /// reads input pixel (y, x) shifted by a constant flat offset, so a tap
    /// of one image is one long copy (see `im2col`).
    public var isShiftedCopy: Bool { stride == 1 && outHeight == height && outWidth == width }

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
    if g.isShiftedCopy {
        im2colShifted(g, input: x, batch: batch, images: images, col: col)
        return
    }
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

/// The adjoint of `im2col`: writes dx of images `images` as the sum of the
/// patch-matrix entries copied from each input position (0 where none
/// was). May overwrite the entries of `col` that lie in the padding (they
/// have no input position).
public func col2im(_ g: ConvGeometry, col: UnsafeMutablePointer<Float>, batch: Int,
                   images: Range<Int>, inputGradient dx: UnsafeMutablePointer<Float>) {
    if g.isShiftedCopy {
        col2imShifted(g, col: col, batch: batch, images: images, inputGradient: dx)
        return
    }
    let (H, W, OH, OW, s, p, k) = (g.height, g.width, g.outHeight, g.outWidth, g.stride, g.padding, g.kernel)
    let columns = images.count * OH * OW
    for c in 0..<g.inChannels {
        (dx + (c * batch + images.lowerBound) * H * W).update(repeating: 0, count: images.count * H * W)
    }
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

/// The taps of a `isShiftedCopy` geometry: tap (ky, kx) maps output pixel
/// d = y*W + x of an image to input pixel d + shift. Destinations in
/// `inside` have their source inside the image; of those, the first or last
/// `abs(columnShift)` pixels of every row wrap around into the neighbouring
/// row and belong to the padding.
private struct ShiftedTap {
    let shift: Int
    let columnShift: Int
    let inside: Range<Int>

    init(_ g: ConvGeometry, ky: Int, kx: Int) {
        let plane = g.height * g.width
        columnShift = kx - g.padding
        shift = (ky - g.padding) * g.width + columnShift
        let lo = min(plane, max(0, -shift))
        inside = lo..<max(lo, min(plane, plane - shift))
    }

    /// Calls `body` with the wrapped pixels of each row, as ranges of flat
    /// destinations.
    @inline(__always)
    func forEachWrappedRun(_ g: ConvGeometry, _ body: (Range<Int>) -> Void) {
        guard columnShift != 0 else { return }
        let wrapped = min(g.width, abs(columnShift))
        for y in 0..<g.height {
            let first = columnShift < 0 ? y * g.width : (y + 1) * g.width - wrapped
            body(first..<(first + wrapped))
        }
    }
}

/// `im2col` for stride 1 with same padding: per tap and image, one copy of
/// the shifted image, then zeros where the tap reads the padding. Several
/// times faster than row-by-row copies for small feature maps.
private func im2colShifted(_ g: ConvGeometry, input x: UnsafePointer<Float>, batch: Int,
                           images: Range<Int>, col: UnsafeMutablePointer<Float>) {
    let k = g.kernel, plane = g.height * g.width
    let columns = images.count * plane
    for ky in 0..<k {
        for kx in 0..<k {
            let tap = ShiftedTap(g, ky: ky, kx: kx)
            let inside = tap.inside
            for c in 0..<g.inChannels {
                let row = col + ((c * k + ky) * k + kx) * columns
                for (j, n) in images.enumerated() {
                    let out = row + j * plane
                    let image = x + (c * batch + n) * plane
                    out.update(repeating: 0, count: inside.lowerBound)
                    (out + inside.lowerBound).update(from: image + inside.lowerBound + tap.shift, count: inside.count)
                    (out + inside.upperBound).update(repeating: 0, count: plane - inside.upperBound)
                    tap.forEachWrappedRun(g) { run in
                        for d in run { out[d] = 0 }
                    }
                }
            }
        }
    }
}

/// `col2im` for stride 1 with same padding: the centre tap (no shift, no
/// padding) writes dx; every other tap zeroes its wrapped entries of `col`
/// and then adds with one long shifted loop.
private func col2imShifted(_ g: ConvGeometry, col: UnsafeMutablePointer<Float>, batch: Int,
                           images: Range<Int>, inputGradient dx: UnsafeMutablePointer<Float>) {
    let k = g.kernel, plane = g.height * g.width
    let columns = images.count * plane
    let centre = g.padding * k + g.padding
    for tapIndex in [centre] + (0..<(k * k)).filter({ $0 != centre }) {
        let (ky, kx) = tapIndex.quotientAndRemainder(dividingBy: k)
        let tap = ShiftedTap(g, ky: ky, kx: kx)
        let inside = tap.inside
        for c in 0..<g.inChannels {
            let row = col + (c * k * k + tapIndex) * columns
            for (j, n) in images.enumerated() {
                let source = row + j * plane
                let target = dx + (c * batch + n) * plane + tap.shift
                if tapIndex == centre {
                    target.update(from: source, count: plane)
                    continue
                }
                tap.forEachWrappedRun(g) { run in
                    for d in run { source[d] = 0 }
                }
                for d in inside { target[d] += source[d] }
            }
        }
    }
}
