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
        // The output columns each kernel column kx reads inside the image.
        let columnRanges = (0..<k).map { kx -> Range<Int> in
            let lo = max(0, (p - kx + s - 1) / s)
            let hi = min(OW, W - 1 + p - kx < 0 ? 0 : (W - 1 + p - kx) / s + 1)
            return lo..<max(lo, hi)
        }
        for plane in 0..<planes {
            let source = UnsafePointer(x.data + plane * H * W)
            for oy in 0..<OH {
                let best = y.data + plane * outPlane + oy * OW
                let index = indices + plane * outPlane + oy * OW
                let top = oy * s - p
                let rows = max(top, 0)..<min(top + k, H)
                // Before any tap: -inf at the window's first pixel, which
                // stays the arg-max only if every value is -inf (PyTorch).
                best.update(repeating: -.infinity, count: OW)
                for ox in 0..<OW { index[ox] = Int32(truncatingIfNeeded: rows.lowerBound * W + max(ox * s - p, 0)) }
                // The taps in row-major order, each over the whole output
                // row: a strict > keeps the first maximum.
                for iy in rows {
                    for kx in 0..<k {
                        takeMaximum(source + iy * W + kx - p, stride: s, columns: columnRanges[kx],
                                    rowEnd: W + p - kx, firstIndex: iy * W + kx - p, best: best, index: index)
                    }
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

/// One tap over a row of outputs: where tap[ox * stride] is greater than
/// best[ox], or NaN (a NaN wins, as in PyTorch), it becomes best[ox] and
/// its input index (firstIndex + ox * stride) index[ox]. `rowEnd`: the
/// tap's row ends before tap[rowEnd].
///
/// At strides 1 and 2, four outputs at a time with SIMD compares and
/// selects (a loop of scalar selects compiles to a branch per value,
/// mispredicted half the time on real data). At stride 2 the even lanes
/// come from one load of 8 values, used only while all 8 lie in the row.
@inline(__always)
private func takeMaximum(_ tap: UnsafePointer<Float>, stride s: Int, columns: Range<Int>, rowEnd: Int,
                         firstIndex: Int, best: UnsafeMutablePointer<Float>, index: UnsafeMutablePointer<Int32>) {
    var ox = columns.lowerBound
    if s <= 2 {
        // The last ox whose vector load (4 s values) stays in the row.
        let lastSafe = s == 1 ? columns.upperBound - 4 : (rowEnd - 8).floorDivided(by: 2)
        let lanes = SIMD4<Int32>(0, 1, 2, 3) &* Int32(s)
        while ox + 4 <= columns.upperBound && ox <= lastSafe {
            let v = s == 1 ? UnsafeRawPointer(tap + ox).loadUnaligned(as: SIMD4<Float>.self)
                           : UnsafeRawPointer(tap + 2 * ox).loadUnaligned(as: SIMD8<Float>.self).evenHalf
            let current = UnsafeRawPointer(best + ox).loadUnaligned(as: SIMD4<Float>.self)
            let take = (v .> current) .| (v .!= v)
            let at = UnsafeRawPointer(index + ox).loadUnaligned(as: SIMD4<Int32>.self)
            let candidate = SIMD4<Int32>(repeating: Int32(truncatingIfNeeded: firstIndex + ox * s)) &+ lanes
            UnsafeMutableRawPointer(best + ox).storeBytes(of: current.replacing(with: v, where: take),
                                                          as: SIMD4<Float>.self)
            UnsafeMutableRawPointer(index + ox).storeBytes(of: at.replacing(with: candidate, where: take),
                                                           as: SIMD4<Int32>.self)
            ox += 4
        }
    }
    while ox < columns.upperBound {
        let v = tap[ox * s]
        if v > best[ox] || v != v {
            best[ox] = v
            index[ox] = Int32(truncatingIfNeeded: firstIndex + ox * s)
        }
        ox += 1
    }
}

private extension Int {
    /// Division rounding toward minus infinity.
    func floorDivided(by d: Int) -> Int {
        let (q, r) = quotientAndRemainder(dividingBy: d)
        return r < 0 ? q - 1 : q
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
