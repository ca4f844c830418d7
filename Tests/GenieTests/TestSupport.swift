import Kernels
import Layers
import XCTest

func fillUniform(_ buffer: UnsafeMutableBufferPointer<Float>, _ rng: inout SplitMix64, range: ClosedRange<Float>) {
    for i in buffer.indices {
        buffer[i] = range.lowerBound + (range.upperBound - range.lowerBound) * rng.nextUniform()
    }
}

/// A small teacher with one block per stage, so one strided 3x3 conv and
/// one strided 1x1 downsample get swing crops, with random weights, batch
/// norm affine parameters and running statistics (targets far from 0 and 1).
func smallTeacher(seed: UInt64) -> Network {
    let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.1875))
    model.initialize(seed: seed)
    var rng = SplitMix64(seed: seed, stream: [7])
    for norm in model.batchNorms {
        fillUniform(model.store.parameters[norm.weight], &rng, range: 0.5...1.5)
        fillUniform(model.store.parameters[norm.bias], &rng, range: -0.5...0.5)
        fillUniform(model.store.state[norm.runningMean], &rng, range: -0.5...0.5)
        fillUniform(model.store.state[norm.runningVar], &rng, range: 0.5...2)
    }
    return model
}

/// A CNHW map that owns its storage.
final class OwnedMap {
    let storage: FloatBuffer
    let map: FeatureMap

    init(channels: Int, batch: Int, height: Int, width: Int, random rng: inout SplitMix64, range: ClosedRange<Float>) {
        storage = FloatBuffer(capacity: channels * batch * height * width)
        map = FeatureMap(data: storage.pointer, channels: channels, batch: batch, height: height, width: width)
        fillUniform(map.buffer, &rng, range: range)
    }
}

/// sum(y * r) in Double.
func weightedSum(_ y: FeatureMap, _ r: FeatureMap) -> Double {
    precondition(y.count == r.count)
    var total: Double = 0
    for i in 0..<y.count { total += Double(y.data[i]) * Double(r.data[i]) }
    return total
}

/// Central difference of `loss` along `direction` (added to `values` scaled
/// by +-h) against the analytic directional derivative sum(gradient *
/// direction): |analytic - numeric| <= tolerance * max(|analytic|, |numeric|).
/// Many coordinates move at once, so the change in the loss stands far
/// above Float rounding.
func checkDirectionalDerivative(_ what: String, values: UnsafeMutablePointer<Float>, gradient: [Float],
                                direction: [Float], h: Float, tolerance: Double, loss: () -> Double,
                                file: StaticString = #filePath, line: UInt = #line) {
    let original = Array(UnsafeBufferPointer(start: values, count: gradient.count))
    func shifted(_ sign: Float) -> Double {
        for i in 0..<gradient.count { values[i] = original[i] + sign * h * direction[i] }
        return loss()
    }
    let numeric = (shifted(1) - shifted(-1)) / (2 * Double(h))
    for i in 0..<gradient.count { values[i] = original[i] }
    var analytic: Double = 0
    for i in 0..<gradient.count { analytic += Double(gradient[i]) * Double(direction[i]) }
    XCTAssertGreaterThan(abs(analytic), 1e-6, "\(what): degenerate direction", file: file, line: line)
    XCTAssertLessThanOrEqual(abs(analytic - numeric), tolerance * max(abs(analytic), abs(numeric)),
                             "\(what): analytic \(analytic), finite difference \(numeric)", file: file, line: line)
}

/// Central differences of single coordinates: |a - n| <= tolerance * max(|a|, |n|) + floor.
func checkCoordinates(_ what: String, values: UnsafeMutablePointer<Float>, gradient: (Int) -> Float, indices: [Int],
                      eps: Float, tolerance: Double, floor: Double, loss: () -> Double,
                      file: StaticString = #filePath, line: UInt = #line) {
    var failures = 0
    for i in indices {
        let v = values[i]
        values[i] = v + eps
        let plus = loss(), hPlus = Double(values[i]) - Double(v)
        values[i] = v - eps
        let minus = loss(), hMinus = Double(v) - Double(values[i])
        values[i] = v
        let numeric = (plus - minus) / (hPlus + hMinus), analytic = Double(gradient(i))
        if abs(analytic - numeric) > tolerance * max(abs(analytic), abs(numeric)) + floor {
            if failures < 5 {
                XCTFail("\(what)[\(i)]: analytic \(analytic), finite difference \(numeric)", file: file, line: line)
            }
            failures += 1
        }
    }
    if failures >= 5 { XCTFail("\(what): \(failures) of \(indices.count) coordinates differ", file: file, line: line) }
}

extension Network {
    /// The conv or linear layer called `name` (tests reach layers by name).
    func layer(_ name: String) -> Conv2d { layers.first { $0.name == name }! }
    /// The batch-norm layer called `name`.
    func norm(_ name: String) -> BatchNorm2d { batchNorms.first { $0.name == name }! }
    /// The residual blocks, in order.
    var blocks: [BasicBlock] { units.compactMap { $0 as? BasicBlock } }
}
