import Kernels
import Layers
import XCTest

/// ResNet-20's tensors follow torchvision's names, shapes and order, so
/// checkpoints load in PyTorch.
final class ResNetStructureTests: XCTestCase {
    let model = Network(ModelSpec(architecture: .resnet20, inputChannels: 1, classes: 10))

    func testTorchvisionNamesAndShapes() {
        let expected: [(String, [Int], TensorRole)] = [
            ("conv1.weight", [16, 1, 3, 3], .weight),
            ("bn1.weight", [16], .normScale),
            ("bn1.running_var", [16], .runningVar),
            ("layer1.0.conv1.weight", [16, 16, 3, 3], .weight),
            ("layer1.2.bn1.running_mean", [16], .runningMean),
            ("layer2.0.conv1.weight", [32, 16, 3, 3], .weight),
            ("layer2.0.conv2.weight", [32, 32, 3, 3], .weight),
            ("layer2.0.downsample.0.weight", [32, 16, 1, 1], .weight),
            ("layer2.0.downsample.1.weight", [32], .normScale),
            ("layer2.0.downsample.1.running_var", [32], .runningVar),
            ("layer3.0.downsample.0.weight", [64, 32, 1, 1], .weight),
            ("layer3.2.bn2.bias", [64], .normShift),
            ("fc.weight", [10, 64], .weight),
            ("fc.bias", [10], .bias),
            ("conv1.weight_quantizer.step", [16], .weightStep),
            ("layer2.1.conv2.input_quantizer.step", [1], .activationStep),
            ("layer2.1.conv2.input_quantizer.zero_point", [1], .zeroPoint),
        ]
        for (name, shape, role) in expected {
            let s = slot(model.store, name)
            XCTAssertEqual(s.shape, shape, name)
            XCTAssertEqual(s.role, role, name)
        }
        let names = Set(model.store.allSlots.map(\.name))
        for absent in ["layer1.0.downsample.0.weight", "layer2.1.downsample.0.weight", "conv1.bias", "layer4.0.conv1.weight"] {
            XCTAssertFalse(names.contains(absent), absent)
        }
        XCTAssertEqual(names.count, model.store.allSlots.count, "names are unique")
    }

    func testTorchvisionParameterOrder() {
        let order = model.store.parameterLayout.slots
            .filter { [.weight, .bias, .normScale, .normShift].contains($0.role) && $0.name.hasPrefix("layer2.0.") }
            .map(\.name)
        XCTAssertEqual(order, [
            "layer2.0.conv1.weight", "layer2.0.bn1.weight", "layer2.0.bn1.bias",
            "layer2.0.conv2.weight", "layer2.0.bn2.weight", "layer2.0.bn2.bias",
            "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "layer2.0.downsample.1.bias",
        ])
    }

    /// `backward`'s `finished` callback names every trainable slot exactly
    /// once, after the pass has stopped adding to its gradient, the head
    /// first and the stem last: what the overlapped all-reduce relies on.
    func testBackwardReportsEverySlotOnceWhenItsGradientIsFinal() {
        let model = tinyResNet()
        var rng = SplitMix64(seed: 4)
        let images = OwnedMap(channels: 1, batch: 3, height: 8, width: 8, random: &rng)
        let dLogits = OwnedMap(like: model.forward(images.map, training: true), random: &rng)
        model.store.gradients.zero()
        var reported: [(slot: ParameterSlot, gradient: [Float])] = []
        model.backward(dLogits.map) { slots in
            for slot in slots { reported.append((slot, Array(model.store.gradients[slot]))) }
        }
        XCTAssertEqual(reported.map(\.slot.name).sorted(), model.store.parameterLayout.slots.map(\.name).sorted())
        XCTAssertEqual(reported.first?.slot.name, "fc.weight")
        XCTAssertEqual(reported.last?.slot.name, "bn1.bias")
        for (slot, gradient) in reported {
            XCTAssertEqual(gradient, Array(model.store.gradients[slot]), "\(slot.name) changed after it was reported")
        }
        XCTAssertGreaterThan(reported.filter { $0.gradient.contains { $0 != 0 } }.count, reported.count / 2)
    }

    func testLayerInventory() {
        XCTAssertEqual(model.units.map(\.name).first, "stem")
        XCTAssertEqual(model.units.count, 1 + 9 + 1, "stem, nine blocks, head")
        XCTAssertEqual(model.layers.count, 1 + 9 * 2 + 2 + 1, "stem, two convs per block, two downsamples, fc")
        XCTAssertEqual(model.batchNorms.count, 1 + 9 * 2 + 2)
        XCTAssertEqual(model.layers.first?.name, "conv1")
        XCTAssertEqual(model.layers.last?.name, "fc")
        XCTAssertFalse(model.layer("conv1").needsInputGradient, "nothing upstream of the first layer needs dL/dx")
        XCTAssert(model.layers.dropFirst().allSatisfy(\.needsInputGradient))
        XCTAssertEqual(model.blocks.map { $0.downsample != nil }, [false, false, false, true, false, false, true, false, false])
    }

    /// ResNet-20 with conv (option B) shortcuts:
    ///   stem      conv 1*16*9 = 144,            bn 32
    ///   stage 1   6 convs 16*16*9 = 6 * 2304,   6 bn * 32
    ///   stage 2   conv 16->32 4608, 5 convs 32*32*9 = 5 * 9216, downsample 512, 7 bn * 64
    ///   stage 3   conv 32->64 18432, 5 convs 64*64*9 = 5 * 36864, downsample 2048, 7 bn * 128
    ///   fc        64*10 + 10
    /// = 272,186 for one input channel; 272,474 (the paper's 0.27M) for RGB.
    func testResNet20ParameterCount() {
        func trainedCount(_ m: Network) -> (weights: Int, all: Int) {
            let slots = m.store.parameterLayout.slots
            let weights = slots.filter { $0.role == .weight }.map(\.count).reduce(0, +)
            let all = slots.filter { [.weight, .bias, .normScale, .normShift].contains($0.role) }.map(\.count).reduce(0, +)
            return (weights, all)
        }
        let stem = 144, stage1 = 6 * 2304, stage2 = 4608 + 5 * 9216 + 512, stage3 = 18432 + 5 * 36864 + 2048
        let expectedWeights = stem + stage1 + stage2 + stage3 + 640
        let expectedNorm = 32 + 6 * 32 + 7 * 64 + 7 * 128
        let gray = trainedCount(model)
        XCTAssertEqual(gray.weights, expectedWeights)
        XCTAssertEqual(gray.all, expectedWeights + expectedNorm + 10)
        XCTAssertEqual(gray.all, 272_186)
        XCTAssertEqual(trainedCount(Network(ModelSpec(architecture: .resnet20, inputChannels: 3, classes: 10))).all, 272_474)
        // Running mean and variance: as many values as gamma and beta.
        let state = model.store.stateLayout.slots.filter { $0.role == .runningMean || $0.role == .runningVar }
        XCTAssertEqual(state.map(\.count).reduce(0, +), expectedNorm)
    }

    func testInitializationIsDeterministicAndTorchvisionLike() {
        let spec = ModelSpec(architecture: .resnet20, inputChannels: 1, classes: 10)
        let a = Network(spec), b = Network(spec), c = Network(spec)
        a.initialize(seed: 5)
        b.initialize(seed: 5)
        c.initialize(seed: 6)
        XCTAssertEqual(Array(a.store.parameters.all), Array(b.store.parameters.all))
        XCTAssertEqual(Array(a.store.state.all), Array(b.store.state.all))
        XCTAssertNotEqual(Array(a.store.parameters.all), Array(c.store.parameters.all))
        let store = a.store
        XCTAssert(a.batchNorms.allSatisfy { store.parameters[$0.weight].allSatisfy { $0 == 1 } })
        XCTAssert(a.batchNorms.allSatisfy { store.state[$0.runningVar].allSatisfy { $0 == 1 } })
        // Kaiming normal, fan-out: std sqrt(2 / (64 * 9)) for layer3's 64-channel convs.
        let w = store.parameters[slot(store, "layer3.1.conv1.weight")]
        let std = (w.map { Double($0) * Double($0) }.reduce(0, +) / Double(w.count)).squareRoot()
        XCTAssertEqual(std, (2.0 / (64 * 9)).squareRoot(), accuracy: 0.005)
        // The classifier: uniform within +-1/sqrt(64).
        XCTAssert(store.parameters[a.layer("fc").weight].allSatisfy { abs($0) <= 0.125 })
    }
}
