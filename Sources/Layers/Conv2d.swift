import Kernels

/// 2-D convolution (square kernel) as im2col + one GEMM per chunk of
/// images, with optional fake quantization of its weight (per output
/// channel) and of its input (per tensor), each symmetric or asymmetric
/// (see `QuantScheme`).
///
/// Forward:  Y[C_out, N*P] = W_q[C_out, K] * col(x_q)[K, N*P]   (+ bias)
/// Backward: dW_q[S, :]    = dY[S, N*P] * col(x_q)^T            rows S only
///           dcol          = W_q^T * dY,  dx_q = col2im(dcol)
/// where K = C_in*k*k, P = output pixels, S = `gradientRows`. At stride 1
/// with |S| < C_in (and groups = 1), dW_q[S] comes from the patches of
/// dY[S] instead (see `selectedWeightGradientFromOutputPatches`).
///
/// Grouped convolution (`groups` > 1, PyTorch semantics): input and
/// output channels split into `groups` consecutive blocks, output block g
/// reads input block g only, and the weight is [C_out, C_in/groups, k, k],
/// so a weight row (and a weight quantizer row) holds K = (C_in/groups)*k*k
/// values. A group's input channels are consecutive in CNHW, so each group
/// is the convolution above on a pointer offset: im2col + GEMM per group,
/// and dW only for the groups that hold selected rows. Depthwise
/// convolutions (groups = C_in: each output channel reads one input
/// channel) use direct loops over channel planes instead
/// (DepthwiseKernels.swift), dW again only for the selected rows.
public final class Conv2d {
    public let name: String
    public let inChannels: Int
    public let outChannels: Int
    public let kernel: Int
    public let stride: Int
    public let padding: Int
    /// Channel groups (1: a plain convolution). C_in and C_out are multiples.
    public let groups: Int
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
                padding: Int = 0, groups: Int = 1, bias: Bool = false, store: ParameterStore, workspace: Workspace,
                weightShape: [Int]? = nil) {
        precondition(groups >= 1 && inChannels % groups == 0 && outChannels % groups == 0,
                     "\(name): \(inChannels) input and \(outChannels) output channels do not split into \(groups) groups")
        self.name = name
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.store = store
        self.workspace = workspace
        let shape = weightShape ?? [outChannels, inChannels / groups, kernel, kernel]
        precondition(shape.reduce(1, *) == outChannels * inChannels / groups * kernel * kernel)
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

    /// Values per weight row: (C_in/groups)*k*k.
    public var patchSize: Int { inChannels / groups * kernel * kernel }

    /// Every output channel reads exactly one input channel (groups = C_in,
    /// any C_out = m*C_in): computed by direct loops, not im2col.
    public var isDepthwise: Bool { groups > 1 && groups == inChannels }

    /// The slots whose gradients `backward` adds to.
    public var trainableSlots: [ParameterSlot] {
        [weight] + (bias.map { [$0] } ?? []) + [weightQuantizer.step, inputQuantizer.step]
    }

    /// The whole layer's shape arithmetic. For a grouped convolution its
    /// channel counts are the layer's; each group's convolution has
    /// C_in/groups and C_out/groups (see `groupGeometry(for:)`).
    public func geometry(for x: FeatureMap) -> ConvGeometry {
        ConvGeometry(inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                     padding: padding, height: x.height, width: x.width)
    }

    /// One group's convolution: C_in/groups to C_out/groups channels.
    public func groupGeometry(for x: FeatureMap) -> ConvGeometry {
        ConvGeometry(inChannels: inChannels / groups, outChannels: outChannels / groups, kernel: kernel,
                     stride: stride, padding: padding, height: x.height, width: x.width)
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
        if groups > 1 {
            if isDepthwise {
                depthwiseForward(g, input: xq, batch: n, weight: w, output: y.data)
            } else {
                groupedForward(groupGeometry(for: x), input: xq, batch: n, weight: w, output: y.data)
            }
        } else if g.isPointwise {
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
        let K = patchSize
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
        let dwSelected = workspace.weightGradient.reserve(selectedRows * K)
        dwSelected.update(repeating: 0, count: selectedRows * K)

        let dx = FeatureMap(data: inputGradient.reserve(x.count), channels: inChannels, batch: n,
                            height: x.height, width: x.width)
        // The input step's gradient flows through dL/dx_q, so a quantized
        // input needs it even where nothing upstream does.
        let needsDx = needsInputGradient || inputQuantizer.enabled
        if groups > 1 {
            if isDepthwise {
                depthwiseBackward(g, dy: dy.data, input: xq, batch: n, weight: w, weightGradient: dwSelected,
                                  inputGradient: needsDx ? dx.data : nil)
            } else {
                groupedBackward(groupGeometry(for: x), dy: dy, input: xq, batch: n, weight: w,
                                weightGradient: dwSelected, inputGradient: needsDx ? dx.data : nil)
            }
        } else if g.isPointwise {
            let dySelected = selectedOutputGradient(dy, columns: columns)
            sgemm(transposeB: true, m: selectedRows, n: K, k: columns, dySelected, lda: columns, xq, ldb: columns,
                  dwSelected, ldc: K)
            if needsDx {
                sgemm(transposeA: true, m: inChannels, n: columns, k: outChannels, w, lda: K,
                      dy.data, ldb: columns, dx.data, ldc: columns)
            }
        } else {
            let dySelected = selectedOutputGradient(dy, columns: columns)
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

extension Conv2d {
    // MARK: Grouped convolution: im2col + GEMM per group

    /// The selected rows (`gradientRows`, flattened in order, so the j-th
    /// is compact row j) cut into runs that stay inside one group: each run
    /// is one GEMM against that group's patches.
    fileprivate func selectedRowsByGroup() -> [(group: Int, compact: Int, count: Int)] {
        let perGroup = outChannels / groups
        var segments: [(group: Int, compact: Int, count: Int)] = []
        var compact = 0
        for run in gradientRows {
            var row = run.lowerBound
            while row < run.upperBound {
                let group = row / perGroup
                let end = min(run.upperBound, (group + 1) * perGroup)
                if let last = segments.last, last.group == group {
                    segments[segments.count - 1].count += end - row
                } else {
                    segments.append((group, compact, end - row))
                }
                compact += end - row
                row = end
            }
        }
        return segments
    }

    /// Y[group] = W[group] * col(x_q[group]) for every group. `g` is one
    /// group's geometry; group g's input channels start at channel
    /// g * C_in/groups, its output rows at g * C_out/groups.
    fileprivate func groupedForward(_ g: ConvGeometry, input xq: UnsafePointer<Float>, batch n: Int,
                                    weight w: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>) {
        let K = g.patchSize, columns = n * g.outPixels, inputPlane = n * g.height * g.width
        let (cin, cout) = (g.inChannels, g.outChannels)
        if g.isPointwise {
            for group in 0..<groups {
                sgemm(m: cout, n: columns, k: K, w + group * cout * K, lda: K, xq + group * cin * inputPlane,
                      ldb: columns, y + group * cout * columns, ldc: columns)
            }
            return
        }
        let step = chunk(g, batch: n)
        let col = workspace.patches.reserve(K * step * g.outPixels)
        for first in Swift.stride(from: 0, to: n, by: step) {
            let images = first..<min(n, first + step)
            let chunkColumns = images.count * g.outPixels
            for group in 0..<groups {
                im2col(g, input: xq + group * cin * inputPlane, batch: n, images: images, col: col)
                sgemm(m: cout, n: chunkColumns, k: K, w + group * cout * K, lda: K, col, ldb: chunkColumns,
                      y + group * cout * columns + first * g.outPixels, ldc: columns)
            }
        }
    }

    /// dW_q of the selected rows (compact) and, when `dx` is given, dx_q,
    /// per group. A group with no selected row builds no patches for dW,
    /// so the dW cost follows the selection.
    fileprivate func groupedBackward(_ g: ConvGeometry, dy: FeatureMap, input xq: UnsafePointer<Float>, batch n: Int,
                                     weight w: UnsafePointer<Float>, weightGradient dwSelected: UnsafeMutablePointer<Float>,
                                     inputGradient dx: UnsafeMutablePointer<Float>?) {
        let K = g.patchSize, columns = n * g.outPixels, inputPlane = n * g.height * g.width
        let (cin, cout) = (g.inChannels, g.outChannels)
        let segments = selectedRowsByGroup()
        let dySelected = selectedOutputGradient(dy, columns: columns)
        if g.isPointwise {
            for s in segments {
                sgemm(transposeB: true, m: s.count, n: K, k: columns, dySelected + s.compact * columns, lda: columns,
                      xq + s.group * cin * inputPlane, ldb: columns, dwSelected + s.compact * K, ldc: K)
            }
            if let dx {
                for group in 0..<groups {
                    sgemm(transposeA: true, m: cin, n: columns, k: cout, w + group * cout * K, lda: K,
                          dy.data + group * cout * columns, ldb: columns, dx + group * cin * inputPlane, ldc: columns)
                }
            }
            return
        }
        var segmentsOfGroup = [[(compact: Int, count: Int)]](repeating: [], count: groups)
        for s in segments { segmentsOfGroup[s.group].append((s.compact, s.count)) }
        let step = chunk(g, batch: n)
        let col = workspace.patches.reserve(K * step * g.outPixels)
        for first in Swift.stride(from: 0, to: n, by: step) {
            let images = first..<min(n, first + step)
            let chunkColumns = images.count * g.outPixels
            let offset = first * g.outPixels
            for group in 0..<groups {
                if !segmentsOfGroup[group].isEmpty {
                    im2col(g, input: xq + group * cin * inputPlane, batch: n, images: images, col: col)
                    for s in segmentsOfGroup[group] {
                        sgemm(transposeB: true, m: s.count, n: K, k: chunkColumns,
                              dySelected + s.compact * columns + offset, lda: columns, col, ldb: chunkColumns,
                              beta: 1, dwSelected + s.compact * K, ldc: K)
                    }
                }
                if let dx {
                    sgemm(transposeA: true, m: K, n: chunkColumns, k: cout, w + group * cout * K, lda: K,
                          dy.data + group * cout * columns + offset, ldb: columns, col, ldc: chunkColumns)
                    col2im(g, col: col, batch: n, images: images, inputGradient: dx + group * cin * inputPlane)
                }
            }
        }
    }

    // MARK: Depthwise convolution: direct loops per channel plane

    /// Output channel o reads input channel o / m (m = C_out / C_in): each
    /// (input channel, image) plane is padded (stride 1) or split into
    /// phases (larger strides) once and correlated with the filters of its
    /// m output channels (see `DepthwiseKernels.swift`).
    fileprivate func depthwiseForward(_ g: ConvGeometry, input xq: UnsafePointer<Float>, batch n: Int,
                                      weight w: UnsafePointer<Float>, output y: UnsafeMutablePointer<Float>) {
        let (H, W, OH, OW, k, s, p) = (g.height, g.width, g.outHeight, g.outWidth, kernel, stride, padding)
        let taps = k * k, multiplier = outChannels / inChannels
        if s != 1 {
            let phaseLength = (W + 2 * p + s - 1) / s
            let split = workspace.patches.reserve((H + 2 * p) * s * phaseLength)
            for c in 0..<inChannels {
                for image in 0..<n {
                    splitPlane(xq + (c * n + image) * H * W, height: H, width: W, pad: p, stride: s,
                               phaseLength: phaseLength, into: split)
                    for o in (c * multiplier)..<((c + 1) * multiplier) {
                        correlateSplit(split, phaseLength: phaseLength, stride: s, weights: w + o * taps, kernel: k,
                                       into: y + (o * n + image) * OH * OW, outHeight: OH, outWidth: OW)
                    }
                }
            }
            return
        }
        // Stride 1: a few images' padded planes stacked, one long loop.
        let pitch = W + 2 * p, block = (H + 2 * p) * pitch
        let images = depthwiseStack(block, batch: n)
        let scratch = workspace.patches.reserve(2 * images * block)
        let outStack = scratch + images * block
        for c in 0..<inChannels {
            for first in Swift.stride(from: 0, to: n, by: images) {
                let count = min(images, n - first)
                let stack = padPlanes(xq + (c * n + first) * H * W, count: count, height: H, width: W, pad: p,
                                      into: scratch)
                let flat = ((count - 1) * (H + 2 * p) + OH - 1) * pitch + OW
                for o in (c * multiplier)..<((c + 1) * multiplier) {
                    correlateStride1(stack, pitch: pitch, weights: w + o * taps, kernel: k, into: outStack, count: flat,
                                     accumulate: false)
                    for i in 0..<count {
                        copyRows(outStack + i * block, pitch: pitch, rows: OH, width: OW,
                                 into: y + (o * n + first + i) * OH * OW)
                    }
                }
            }
        }
    }

    /// Images per stack of padded planes: the stacks a depthwise layer
    /// works on (two or three of them) stay in the L1 cache.
    private func depthwiseStack(_ block: Int, batch n: Int) -> Int {
        max(1, min(n, 4096 / max(1, block)))
    }

    /// dW_q of the selected rows only (compact, in `gradientRows` order: the
    /// cost is that of the selected planes), then, when `dx` is given, dx_q.
    ///
    /// dW: at stride 1 one dot product per tap over the padded plane and
    /// dy at the same pitch; at larger strides per-row partial sums over
    /// the split plane.
    /// dx: at stride 1 (p < k) the correlation of dy padded by k-1-p with
    /// the flipped filter, a gather like the forward; for 3x3, stride 2,
    /// padding 1 a gather by the parity of the input pixel; otherwise each
    /// dy is scattered through its filter into a split plane, whose inside
    /// is then merged back into dx.
    fileprivate func depthwiseBackward(_ g: ConvGeometry, dy: UnsafePointer<Float>, input xq: UnsafePointer<Float>,
                                       batch n: Int, weight w: UnsafePointer<Float>,
                                       weightGradient dwSelected: UnsafeMutablePointer<Float>,
                                       inputGradient dx: UnsafeMutablePointer<Float>?) {
        let (H, W, OH, OW, k, s, p) = (g.height, g.width, g.outHeight, g.outWidth, kernel, stride, padding)
        let taps = k * k, multiplier = outChannels / inChannels
        let inPlane = H * W, outPlane = OH * OW
        let phaseLength = (W + 2 * p + s - 1) / s

        var j = 0
        if s == 1 {
            // Stacks of padded x planes against dy at their pitch, with
            // zeros in the junk columns and in the rows between images.
            let pitch = W + 2 * p, block = (H + 2 * p) * pitch
            let images = depthwiseStack(block, batch: n)
            let scratch = workspace.patches.reserve(2 * images * block)
            let dyStack = scratch + images * block
            for run in gradientRows {
                for o in run {
                    let c = o / multiplier
                    for first in Swift.stride(from: 0, to: n, by: images) {
                        let count = min(images, n - first)
                        let stack = padPlanes(xq + (c * n + first) * inPlane, count: count, height: H, width: W, pad: p,
                                              into: scratch)
                        for i in 0..<count {
                            let target = dyStack + i * block
                            copyRowsPitched(dy + (o * n + first + i) * outPlane, rows: OH, width: OW, into: target,
                                            pitch: pitch)
                            zeroShort(target + OH * pitch, count: block - OH * pitch)
                        }
                        filterGradientStride1(stack, pitch: pitch, dyPitched: dyStack,
                                              count: ((count - 1) * (H + 2 * p) + OH - 1) * pitch + OW, kernel: k,
                                              into: dwSelected + j * taps)
                    }
                    j += 1
                }
            }
        } else {
            let split = workspace.patches.reserve((H + 2 * p) * s * phaseLength)
            let partial = workspace.weightGradientByTap.reserve(taps * OW)
            for run in gradientRows {
                for o in run {
                    let c = o / multiplier
                    partial.update(repeating: 0, count: taps * OW)
                    for image in 0..<n {
                        splitPlane(xq + (c * n + image) * inPlane, height: H, width: W, pad: p, stride: s,
                                   phaseLength: phaseLength, into: split)
                        filterGradientSplit(split, phaseLength: phaseLength, stride: s,
                                            dy: dy + (o * n + image) * outPlane, outHeight: OH, outWidth: OW, kernel: k,
                                            into: partial)
                    }
                    for tap in 0..<taps { dwSelected[j * taps + tap] += sum(partial + tap * OW, count: OW) }
                    j += 1
                }
            }
        }

        guard let dx else { return }
        if s == 1 && p < k {
            // Stacks of dy planes padded by q = k-1-p, whose correlation
            // with the flipped filter has x's size.
            let q = k - 1 - p, dyPitch = OW + 2 * q  // = W + k - 1
            let block = (OH + 2 * q) * dyPitch
            let images = depthwiseStack(block, batch: n)
            let scratch = workspace.patches.reserve(2 * images * block)
            let outStack = scratch + images * block
            withUnsafeTemporaryAllocation(of: Float.self, capacity: taps) { buffer in
                let flipped = buffer.baseAddress!
                for c in 0..<inChannels {
                    for first in Swift.stride(from: 0, to: n, by: images) {
                        let count = min(images, n - first)
                        let flat = ((count - 1) * (OH + 2 * q) + H - 1) * dyPitch + W
                        for (i, o) in ((c * multiplier)..<((c + 1) * multiplier)).enumerated() {
                            for tap in 0..<taps { flipped[tap] = w[o * taps + taps - 1 - tap] }
                            let stack = padPlanes(dy + (o * n + first) * outPlane, count: count, height: OH, width: OW,
                                                  pad: q, into: scratch)
                            correlateStride1(stack, pitch: dyPitch, weights: flipped, kernel: k, into: outStack,
                                             count: flat, accumulate: i > 0)
                        }
                        for i in 0..<count {
                            copyRows(outStack + i * block, pitch: dyPitch, rows: H, width: W,
                                     into: dx + (c * n + first + i) * inPlane)
                        }
                    }
                }
            }
        } else if k == 3 && s == 2 && p == 1 && multiplier == 1 {
            // MobileNetV2's downsampling: a gather by parity, no scatter.
            let dyPadded = workspace.patches.reserve((OH + 1) * (OW + 1))
            (dyPadded + OH * (OW + 1)).update(repeating: 0, count: OW + 1)
            for c in 0..<inChannels {
                for image in 0..<n {
                    copyRowsPitched(dy + (c * n + image) * outPlane, rows: OH, width: OW, into: dyPadded, pitch: OW + 1)
                    inputGradient3x3Stride2(dyPadded, outHeight: OH, outWidth: OW, weights: w + c * taps,
                                            into: dx + (c * n + image) * inPlane, height: H, width: W)
                }
            }
        } else {
            let splitSize = (H + 2 * p) * s * phaseLength
            let split = workspace.patches.reserve(splitSize)
            for c in 0..<inChannels {
                for image in 0..<n {
                    split.update(repeating: 0, count: splitSize)
                    for o in (c * multiplier)..<((c + 1) * multiplier) {
                        scatterSplit(dy + (o * n + image) * outPlane, outHeight: OH, outWidth: OW, weights: w + o * taps,
                                     kernel: k, stride: s, into: split, phaseLength: phaseLength)
                    }
                    mergePlane(split, height: H, width: W, pad: p, stride: s, phaseLength: phaseLength,
                               into: dx + (c * n + image) * inPlane)
                }
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
