import Kernels
import Layers
import XCTest

/// The layers ResNet's stem and MobileNetV2 add to the element-wise ones:
/// MaxPool2d against a direct reference, ReLU6 and Add against finite
/// differences.
final class MaxPoolReLU6AddTests: XCTestCase {
    // MARK: MaxPool2d

    /// Direct max pooling: the output and, per output element, the flat
    /// input index (c, n, y, x) of its first maximum in row-major window
    /// order, padding excluded; a NaN wins (the last one), as in PyTorch.
    func naiveMaxPool(_ x: FeatureMap, kernel k: Int, stride s: Int, padding p: Int)
        -> (y: [Float], argmax: [Int], height: Int, width: Int) {
        let oh = (x.height + 2 * p - k) / s + 1, ow = (x.width + 2 * p - k) / s + 1
        var y = [Float](), argmax = [Int]()
        for c in 0..<x.channels {
            for n in 0..<x.batch {
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        var best: Float? = nil, at = -1
                        for ky in 0..<k {
                            for kx in 0..<k {
                                let iy = oy * s - p + ky, ix = ox * s - p + kx
                                guard iy >= 0, iy < x.height, ix >= 0, ix < x.width else { continue }
                                let v = element(x, c, n, iy, ix)
                                if best == nil || v > best! || v.isNaN {
                                    best = v
                                    at = ((c * x.batch + n) * x.height + iy) * x.width + ix
                                }
                            }
                        }
                        y.append(best!)
                        argmax.append(at)
                    }
                }
            }
        }
        return (y, argmax, oh, ow)
    }

    /// Forward against the reference on values with many ties (a few
    /// integers, all negative so the -inf padding must not win), and
    /// backward as the reference's routing of dy to the first maximum.
    func checkMaxPool(kernel: Int, stride: Int, padding: Int, height: Int, width: Int, seed: UInt64, nans: Int = 0,
                      file: StaticString = #filePath, line: UInt = #line) {
        let pool = MaxPool2d(kernel: kernel, stride: stride, padding: padding)
        var rng = SplitMix64(seed: seed)
        let x = OwnedMap(channels: 3, batch: 2, height: height, width: width)
        for i in 0..<x.map.count { x.map.data[i] = -Float(1 + Int(rng.nextUniform() * 3)) }
        for _ in 0..<nans { x.map.data[rng.nextIndex(below: x.map.count)] = .nan }
        let expected = naiveMaxPool(x.map, kernel: kernel, stride: stride, padding: padding)
        let y = pool.forward(x.map)
        XCTAssertEqual([y.channels, y.batch, y.height, y.width], [3, 2, expected.height, expected.width],
                       file: file, line: line)
        XCTAssertEqual(Array(y.buffer).map(\.bitPattern), expected.y.map(\.bitPattern),
                       "k\(kernel) s\(stride) p\(padding) \(height)x\(width) forward", file: file, line: line)
        XCTAssertEqual(pool.outputSize(height: height, width: width).height, expected.height, file: file, line: line)

        let dy = OwnedMap(like: y, random: &rng)
        var dxExpected = [Float](repeating: 0, count: x.map.count)
        for (j, i) in expected.argmax.enumerated() { dxExpected[i] += dy.map.data[j] }
        let dx = pool.backward(dy.map)
        guard nans == 0 else {
            XCTAssertEqual(Array(dx.buffer).map(\.bitPattern), dxExpected.map(\.bitPattern), "dx with NaNs",
                           file: file, line: line)
            return
        }
        XCTAssertEqual([dx.channels, dx.batch, dx.height, dx.width], [3, 2, height, width], file: file, line: line)
        assertAllClose(Array(dx.buffer), dxExpected, tolerance: 1e-6, "k\(kernel) s\(stride) p\(padding) dx",
                       file: file, line: line)
    }

    func testMaxPoolStem() {
        checkMaxPool(kernel: 3, stride: 2, padding: 1, height: 8, width: 8, seed: 1)
        checkMaxPool(kernel: 3, stride: 2, padding: 1, height: 7, width: 9, seed: 2)
    }

    /// Rows wide enough for the vector loops (4 outputs at a time) and
    /// their scalar tails.
    func testMaxPoolWideRows() {
        checkMaxPool(kernel: 3, stride: 2, padding: 1, height: 19, width: 22, seed: 20)
        checkMaxPool(kernel: 3, stride: 2, padding: 1, height: 6, width: 31, seed: 21)
        checkMaxPool(kernel: 3, stride: 1, padding: 1, height: 9, width: 13, seed: 22)
        checkMaxPool(kernel: 2, stride: 2, padding: 0, height: 16, width: 17, seed: 23)
        checkMaxPool(kernel: 5, stride: 2, padding: 2, height: 7, width: 26, seed: 24)
        checkMaxPool(kernel: 3, stride: 3, padding: 1, height: 7, width: 25, seed: 25)
    }

    /// A NaN wins its windows (the last NaN of a window, as PyTorch's scan).
    func testMaxPoolNaN() {
        checkMaxPool(kernel: 3, stride: 2, padding: 1, height: 9, width: 22, seed: 26, nans: 12)
        checkMaxPool(kernel: 3, stride: 1, padding: 1, height: 6, width: 13, seed: 27, nans: 12)
    }

    func testMaxPoolOtherGeometries() {
        checkMaxPool(kernel: 2, stride: 2, padding: 0, height: 6, width: 7, seed: 3)
        checkMaxPool(kernel: 3, stride: 1, padding: 1, height: 5, width: 4, seed: 4)
        checkMaxPool(kernel: 3, stride: 3, padding: 0, height: 8, width: 7, seed: 5)
        checkMaxPool(kernel: 4, stride: 2, padding: 2, height: 6, width: 5, seed: 6)
        checkMaxPool(kernel: 1, stride: 2, padding: 0, height: 5, width: 5, seed: 7)
    }

    /// Ties go to the first maximum in row-major order; the padding (-inf)
    /// never wins even over very negative values.
    func testMaxPoolTiesAndPadding() {
        let pool = MaxPool2d(kernel: 3, stride: 2, padding: 1)
        let x = OwnedMap(channels: 1, batch: 1, height: 4, width: 4)
        x.map.data.update(repeating: -1e30, count: 16)
        x.map.data[5] = 2   // (1, 1)
        x.map.data[6] = 2   // (1, 2): ties with (1, 1) in the window of output (0, 1) and (1, 1)
        let y = pool.forward(x.map)
        XCTAssertEqual(Array(y.buffer), [2, 2, 2, 2])
        let dy = OwnedMap(channels: 1, batch: 1, height: 2, width: 2)
        dy.map.data.update(repeating: 1, count: 4)
        let dx = Array(pool.backward(dy.map).buffer)
        // (1, 2) lies only in the windows of outputs (0, 1) and (1, 1), and
        // (1, 1) comes before it in both: (1, 1) takes all four gradients.
        var expected = [Float](repeating: 0, count: 16)
        expected[5] = 4
        XCTAssertEqual(dx, expected)

        x.map.data.update(repeating: -1e30, count: 16)
        let corner = pool.forward(x.map)
        XCTAssertEqual(Array(corner.buffer), [-1e30, -1e30, -1e30, -1e30], "padding never wins")
    }

    /// Finite differences on values 0.05 apart (no two within 2 eps, so the
    /// arg-max does not move under the perturbation).
    func testMaxPoolGradient() {
        let pool = MaxPool2d(kernel: 3, stride: 2, padding: 1)
        var rng = SplitMix64(seed: 8)
        let x = OwnedMap(channels: 2, batch: 2, height: 7, width: 6)
        for (i, v) in rng.permutation(x.map.count).enumerated() { x.map.data[i] = Float(v) * 0.05 - 2 }
        let r = OwnedMap(like: pool.forward(x.map), random: &rng)
        let dx = Array(pool.backward(r.map).buffer)
        checkGradient("max-pool dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: 1e-2, tolerance: 1e-4) { weightedSum(pool.forward(x.map), r.map) }
    }

    // MARK: ReLU6

    func testReLU6() {
        let layer = ReLU6()
        var rng = SplitMix64(seed: 9)
        let x = OwnedMap(channels: 2, batch: 3, height: 4, width: 5, random: &rng, range: -3...9)
        let y = layer.forward(x.map)
        for i in 0..<x.map.count { XCTAssertEqual(y.data[i], min(max(x.map.data[i], 0), 6)) }
        XCTAssert(Array(y.buffer).contains(0) && Array(y.buffer).contains(6), "both clamps are exercised")
        let r = OwnedMap(like: y, random: &rng)
        let dx = Array(layer.backward(r.map).buffer)
        let eps: Float = 1e-2
        let nearKink = { (i: Int) in abs(x.map.data[i]) <= 2 * eps || abs(x.map.data[i] - 6) <= 2 * eps }
        checkGradient("relu6 dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { dx[$0] },
                      eps: eps, tolerance: 1e-4, skip: nearKink) { weightedSum(layer.forward(x.map), r.map) }
    }

    /// PyTorch's hardtanh backward: 0 at exactly 0 and 6, dy strictly inside.
    func testReLU6GradientAtTheBounds() {
        let layer = ReLU6()
        let x = OwnedMap(channels: 1, batch: 1, height: 1, width: 7)
        let values: [Float] = [-1, 0, 0.5, 3, 5.999, 6, 7]
        for (i, v) in values.enumerated() { x.map.data[i] = v }
        XCTAssertEqual(Array(layer.forward(x.map).buffer), [0, 0, 0.5, 3, 5.999, 6, 6])
        let dy = OwnedMap(channels: 1, batch: 1, height: 1, width: 7)
        dy.map.data.update(repeating: 2, count: 7)
        XCTAssertEqual(Array(layer.backward(dy.map).buffer), [0, 0, 2, 2, 2, 0, 0])
    }

    // MARK: Add

    func testAdd() {
        let add = Add()
        var rng = SplitMix64(seed: 10)
        let a = OwnedMap(channels: 2, batch: 2, height: 3, width: 4, random: &rng)
        let b = OwnedMap(like: a.map, random: &rng)
        let y = add.forward(a.map, b.map)
        for i in 0..<a.map.count { XCTAssertEqual(y.data[i], a.map.data[i] + b.map.data[i]) }
        let r = OwnedMap(like: y, random: &rng)
        let d = add.backward(r.map)
        XCTAssertEqual(Array(d.buffer), r.values, "the gradient of both terms is dy")
        let loss = { weightedSum(add.forward(a.map, b.map), r.map) }
        let dd = Array(d.buffer)
        checkGradient("add da", values: a.map.data, indices: Array(0..<a.map.count), analytic: { dd[$0] },
                      eps: 1e-2, tolerance: 1e-4, loss: loss)
        checkGradient("add db", values: b.map.data, indices: Array(0..<b.map.count), analytic: { dd[$0] },
                      eps: 1e-2, tolerance: 1e-4, loss: loss)
    }

    /// An inverted residual's join, y = x + f(x) with f = ReLU6: dL/dx is
    /// f's backward of dy plus dy, built with `accumulate`.
    func testResidualJoinWithAccumulate() {
        let add = Add(), f = ReLU6()
        var rng = SplitMix64(seed: 11)
        let x = OwnedMap(channels: 3, batch: 2, height: 3, width: 3, random: &rng, range: -2...8)
        let forward = { add.forward(x.map, f.forward(x.map)) }
        let r = OwnedMap(like: forward(), random: &rng)
        let dy = add.backward(r.map)
        let dx = f.backward(dy)
        accumulate(dy, into: dx)
        let gradient = Array(dx.buffer)
        let eps: Float = 1e-2
        let nearKink = { (i: Int) in abs(x.map.data[i]) <= 2 * eps || abs(x.map.data[i] - 6) <= 2 * eps }
        checkGradient("residual dx", values: x.map.data, indices: Array(0..<x.map.count), analytic: { gradient[$0] },
                      eps: eps, tolerance: 1e-4, skip: nearKink) { weightedSum(forward(), r.map) }
    }
}
