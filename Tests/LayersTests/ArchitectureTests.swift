import Kernels
import Layers
import XCTest

/// The torchvision families: parameter counts, names and shapes as
/// torchvision's models have them at 1000 classes and RGB input, and the
/// CIFAR ResNets' depths.
final class ArchitectureTests: XCTestCase {
    func network(_ architecture: Architecture, classes: Int = 1000, channels: Int = 3, width: Double = 1) -> Network {
        Network(ModelSpec(architecture: architecture, inputChannels: channels, classes: classes, widthMultiplier: width))
    }

    /// What `sum(p.numel() for p in model.parameters())` gives in PyTorch:
    /// conv and linear weights and biases, batch-norm scale and shift.
    func parameterCount(_ model: Network) -> Int {
        model.store.parameterLayout.slots.filter { [.weight, .bias, .normScale, .normShift].contains($0.role) }
            .map(\.count).reduce(0, +)
    }

    /// The keys of PyTorch's `state_dict()`: parameters, running statistics
    /// and `num_batches_tracked` (written by our checkpoints).
    func stateDictKeys(_ model: Network) -> Int {
        model.store.allSlots.filter { !$0.name.contains("_quantizer.") }.count + model.batchNorms.count
    }

    func assertShapes(_ model: Network, _ expected: [String: [Int]], file: StaticString = #filePath, line: UInt = #line) {
        let slots = Dictionary(uniqueKeysWithValues: model.store.allSlots.map { ($0.name, $0.shape) })
        for (name, shape) in expected {
            XCTAssertEqual(slots[name], shape, name, file: file, line: line)
        }
    }

    func testResNet18MatchesTorchvision() {
        let model = network(.resnet18)
        XCTAssertEqual(parameterCount(model), 11_689_512)
        XCTAssertEqual(stateDictKeys(model), 122)
        XCTAssertEqual(model.units.map(\.name), ["stem"] + (1...4).flatMap { s in (0..<2).map { "layer\(s).\($0)" } } + ["fc"])
        assertShapes(model, [
            "conv1.weight": [64, 3, 7, 7], "bn1.running_var": [64],
            "layer1.0.conv1.weight": [64, 64, 3, 3], "layer1.1.bn2.bias": [64],
            "layer2.0.conv1.weight": [128, 64, 3, 3], "layer2.0.downsample.0.weight": [128, 64, 1, 1],
            "layer2.0.downsample.1.running_mean": [128], "layer3.1.conv2.weight": [256, 256, 3, 3],
            "layer4.0.downsample.0.weight": [512, 256, 1, 1], "layer4.1.bn2.weight": [512],
            "fc.weight": [1000, 512], "fc.bias": [1000],
        ])
        XCTAssertNil(model.store.allSlots.first { $0.name == "layer1.0.downsample.0.weight" })
    }

    func testResNet50MatchesTorchvision() {
        let model = network(.resnet50)
        XCTAssertEqual(parameterCount(model), 25_557_032)
        XCTAssertEqual(stateDictKeys(model), 320)
        XCTAssertEqual(model.units.count, 1 + 3 + 4 + 6 + 3 + 1)
        assertShapes(model, [
            "conv1.weight": [64, 3, 7, 7],
            "layer1.0.conv1.weight": [64, 64, 1, 1], "layer1.0.conv2.weight": [64, 64, 3, 3],
            "layer1.0.conv3.weight": [256, 64, 1, 1], "layer1.0.bn3.weight": [256],
            "layer1.0.downsample.0.weight": [256, 64, 1, 1], "layer1.1.conv1.weight": [64, 256, 1, 1],
            "layer2.0.conv2.weight": [128, 128, 3, 3], "layer2.0.downsample.0.weight": [512, 256, 1, 1],
            "layer3.5.conv3.weight": [1024, 256, 1, 1], "layer4.2.bn3.running_var": [2048],
            "fc.weight": [1000, 2048],
        ])
        XCTAssertNil(model.store.allSlots.first { $0.name == "layer1.1.downsample.0.weight" })
    }

    func testMobileNetV2MatchesTorchvision() {
        let model = network(.mobilenetV2)
        XCTAssertEqual(parameterCount(model), 3_504_872)
        XCTAssertEqual(stateDictKeys(model), 314)
        XCTAssertEqual(model.units.map(\.name), (0...18).map { "features.\($0)" } + ["classifier.1"])
        assertShapes(model, [
            "features.0.0.weight": [32, 3, 3, 3], "features.0.1.running_mean": [32],
            // t = 1: depthwise, then the projection.
            "features.1.conv.0.0.weight": [32, 1, 3, 3], "features.1.conv.0.1.weight": [32],
            "features.1.conv.1.weight": [16, 32, 1, 1], "features.1.conv.2.bias": [16],
            // t = 6: expansion, depthwise, projection.
            "features.2.conv.0.0.weight": [96, 16, 1, 1], "features.2.conv.1.0.weight": [96, 1, 3, 3],
            "features.2.conv.2.weight": [24, 96, 1, 1], "features.2.conv.3.running_var": [24],
            "features.17.conv.2.weight": [320, 960, 1, 1],
            "features.18.0.weight": [1280, 320, 1, 1], "features.18.1.weight": [1280],
            "classifier.1.weight": [1000, 1280], "classifier.1.bias": [1000],
        ])
        let residual = model.units.compactMap { $0 as? InvertedResidual }.map(\.residual)
        XCTAssertEqual(residual, [false, false, true, false, true, true, false, true, true, true, false, true, true,
                                  false, true, true, false])
    }

    func testMobileNetV2WidthMultiplierRoundsAsTorchvision() {
        // _make_divisible: 32 * 0.5 = 16, 16 * 0.5 = 8, 1280 * max(1, 0.5) = 1280.
        let half = network(.mobilenetV2, width: 0.5)
        assertShapes(half, ["features.0.0.weight": [16, 3, 3, 3], "features.1.conv.1.weight": [8, 16, 1, 1],
                            "features.18.0.weight": [1280, 160, 1, 1]])
        // 0.35: 32 * 0.35 = 11.2 -> 16; 16 * 0.35 = 5.6 -> 8; 24 * 0.35 = 8.4 -> 8.
        let narrow = network(.mobilenetV2, width: 0.35)
        assertShapes(narrow, ["features.0.0.weight": [16, 3, 3, 3], "features.2.conv.2.weight": [8, 48, 1, 1]])
    }

    func testCIFARResNetDepths() {
        for (architecture, blocks) in [(Architecture.resnet8, 1), (.resnet20, 3), (.resnet32, 5), (.resnet44, 7),
                                       (.resnet56, 9)] {
            let model = network(architecture, classes: 10, channels: 3)
            XCTAssertEqual(model.units.count, 3 * blocks + 2, architecture.rawValue)
            // Convolutions and the classifier: 6n + 2 layers deep (plus 2 shortcuts).
            XCTAssertEqual(model.layers.count, 6 * blocks + 2 + 2, architecture.rawValue)
        }
    }

    /// Any input size: 28x28 (MNIST-like) and 32x32 give 1x1 maps before the
    /// pooling of an ImageNet ResNet, and the logits have the class count.
    func testImageNetFamiliesRunOnSmallImages() {
        for architecture in [Architecture.resnet18, .resnet50, .mobilenetV2] {
            for size in [28, 32] {
                let model = network(architecture, classes: 7, channels: 1, width: 0.25)
                model.initialize(seed: 1)
                var rng = SplitMix64(seed: 2)
                let images = OwnedMap(channels: 1, batch: 2, height: size, width: size, random: &rng)
                let logits = model.forward(images.map, training: false)
                XCTAssertEqual([logits.channels, logits.batch, logits.height, logits.width], [7, 2, 1, 1])
                XCTAssert((0..<logits.count).allSatisfy { logits.data[$0].isFinite }, architecture.rawValue)
            }
        }
    }

    /// zeroInitResidual zeroes the scale of exactly the last batch norm of
    /// every residual branch (BasicBlock bn2, Bottleneck bn3, the projection
    /// of an InvertedResidual with a shortcut), so a block with an identity
    /// shortcut passes its input on: relu(x) for the ResNets, x for MobileNetV2.
    func testZeroInitResidualStartsEveryBlockAsTheIdentity() {
        // Each with a block whose shortcut is the identity.
        for (architecture, zeroed, identityBlock) in [
            (Architecture.resnet8, ["layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"], "layer1.0"),
            (.resnet50, ["layer1.0.bn3", "layer4.2.bn3"], "layer1.1"),
            (.mobilenetV2, ["features.3.conv.3", "features.16.conv.3"], "features.3"),
        ] {
            let model = network(architecture, classes: 10, channels: 1, width: 0.25)
            model.initialize(seed: 1, zeroInitResidual: true)
            let scales = Dictionary(uniqueKeysWithValues: model.batchNorms.map { ($0.name, Array(model.store.parameters[$0.weight])) })
            let branchEnds = Set(model.units.compactMap(\.residualBranchNorm).map(\.name))
            for name in zeroed { XCTAssert(branchEnds.contains(name), "\(name) ends a residual branch") }
            XCTAssertFalse(branchEnds.contains("features.2.conv.3"), "no shortcut, no zeroed scale")
            for (name, scale) in scales {
                XCTAssertEqual(Set(scale), [branchEnds.contains(name) ? 0 : 1], name)
            }
            let block = model.units.first { $0.name == identityBlock }!
            let channels = block.convolutions[0].inChannels
            var rng = SplitMix64(seed: 3)
            let x = OwnedMap(channels: channels, batch: 2, height: 4, width: 4, random: &rng)
            let y = block.forward(x.map, training: false)
            for i in 0..<x.map.count {
                let input = x.map.data[i]
                XCTAssertEqual(y.data[i], architecture == .mobilenetV2 ? input : max(input, 0), accuracy: 1e-6,
                               "\(block.name)")
            }
        }
        // The default keeps torchvision's default: every scale 1.
        let model = network(.resnet8, classes: 10, channels: 1)
        model.initialize(seed: 1)
        XCTAssert(model.batchNorms.allSatisfy { Set(model.store.parameters[$0.weight]) == [1] })
    }
}
