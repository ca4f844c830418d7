import Kernels
import Layers
import XCTest

/// A CNHW feature map that owns its storage, for building inputs and
/// upstream gradients in tests.
final class OwnedMap {
    let storage: FloatBuffer
    let map: FeatureMap

    init(channels: Int, batch: Int, height: Int, width: Int) {
        storage = FloatBuffer(capacity: channels * batch * height * width)
        map = FeatureMap(data: storage.pointer, channels: channels, batch: batch, height: height, width: width)
    }

    /// A map of uniform values in `range`.
    convenience init(channels: Int, batch: Int, height: Int, width: Int,
                     random rng: inout SplitMix64, range: ClosedRange<Float> = -1...1) {
        self.init(channels: channels, batch: batch, height: height, width: width)
        fillUniform(map.buffer, &rng, range: range)
    }

    /// A map of the same shape as `shape` filled with uniform values.
    convenience init(like shape: FeatureMap, random rng: inout SplitMix64, range: ClosedRange<Float> = -1...1) {
        self.init(channels: shape.channels, batch: shape.batch, height: shape.height, width: shape.width,
                  random: &rng, range: range)
    }

    var values: [Float] { Array(map.buffer) }
}

/// Element (c, n, y, x) of a CNHW map.
func element(_ m: FeatureMap, _ c: Int, _ n: Int, _ y: Int, _ x: Int) -> Float {
    m.data[((c * m.batch + n) * m.height + y) * m.width + x]
}

func fillUniform(_ buffer: UnsafeMutableBufferPointer<Float>, _ rng: inout SplitMix64,
                 range: ClosedRange<Float> = -1...1) {
    for i in buffer.indices {
        buffer[i] = range.lowerBound + (range.upperBound - range.lowerBound) * rng.nextUniform()
    }
}

/// The scalar loss of the gradient checks, L = sum(y * r), accumulated in
/// Double; its gradient with respect to y is r.
func weightedSum(_ y: FeatureMap, _ r: FeatureMap) -> Double {
    precondition(y.count == r.count, "loss weights have the wrong shape")
    var total: Double = 0
    for i in 0..<y.count { total += Double(y.data[i]) * Double(r.data[i]) }
    return total
}

/// The slot called `name`, trained or not.
func slot(_ store: ParameterStore, _ name: String, file: StaticString = #filePath, line: UInt = #line) -> ParameterSlot {
    guard let s = store.allSlots.first(where: { $0.name == name }) else {
        XCTFail("no parameter named \(name)", file: file, line: line)
        fatalError("no parameter named \(name)")
    }
    return s
}

/// `count` distinct indices in 0..<n (all of them when n <= count), sorted.
func sampleIndices(_ count: Int, of n: Int, _ rng: inout SplitMix64) -> [Int] {
    if n <= count { return Array(0..<n) }
    return Array(rng.permutation(n).prefix(count)).sorted()
}

/// |a - b| <= tolerance * max(1, |a|, |b|).
func isClose(_ a: Double, _ b: Double, tolerance: Double) -> Bool {
    abs(a - b) <= tolerance * max(1, abs(a), abs(b))
}

func assertClose(_ a: Double, _ b: Double, tolerance: Double, _ message: @autoclosure () -> String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssert(isClose(a, b, tolerance: tolerance), "\(a) vs \(b) (tolerance \(tolerance)) \(message())",
              file: file, line: line)
}

/// Asserts two equally long runs agree element-wise within `tolerance`
/// (relative to max(1, |a|, |b|)).
func assertAllClose(_ a: UnsafeBufferPointer<Float>, _ b: UnsafeBufferPointer<Float>, tolerance: Double,
                    _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(what): lengths differ", file: file, line: line)
    var failures = 0
    for i in 0..<min(a.count, b.count) where !isClose(Double(a[i]), Double(b[i]), tolerance: tolerance) {
        if failures < 5 { XCTFail("\(what)[\(i)]: \(a[i]) vs \(b[i])", file: file, line: line) }
        failures += 1
    }
    if failures >= 5 { XCTFail("\(what): \(failures) mismatches in total", file: file, line: line) }
}

func assertAllClose(_ a: [Float], _ b: [Float], tolerance: Double, _ what: String,
                    file: StaticString = #filePath, line: UInt = #line) {
    a.withUnsafeBufferPointer { pa in
        b.withUnsafeBufferPointer { pb in assertAllClose(pa, pb, tolerance: tolerance, what, file: file, line: line) }
    }
}

/// Central-difference gradient check.
///
/// For every index i in `indices`, perturbs `values[i]` by +-eps (in Float,
/// using the step actually representable), evaluates `loss` and compares
/// (L+ - L-) / (h+ + h-) with `analytic(i)` within `tolerance` relative to
/// max(1, |a|, |b|). Indices for which `skip` is true are not checked.
/// With `detectKinks`, an index whose one-sided differences disagree by
/// more than the tolerance is treated as sitting on a ReLU kink and
/// skipped; at most a tenth of the indices may be skipped that way.
/// Returns the number of indices checked.
@discardableResult
func checkGradient(_ what: String, values: UnsafeMutablePointer<Float>, indices: [Int],
                   analytic: (Int) -> Float, eps: Float, tolerance: Double = 1e-2,
                   detectKinks: Bool = false, skip: (Int) -> Bool = { _ in false },
                   loss: () -> Double, file: StaticString = #filePath, line: UInt = #line) -> Int {
    var checked = 0, kinks = 0, failures = 0
    for i in indices where !skip(i) {
        let v = values[i]
        values[i] = v + eps
        let hPlus = Double(values[i]) - Double(v)
        let lPlus = loss()
        values[i] = v - eps
        let hMinus = Double(v) - Double(values[i])
        let lMinus = loss()
        values[i] = v
        if detectKinks {
            let l0 = loss()
            let right = (lPlus - l0) / hPlus, left = (l0 - lMinus) / hMinus
            if !isClose(right, left, tolerance: tolerance) {
                kinks += 1
                continue
            }
        }
        let numeric = (lPlus - lMinus) / (hPlus + hMinus)
        let a = Double(analytic(i))
        checked += 1
        if !isClose(a, numeric, tolerance: tolerance) {
            if failures < 5 {
                XCTFail("\(what)[\(i)]: analytic \(a), finite difference \(numeric)", file: file, line: line)
            }
            failures += 1
        }
    }
    if failures >= 5 { XCTFail("\(what): \(failures) of \(checked) coordinates differ", file: file, line: line) }
    XCTAssertLessThanOrEqual(kinks * 10, max(indices.count, 10), "\(what): \(kinks) coordinates on kinks",
                             file: file, line: line)
    XCTAssertGreaterThan(checked, 0, "\(what): nothing was checked", file: file, line: line)
    return checked
}

/// Direct convolution with Double accumulation: the reference for Conv2d.
/// Returns the CNHW output.
func naiveConvolution(_ x: FeatureMap, weight w: UnsafeBufferPointer<Float>, bias: UnsafeBufferPointer<Float>?,
                      outChannels: Int, kernel k: Int, stride s: Int, padding p: Int) -> [Float] {
    let oh = (x.height + 2 * p - k) / s + 1, ow = (x.width + 2 * p - k) / s + 1
    var y = [Float](repeating: 0, count: outChannels * x.batch * oh * ow)
    for o in 0..<outChannels {
        for n in 0..<x.batch {
            for oy in 0..<oh {
                for ox in 0..<ow {
                    var acc = bias.map { Double($0[o]) } ?? 0
                    for c in 0..<x.channels {
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let iy = oy * s - p + ky, ix = ox * s - p + kx
                                guard iy >= 0, iy < x.height, ix >= 0, ix < x.width else { continue }
                                acc += Double(w[((o * x.channels + c) * k + ky) * k + kx])
                                    * Double(element(x, c, n, iy, ix))
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

/// A tiny ResNet-8 (three stages of one block, widths 2, 4 and 8, three classes,
/// one input channel) with random weights and non-trivial BN affine
/// parameters.
func tinyResNet(seed: UInt64 = 1) -> Network {
    let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.125))
    model.initialize(seed: seed)
    var rng = SplitMix64(seed: seed, stream: [99])
    for norm in model.batchNorms {
        fillUniform(model.store.parameters[norm.weight], &rng, range: 0.5...1.5)
        fillUniform(model.store.parameters[norm.bias], &rng, range: -0.5...0.5)
    }
    return model
}

extension Network {
    /// The conv or linear layer called `name` (tests reach layers by name).
    func layer(_ name: String) -> Conv2d { layers.first { $0.name == name }! }
    /// The batch-norm layer called `name`.
    func norm(_ name: String) -> BatchNorm2d { batchNorms.first { $0.name == name }! }
    /// The residual blocks, in order.
    var blocks: [BasicBlock] { units.compactMap { $0 as? BasicBlock } }
}

/// Checks dx, dW and (when present) the bias gradient of `conv` against
/// central differences of L = sum(y * r) on a random input of the given
/// shape, `samples` coordinates of dx and of dW.
func checkConvolutionGradients(_ conv: Conv2d, store: ParameterStore, batch: Int, height: Int, width: Int,
                               seed: UInt64, samples: Int = 60, tolerance: Double = 1e-2,
                               file: StaticString = #filePath, line: UInt = #line) {
    var rng = SplitMix64(seed: seed)
    fillUniform(store.parameters[conv.weight], &rng)
    if let b = conv.bias { fillUniform(store.parameters[b], &rng) }
    let x = OwnedMap(channels: conv.inChannels, batch: batch, height: height, width: width, random: &rng)
    let r = OwnedMap(like: conv.forward(x.map), random: &rng)
    store.gradients.zero()
    let dx = Array(conv.backward(r.map).buffer)
    let dW = Array(store.gradients[conv.weight])
    let loss = { weightedSum(conv.forward(x.map), r.map) }

    checkGradient("\(conv.name) dx", values: x.map.data, indices: sampleIndices(samples, of: x.map.count, &rng),
                  analytic: { dx[$0] }, eps: 1e-2, tolerance: tolerance, loss: loss, file: file, line: line)
    checkGradient("\(conv.name) dW", values: store.parameters.pointer(conv.weight),
                  indices: sampleIndices(samples, of: conv.weight.count, &rng),
                  analytic: { dW[$0] }, eps: 1e-2, tolerance: tolerance, loss: loss, file: file, line: line)
    if let b = conv.bias {
        let db = Array(store.gradients[b])
        checkGradient("\(conv.name) bias", values: store.parameters.pointer(b), indices: Array(0..<b.count),
                      analytic: { db[$0] }, eps: 1e-2, tolerance: tolerance, loss: loss, file: file, line: line)
    }
}
