import Kernels
import Layers
import XCTest

/// Conv2d's im2col + GEMM forward against a direct convolution.
final class ConvolutionForwardTests: XCTestCase {
    struct Case {
        var inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
        var height: Int, width: Int, batch: Int
        /// Workspace.chunkElements, nil for the default (one chunk).
        var chunkElements: Int? = nil
    }

    /// Runs Conv2d and the naive convolution on the same random weights and
    /// input and compares every output element.
    func check(_ c: Case, bias: Bool = false, seed: UInt64, file: StaticString = #filePath, line: UInt = #line) {
        let store = ParameterStore(), workspace = Workspace()
        if let chunk = c.chunkElements { workspace.chunkElements = chunk }
        let conv = Conv2d(name: "conv", inChannels: c.inChannels, outChannels: c.outChannels, kernel: c.kernel,
                          stride: c.stride, padding: c.padding, bias: bias, store: store, workspace: workspace)
        store.allocate()
        var rng = SplitMix64(seed: seed)
        fillUniform(store.parameters[conv.weight], &rng)
        if let b = conv.bias { fillUniform(store.parameters[b], &rng) }
        let x = OwnedMap(channels: c.inChannels, batch: c.batch, height: c.height, width: c.width, random: &rng)

        let y = conv.forward(x.map)
        let expected = naiveConvolution(x.map, weight: UnsafeBufferPointer(store.parameters[conv.weight]),
                                        bias: conv.bias.map { UnsafeBufferPointer(store.parameters[$0]) },
                                        outChannels: c.outChannels, kernel: c.kernel, stride: c.stride,
                                        padding: c.padding)
        let g = conv.geometry(for: x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width],
                       [c.outChannels, c.batch, g.outHeight, g.outWidth], "output shape", file: file, line: line)
        assertAllClose(Array(y.buffer), expected, tolerance: 1e-5, "\(c)", file: file, line: line)
    }

    func test3x3Stride1Pad1() {
        check(Case(inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1, height: 6, width: 6, batch: 2), seed: 1)
    }

    func test3x3Stride2Pad1() {
        check(Case(inChannels: 3, outChannels: 5, kernel: 3, stride: 2, padding: 1, height: 8, width: 8, batch: 2), seed: 2)
    }

    func test3x3Stride2Pad1OddSizes() {
        check(Case(inChannels: 2, outChannels: 3, kernel: 3, stride: 2, padding: 1, height: 7, width: 5, batch: 3), seed: 3)
        check(Case(inChannels: 2, outChannels: 3, kernel: 3, stride: 1, padding: 1, height: 5, width: 7, batch: 3), seed: 4)
    }

    func test3x3Unpadded() {
        check(Case(inChannels: 2, outChannels: 3, kernel: 3, stride: 1, padding: 0, height: 5, width: 6, batch: 2), seed: 5)
    }

    func testPointwise() {
        check(Case(inChannels: 5, outChannels: 3, kernel: 1, stride: 1, padding: 0, height: 4, width: 3, batch: 3), seed: 6)
    }

    func testPointwiseStride2Downsample() {
        check(Case(inChannels: 4, outChannels: 6, kernel: 1, stride: 2, padding: 0, height: 6, width: 6, batch: 2), seed: 7)
        check(Case(inChannels: 3, outChannels: 2, kernel: 1, stride: 2, padding: 0, height: 7, width: 5, batch: 3), seed: 8)
    }

    func testBias() {
        check(Case(inChannels: 2, outChannels: 3, kernel: 3, stride: 1, padding: 1, height: 4, width: 4, batch: 2),
              bias: true, seed: 9)
        check(Case(inChannels: 2, outChannels: 3, kernel: 1, stride: 1, padding: 0, height: 4, width: 4, batch: 2),
              bias: true, seed: 10)
    }

    func testSeveralChunks() {
        // One image per chunk, then two per chunk with a shorter last chunk.
        for chunk in [1, 2 * 3 * 9 * 16] {
            check(Case(inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1, height: 4, width: 4, batch: 3,
                       chunkElements: chunk), seed: 11)
            check(Case(inChannels: 3, outChannels: 4, kernel: 3, stride: 2, padding: 1, height: 7, width: 5, batch: 3,
                       chunkElements: chunk), seed: 12)
            check(Case(inChannels: 3, outChannels: 4, kernel: 1, stride: 2, padding: 0, height: 6, width: 6, batch: 3,
                       chunkElements: chunk), seed: 13)
        }
    }

    /// A stride-2 3x3 convolution of one-pixel-wide maps (e.g. the last
    /// stage of a ResNet on tiny images): the right tap of the kernel
    /// falls entirely into the padding.
    func testStride2OnOnePixelWideInput() {
        check(Case(inChannels: 1, outChannels: 2, kernel: 3, stride: 2, padding: 1, height: 3, width: 1, batch: 2), seed: 14)
        check(Case(inChannels: 2, outChannels: 2, kernel: 3, stride: 2, padding: 1, height: 1, width: 1, batch: 2), seed: 15)
    }

    func testLinearIsAMatrixProduct() {
        let store = ParameterStore(), workspace = Workspace()
        let fc = Conv2d.linear(name: "fc", inFeatures: 5, outFeatures: 3, store: store, workspace: workspace)
        store.allocate()
        XCTAssertEqual(fc.weight.shape, [3, 5])
        XCTAssertEqual(fc.bias?.shape, [3])
        var rng = SplitMix64(seed: 16)
        let w = store.parameters[fc.weight], b = store.parameters[fc.bias!]
        fillUniform(w, &rng)
        fillUniform(b, &rng)
        let x = OwnedMap(channels: 5, batch: 4, height: 1, width: 1, random: &rng)
        let y = fc.forward(x.map)
        for o in 0..<3 {
            for n in 0..<4 {
                var acc = Double(b[o])
                for i in 0..<5 { acc += Double(w[o * 5 + i]) * Double(x.map.data[i * 4 + n]) }
                assertClose(Double(y.data[o * 4 + n]), acc, tolerance: 1e-5, "logit \(o) of sample \(n)")
            }
        }
    }
}
