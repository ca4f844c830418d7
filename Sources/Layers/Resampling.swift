import Kernels

/// Nearest-neighbour upsampling by 2 (PyTorch's `Upsample(scale_factor=2)`):
/// y[2i + a, 2j + b] = x[i, j]. Backward sums each 2x2 block of dy.
public final class Upsample2x {
    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()
    private var inputShape: FeatureMap?

    public init() {}

    public func forward(_ x: FeatureMap) -> FeatureMap {
        inputShape = x
        let (h, w) = (x.height, x.width)
        let y = FeatureMap(data: output.reserve(4 * x.count), channels: x.channels, batch: x.batch,
                           height: 2 * h, width: 2 * w)
        for plane in 0..<(x.channels * x.batch) {
            let src = x.data + plane * h * w, dst = y.data + plane * 4 * h * w
            for i in 0..<h {
                let top = dst + 2 * i * 2 * w
                for j in 0..<w {
                    top[2 * j] = src[i * w + j]
                    top[2 * j + 1] = src[i * w + j]
                }
                (top + 2 * w).update(from: top, count: 2 * w)
            }
        }
        return y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let x = inputShape else { preconditionFailure("Upsample2x: backward before forward") }
        let (h, w) = (x.height, x.width)
        let dx = x.like(inputGradient)
        for plane in 0..<(x.channels * x.batch) {
            let src = dy.data + plane * 4 * h * w, dst = dx.data + plane * h * w
            for i in 0..<h {
                let top = src + 2 * i * 2 * w, bottom = top + 2 * w
                for j in 0..<w {
                    dst[i * w + j] = top[2 * j] + top[2 * j + 1] + bottom[2 * j] + bottom[2 * j + 1]
                }
            }
        }
        return dx
    }
}

/// The output of a linear layer, [C*H*W features, N, 1, 1], read as a CNHW
/// map [C, N, H, W] with feature (c*H + y)*W + x at (c, y, x), as PyTorch's
/// `view(N, C, H, W)` reads an [N, C*H*W] tensor. A pure permutation:
/// backward applies its inverse.
public final class Unflatten {
    public let channels: Int
    public let height: Int
    public let width: Int
    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()
    private var inputShape: FeatureMap?

    public init(channels: Int, height: Int, width: Int) {
        self.channels = channels
        self.height = height
        self.width = width
    }

    public func forward(_ x: FeatureMap) -> FeatureMap {
        let p = height * width, n = x.batch
        precondition(x.height == 1 && x.width == 1 && x.channels == channels * p,
                     "Unflatten: expected \(channels * p) features, got \(x.channels)x\(x.height)x\(x.width)")
        inputShape = x
        let y = FeatureMap(data: output.reserve(x.count), channels: channels, batch: n, height: height, width: width)
        for c in 0..<channels {
            for j in 0..<n {
                let dst = y.data + (c * n + j) * p, src = x.data + c * p * n + j
                for i in 0..<p { dst[i] = src[i * n] }
            }
        }
        return y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let x = inputShape else { preconditionFailure("Unflatten: backward before forward") }
        let p = height * width, n = x.batch
        let dx = x.like(inputGradient)
        for c in 0..<channels {
            for j in 0..<n {
                let src = dy.data + (c * n + j) * p, dst = dx.data + c * p * n + j
                for i in 0..<p { dst[i * n] = src[i] }
            }
        }
        return dx
    }
}

/// Reflect-pads every image by one pixel on each side and crops the original
/// size back at `offset` (row and column, each in 0...2): a shift by
/// offset - 1 pixels with mirrored borders. Genie-D's swing convolution
/// applies it, with fresh random offsets, before every strided convolution.
///
/// y[i, j] = x[r(i + offset.y - 1, H), r(j + offset.x - 1, W)], with
/// r(-1, L) = 1, r(L, L) = L - 2 and r(k, L) = k otherwise (PyTorch's
/// "reflect" padding). Backward adds dy back onto those positions.
public final class ReflectPadCrop {
    /// Crop offsets in the padded map; (1, 1) is the identity.
    public var offset: (y: Int, x: Int) = (1, 1)
    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()
    /// The input shape and offset of the last forward, which backward undoes.
    private var last: (input: FeatureMap, offset: (y: Int, x: Int))?

    public init() {}

    @inline(__always)
    private static func reflect(_ k: Int, _ length: Int) -> Int {
        k < 0 ? -k : (k >= length ? 2 * length - 2 - k : k)
    }

    public func forward(_ x: FeatureMap) -> FeatureMap {
        precondition((0...2).contains(offset.y) && (0...2).contains(offset.x), "crop offsets must be in 0...2")
        precondition(x.height >= 2 && x.width >= 2, "reflect padding needs maps of at least 2x2")
        last = (x, offset)
        let (h, w) = (x.height, x.width), (sy, sx) = (offset.y - 1, offset.x - 1)
        let y = x.like(output)
        // Columns j with j + sx inside the row are one contiguous copy.
        let first = max(0, -sx), last = w - max(0, sx)
        for plane in 0..<(x.channels * x.batch) {
            for i in 0..<h {
                let src = x.data + (plane * h + Self.reflect(i + sy, h)) * w
                let dst = y.data + (plane * h + i) * w
                (dst + first).update(from: src + first + sx, count: last - first)
                if sx < 0 { dst[0] = src[1] }
                if sx > 0 { dst[w - 1] = src[w - 2] }
            }
        }
        return y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let (x, offset) = last else { preconditionFailure("ReflectPadCrop: backward before forward") }
        let (h, w) = (x.height, x.width), (sy, sx) = (offset.y - 1, offset.x - 1)
        let dx = x.like(inputGradient)
        dx.buffer.update(repeating: 0)
        let first = max(0, -sx), last = w - max(0, sx)
        for plane in 0..<(x.channels * x.batch) {
            for i in 0..<h {
                let dst = dx.data + (plane * h + Self.reflect(i + sy, h)) * w
                let src = dy.data + (plane * h + i) * w
                for j in first..<last { dst[j + sx] += src[j] }
                if sx < 0 { dst[1] += src[0] }
                if sx > 0 { dst[w - 2] += src[w - 1] }
            }
        }
        return dx
    }
}
