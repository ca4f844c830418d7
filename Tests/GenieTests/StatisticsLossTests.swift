import Genie
import Kernels
import Layers
import XCTest

/// Genie-D's loss on a small teacher: its value against a direct Double
/// computation, and its gradient with respect to the images against
/// finite differences through the whole network (eval-mode batch norm,
/// ReLUs, residual joins, swing crops, pooling).
final class StatisticsLossTests: XCTestCase {
    let swingOffsets: [(y: Int, x: Int)] = [(0, 2), (2, 1), (1, 0), (2, 2)]

    func makeLoss() -> (model: Network, loss: BatchNormStatisticsLoss) {
        let model = smallTeacher(seed: 1)
        let loss = BatchNormStatisticsLoss(teacher: model)
        XCTAssertEqual(loss.swings.count, 4, "layer2.0 and layer3.0: conv1 and the downsample are strided")
        for (swing, offset) in zip(loss.swings, swingOffsets) { swing.offset = offset }
        return (model, loss)
    }

    func testValueMatchesADirectComputation() {
        let (model, loss) = makeLoss()
        var rng = SplitMix64(seed: 2)
        let images = OwnedMap(channels: 1, batch: 4, height: 8, width: 8, random: &rng, range: -2...2)
        let value = loss.value(of: images.map)

        // The same network with its own observers, in Double.
        let reference = model.clone()
        for (layer, offset) in zip(reference.layers.filter { $0.stride != 1 }, swingOffsets) {
            layer.swing = ReflectPadCrop()
            layer.swing?.offset = offset
        }
        var expected: Double = 0
        for norm in reference.batchNorms {
            let runningMean = Array(model.store.state[norm.runningMean]).map(Double.init)
            let runningVar = Array(model.store.state[norm.runningVar]).map(Double.init)
            norm.inputObserver = { x in
                for c in 0..<x.channels {
                    let values = (0..<x.plane).map { Double(x.data[c * x.plane + $0]) }
                    let (mean, std) = meanAndUnbiasedStd(values)
                    let target = (runningVar[c] + 1e-6).squareRoot()
                    expected += ((mean - runningMean[c]) * (mean - runningMean[c]) + (std - target) * (std - target))
                        / Double(x.channels)
                }
            }
        }
        _ = reference.forward(images.map, training: false)
        XCTAssertEqual(value.batchNorm, expected, accuracy: 1e-5 * expected)

        var prior: Double = 0
        for plane in 0..<4 {
            let (mean, std) = meanAndUnbiasedStd((0..<64).map { Double(images.map.data[plane * 64 + $0]) })
            prior += (mean * mean + (std - 1) * (std - 1)) / 4
        }
        XCTAssertEqual(value.inputPrior, prior, accuracy: 1e-5 * prior)
        XCTAssertGreaterThan(value.batchNorm, 0.1, "the targets are far from these images' statistics")
    }

    func testGradientMatchesFiniteDifferences() {
        let (_, loss) = makeLoss()
        var rng = SplitMix64(seed: 3)
        let images = OwnedMap(channels: 1, batch: 3, height: 8, width: 8, random: &rng, range: -2...2)
        let gradient = Array(loss.valueAndGradient(of: images.map).gradient.buffer)
        let value = { loss.value(of: images.map).total }
        // Small steps: on a network this small, steps of 1e-2 cross enough
        // ReLU kinks to move the difference quotient by a few per cent.
        for d in 0..<4 {
            var directionRNG = SplitMix64(seed: 30 + UInt64(d))
            let direction = (0..<gradient.count).map { _ in 2 * directionRNG.nextUniform() - 1 }
            checkDirectionalDerivative("d loss / d images, direction \(d)", values: images.map.data, gradient: gradient,
                                       direction: direction, h: 1e-3, tolerance: 5e-3, loss: value)
        }
        let scale = Double(gradient.map(abs).max()!)
        checkCoordinates("d loss / d images", values: images.map.data, gradient: { gradient[$0] },
                         indices: Array(stride(from: 0, to: gradient.count, by: 5)), eps: 1e-3, tolerance: 2e-2,
                         floor: 1e-2 * scale, loss: value)
    }

    /// The loss and gradient of the same images do not depend on what ran before.
    func testRepeatedCallsAgree() {
        let (_, loss) = makeLoss()
        var rng = SplitMix64(seed: 4)
        let images = OwnedMap(channels: 1, batch: 3, height: 8, width: 8, random: &rng, range: -2...2)
        let (first, g1) = loss.valueAndGradient(of: images.map)
        let firstGradient = Array(g1.buffer)
        _ = loss.value(of: images.map)
        let (second, g2) = loss.valueAndGradient(of: images.map)
        XCTAssertEqual(first, second)
        XCTAssertEqual(firstGradient, Array(g2.buffer))
    }
}

private func meanAndUnbiasedStd(_ values: [Double]) -> (Double, Double) {
    let mean = values.reduce(0, +) / Double(values.count)
    let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count - 1)
    return (mean, variance.squareRoot())
}
