import Kernels

/// 2-D convolution (square kernel, no groups) as im2col + one GEMM per
/// chunk of images, with optional fake quantization of its weight (per
/// output channel) and of its input (per tensor), each symmetric or
/// asymmetric (see `QuantScheme`).
///
/// Forward:  Y[C_out, N*P] = W_q[C_out, K] * col(x_q)[K, N*P]   (+ bias)
/// Backward: dW_q[S, :]    = dY[S, N*P] * col(x_q)^T            rows S only
///           dcol          = W_q^T * dY,  dx_q = col2im(dcol)
/// where K = C_in*k*k, P = output pixels, S = `gradientRows`. At stride 1
/// with |S| < C_in, dW_q[S] comes from the patches of dY[S] instead (see
/// `selectedWeightGradientFromOutputPatches`).
public final class Conv2d {
    public let name: String
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    /// `<name>.weight`, OIHW (or [out, in] for a linear layer).
    public let weight: ParameterSlot
    public let bias: ParameterSlot?
    public let weightQuantizer: WeightQuantizer
    public let inputQuantizer: ActivationQuantizer

    /// Output channels whose weight gradient is computed, as runs of rows.
    /// All rows by default; EfQAT narrows it to the critical channels, and
    /// an empty list skips dW entirely. Frozen rows get no gradient at all.
    public var gradientRows: [Range<Int>]
    /// False for the network's first layer: nothing upstream needs dL/dx.
    public var needsInputGradient = true
    /// Called with the (unquantized) input of every forward: calibration
    /// observes activation ranges through it.
    public var inputObserver: ((FeatureMap) -> Void)?
    /// Genie-D's swing convolution: when set, the input is reflect-padded
    /// and randomly cropped back to its size before the convolution.
    public var swing: ReflectPadCrop?

    private let store: ParameterStore
    private let workspace: Workspace
    private var input: FeatureMap?
    private let quantizedInput = FloatBuffer()
    private let quantizedWeight = FloatBuffer()
    private let output = FloatBuffer()
    private let inputGradient = FloatBuffer()

    public init(name: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, bias: Bool = false, store: ParameterStore, workspace: Workspace,
                weightShape: [Int]? = nil) {
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.store = store
        self.workspace = workspace
        let shape = weightShape ?? [outChannels, inChannels, kernel, kernel]
        precondition(shape.reduce(1, *) == outChannels * inChannels * kernel * kernel)
        weight = store.register("\(name).weight", shape: shape, role: .weight)
        self.bias = bias ? store.register("\(name).bias", shape: [outChannels], role: .bias) : nil
        weightQuantizer = WeightQuantizer(layer: name, rows: outChannels, store: store)
        inputQuantizer = ActivationQuantizer(layer: name, store: store)
        gradientRows = [0..<outChannels]
    }

    /// A fully connected layer is a 1x1 convolution of 1x1 maps; only the
    /// weight's registered shape differs ([out, in], as in PyTorch).
    public static func linear(name: String, inFeatures: Int, outFeatures: Int,
                              store: ParameterStore, workspace: Workspace) -> Conv2d {
        Conv2d(name: name, inChannels: inFeatures, outChannels: outFeatures, kernel: 1, bias: true,
               store: store, workspace: workspace, weightShape: [outFeatures, inFeatures])
    }

    public var patchSize: Int { inChannels * kernel * kernel }

    /// The slots whose gradients `backward` adds to.
    public var trainableSlots: [ParameterSlot] {
        [weight] + (bias.map { [$0] } ?? []) + [weightQuantizer.step, inputQuantizer.step]
    }

    public func geometry(for x: FeatureMap) -> ConvGeometry {
        ConvGeometry(inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                     padding: padding, height: x.height, width: x.width)
    }

    /// Images per im2col chunk.
    private func chunk(_ g: ConvGeometry, batch: Int) -> Int {
        max(1, min(batch, workspace.chunkElements / max(1, g.patchSize * g.outPixels)))
    }

    /// The weights the GEMMs use: fake-quantized when quantization is on.
    private func effectiveWeight() -> UnsafeMutablePointer<Float> {
        let w = store.parameters.pointer(weight)
        guard weightQuantizer.enabled else { return w }
        let out = quantizedWeight.reserve(weight.count)
        weightQuantizer.forward(w, rows: outChannels, rowLength: patchSize,
                                steps: store.parameters.pointer(weightQuantizer.step),
                                zeroPoints: store.state.pointer(weightQuantizer.zeroPoint), into: out)
        return out
    }

    /// The input the GEMMs read: fake-quantized when input quantization is
    /// on, except the elements the quantizer's QDrop mask drops.
    private func effectiveInput(_ x: FeatureMap) -> UnsafeMutablePointer<Float> {
        guard inputQuantizer.enabled else { return x.data }
        let out = quantizedInput.reserve(x.count)
        fakeQuantize(x.data, out, count: x.count,
                     step: store.parameters[inputQuantizer.step][0],
                     zeroPoint: store.state[inputQuantizer.zeroPoint][0], grid: inputQuantizer.grid,
                     dropMask: inputQuantizer.dropMask)
        return out
    }

    public func forward(_ x: FeatureMap) -> FeatureMap {
        precondition(x.channels == inChannels, "\(name): expected \(inChannels) channels, got \(x.channels)")
        inputObserver?(x)
        let x = swing?.forward(x) ?? x
        input = x
        let g = geometry(for: x)
        let n = x.batch, columns = n * g.outPixels
        let y = FeatureMap(data: output.reserve(outChannels * columns), channels: outChannels,
                           batch: n, height: g.outHeight, width: g.outWidth)
        let w = effectiveWeight()
        let xq = effectiveInput(x)
        if g.isPointwise {
            sgemm(m: outChannels, n: columns, k: inChannels, w, lda: inChannels, xq, ldb: columns,
                  y.data, ldc: columns)
        } else {
            let step = chunk(g, batch: n)
            let col = workspace.patches.reserve(g.patchSize * step * g.outPixels)
            for first in Swift.stride(from: 0, to: n, by: step) {
                let images = first..<min(n, first + step)
                let chunkColumns = images.count * g.outPixels
                im2col(g, input: xq, batch: n, images: images, col: col)
                sgemm(m: outChannels, n: chunkColumns, k: g.patchSize, w, lda: g.patchSize,
                      col, ldb: chunkColumns, y.data + first * g.outPixels, ldc: columns)
            }
        }
        if let bias {
            let b = store.parameters[bias]
            for o in 0..<outChannels {
                let row = y.data + o * columns
                for i in 0..<columns { row[i] += b[o] }
            }
        }
        return y
    }

    /// The rows of dY whose weight gradient is wanted, [|S|, columns]:
    /// dY itself when they are one run, else a gathered copy.
    private func selectedOutputGradient(_ dy: FeatureMap, columns: Int) -> UnsafePointer<Float> {
        if gradientRows.count == 1, let run = gradientRows.first {
            return UnsafePointer(dy.data + run.lowerBound * columns)
        }
        let selected = workspace.selectedOutputGradient.reserve(gradientRows.reduce(0) { $0 + $1.count } * columns)
        var next = selected
        for run in gradientRows {
            next.update(from: dy.data + run.lowerBound * columns, count: run.count * columns)
            next += run.count * columns
        }
        return UnsafePointer(selected)
    }

    /// Adds this layer's parameter gradients into the store's gradient arena
    /// and returns dL/dx (undefined when `needsInputGradient` is false).
    public func backward(_ dy: FeatureMap) -> FeatureMap {
        guard let x = input else { preconditionFailure("\(name): backward before forward") }
        let g = geometry(for: x)
        let n = x.batch, columns = n * g.outPixels
        let K = g.patchSize
        let params = store.parameters, grads = store.gradients
        let wRaw = params.pointer(weight)
        // Recomputed rather than kept from forward: cheap next to the GEMMs,
        // and it keeps one weight copy per layer instead of two.
        let w = effectiveWeight()
        let xq: UnsafePointer<Float> = inputQuantizer.enabled ? UnsafePointer(quantizedInput.pointer) : UnsafePointer(x.data)

        // dW_q of the selected rows S only, compact: row j of `dwSelected`
        // belongs to the j-th selected row. The selected rows of dY are
        // gathered once, so every chunk runs one GEMM with |S| rows however
        // scattered S is; the quantizer (or a plain add) scatters the result.
        let selectedRows = gradientRows.reduce(0) { $0 + $1.count }
        let dySelected = selectedOutputGradient(dy, columns: columns)
        let dwSelected = workspace.weightGradient.reserve(selectedRows * K)
        dwSelected.update(repeating: 0, count: selectedRows * K)

        let dx = FeatureMap(data: inputGradient.reserve(x.count), channels: inChannels, batch: n,
                            height: x.height, width: x.width)
        // The input step's gradient flows through dL/dx_q, so a quantized
        // input needs it even where nothing upstream does.
        let needsDx = needsInputGradient || inputQuantizer.enabled
        if g.isPointwise {
            sgemm(transposeB: true, m: selectedRows, n: K, k: columns, dySelected, lda: columns, xq, ldb: columns,
                  dwSelected, ldc: K)
            if needsDx {
                sgemm(transposeA: true, m: inChannels, n: columns, k: outChannels, w, lda: K,
                      dy.data, ldb: columns, dx.data, ldc: columns)
            }
        } else {
            // Few rows at stride 1: dY[S]'s patch matrix is the smaller one.
            let fromOutputPatches = selectedRows > 0 && stride == 1 && padding < kernel && selectedRows < inChannels
            if fromOutputPatches {
                selectedWeightGradientFromOutputPatches(g, dySelected: dySelected, rows: selectedRows, input: xq,
                                                        batch: n, into: dwSelected)
            }
            let step = chunk(g, batch: n)
            let col = workspace.patches.reserve(K * step * g.outPixels)
            for first in Swift.stride(from: 0, to: n, by: step) {
                let images = first..<min(n, first + step)
                let chunkColumns = images.count * g.outPixels
                let offset = first * g.outPixels
                if selectedRows > 0 && !fromOutputPatches {
                    im2col(g, input: xq, batch: n, images: images, col: col)
                    sgemm(transposeB: true, m: selectedRows, n: K, k: chunkColumns,
                          dySelected + offset, lda: columns, col, ldb: chunkColumns,
                          beta: 1, dwSelected, ldc: K)
                }
                if needsDx {
                    sgemm(transposeA: true, m: K, n: chunkColumns, k: outChannels, w, lda: K,
                          dy.data + offset, ldb: columns, col, ldc: chunkColumns)
                    col2im(g, col: col, batch: n, images: images, inputGradient: dx.data)
                }
            }
        }

        if weightQuantizer.enabled {
            weightQuantizer.backward(wRaw, rows: gradientRows, rowLength: K,
                                     steps: params.pointer(weightQuantizer.step),
                                     zeroPoints: store.state.pointer(weightQuantizer.zeroPoint),
                                     selectedGradient: dwSelected, weightGradient: grads.pointer(weight),
                                     stepGradient: grads.pointer(weightQuantizer.step))
        } else {
            addRows(dwSelected, rows: gradientRows, rowLength: K, into: grads.pointer(weight))
        }
        if let bias {
            let db = grads[bias]
            for o in 0..<outChannels { db[o] += sum(dy.data + o * columns, count: columns) }
        }
        if inputQuantizer.enabled {
            let ds = fakeQuantizeBackward(x.data, gradient: dx.data, count: x.count,
                                          step: params[inputQuantizer.step][0],
                                          zeroPoint: store.state[inputQuantizer.zeroPoint][0],
                                          grid: inputQuantizer.grid, dropMask: inputQuantizer.dropMask)
            let perSample = x.count / n
            grads[inputQuantizer.step][0] += inputQuantizer.grid.lsqGradientScale(elements: perSample) * ds
        }
        if let swing, needsInputGradient { return swing.backward(dx) }
        return dx
    }
}

extension Conv2d {
    /// dW of the selected rows S of a stride-1 convolution when |S| < C_in,
    /// from a patch matrix of dY_S instead of x: it has |S|·k² rows instead
    /// of C_in·k², so EfQAT's backward copies (and multiplies) only in
    /// proportion to what it trains.
    ///
    /// dW[s, c, ky, kx] = sum_j Z[(s, k-1-ky, k-1-kx), j] * x_q[c, j], where
    /// j runs over (image, input pixel) and Z = im2col(dY_S) with padding
    /// k-1-p, whose output grid is x's. So [|S|·k², C_in] = Z * x_qᵀ is one
    /// GEMM per chunk (x_q in CNHW is already [C_in, N*H*W]), and a
    /// transpose of its small result gives the rows of dW.
    fileprivate func selectedWeightGradientFromOutputPatches(
        _ g: ConvGeometry, dySelected: UnsafePointer<Float>, rows: Int, input xq: UnsafePointer<Float>,
        batch n: Int, into dwSelected: UnsafeMutablePointer<Float>
    ) {
        let k = kernel, taps = k * k, inputPlane = g.height * g.width
        let patches = ConvGeometry(inChannels: rows, outChannels: inChannels, kernel: k, stride: 1,
                                   padding: k - 1 - padding, height: g.outHeight, width: g.outWidth)
        precondition(patches.outHeight == g.height && patches.outWidth == g.width)
        let m = rows * taps
        let byTap = workspace.weightGradientByTap.reserve(m * inChannels)
        byTap.update(repeating: 0, count: m * inChannels)
        // Z and the x columns the GEMM reads with it take half a chunk
        // together: sized for Z alone, the pair falls out of the cache
        // (measured on ResNet-20 at p = 0.1: 21 ms instead of 15 per step).
        let step = max(1, min(n, workspace.chunkElements / 2 / max(1, (m + inChannels) * inputPlane)))
        let z = workspace.patches.reserve(m * step * inputPlane)
        for first in Swift.stride(from: 0, to: n, by: step) {
            let images = first..<min(n, first + step)
            let chunkColumns = images.count * inputPlane
            im2col(patches, input: dySelected, batch: n, images: images, col: z)
            sgemm(transposeB: true, m: m, n: inChannels, k: chunkColumns, z, lda: chunkColumns,
                  xq + first * inputPlane, ldb: n * inputPlane, beta: 1, byTap, ldc: inChannels)
        }
        for s in 0..<rows {
            for c in 0..<inChannels {
                let target = dwSelected + (s * inChannels + c) * taps
                for tap in 0..<taps { target[tap] = byTap[(s * taps + taps - 1 - tap) * inChannels + c] }
            }
        }
    }
}

/// Adds compact rows (row j belongs to the j-th row of `rows`) into their
/// places in a [rows, rowLength] gradient.
func addRows(_ compact: UnsafePointer<Float>, rows: [Range<Int>], rowLength: Int,
             into gradient: UnsafeMutablePointer<Float>) {
    var source = compact
    for run in rows {
        let target = gradient + run.lowerBound * rowLength
        for i in 0..<(run.count * rowLength) { target[i] += source[i] }
        source += run.count * rowLength
    }
}
