import Kernels
import Layers
import XCTest

/// A CNHW feature map that owns its storage.
final class OwnedMap {
    let storage: FloatBuffer
    let map: FeatureMap

    init(channels: Int, batch: Int, height: Int, width: Int, random rng: inout SplitMix64,
         range: ClosedRange<Float> = -1...1) {
        storage = FloatBuffer(capacity: channels * batch * height * width)
        map = FeatureMap(data: storage.pointer, channels: channels, batch: batch, height: height, width: width)
        fillUniform(map.buffer, &rng, range: range)
    }

    convenience init(like shape: FeatureMap, random rng: inout SplitMix64) {
        self.init(channels: shape.channels, batch: shape.batch, height: shape.height, width: shape.width, random: &rng)
    }
}

func fillUniform(_ buffer: UnsafeMutableBufferPointer<Float>, _ rng: inout SplitMix64,
                 range: ClosedRange<Float> = -1...1) {
    for i in buffer.indices {
        buffer[i] = range.lowerBound + (range.upperBound - range.lowerBound) * rng.nextUniform()
    }
}

func uniformValues(_ count: Int, _ rng: inout SplitMix64, range: ClosedRange<Float> = -1...1) -> [Float] {
    var values = [Float](repeating: 0, count: count)
    values.withUnsafeMutableBufferPointer { fillUniform($0, &rng, range: range) }
    return values
}

/// |a - b| <= tolerance * max(1, |a|, |b|).
func assertClose(_ a: Double, _ b: Double, tolerance: Double, _ message: @autoclosure () -> String = "",
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssert(abs(a - b) <= tolerance * max(1, abs(a), abs(b)), "\(a) vs \(b) \(message())", file: file, line: line)
}

/// `fakeQuantize` of an array (with a QDrop mask if given), returning a new array.
func fakeQuantized(_ x: [Float], step: Float, zeroPoint: Float = 0, grid: QuantGrid, dropMask: [UInt8]? = nil) -> [Float] {
    var y = [Float](repeating: .nan, count: x.count)
    y.withUnsafeMutableBufferPointer { out in
        withOptionalPointer(dropMask) { drop in
            fakeQuantize(x, out.baseAddress!, count: x.count, step: step, zeroPoint: zeroPoint, grid: grid, dropMask: drop)
        }
    }
    return y
}

/// `fakeQuantizeBackward` on arrays: dL/dx replaces `gradient`; returns the step gradient.
@discardableResult
func fakeQuantizeBackward(_ x: [Float], gradient: inout [Float], step: Float, zeroPoint: Float, grid: QuantGrid,
                          dropMask: [UInt8]? = nil) -> Float {
    withOptionalPointer(dropMask) { drop in
        fakeQuantizeBackward(x, gradient: &gradient, count: x.count, step: step, zeroPoint: zeroPoint, grid: grid,
                             dropMask: drop)
    }
}

/// Calls `body` with a pointer to the bytes of `array`, or nil.
func withOptionalPointer<R>(_ array: [UInt8]?, _ body: (UnsafePointer<UInt8>?) -> R) -> R {
    guard let array else { return body(nil) }
    return array.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// QDrop bytes: 0 (keep) or a nonzero value (drop) with probability 1/2.
func randomDropMask(_ count: Int, _ rng: inout SplitMix64) -> [UInt8] {
    (0..<count).map { _ in rng.nextIndex(below: 2) == 0 ? 0 : UInt8(1 + rng.nextIndex(below: 255)) }
}

/// Where a value falls on the grid and the derivative of its fake-quantized
/// value with respect to the step under LSQ, written out from the formula:
/// v = x/s, q = round(v) + z; round(v) - v inside [qmin, qmax], qmin - z
/// below it, qmax - z above it. v is computed as the library does (x times
/// the Float reciprocal of s) so both take the same rounding decisions.
struct GridPosition {
    enum Place { case below, inside, above }
    let place: Place
    let v: Double
    let stepDerivative: Double

    init(_ x: Float, step: Float, zeroPoint z: Float, grid: QuantGrid) {
        let vf = x * (1 / step)
        let r = vf.rounded(.toNearestOrEven)
        v = Double(vf)
        if r + z < grid.qmin {
            place = .below
            stepDerivative = Double(grid.qmin - z)
        } else if r + z > grid.qmax {
            place = .above
            stepDerivative = Double(grid.qmax - z)
        } else {
            place = .inside
            stepDerivative = Double(r) - Double(vf)
        }
    }
}

/// The reference backward of fake quantization: the unscaled LSQ step
/// gradient sum(dy * dy_hat/ds) in Double and the straight-through dx.
func referenceBackward(_ x: [Float], _ dy: [Float], step: Float, zeroPoint z: Float,
                       grid: QuantGrid) -> (stepGradient: Double, dx: [Float]) {
    var total: Double = 0
    var dx = dy
    for i in x.indices {
        let p = GridPosition(x[i], step: step, zeroPoint: z, grid: grid)
        total += Double(dy[i]) * p.stepDerivative
        if p.place != .inside { dx[i] = 0 }
    }
    return (total, dx)
}

/// A tiny ResNet-8: three stages of one block (2, 4 and 8 channels), 3 classes.
func tinyResNet(seed: UInt64) -> Network {
    let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.125))
    model.initialize(seed: seed)
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
