import Kernels
import Layers
import XCTest

/// Direct grouped convolution with Double accumulation: output channel o
/// of group g = o / (C_out/groups) reads input channels
/// g*(C_in/groups) ..< (g+1)*(C_in/groups) through weight [o, c - first, ky, kx].
func naiveGroupedConvolution(_ x: FeatureMap, weight w: UnsafeBufferPointer<Float>, bias: UnsafeBufferPointer<Float>?,
                             outChannels: Int, groups: Int, kernel k: Int, stride s: Int, padding p: Int) -> [Float] {
    let oh = (x.height + 2 * p - k) / s + 1, ow = (x.width + 2 * p - k) / s + 1
    let groupIn = x.channels / groups, groupOut = outChannels / groups
    var y = [Float](repeating: 0, count: outChannels * x.batch * oh * ow)
    for o in 0..<outChannels {
        let firstInput = (o / groupOut) * groupIn
        for n in 0..<x.batch {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var acc = bias.map { Double($0[o]) } ?? 0
                    for c in 0..<groupIn {
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let iy = oy * s - p + ky, ix = ox * s - p + kx
                                guard iy >= 0, iy < x.height, ix >= 0, ix < x.width else { continue }
                                acc += Double(w[((o * groupIn + c) * k + ky) * k + kx])
                                    * Double(element(x, firstInput + c, n, iy, ix))
                            }
                        }
                    }
                    y[((o * x.batch + n) * oh + oy) * ow + ox] = Float(acc)
                }
            }
        }
    }
    return y
}

/// Grouped and depthwise `Conv2d`: forward against a direct convolution,
/// backward against finite differences and against plain convolutions of
/// each group, quantized against a plain grouped layer fed the quantized
/// values by hand, and EfQAT's partial backward.
final class GroupedConvolutionTests: XCTestCase {
    struct Case: CustomStringConvertible {
        var inChannels: Int, outChannels: Int, groups: Int, kernel: Int, stride: Int, padding: Int
        var height: Int, width: Int, batch: Int
        var chunkElements: Int? = nil

        var description: String {
            "C\(inChannels)->\(outChannels) g\(groups) k\(kernel) s\(stride) p\(padding) \(height)x\(width) n\(batch)"
                + (chunkElements.map { " chunk \($0)" } ?? "")
        }

        func make(_ store: ParameterStore, _ workspace: Workspace, bias: Bool = false, name: String = "conv") -> Conv2d {
            if let chunkElements { workspace.chunkElements = chunkElements }
            return Conv2d(name: name, inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                          padding: padding, groups: groups, bias: bias, store: store, workspace: workspace)
        }
    }

    static let depthwise3x3 = [
        Case(inChannels: 4, outChannels: 4, groups: 4, kernel: 3, stride: 1, padding: 1, height: 6, width: 7, batch: 2),
        Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: 2, padding: 1, height: 7, width: 5, batch: 2),
        Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: 2, padding: 1, height: 8, width: 6, batch: 2),
    ]

    static let forwardCases = depthwise3x3 + [
        // Depthwise, other geometries (the general direct loops).
        Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: 1, padding: 0, height: 5, width: 6, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 5, stride: 1, padding: 2, height: 6, width: 5, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 1, padding: 2, height: 4, width: 5, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 3, padding: 1, height: 7, width: 8, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 2, stride: 2, padding: 0, height: 5, width: 6, batch: 2),
        Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 1, stride: 1, padding: 0, height: 3, width: 4, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 1, padding: 1, height: 1, width: 1, batch: 3),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 2, padding: 1, height: 1, width: 2, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 2, padding: 1, height: 2, width: 1, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 2, padding: 0, height: 7, width: 6, batch: 2),
        Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 5, stride: 2, padding: 2, height: 9, width: 8, batch: 2),
        // Depthwise with a channel multiplier of 2.
        Case(inChannels: 3, outChannels: 6, groups: 3, kernel: 3, stride: 1, padding: 1, height: 5, width: 5, batch: 2),
        Case(inChannels: 3, outChannels: 6, groups: 3, kernel: 3, stride: 2, padding: 1, height: 5, width: 5, batch: 2),
        // General groups: im2col + GEMM per group.
        Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5, width: 6, batch: 2),
        Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 2, padding: 1, height: 7, width: 5, batch: 3,
             chunkElements: 1),
        Case(inChannels: 6, outChannels: 3, groups: 3, kernel: 3, stride: 1, padding: 0, height: 5, width: 5, batch: 2),
        Case(inChannels: 4, outChannels: 4, groups: 2, kernel: 1, stride: 1, padding: 0, height: 3, width: 5, batch: 2),
        Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 1, stride: 2, padding: 0, height: 5, width: 5, batch: 2),
    ]

    // MARK: Forward

    func checkForward(_ c: Case, bias: Bool, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let store = ParameterStore(), workspace = Workspace()
        let conv = c.make(store, workspace, bias: bias)
        store.allocate()
        XCTAssertEqual(conv.weight.shape, [c.outChannels, c.inChannels / c.groups, c.kernel, c.kernel],
                       file: file, line: line)
        XCTAssertEqual(conv.patchSize, c.inChannels / c.groups * c.kernel * c.kernel, file: file, line: line)
        XCTAssertEqual(conv.weight.rowLength, conv.patchSize, file: file, line: line)
        var rng = SplitMix64(seed: seed)
        fillUniform(store.parameters[conv.weight], &rng)
        if let b = conv.bias { fillUniform(store.parameters[b], &rng) }
        let x = OwnedMap(channels: c.inChannels, batch: c.batch, height: c.height, width: c.width, random: &rng)
        let y = conv.forward(x.map)
        let expected = naiveGroupedConvolution(
            x.map, weight: UnsafeBufferPointer(store.parameters[conv.weight]),
            bias: conv.bias.map { UnsafeBufferPointer(store.parameters[$0]) }, outChannels: c.outChannels,
            groups: c.groups, kernel: c.kernel, stride: c.stride, padding: c.padding)
        let g = conv.geometry(for: x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [c.outChannels, c.batch, g.outHeight, g.outWidth],
                       "\(c) output shape", file: file, line: line)
        assertAllClose(Array(y.buffer), expected, tolerance: 1e-5, "\(c) bias \(bias)", file: file, line: line)
    }

    func testForwardAgainstDirectConvolution() {
        for (i, c) in Self.forwardCases.enumerated() {
            checkForward(c, bias: false, seed: UInt64(i))
            checkForward(c, bias: true, seed: UInt64(100 + i))
        }
    }

    /// The same layer run twice on inputs of different batch sizes and
    /// sizes (buffers grow, scratch is reused) gives the direct result.
    func testForwardAfterAnotherShape() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "dw", inChannels: 3, outChannels: 3, kernel: 3, stride: 1, padding: 1, groups: 3,
                          store: store, workspace: workspace)
        store.allocate()
        var rng = SplitMix64(seed: 7)
        fillUniform(store.parameters[conv.weight], &rng)
        for (n, h, w) in [(1, 9, 9), (3, 4, 6), (2, 9, 9)] {
            let x = OwnedMap(channels: 3, batch: n, height: h, width: w, random: &rng)
            let expected = naiveGroupedConvolution(x.map, weight: UnsafeBufferPointer(store.parameters[conv.weight]),
                                                   bias: nil, outChannels: 3, groups: 3, kernel: 3, stride: 1, padding: 1)
            assertAllClose(Array(conv.forward(x.map).buffer), expected, tolerance: 1e-5, "n\(n) \(h)x\(w)")
        }
    }

    // MARK: groups = 1 and groups = G as G plain convolutions

    /// `groups: 1` is the plain convolution, bit for bit.
    func testGroupsOneIsThePlainConvolution() {
        for (kernel, stride) in [(3, 1), (3, 2), (1, 1)] {
            let plainStore = ParameterStore(), groupedStore = ParameterStore(), workspace = Workspace()
            let plain = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: kernel, stride: stride,
                               padding: kernel / 2, bias: true, store: plainStore, workspace: workspace)
            let grouped = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: kernel, stride: stride,
                                 padding: kernel / 2, groups: 1, bias: true, store: groupedStore, workspace: workspace)
            plainStore.allocate()
            groupedStore.allocate()
            XCTAssertEqual(grouped.weight.shape, plain.weight.shape)
            XCTAssertEqual(grouped.patchSize, plain.patchSize)
            XCTAssertFalse(grouped.isDepthwise)
            var rng = SplitMix64(seed: 30)
            fillUniform(plainStore.parameters.all, &rng)
            groupedStore.parameters.all.baseAddress!.update(from: plainStore.parameters.all.baseAddress!,
                                                            count: plainStore.parameters.all.count)
            let x = OwnedMap(channels: 3, batch: 2, height: 5, width: 6, random: &rng)
            let y = Array(plain.forward(x.map).buffer)
            XCTAssertEqual(Array(grouped.forward(x.map).buffer), y)
            let dy = OwnedMap(like: plain.forward(x.map), random: &rng)
            plainStore.gradients.zero()
            groupedStore.gradients.zero()
            XCTAssertEqual(Array(grouped.backward(dy.map).buffer), Array(plain.backward(dy.map).buffer))
            XCTAssertEqual(Array(groupedStore.gradients.all), Array(plainStore.gradients.all))
        }
    }

    /// A grouped convolution is `groups` plain convolutions of channel
    /// slices: forward, dx and dW (weight rows of group g are the plain
    /// layer g's weight) agree with them.
    func checkAgainstPlainConvolutions(_ c: Case, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let store = ParameterStore(), workspace = Workspace()
        let conv = c.make(store, workspace, bias: true)
        let groupIn = c.inChannels / c.groups, groupOut = c.outChannels / c.groups
        let plainStores = (0..<c.groups).map { _ in ParameterStore() }
        let plains = plainStores.map {
            Conv2d(name: "plain", inChannels: groupIn, outChannels: groupOut, kernel: c.kernel, stride: c.stride,
                   padding: c.padding, bias: true, store: $0, workspace: workspace)
        }
        store.allocate()
        plainStores.forEach { $0.allocate() }
        var rng = SplitMix64(seed: seed)
        fillUniform(store.parameters[conv.weight], &rng)
        fillUniform(store.parameters[conv.bias!], &rng)
        let rowLength = conv.patchSize
        for (g, plain) in plains.enumerated() {
            plainStores[g].parameters.pointer(plain.weight).update(
                from: store.parameters.pointer(conv.weight) + g * groupOut * rowLength, count: groupOut * rowLength)
            plainStores[g].parameters.pointer(plain.bias!).update(
                from: store.parameters.pointer(conv.bias!) + g * groupOut, count: groupOut)
        }
        let x = OwnedMap(channels: c.inChannels, batch: c.batch, height: c.height, width: c.width, random: &rng)
        let y = conv.forward(x.map)
        let dy = OwnedMap(like: y, random: &rng)
        let yGrouped = Array(y.buffer)
        store.gradients.zero()
        let dx = Array(conv.backward(dy.map).buffer)
        let dW = Array(store.gradients[conv.weight]), db = Array(store.gradients[conv.bias!])

        let inPlane = x.map.plane, outPlane = y.plane
        for (g, plain) in plains.enumerated() {
            let slice = OwnedMap(channels: groupIn, batch: c.batch, height: c.height, width: c.width)
            slice.map.data.update(from: x.map.data + g * groupIn * inPlane, count: groupIn * inPlane)
            let what = "\(c) group \(g)"
            let yPlain = Array(plain.forward(slice.map).buffer)
            assertAllClose(Array(yGrouped[(g * groupOut * outPlane)..<((g + 1) * groupOut * outPlane)]), yPlain,
                           tolerance: 1e-5, "\(what) y", file: file, line: line)
            let dySlice = OwnedMap(channels: groupOut, batch: c.batch, height: y.height, width: y.width)
            dySlice.map.data.update(from: dy.map.data + g * groupOut * outPlane, count: groupOut * outPlane)
            plainStores[g].gradients.zero()
            let dxPlain = Array(plain.backward(dySlice.map).buffer)
            assertAllClose(Array(dx[(g * groupIn * inPlane)..<((g + 1) * groupIn * inPlane)]), dxPlain,
                           tolerance: 1e-5, "\(what) dx", file: file, line: line)
            assertAllClose(Array(dW[(g * groupOut * rowLength)..<((g + 1) * groupOut * rowLength)]),
                           Array(plainStores[g].gradients[plain.weight]), tolerance: 1e-5, "\(what) dW",
                           file: file, line: line)
            assertAllClose(Array(db[(g * groupOut)..<((g + 1) * groupOut)]), Array(plainStores[g].gradients[plain.bias!]),
                           tolerance: 1e-5, "\(what) bias gradient", file: file, line: line)
        }
    }

    func testGroupsAreSlicedPlainConvolutions() {
        let cases = [
            Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5, width: 6, batch: 2),
            Case(inChannels: 6, outChannels: 6, groups: 3, kernel: 3, stride: 2, padding: 1, height: 7, width: 6, batch: 3,
                 chunkElements: 1),
            Case(inChannels: 4, outChannels: 2, groups: 2, kernel: 1, stride: 1, padding: 0, height: 4, width: 4, batch: 2),
            Case(inChannels: 4, outChannels: 4, groups: 4, kernel: 3, stride: 1, padding: 1, height: 6, width: 5, batch: 2),
            Case(inChannels: 4, outChannels: 4, groups: 4, kernel: 3, stride: 2, padding: 1, height: 7, width: 8, batch: 2),
            Case(inChannels: 2, outChannels: 4, groups: 2, kernel: 3, stride: 2, padding: 1, height: 5, width: 5, batch: 2),
            Case(inChannels: 2, outChannels: 6, groups: 2, kernel: 5, stride: 1, padding: 2, height: 5, width: 4, batch: 2),
        ]
        for (i, c) in cases.enumerated() { checkAgainstPlainConvolutions(c, seed: UInt64(40 + i)) }
    }

    // MARK: Finite differences

    func checkGradients(_ c: Case, bias: Bool, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let store = ParameterStore(), workspace = Workspace()
        let conv = c.make(store, workspace, bias: bias, name: "\(c) bias \(bias)")
        store.allocate()
        // The layer is linear in x, W and b, so the differences are exact
        // up to Float rounding of y: a tight tolerance.
        checkConvolutionGradients(conv, store: store, batch: c.batch, height: c.height, width: c.width, seed: seed,
                                  samples: 80, tolerance: 1e-3, file: file, line: line)
    }

    func testDepthwiseGradients() {
        for (i, c) in Self.depthwise3x3.enumerated() {
            checkGradients(c, bias: false, seed: UInt64(50 + i))
            checkGradients(c, bias: true, seed: UInt64(60 + i))
        }
        // A multiplier of 2, an unpadded 5x5 and an odd stride.
        checkGradients(Case(inChannels: 2, outChannels: 4, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5,
                            width: 4, batch: 2), bias: true, seed: 70)
        checkGradients(Case(inChannels: 2, outChannels: 4, groups: 2, kernel: 3, stride: 2, padding: 1, height: 5,
                            width: 4, batch: 2), bias: false, seed: 71)
        checkGradients(Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 5, stride: 1, padding: 0, height: 7,
                            width: 6, batch: 2), bias: false, seed: 72)
        checkGradients(Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 3, padding: 1, height: 7,
                            width: 8, batch: 2), bias: true, seed: 73)
        checkGradients(Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 1, padding: 2, height: 4,
                            width: 3, batch: 2), bias: false, seed: 74)
        checkGradients(Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 3, stride: 2, padding: 0, height: 7,
                            width: 6, batch: 2), bias: false, seed: 75)
        checkGradients(Case(inChannels: 2, outChannels: 2, groups: 2, kernel: 5, stride: 2, padding: 2, height: 9,
                            width: 8, batch: 2), bias: false, seed: 76)
        checkGradients(Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: 2, padding: 1, height: 1,
                            width: 2, batch: 2), bias: false, seed: 77)
        checkGradients(Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: 2, padding: 1, height: 4,
                            width: 9, batch: 1), bias: false, seed: 78)
    }

    func testGroupsTwoGradients() {
        let cases = [
            Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5, width: 6, batch: 2),
            Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 2, padding: 1, height: 7, width: 5, batch: 3,
                 chunkElements: 1),
            Case(inChannels: 4, outChannels: 2, groups: 2, kernel: 1, stride: 1, padding: 0, height: 3, width: 4, batch: 2),
        ]
        for (i, c) in cases.enumerated() {
            checkGradients(c, bias: false, seed: UInt64(80 + i))
            checkGradients(c, bias: true, seed: UInt64(90 + i))
        }
    }

    /// Genie's swing convolution in front of a depthwise one.
    func testDepthwiseWithSwing() {
        for stride in [1, 2] {
            let store = ParameterStore(), workspace = Workspace()
            let conv = Conv2d(name: "dw swing s\(stride)", inChannels: 3, outChannels: 3, kernel: 3, stride: stride,
                              padding: 1, groups: 3, store: store, workspace: workspace)
            store.allocate()
            conv.swing = ReflectPadCrop()
            conv.swing?.offset = (2, 0)
            checkConvolutionGradients(conv, store: store, batch: 2, height: 5, width: 6, seed: UInt64(95 + stride),
                                      samples: 80, tolerance: 1e-3)
        }
    }

    /// The observer sees the unquantized input of a grouped layer.
    func testInputObserver() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "dw", inChannels: 2, outChannels: 2, kernel: 3, padding: 1, groups: 2,
                          store: store, workspace: workspace)
        store.allocate()
        var rng = SplitMix64(seed: 98)
        let x = OwnedMap(channels: 2, batch: 1, height: 3, width: 3, random: &rng)
        conv.inputQuantizer.enabled = true
        store.parameters[conv.inputQuantizer.step][0] = 0.25
        var seen: [Float] = []
        conv.inputObserver = { seen = Array($0.buffer) }
        _ = conv.forward(x.map)
        XCTAssertEqual(seen, x.values)
    }

    // MARK: Quantized

    /// Weight (4-bit symmetric, per row of (C_in/groups)*k*k) and input
    /// (4-bit asymmetric, per tensor) quantization on, against a plain
    /// grouped layer of the same shape fed fake-quantized weights and input
    /// by hand: the outputs agree, and backward turns the plain layer's
    /// dW_q and dx_q into straight-through gradients and LSQ step gradients.
    func checkQuantized(_ c: Case, bias: Bool, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let weightGrid = QuantGrid(bits: 4, signed: true), inputGrid = QuantGrid(bits: 4, signed: false)
        let inputStep: Float = 0.1, zeroPoint: Float = 3  // input range [-0.3, 1.2]
        let store = ParameterStore(), reference = ParameterStore(), workspace = Workspace()
        let conv = c.make(store, workspace, bias: bias), plain = c.make(reference, workspace, bias: bias)
        store.allocate()
        reference.allocate()
        var rng = SplitMix64(seed: seed)
        let w = store.parameters[conv.weight]
        fillUniform(w, &rng, range: -2...2)
        if bias {
            fillUniform(store.parameters[conv.bias!], &rng)
            reference.parameters[plain.bias!].baseAddress!.update(from: store.parameters.pointer(conv.bias!),
                                                                  count: c.outChannels)
        }
        // Steps small enough that some weights are clamped: range [-8s, 7s].
        let steps = store.parameters[conv.weightQuantizer.step]
        fillUniform(steps, &rng, range: 0.08...0.12)
        conv.weightQuantizer.grid = weightGrid
        conv.weightQuantizer.enabled = true
        conv.inputQuantizer.grid = inputGrid
        conv.inputQuantizer.enabled = true
        store.parameters[conv.inputQuantizer.step][0] = inputStep
        store.state[conv.inputQuantizer.zeroPoint][0] = zeroPoint

        let K = conv.patchSize
        let wq = reference.parameters[plain.weight]
        for r in 0..<c.outChannels {
            fakeQuantize(w.baseAddress! + r * K, wq.baseAddress! + r * K, count: K, step: steps[r], zeroPoint: 0,
                         grid: weightGrid)
        }
        let x = OwnedMap(channels: c.inChannels, batch: c.batch, height: c.height, width: c.width, random: &rng,
                         range: -0.6...1.5)
        let xq = OwnedMap(like: x.map, random: &rng)
        fakeQuantize(x.map.data, xq.map.data, count: x.map.count, step: inputStep, zeroPoint: zeroPoint, grid: inputGrid)

        let what = "\(c) bias \(bias)"
        let yMap = conv.forward(x.map)
        assertAllClose(Array(yMap.buffer), Array(plain.forward(xq.map).buffer), tolerance: 1e-5, "\(what) y",
                       file: file, line: line)
        let dy = OwnedMap(like: yMap, random: &rng)
        store.gradients.zero()
        reference.gradients.zero()
        let dx = Array(conv.backward(dy.map).buffer)
        let dxq = Array(plain.backward(dy.map).buffer)
        let dWq = reference.gradients[plain.weight]

        let gw = 1 / (Double(K) * Double(weightGrid.qmax)).squareRoot()
        var clamped = 0
        for r in 0..<c.outChannels {
            var stepSum: Double = 0
            for i in (r * K)..<((r + 1) * K) {
                let (inside, derivative) = gridPosition(w[i], step: steps[r], zeroPoint: 0, grid: weightGrid)
                stepSum += Double(dWq[i]) * derivative
                if !inside { clamped += 1 }
                assertClose(Double(store.gradients[conv.weight][i]), inside ? Double(dWq[i]) : 0, tolerance: 1e-5,
                            "\(what) dW[\(i)]", file: file, line: line)
            }
            assertClose(Double(store.gradients[conv.weightQuantizer.step][r]), gw * stepSum, tolerance: 1e-5,
                        "\(what) weight step gradient of row \(r)", file: file, line: line)
        }
        XCTAssertGreaterThan(clamped, 0, "\(what): some weights are clamped", file: file, line: line)
        if bias {
            assertAllClose(Array(store.gradients[conv.bias!]), Array(reference.gradients[plain.bias!]), tolerance: 1e-6,
                           "\(what) bias gradient", file: file, line: line)
        }

        let gx = 1 / (Double(c.inChannels * c.height * c.width) * Double(inputGrid.qmax)).squareRoot()
        var inputSum: Double = 0, inputClamped = 0
        for i in 0..<x.map.count {
            let (inside, derivative) = gridPosition(x.map.data[i], step: inputStep, zeroPoint: zeroPoint, grid: inputGrid)
            inputSum += Double(dxq[i]) * derivative
            if !inside { inputClamped += 1 }
            assertClose(Double(dx[i]), inside ? Double(dxq[i]) : 0, tolerance: 1e-5, "\(what) dx[\(i)]",
                        file: file, line: line)
        }
        XCTAssertGreaterThan(inputClamped, 0, "\(what): some inputs are clamped", file: file, line: line)
        let inputStepGradient = Double(store.gradients[conv.inputQuantizer.step][0])
        assertClose(inputStepGradient, gx * inputSum, tolerance: 1e-5, "\(what) input step gradient",
                    file: file, line: line)

        // The input step still learns when nothing upstream needs dL/dx.
        conv.needsInputGradient = false
        store.gradients.zero()
        _ = conv.backward(dy.map)
        assertClose(Double(store.gradients[conv.inputQuantizer.step][0]), inputStepGradient, tolerance: 1e-6,
                    "\(what) input step gradient without dx", file: file, line: line)
    }

    func testQuantizedDepthwise() {
        for (i, c) in Self.depthwise3x3.enumerated() {
            checkQuantized(c, bias: i == 1, seed: UInt64(110 + i))
        }
    }

    func testQuantizedGroupsTwo() {
        checkQuantized(Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5,
                            width: 6, batch: 2), bias: false, seed: 120)
        checkQuantized(Case(inChannels: 4, outChannels: 6, groups: 2, kernel: 3, stride: 2, padding: 1, height: 7,
                            width: 5, batch: 2), bias: true, seed: 121)
        checkQuantized(Case(inChannels: 4, outChannels: 4, groups: 2, kernel: 1, stride: 1, padding: 0, height: 4,
                            width: 4, batch: 2), bias: false, seed: 122)
    }

    /// QDrop with a mixed mask on a depthwise layer: the layer sees x where
    /// dropped and x_q elsewhere, dropped elements pass dL/dx unchanged and
    /// only kept ones make the step gradient.
    func testDepthwiseDropMask() {
        let grid = QuantGrid(bits: 3, signed: false)
        let step: Float = 0.2, zeroPoint: Float = 2
        for stride in [1, 2] {
            let c = Case(inChannels: 3, outChannels: 3, groups: 3, kernel: 3, stride: stride, padding: 1, height: 5,
                         width: 6, batch: 2)
            let store = ParameterStore(), reference = ParameterStore(), workspace = Workspace()
            let conv = c.make(store, workspace), plain = c.make(reference, workspace)
            store.allocate()
            reference.allocate()
            var rng = SplitMix64(seed: 130 + UInt64(stride))
            fillUniform(store.parameters[conv.weight], &rng)
            reference.parameters.pointer(plain.weight).update(from: store.parameters.pointer(conv.weight),
                                                              count: conv.weight.count)
            conv.inputQuantizer.grid = grid
            conv.inputQuantizer.enabled = true
            store.parameters[conv.inputQuantizer.step][0] = step
            store.state[conv.inputQuantizer.zeroPoint][0] = zeroPoint
            let x = OwnedMap(channels: 3, batch: 2, height: 5, width: 6, random: &rng, range: -0.7...1.3)
            let n = x.map.count
            let mask = (0..<n).map { _ in UInt8(rng.nextIndex(below: 2)) }
            var input = [Float](repeating: 0, count: n)
            for i in 0..<n {
                var q: Float = 0
                fakeQuantize(x.map.data + i, &q, count: 1, step: step, zeroPoint: zeroPoint, grid: grid)
                input[i] = mask[i] == 0 ? q : x.map.data[i]
            }
            let mixed = OwnedMap(like: x.map, random: &rng)
            mixed.map.data.update(from: input, count: n)

            mask.withUnsafeBufferPointer { drop in
                conv.inputQuantizer.dropMask = drop.baseAddress!
                defer { conv.inputQuantizer.dropMask = nil }
                let y = Array(conv.forward(x.map).buffer)
                XCTAssertEqual(y, Array(plain.forward(mixed.map).buffer), "s\(stride) y")
                let dy = OwnedMap(like: conv.forward(x.map), random: &rng)
                store.gradients.zero()
                reference.gradients.zero()
                let dx = Array(conv.backward(dy.map).buffer)
                let dInput = Array(plain.backward(dy.map).buffer)
                var stepSum: Double = 0
                for i in 0..<n {
                    let (inside, derivative) = gridPosition(x.map.data[i], step: step, zeroPoint: zeroPoint, grid: grid)
                    let kept = mask[i] == 0
                    if kept { stepSum += Double(dInput[i]) * derivative }
                    XCTAssertEqual(dx[i], kept && !inside ? 0 : dInput[i], "s\(stride) dx[\(i)]")
                }
                let g = Double(grid.lsqGradientScale(elements: 3 * 5 * 6))
                assertClose(Double(store.gradients[conv.inputQuantizer.step][0]), g * stepSum, tolerance: 1e-5,
                            "s\(stride) step gradient")
            }
        }
    }

    // MARK: EfQAT's partial backward

    /// A layer with random (optionally quantized) weights that has seen a
    /// random input, and a random upstream gradient.
    struct Fixture {
        let store = ParameterStore()
        let conv: Conv2d
        let x: OwnedMap
        let dy: OwnedMap

        init(_ c: Case, quantized: Bool, seed: UInt64) {
            conv = c.make(store, Workspace())
            store.allocate()
            var rng = SplitMix64(seed: seed)
            fillUniform(store.parameters[conv.weight], &rng)
            if quantized {
                conv.weightQuantizer.grid = QuantGrid(bits: 4, signed: true)
                conv.weightQuantizer.enabled = true
                fillUniform(store.parameters[conv.weightQuantizer.step], &rng, range: 0.08...0.2)
                conv.inputQuantizer.enabled = true
                store.parameters[conv.inputQuantizer.step][0] = 0.05
                store.state[conv.inputQuantizer.zeroPoint][0] = 20
            }
            x = OwnedMap(channels: c.inChannels, batch: c.batch, height: c.height, width: c.width, random: &rng)
            dy = OwnedMap(like: conv.forward(x.map), random: &rng)
        }

        func backward() -> (dx: [Float], dW: [Float], steps: [Float], inputStep: Float) {
            store.gradients.zero()
            let dx = Array(conv.backward(dy.map).buffer)
            return (dx, Array(store.gradients[conv.weight]), Array(store.gradients[conv.weightQuantizer.step]),
                    store.gradients[conv.inputQuantizer.step][0])
        }
    }

    static let partialCases = [
        Case(inChannels: 7, outChannels: 7, groups: 7, kernel: 3, stride: 1, padding: 1, height: 5, width: 6, batch: 3),
        Case(inChannels: 7, outChannels: 7, groups: 7, kernel: 3, stride: 2, padding: 1, height: 7, width: 6, batch: 3),
        Case(inChannels: 4, outChannels: 8, groups: 4, kernel: 3, stride: 1, padding: 1, height: 5, width: 5, batch: 2),
        Case(inChannels: 4, outChannels: 8, groups: 2, kernel: 3, stride: 1, padding: 1, height: 5, width: 6, batch: 3,
             chunkElements: 1),
        Case(inChannels: 4, outChannels: 8, groups: 2, kernel: 3, stride: 2, padding: 1, height: 5, width: 6, batch: 2),
        Case(inChannels: 6, outChannels: 8, groups: 2, kernel: 1, stride: 1, padding: 0, height: 3, width: 4, batch: 2),
    ]

    /// Selected rows (runs within and across group boundaries) get exactly
    /// the full backward's dW and step gradient; the other rows get nothing,
    /// and dx does not change.
    func testSelectedRowsMatchTheFullGradient() {
        for quantized in [false, true] {
            for (i, c) in Self.partialCases.enumerated() {
                let f = Fixture(c, quantized: quantized, seed: UInt64(140 + i))
                let full = f.backward()
                XCTAssert(full.dW.contains { $0 != 0 })
                for rows in [[1..<3, 5..<6], [2..<6], [6..<7, 0..<1]] {
                    f.conv.gradientRows = rows
                    let partial = f.backward()
                    let selected = Set(rows.flatMap { Array($0) })
                    let what = "\(c) quantized \(quantized) rows \(rows)"
                    let rowLength = f.conv.patchSize
                    for row in 0..<c.outChannels {
                        let range = (row * rowLength)..<((row + 1) * rowLength)
                        if selected.contains(row) {
                            assertAllClose(Array(partial.dW[range]), Array(full.dW[range]), tolerance: 1e-6,
                                           "\(what) dW row \(row)")
                            assertClose(Double(partial.steps[row]), Double(full.steps[row]), tolerance: 1e-6,
                                        "\(what) step gradient of row \(row)")
                        } else {
                            XCTAssert(partial.dW[range].allSatisfy { $0 == 0 }, "\(what): frozen row \(row) got a gradient")
                            XCTAssertEqual(partial.steps[row], 0, "\(what): frozen row \(row) got a step gradient")
                        }
                    }
                    XCTAssertEqual(partial.dx, full.dx, "\(what) dx")
                    XCTAssertEqual(partial.inputStep, full.inputStep, "\(what) input step gradient")
                }
            }
        }
    }

    /// No rows: dW and the weight steps are neither written nor added to.
    func testNoRowsLeavesWeightGradientUntouched() {
        for quantized in [false, true] {
            for (i, c) in Self.partialCases.enumerated() {
                let f = Fixture(c, quantized: quantized, seed: UInt64(160 + i))
                let full = f.backward()
                f.conv.gradientRows = []
                f.store.gradients.zero()
                f.store.gradients[f.conv.weight].update(repeating: 7)
                f.store.gradients[f.conv.weightQuantizer.step].update(repeating: 3)
                let dx = Array(f.conv.backward(f.dy.map).buffer)
                let what = "\(c) quantized \(quantized)"
                XCTAssert(f.store.gradients[f.conv.weight].allSatisfy { $0 == 7 }, "\(what): dW was touched")
                XCTAssert(f.store.gradients[f.conv.weightQuantizer.step].allSatisfy { $0 == 3 },
                          "\(what): step gradients were touched")
                XCTAssertEqual(dx, full.dx, "\(what) dx")
            }
        }
    }

    /// Without dx (the first layer) the weights get the same gradient, and
    /// gradients accumulate over two backward passes.
    func testWithoutInputGradientAndAccumulation() {
        for (i, c) in Self.partialCases.enumerated() {
            let f = Fixture(c, quantized: false, seed: UInt64(180 + i))
            let full = f.backward()
            f.conv.needsInputGradient = false
            let partial = f.backward()
            XCTAssertEqual(partial.dW, full.dW, "\(c) dW without dx")
            f.conv.gradientRows = [2..<4]
            _ = f.backward()
            _ = f.conv.backward(f.dy.map)
            let rowLength = f.conv.patchSize
            assertAllClose(Array(f.store.gradients[f.conv.weight][(2 * rowLength)..<(4 * rowLength)]),
                           full.dW[(2 * rowLength)..<(4 * rowLength)].map { 2 * $0 }, tolerance: 1e-6,
                           "\(c) rows 2..<4 twice, without dx")
        }
    }
}

/// Whether fake quantization keeps x inside the grid, and d(x_q)/ds under
/// LSQ (round(v) - v inside, qmin - z below, qmax - z above), with v
/// computed as the library does (x times the Float reciprocal of s).
func gridPosition(_ x: Float, step: Float, zeroPoint z: Float, grid: QuantGrid) -> (inside: Bool, stepDerivative: Double) {
    let v = x * (1 / step)
    let r = v.rounded(.toNearestOrEven)
    if r + z < grid.qmin { return (false, Double(grid.qmin - z)) }
    if r + z > grid.qmax { return (false, Double(grid.qmax - z)) }
    return (true, Double(r) - Double(v))
}
