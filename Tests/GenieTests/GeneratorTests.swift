import Genie
import Kernels
import Layers
import XCTest

/// The generator's backward against finite differences of L = sum(images * r).
final class GeneratorTests: XCTestCase {
    func testShapesAndStandardisedOutput() {
        let generator = Generator(channels: 3, height: 12, width: 8)
        generator.initialize(seed: 1)
        var rng = SplitMix64(seed: 1)
        let z = OwnedMap(channels: Generator.latentDimension, batch: 4, height: 1, width: 1, random: &rng, range: -2...2)
        let images = generator.forward(z.map)
        XCTAssertEqual([images.channels, images.batch, images.height, images.width], [3, 4, 12, 8])
        // The last batch norm has no affine parameters: every channel has mean 0 and variance 1.
        for c in 0..<3 {
            let values = (0..<images.plane).map { Double(images.data[c * images.plane + $0]) }
            let mean = values.reduce(0, +) / Double(values.count)
            let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
            XCTAssertEqual(mean, 0, accuracy: 1e-5)
            XCTAssertEqual(variance, 1, accuracy: 1e-3)
        }
    }

    func testBackwardMatchesFiniteDifferences() {
        let generator = Generator(channels: 1, height: 8, width: 8)
        generator.initialize(seed: 2)
        let store = generator.store
        var rng = SplitMix64(seed: 2)
        // Batch-norm scales and shifts away from 1 and 0, so their gradients matter.
        for slot in store.parameterLayout.slots where slot.role == .normScale || slot.role == .normShift {
            guard !slot.name.hasPrefix("conv_layers.8") else { continue }
            fillUniform(store.parameters[slot], &rng, range: slot.role == .normScale ? 0.5...1.5 : -0.5...0.5)
        }
        let z = OwnedMap(channels: Generator.latentDimension, batch: 3, height: 1, width: 1, random: &rng, range: -2...2)
        let r = OwnedMap(channels: 1, batch: 3, height: 8, width: 8, random: &rng, range: -1...1)
        _ = generator.forward(z.map)
        store.gradients.zero()
        let dz = Array(generator.backward(r.map).buffer)
        let gradients = Array(store.gradients.all)
        let loss = { weightedSum(generator.forward(z.map), r.map) }

        // Small steps: larger ones cross too many LeakyReLU kinks of this
        // tiny batch. The floor covers the Float rounding of L over 2 * eps.
        let (eps, noise): (Float, Double) = (1e-3, 5e-3)
        checkCoordinates("dz", values: z.map.data, gradient: { dz[$0] }, indices: Array(stride(from: 0, to: dz.count, by: 37)),
                         eps: eps, tolerance: 2e-2, floor: noise, loss: loss)
        var checked: [String] = []
        for slot in store.parameterLayout.slots {
            let g = gradients[slot.range]
            // The last batch norm has no affine parameters, and quantizers are off.
            if slot.name.hasPrefix("conv_layers.8") || !(slot.role == .weight || slot.role == .bias
                                                          || slot.role == .normScale || slot.role == .normShift) {
                XCTAssert(g.allSatisfy { $0 == 0 }, "\(slot.name) has a gradient")
                continue
            }
            let indices = Array(stride(from: 0, to: slot.count, by: max(1, slot.count / 12)))
            checkCoordinates(slot.name, values: store.parameters.pointer(slot), gradient: { g[slot.offset + $0] },
                             indices: indices, eps: eps, tolerance: 2e-2, floor: noise, loss: loss)
            checked.append(slot.name)
        }
        XCTAssertEqual(checked, [
            "linear.weight", "linear.bias", "conv_layers.0.weight", "conv_layers.0.bias",
            "conv_layers.2.weight", "conv_layers.2.bias", "conv_layers.3.weight", "conv_layers.3.bias",
            "conv_layers.6.weight", "conv_layers.6.bias",
        ])
    }

    func testInitializationDependsOnlyOnTheSeed() {
        let a = Generator(channels: 1, height: 8, width: 8), b = Generator(channels: 1, height: 8, width: 8)
        a.initialize(seed: 5)
        b.initialize(seed: 9)
        b.initialize(seed: 5)
        XCTAssertEqual(Array(a.store.parameters.all), Array(b.store.parameters.all))
        let bound = 1 / Float(256).squareRoot()
        let linear = a.store.parameterLayout.slot(named: "linear.weight")!
        XCTAssert(a.store.parameters[linear].allSatisfy { abs($0) <= bound })
    }
}
