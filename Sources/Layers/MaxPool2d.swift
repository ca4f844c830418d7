import Kernels

/// 2-D max pooling with a square window, as PyTorch's `MaxPool2d(kernel,
/// stride, padding)` in floor mode (no dilation): the padding is -inf, so
/// it never wins, and OH = (H + 2p - k) / s + 1 (likewise OW). The ResNet
/// stem uses kernel 3, stride 2, padding 1.
///
/// Forward keeps, per output element, the index (y * W + x) of its maximum
/// within the input plane, as Int32. Ties go to the first maximum in
/// row-major window order and a NaN wins, as in PyTorch's CPU kernel.
/// Backward routes each dy to its argmax (adding, where windows overlap)
/// and gives 0 elsewhere.
public final class MaxPool2d {
    public let kernel: Int
    public let stride: Int
    public let padding: Int

    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()
    private let argmax = Int32Buffer()
    private var input: FeatureMap?
    private var outputShape: FeatureMap?

    /// `stride` defaults to `kernel`, as in PyTorch.
    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        let stride = stride ?? kernel
        precondition(kernel >= 1 && stride >= 1, "MaxPool2d: kernel and stride must be positive")
        // PyTorch's rule: every window then holds at least one input pixel.
        precondition(padding >= 0 && padding <= kernel / 2, "MaxPool2d: padding must be at most half the kernel")
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1)
    }

    public func forward(_ x: FeatureMap) -> FeatureMap {
        let (H, W) = (x.height, x.width)
        let (OH, OW) = outputSize(height: H, width: W)
        precondition(OH > 0 && OW > 0, "MaxPool2d: a \(H)x\(W) input is smaller than the window")
        input = x
        let planes = x.channels * x.batch, outPlane = OH * OW
        let y = FeatureMap(data: output.reserve(planes * outPlane), channels: x.channels, batch: x.batch,
                           height: OH, width: OW)
        outputShape = y
        let indices = argmax.reserve(planes * outPlane)
        let (k, s, p) = (kernel, stride, padding)
        for plane in 0..<planes {
            let source = UnsafePointer(x.data + plane * H * W)
            let out = y.data + plane * outPlane, index = indices + plane * outPlane
            for oy in 0..<OH {
                let top = oy * s - p
                let rows = max(top, 0)..<min(top + k, H)
                for ox in 0..<OW {
                    let left = ox * s - p
                    let columns = max(left, 0)..<min(left + k, W)
                    var best = -Float.infinity
                    var bestIndex = rows.lowerBound * W + columns.lowerBound
                    for iy in rows {
                        let row = source + iy * W
                        for ix in columns {
                            let v = row[ix]
                            if v > best || v.isNaN {
                                best = v
                                bestIndex = iy * W + ix
                            }
                        }
                    }
                    out[oy * OW + ox] = best
                    index[oy * OW + ox] = Int32(truncatingIfNeeded: bestIndex)
                }
            }
        }
        return y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let x = input, let y = outputShape else { preconditionFailure("MaxPool2d: backward before forward") }
        precondition(dy.count == y.count, "MaxPool2d: gradient shape differs from the output's")
        let dx = x.like(inputGradient)
        dx.data.update(repeating: 0, count: dx.count)
        let inPlane = x.height * x.width, outPlane = y.height * y.width
        let indices = argmax.pointer
        for plane in 0..<(x.channels * x.batch) {
            let target = dx.data + plane * inPlane
            let gradient = dy.data + plane * outPlane, index = indices + plane * outPlane
            for j in 0..<outPlane { target[Int(index[j])] += gradient[j] }
        }
        return dx
    }
}

/// An owned block of Int32 that grows on demand, like `FloatBuffer`.
final class Int32Buffer {
    private(set) var pointer: UnsafeMutablePointer<Int32>
    private(set) var capacity: Int

    init() {
        capacity = 0
        pointer = .allocate(capacity: 1)
    }

    deinit { pointer.deallocate() }

    /// Grows the buffer to hold at least `count` values; contents are not
    /// kept when it grows.
    func reserve(_ count: Int) -> UnsafeMutablePointer<Int32> {
        if count > capacity {
            pointer.deallocate()
            pointer = .allocate(capacity: count)
            capacity = count
        }
        return pointer
    }
}
