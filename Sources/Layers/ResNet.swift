import Kernels

/// The residual block of ResNet-18/20 (torchvision's BasicBlock):
/// out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), where the
/// shortcut is a 1x1 conv + BN ("downsample") when the shape changes.
public final class BasicBlock {
    public let name: String
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    public let downsample: (conv: Conv2d, norm: BatchNorm2d)?
    private let relu1 = ReLU()
    private let join = AddReLU()

    init(name: String, inChannels: Int, outChannels: Int, stride: Int,
         store: ParameterStore, workspace: Workspace) {
        self.name = name
        conv1 = Conv2d(name: "\(name).conv1", inChannels: inChannels, outChannels: outChannels,
                       kernel: 3, stride: stride, padding: 1, store: store, workspace: workspace)
        bn1 = BatchNorm2d(name: "\(name).bn1", channels: outChannels, store: store)
        conv2 = Conv2d(name: "\(name).conv2", inChannels: outChannels, outChannels: outChannels,
                       kernel: 3, stride: 1, padding: 1, store: store, workspace: workspace)
        bn2 = BatchNorm2d(name: "\(name).bn2", channels: outChannels, store: store)
        if stride != 1 || inChannels != outChannels {
            downsample = (
                Conv2d(name: "\(name).downsample.0", inChannels: inChannels, outChannels: outChannels,
                       kernel: 1, stride: stride, store: store, workspace: workspace),
                BatchNorm2d(name: "\(name).downsample.1", channels: outChannels, store: store)
            )
        } else {
            downsample = nil
        }
    }

    public var convolutions: [Conv2d] { [conv1, conv2] + (downsample.map { [$0.conv] } ?? []) }
    public var batchNorms: [BatchNorm2d] { [bn1, bn2] + (downsample.map { [$0.norm] } ?? []) }
    /// The slots whose gradients `backward` adds to.
    public var trainableSlots: [ParameterSlot] {
        convolutions.flatMap(\.trainableSlots) + batchNorms.flatMap(\.trainableSlots)
    }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        let h = relu1.forward(bn1.forward(conv1.forward(x), training: training))
        let main = bn2.forward(conv2.forward(h), training: training)
        let shortcut = downsample.map { $0.norm.forward($0.conv.forward(x), training: training) } ?? x
        return join.forward(main, shortcut)
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        let dSum = join.backward(dy)
        let dh = relu1.backward(conv2.backward(bn2.backward(dSum)))
        let dx = conv1.backward(bn1.backward(dh))
        let dShortcut = downsample.map { $0.conv.backward($0.norm.backward(dSum)) } ?? dSum
        for i in 0..<dx.count { dx.data[i] += dShortcut.data[i] }
        return dx
    }
}

/// The shape of a CIFAR-style ResNet: a 3x3 stem, stages of basic blocks
/// (stride 2 at the start of every stage but the first), global average
/// pooling and a linear classifier.
public struct ResNetConfig: Sendable, Equatable, Codable {
    public var inputChannels: Int
    public var classes: Int
    public var widths: [Int]
    public var blocksPerStage: Int

    /// ResNet-20: 3 stages of 3 blocks, 16/32/64 channels.
    public static func resnet20(inputChannels: Int = 1, classes: Int = 10, widthMultiplier: Int = 1) -> ResNetConfig {
        ResNetConfig(inputChannels: inputChannels, classes: classes,
                     widths: [16, 32, 64].map { $0 * widthMultiplier }, blocksPerStage: 3)
    }

    public init(inputChannels: Int, classes: Int, widths: [Int], blocksPerStage: Int) {
        self.inputChannels = inputChannels
        self.classes = classes
        self.widths = widths
        self.blocksPerStage = blocksPerStage
    }

    public var depth: Int { 6 * blocksPerStage + 2 }
}

/// A CIFAR-style ResNet with torchvision's parameter names and layouts
/// (`conv1.weight`, `layer2.0.downsample.1.running_var`, `fc.bias`, ...).
public final class ResNet {
    public let config: ResNetConfig
    public let store: ParameterStore
    public let workspace: Workspace
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let stages: [[BasicBlock]]
    public let fc: Conv2d
    private let relu = ReLU()
    private let pool = GlobalAveragePool()

    public init(_ config: ResNetConfig) {
        self.config = config
        let store = ParameterStore(), workspace = Workspace()
        self.store = store
        self.workspace = workspace
        let stem = config.widths[0]
        conv1 = Conv2d(name: "conv1", inChannels: config.inputChannels, outChannels: stem, kernel: 3,
                       padding: 1, store: store, workspace: workspace)
        conv1.needsInputGradient = false
        bn1 = BatchNorm2d(name: "bn1", channels: stem, store: store)
        var stages: [[BasicBlock]] = []
        var channels = stem
        for (s, width) in config.widths.enumerated() {
            stages.append((0..<config.blocksPerStage).map { b in
                let block = BasicBlock(name: "layer\(s + 1).\(b)", inChannels: channels, outChannels: width,
                                       stride: (s > 0 && b == 0) ? 2 : 1, store: store, workspace: workspace)
                channels = width
                return block
            })
        }
        self.stages = stages
        fc = Conv2d.linear(name: "fc", inFeatures: channels, outFeatures: config.classes,
                           store: store, workspace: workspace)
        store.allocate()
    }

    public var blocks: [BasicBlock] { stages.flatMap { $0 } }
    /// Every conv and linear layer, in forward order.
    public var layers: [Conv2d] { [conv1] + blocks.flatMap(\.convolutions) + [fc] }
    public var batchNorms: [BatchNorm2d] { [bn1] + blocks.flatMap(\.batchNorms) }

    /// torchvision's initialisation: Kaiming-normal (fan-out, ReLU) conv
    /// weights, BN gamma 1 and beta 0, and PyTorch's default uniform
    /// +-1/sqrt(fan_in) for the classifier. Each tensor draws from its own
    /// stream of `seed`, so the result depends on nothing else.
    public func initialize(seed: UInt64) {
        store.parameters.zero()
        store.state.zero()
        for (index, layer) in layers.enumerated() {
            var rng = SplitMix64(seed: seed, stream: [0x494E_4954, UInt64(index)])
            let w = store.parameters[layer.weight]
            if layer === fc {
                let bound = 1 / Float(layer.inChannels).squareRoot()
                for i in w.indices { w[i] = (2 * rng.nextUniform() - 1) * bound }
                if let b = layer.bias {
                    for i in store.parameters[b].indices { store.parameters[b][i] = (2 * rng.nextUniform() - 1) * bound }
                }
            } else {
                let std = (2 / Float(layer.outChannels * layer.kernel * layer.kernel)).squareRoot()
                for i in w.indices { w[i] = rng.nextNormal() * std }
            }
        }
        for norm in batchNorms { norm.reset() }
    }

    /// Images in CNHW layout -> logits [classes, N].
    public func forward(_ images: FeatureMap, training: Bool) -> FeatureMap {
        var x = relu.forward(bn1.forward(conv1.forward(images), training: training))
        for block in blocks { x = block.forward(x, training: training) }
        return fc.forward(pool.forward(x))
    }

    /// Adds every parameter's gradient into `store.gradients` and returns
    /// dL/d(images), which is computed only when `conv1.needsInputGradient`
    /// is set (Genie-D optimises the images; training does not need them).
    ///
    /// `finished`, when given, is told each time the pass is done with a
    /// part's parameters, with that part's trainable slots: the head, then
    /// every block from the last, then the stem. A data-parallel trainer
    /// starts reducing those gradients while the pass goes on.
    @discardableResult
    public func backward(_ dLogits: FeatureMap, finished: (([ParameterSlot]) -> Void)? = nil) -> FeatureMap {
        var d = pool.backward(fc.backward(dLogits))
        finished?(fc.trainableSlots)
        for block in blocks.reversed() {
            d = block.backward(d)
            finished?(block.trainableSlots)
        }
        let dImages = conv1.backward(bn1.backward(relu.backward(d)))
        finished?(conv1.trainableSlots + bn1.trainableSlots)
        return dImages
    }

    public func commitRunningStatistics() {
        for norm in batchNorms { norm.commitRunningStatistics() }
    }
}
