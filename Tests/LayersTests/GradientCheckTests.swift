import Kernels
import Layers
import XCTest

/// Every layer's backward against central finite differences of the loss
/// L = sum(y * r) for a fixed random r (so dL/dy = r).
final class GradientCheckTests: XCTestCase {
    // MARK: Conv2d

    func testConvolution3x3Stride1() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1,
                          store: store, workspace: workspace)
        store.allocate()
        checkConvolutionGradients(conv, store: store, batch: 2, height: 5, width: 6, seed: 1)
    }

    func testConvolution3x3Stride2OddSizesInChunks() {
        let store = ParameterStore(), workspace = Workspace()
        workspace.chunkElements = 1  // one image per chunk
        let conv = Conv2d(name: "conv", inChannels: 2, outChannels: 3, kernel: 3, stride: 2, padding: 1,
                          store: store, workspace: workspace)
        store.allocate()
        checkConvolutionGradients(conv, store: store, batch: 3, height: 7, width: 5, seed: 2)
    }

    func testConvolutionPointwise() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "conv", inChannels: 4, outChannels: 3, kernel: 1, store: store, workspace: workspace)
        store.allocate()
        checkConvolutionGradients(conv, store: store, batch: 2, height: 3, width: 5, seed: 3)
    }

    func testConvolutionDownsample() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: 1, stride: 2,
                          store: store, workspace: workspace)
        store.allocate()
        checkConvolutionGradients(conv, store: store, batch: 2, height: 5, width: 6, seed: 4)
    }

    func testLinear() {
        let store = ParameterStore(), workspace = Workspace()
        let fc = Conv2d.linear(name: "fc", inFeatures: 6, outFeatures: 4, store: store, workspace: workspace)
        store.allocate()
        checkConvolutionGradients(fc, store: store, batch: 3, height: 1, width: 1, seed: 5)
    }

    /// The chunked backward gives the same gradients as the one-chunk backward.
    func testChunkedBackwardMatchesUnchunked() {
        func gradients(chunkElements: Int) -> (dx: [Float], dW: [Float]) {
            let store = ParameterStore(), workspace = Workspace()
            workspace.chunkElements = chunkElements
            let conv = Conv2d(name: "conv", inChannels: 3, outChannels: 4, kernel: 3, stride: 2, padding: 1,
                              store: store, workspace: workspace)
            store.allocate()
            var rng = SplitMix64(seed: 6)
            fillUniform(store.parameters[conv.weight], &rng)
            let x = OwnedMap(channels: 3, batch: 3, height: 7, width: 5, random: &rng)
            let r = OwnedMap(like: conv.forward(x.map), random: &rng)
            store.gradients.zero()
            let dx = Array(conv.backward(r.map).buffer)
            return (dx, Array(store.gradients[conv.weight]))
        }
        let whole = gradients(chunkElements: 1 << 19)
        for chunk in [1, 2 * 27 * 12] {
            let chunked = gradients(chunkElements: chunk)
            assertAllClose(chunked.dx, whole.dx, tolerance: 1e-5, "dx, chunkElements \(chunk)")
            assertAllClose(chunked.dW, whole.dW, tolerance: 1e-5, "dW, chunkElements \(chunk)")
        }
    }

    /// Swing convolution: the shifted input goes through the convolution
    /// and dx comes back through the shift.
    func testConvolutionStride2WithSwing() {
        let store = ParameterStore(), workspace = Workspace()
        let conv = Conv2d(name: "conv", inChannels: 2, outChannels: 3, kernel: 3, stride: 2, padding: 1,
                          store: store, workspace: workspace)
        store.allocate()
        conv.swing = ReflectPadCrop()
        conv.swing?.offset = (0, 2)
        checkConvolutionGradients(conv, store: store, batch: 2, height: 5, width: 6, seed: 14)
    }

    // MARK: BatchNorm2d

    /// Training mode normalises with the batch's statistics, evaluation mode
    /// with the running ones (a fixed per-channel affine map of x).
    func checkBatchNorm(training: Bool, seed: UInt64) {
        let store = ParameterStore()
        let bn = BatchNorm2d(name: "bn", channels: 3, store: store)
        store.allocate()
        var rng = SplitMix64(seed: seed)
        fillUniform(store.parameters[bn.weight], &rng, range: 0.5...1.5)
        fillUniform(store.parameters[bn.bias], &rng)
        fillUniform(store.state[bn.runningMean], &rng)
        fillUniform(store.state[bn.runningVar], &rng, range: 0.5...2)
        let x = OwnedMap(channels: 3, batch: 2, height: 3, width: 4, random: &rng, range: -2...2)
        let r = OwnedMap(like: bn.forward(x.map, training: training), random: &rng)
        store.gradients.zero()
        let dx = Array(bn.backward(r.map).buffer)
        let dGamma = Array(store.gradients[bn.weight]), dBeta = Array(store.gradients[bn.bias])
        let loss = { weightedSum(bn.forward(x.map, training: training), r.map) }
        let mode = training ? "training" : "evaluation"

        checkGradient("bn \(mode) dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: 1e-3, loss: loss)
        checkGradient("bn \(mode) dgamma", values: store.parameters.pointer(bn.weight), indices: Array(0..<3),
                      analytic: { dGamma[$0] }, eps: 1e-3, loss: loss)
        checkGradient("bn \(mode) dbeta", values: store.parameters.pointer(bn.bias), indices: Array(0..<3),
                      analytic: { dBeta[$0] }, eps: 1e-3, loss: loss)
    }

    func testBatchNormTraining() { checkBatchNorm(training: true, seed: 7) }

    func testBatchNormEvaluation() { checkBatchNorm(training: false, seed: 15) }

    /// affine = false standardises each channel and leaves gamma and beta
    /// without gradient.
    func testBatchNormWithoutAffine() {
        let store = ParameterStore()
        let bn = BatchNorm2d(name: "bn", channels: 2, affine: false, store: store)
        store.allocate()
        bn.reset()
        var rng = SplitMix64(seed: 16)
        let x = OwnedMap(channels: 2, batch: 3, height: 2, width: 3, random: &rng, range: -2...3)
        let y = bn.forward(x.map, training: true)
        for c in 0..<2 {
            let channel = (0..<y.plane).map { Double(y.data[c * y.plane + $0]) }
            let mean = channel.reduce(0, +) / Double(channel.count)
            let variance = channel.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(channel.count)
            assertClose(mean, 0, tolerance: 1e-5, "channel \(c) mean")
            assertClose(variance, 1, tolerance: 1e-3, "channel \(c) variance")
        }
        let r = OwnedMap(like: y, random: &rng)
        store.gradients.zero()
        let dx = Array(bn.backward(r.map).buffer)
        XCTAssertEqual(Array(store.gradients.all), Array(repeating: 0, count: store.gradients.all.count))
        checkGradient("bn no-affine dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: 1e-3) { weightedSum(bn.forward(x.map, training: true), r.map) }
    }

    // MARK: Element-wise layers and pooling

    func testLeakyReLU() {
        let layer = LeakyReLU(slope: 0.2)
        var rng = SplitMix64(seed: 17)
        let x = OwnedMap(channels: 2, batch: 3, height: 3, width: 3, random: &rng)
        checkInputGradient("leaky relu", x: x, eps: 1e-2, skip: { abs(x.map.data[$0]) <= 1e-2 }, rng: &rng,
                           forward: layer.forward, backward: layer.backward)
    }

    func testTanh() {
        let layer = Tanh()
        var rng = SplitMix64(seed: 18)
        let x = OwnedMap(channels: 2, batch: 3, height: 3, width: 3, random: &rng, range: -2...2)
        checkInputGradient("tanh", x: x, eps: 1e-3, rng: &rng, forward: layer.forward, backward: layer.backward)
    }

    func testUpsample2x() {
        let layer = Upsample2x()
        var rng = SplitMix64(seed: 19)
        let x = OwnedMap(channels: 2, batch: 2, height: 3, width: 2, random: &rng)
        let y = layer.forward(x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [2, 2, 6, 4])
        for c in 0..<2 {
            for n in 0..<2 {
                for i in 0..<6 {
                    for j in 0..<4 { XCTAssertEqual(element(y, c, n, i, j), element(x.map, c, n, i / 2, j / 2)) }
                }
            }
        }
        checkInputGradient("upsample", x: x, eps: 1e-2, rng: &rng, forward: layer.forward, backward: layer.backward)
    }

    /// Feature (c*H + y)*W + x of sample n lands at (c, n, y, x).
    func testUnflatten() {
        let layer = Unflatten(channels: 2, height: 2, width: 3)
        var rng = SplitMix64(seed: 20)
        let x = OwnedMap(channels: 12, batch: 3, height: 1, width: 1, random: &rng)
        let y = layer.forward(x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [2, 3, 2, 3])
        for c in 0..<2 {
            for n in 0..<3 {
                for i in 0..<2 {
                    for j in 0..<3 { XCTAssertEqual(element(y, c, n, i, j), element(x.map, (c * 2 + i) * 3 + j, n, 0, 0)) }
                }
            }
        }
        checkInputGradient("unflatten", x: x, eps: 1e-2, rng: &rng, forward: layer.forward, backward: layer.backward)
    }

    /// Every offset gives PyTorch's reflect padding by 1 cropped at the
    /// offset, keeps the shape, and backward is the adjoint:
    /// <crop(pad(x)), r> = <x, pad^T(crop^T(r))>.
    func testReflectPadCrop() {
        let layer = ReflectPadCrop()
        var rng = SplitMix64(seed: 21)
        let (h, w) = (4, 5)
        let x = OwnedMap(channels: 2, batch: 2, height: h, width: w, random: &rng)
        func reflect(_ k: Int, _ n: Int) -> Int { k < 0 ? -k : (k >= n ? 2 * n - 2 - k : k) }
        for oy in 0...2 {
            for ox in 0...2 {
                layer.offset = (oy, ox)
                let y = layer.forward(x.map)
                XCTAssertEqual([y.channels, y.batch, y.height, y.width], [2, 2, h, w])
                for c in 0..<2 {
                    for n in 0..<2 {
                        for i in 0..<h {
                            for j in 0..<w {
                                XCTAssertEqual(element(y, c, n, i, j),
                                               element(x.map, c, n, reflect(i + oy - 1, h), reflect(j + ox - 1, w)),
                                               "offset (\(oy), \(ox)) at (\(i), \(j))")
                            }
                        }
                    }
                }
                let r = OwnedMap(like: y, random: &rng)
                let forward = weightedSum(y, r.map)
                let dx = layer.backward(r.map)
                assertClose(forward, weightedSum(x.map, dx), tolerance: 1e-6, "adjoint at offset (\(oy), \(ox))")
            }
        }
    }

    /// dx of a layer with one input and no parameters, at `x`.
    func checkInputGradient(_ what: String, x: OwnedMap, eps: Float, skip: (Int) -> Bool = { _ in false },
                            rng: inout SplitMix64, forward: (FeatureMap) -> FeatureMap,
                            backward: (FeatureMap) -> FeatureMap) {
        let r = OwnedMap(like: forward(x.map), random: &rng)
        let dx = Array(backward(r.map).buffer)
        checkGradient("\(what) dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: eps, skip: skip) { weightedSum(forward(x.map), r.map) }
    }

    func testReLU() {
        let relu = ReLU()
        var rng = SplitMix64(seed: 8)
        let x = OwnedMap(channels: 2, batch: 3, height: 3, width: 3, random: &rng)
        checkInputGradient("relu", x: x, eps: 1e-2, skip: { abs(x.map.data[$0]) <= 1e-2 }, rng: &rng,
                           forward: relu.forward, backward: relu.backward)
    }

    func testAddReLU() {
        let join = AddReLU()
        var rng = SplitMix64(seed: 9)
        let a = OwnedMap(channels: 2, batch: 2, height: 3, width: 4, random: &rng)
        let b = OwnedMap(like: a.map, random: &rng)
        let r = OwnedMap(like: join.forward(a.map, b.map), random: &rng)
        let d = Array(join.backward(r.map).buffer)
        let eps: Float = 1e-2
        let nearKink = { (i: Int) in abs(a.map.data[i] + b.map.data[i]) <= 2 * eps }
        let loss = { weightedSum(join.forward(a.map, b.map), r.map) }
        checkGradient("add-relu da", values: a.map.data, indices: Array(0..<a.map.count), analytic: { d[$0] },
                      eps: eps, skip: nearKink, loss: loss)
        checkGradient("add-relu db", values: b.map.data, indices: Array(0..<b.map.count), analytic: { d[$0] },
                      eps: eps, skip: nearKink, loss: loss)
    }

    func testGlobalAveragePool() {
        let pool = GlobalAveragePool()
        var rng = SplitMix64(seed: 10)
        let x = OwnedMap(channels: 3, batch: 2, height: 3, width: 5, random: &rng)
        let y = pool.forward(x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [3, 2, 1, 1])
        for c in 0..<3 {
            for n in 0..<2 {
                var mean: Double = 0
                for i in 0..<15 { mean += Double(element(x.map, c, n, i / 5, i % 5)) / 15 }
                assertClose(Double(element(y, c, n, 0, 0)), mean, tolerance: 1e-6)
            }
        }
        let r = OwnedMap(like: y, random: &rng)
        let dx = Array(pool.backward(r.map).buffer)
        checkGradient("pool dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: 1e-2) { weightedSum(pool.forward(x.map), r.map) }
    }

    // MARK: Cross-entropy

    func testSoftmaxCrossEntropy() {
        let classes = 4, n = 3
        var rng = SplitMix64(seed: 11)
        let logits = OwnedMap(channels: classes, batch: n, height: 1, width: 1, random: &rng, range: -3...3)
        let labels: [Int32] = [2, 0, 3]
        var gradient = [Float](repeating: .nan, count: classes * n)
        let result = softmaxCrossEntropy(logits: logits.map, labels: labels, gradient: &gradient,
                                         gradientScale: 1 / Float(n))

        // Reference loss and accuracy in Double.
        var total: Double = 0, correct = 0
        for j in 0..<n {
            let z = (0..<classes).map { Double(logits.map.data[$0 * n + j]) }
            total += log(z.map { exp($0) }.reduce(0, +)) - z[Int(labels[j])]
            if z.indices.max(by: { z[$0] < z[$1] }) == Int(labels[j]) { correct += 1 }
        }
        assertClose(Double(result.loss), total / Double(n), tolerance: 1e-6, "mean loss")
        XCTAssertEqual(result.correct, correct)

        checkGradient("dlogits", values: logits.map.data, indices: Array(0..<classes * n), analytic: { gradient[$0] },
                      eps: 1e-3) {
            Double(softmaxCrossEntropy(logits: logits.map, labels: labels, gradient: nil, gradientScale: 1).loss)
        }
    }

    func testSoftmaxDistillation() {
        let classes = 5, n = 3
        var rng = SplitMix64(seed: 13)
        let student = OwnedMap(channels: classes, batch: n, height: 1, width: 1, random: &rng, range: -3...3)
        let teacher = OwnedMap(channels: classes, batch: n, height: 1, width: 1, random: &rng, range: -3...3)
        for temperature: Float in [1, 2.5] {
            var gradient = [Float](repeating: .nan, count: classes * n)
            let result = softmaxDistillation(student: student.map, teacher: teacher.map, temperature: temperature,
                                             gradient: &gradient, gradientScale: 1 / Float(n))

            // Reference: T^2 * KL(p || q) in Double, averaged over the batch.
            var total: Double = 0, agree = 0
            for j in 0..<n {
                func softmax(_ m: FeatureMap) -> [Double] {
                    let e = (0..<classes).map { exp(Double(m.data[$0 * n + j]) / Double(temperature)) }
                    return e.map { $0 / e.reduce(0, +) }
                }
                let p = softmax(teacher.map), q = softmax(student.map)
                total += zip(p, q).reduce(0) { $0 + $1.0 * log($1.0 / $1.1) }
                if p.indices.max(by: { p[$0] < p[$1] }) == q.indices.max(by: { q[$0] < q[$1] }) { agree += 1 }
            }
            let t2 = Double(temperature * temperature)
            assertClose(Double(result.loss), t2 * total / Double(n), tolerance: 1e-5, "mean loss at T = \(temperature)")
            XCTAssertEqual(result.correct, agree, "samples whose arg-max matches the teacher's")

            checkGradient("dstudent at T = \(temperature)", values: student.map.data, indices: Array(0..<classes * n),
                          analytic: { gradient[$0] }, eps: 1e-3) {
                Double(softmaxDistillation(student: student.map, teacher: teacher.map, temperature: temperature,
                                           gradient: nil, gradientScale: 1).loss)
            }
        }
        // A student that equals its teacher has nothing to learn.
        var gradient = [Float](repeating: .nan, count: classes * n)
        let same = softmaxDistillation(student: teacher.map, teacher: teacher.map, temperature: 1, gradient: &gradient,
                                       gradientScale: 1)
        XCTAssertEqual(same.loss, 0, accuracy: 1e-6)
        XCTAssertEqual(same.correct, n)
        XCTAssert(gradient.allSatisfy { abs($0) < 1e-6 }, "gradient at the minimum: \(gradient)")
    }

    // MARK: Composite: a residual block and a whole network

    func testBasicBlockWithDownsample() {
        let model = tinyResNet(seed: 12)
        let block = model.blocks[1]
        XCTAssertNotNil(block.downsample, "the first block of stage 2 changes shape")
        let store = model.store
        var rng = SplitMix64(seed: 12)
        let x = OwnedMap(channels: 2, batch: 2, height: 6, width: 6, random: &rng)
        let y = block.forward(x.map, training: true)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [4, 2, 3, 3])
        let r = OwnedMap(like: y, random: &rng)
        store.gradients.zero()
        let dx = Array(block.backward(r.map).buffer)
        let gradients = Array(store.gradients.all)
        let loss = { weightedSum(block.forward(x.map, training: true), r.map) }

        checkGradient("block dx", values: x.map.data, indices: sampleIndices(40, of: x.map.count, &rng),
                      analytic: { dx[$0] }, eps: 1e-3, detectKinks: true, loss: loss)
        let blockSlots = store.parameterLayout.slots.filter {
            $0.name.hasPrefix("layer2.0.") && [.weight, .normScale, .normShift].contains($0.role)
        }
        XCTAssertEqual(blockSlots.count, 3 * 3, "three convolutions and three batch norms (two tensors each)")
        for s in blockSlots {
            checkGradient(s.name, values: store.parameters.pointer(s), indices: sampleIndices(6, of: s.count, &rng),
                          analytic: { gradients[s.offset + $0] }, eps: 1e-3, detectKinks: true, loss: loss)
        }
    }

    func testTinyResNet() {
        let model = tinyResNet(seed: 13)
        let store = model.store
        var rng = SplitMix64(seed: 13)
        let images = OwnedMap(channels: 1, batch: 2, height: 6, width: 6, random: &rng)
        let trained = store.parameterLayout.slots.filter { [.weight, .bias, .normScale, .normShift].contains($0.role) }
        // conv1, bn1, three blocks (two with a downsample), fc.
        XCTAssertEqual(trained.count, 1 + 2 + (2 + 4) + 2 * (3 + 6) + 2)
        let checked = checkNetworkGradients(model, images: images.map, training: true, perSlot: 4, label: "", rng: &rng)
        XCTAssertGreaterThan(checked, 50)
    }

    /// Every unit kind's backward against finite differences, through a
    /// whole small network of each family: the ImageNet stem with its
    /// max-pool, basic blocks, bottlenecks, inverted residuals with
    /// depthwise convolutions and ReLU6, and the classifier. Batch norm runs
    /// on (random) running statistics: in training mode these networks end
    /// in 1x1 maps whose statistics over 4 images make the loss far too
    /// curved for finite differences (a 1e-3 step in one stem weight moved
    /// MobileNetV2's loss from -0.43 to +0.14); training-mode batch norm is
    /// checked on its own above.
    func testEveryArchitectureFamily() {
        for (architecture, width) in [(Architecture.resnet18, 0.0625), (.resnet50, 0.0625), (.mobilenetV2, 0.125)] {
            let model = Network(ModelSpec(architecture: architecture, inputChannels: 1, classes: 3, widthMultiplier: width))
            model.initialize(seed: 21)
            let store = model.store
            var rng = SplitMix64(seed: 21)
            for norm in model.batchNorms {
                let gamma = store.parameters[norm.weight], beta = store.parameters[norm.bias]
                let mean = store.state[norm.runningMean], variance = store.state[norm.runningVar]
                for c in 0..<norm.channels {
                    gamma[c] = 0.5 + rng.nextUniform()
                    beta[c] = rng.nextUniform() - 0.5
                    mean[c] = 0.2 * (rng.nextUniform() - 0.5)
                    variance[c] = 0.5 + rng.nextUniform()
                }
            }
            // 16x16 images: few activations, so few ReLU and max-pool kinks
            // within a step of eps.
            let images = OwnedMap(channels: 1, batch: 2, height: 16, width: 16, random: &rng)
            let checked = checkNetworkGradients(model, images: images.map, training: false, perSlot: 3,
                                                label: architecture.rawValue + " ", rng: &rng)
            XCTAssertGreaterThan(checked, 150, architecture.rawValue)
        }
    }

    /// Every trained slot of `model` (`perSlot` coordinates each) against
    /// central differences of L = sum(logits * r), r random; returns the
    /// coordinates checked (kinks skipped). The logits must be [3, 2, 1, 1].
    func checkNetworkGradients(_ model: Network, images: FeatureMap, training: Bool, perSlot: Int, label: String,
                               rng: inout SplitMix64) -> Int {
        let store = model.store
        let logits = model.forward(images, training: training)
        XCTAssertEqual([logits.channels, logits.batch, logits.height, logits.width], [3, 2, 1, 1])
        let r = OwnedMap(like: logits, random: &rng)
        store.gradients.zero()
        model.backward(r.map)
        let gradients = Array(store.gradients.all)
        let loss = { weightedSum(model.forward(images, training: training), r.map) }
        var checked = 0
        for s in store.parameterLayout.slots where [.weight, .bias, .normScale, .normShift].contains(s.role) {
            checked += checkGradient(label + s.name, values: store.parameters.pointer(s),
                                     indices: sampleIndices(perSlot, of: s.count, &rng),
                                     analytic: { gradients[s.offset + $0] }, eps: 1e-3, detectKinks: true, loss: loss)
        }
        return checked
    }
}
