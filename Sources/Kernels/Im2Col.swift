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

/// One tap (ky, kx) of an `isShiftedCopy` geometry: it maps output pixel
/// d = y*W + x of an image to input pixel d + shift. Output pixels in
/// `inside` read inside the image, except that the first or last
/// `abs(columnShift)` pixels of every row wrap around into the neighbouring
/// row: those, and all pixels outside `inside`, read the padding.
///
/// The images of a chunk are consecutive in both x (CNHW) and the patch
/// matrix, so a tap of a whole chunk is one shifted copy (or add) over
/// `span`, after which the pixels that read the padding are set right.
private struct ShiftedTap {
    let shift: Int
    let columnShift: Int
    let inside: Range<Int>
    let plane: Int

    init(_ g: ConvGeometry, ky: Int, kx: Int) {
        plane = g.height * g.width
        columnShift = kx - g.padding
        shift = (ky - g.padding) * g.width + columnShift
        let lo = min(plane, max(0, -shift))
        inside = lo..<max(lo, min(plane, plane - shift))
    }

    /// From the first image's first inside pixel to the last image's last.
    func span(images: Int) -> Range<Int> {
        inside.lowerBound..<((images - 1) * plane + inside.upperBound)
    }

    /// Zeroes every pixel of a chunk of `images` images at `p` that reads
    /// the padding. The wrapped pixels are strided single stores in the
    /// usual case (a 3x3 kernel wraps one pixel a row): one memset call per
    /// row would cost more than the copy itself.
    @inline(__always)
    func zeroPadding(_ p: UnsafeMutablePointer<Float>, _ g: ConvGeometry, images: Int) {
        for j in 0..<images {
            let image = p + j * plane
            image.update(repeating: 0, count: inside.lowerBound)
            (image + inside.upperBound).update(repeating: 0, count: plane - inside.upperBound)
        }
        let wrapped = min(g.width, abs(columnShift))
        guard wrapped > 0 else { return }
        var row = p + (columnShift < 0 ? 0 : g.width - wrapped)
        for _ in 0..<(images * g.height) {
            if wrapped == 1 { row[0] = 0 } else { row.update(repeating: 0, count: wrapped) }
            row += g.width
        }
    }
}

/// `im2col` for stride 1 with same padding: per tap and channel, one copy
/// of the shifted chunk, then zeros where the tap reads the padding.
/// About twice as fast as row-by-row copies on ResNet-20's feature maps.
private func im2colShifted(_ g: ConvGeometry, input x: UnsafePointer<Float>, batch: Int,
                           images: Range<Int>, col: UnsafeMutablePointer<Float>) {
    let k = g.kernel, columns = images.count * g.height * g.width
    for ky in 0..<k {
        for kx in 0..<k {
            let tap = ShiftedTap(g, ky: ky, kx: kx)
            let span = tap.span(images: images.count)
            for c in 0..<g.inChannels {
                let out = col + ((c * k + ky) * k + kx) * columns
                guard !tap.inside.isEmpty else {
                    out.update(repeating: 0, count: columns)
                    continue
                }
                let source = x + (c * batch + images.lowerBound) * tap.plane + tap.shift
                (out + span.lowerBound).update(from: source + span.lowerBound, count: span.count)
                tap.zeroPadding(out, g, images: images.count)
            }
        }
    }
}

/// `col2im` for stride 1 with same padding: the centre tap (no shift, no
/// padding) writes dx; every other tap zeroes its padding entries of `col`
/// and then adds the shifted chunk with one long loop.
private func col2imShifted(_ g: ConvGeometry, col: UnsafeMutablePointer<Float>, batch: Int,
                           images: Range<Int>, inputGradient dx: UnsafeMutablePointer<Float>) {
    let k = g.kernel, columns = images.count * g.height * g.width
    let centre = g.padding * k + g.padding
    for tapIndex in [centre] + (0..<(k * k)).filter({ $0 != centre }) {
        let (ky, kx) = tapIndex.quotientAndRemainder(dividingBy: k)
        let tap = ShiftedTap(g, ky: ky, kx: kx)
        let span = tap.span(images: images.count)
        guard !tap.inside.isEmpty else { continue }
        for c in 0..<g.inChannels {
            let source = col + (c * k * k + tapIndex) * columns
            let target = dx + (c * batch + images.lowerBound) * tap.plane + tap.shift
            if tapIndex == centre {
                target.update(from: source, count: columns)
                continue
            }
            tap.zeroPadding(source, g, images: images.count)
            accumulate(source + span.lowerBound, into: target + span.lowerBound, count: span.count)
        }
    }
}
