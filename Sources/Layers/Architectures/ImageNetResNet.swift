import Kernels

/// torchvision's ImageNet ResNets: ResNet-18 (basic blocks, 2-2-2-2) and
/// ResNet-50 (bottlenecks, 3-4-6-3): a 7x7 stride-2 stem with a 3x3
/// stride-2 max-pool, four stages of 64, 128, 256 and 512 channels (times
/// 4 at a bottleneck's output; stride 2 at the start of every stage but
/// the first, on the 3x3 convolution as in torchvision), global average
/// pooling and `fc`. Any input size of at least 32x32 works; 28x28 too.
enum ImageNetResNet {
    enum Block { case basic, bottleneck }

    static func build(_ spec: ModelSpec, block: Block, blocksPerStage: [Int], store: ParameterStore,
                      workspace: Workspace) -> NetworkDefinition {
        let stemWidth = spec.scaled(64)
        let stem = ConvStem(name: "stem", [
            ConvNormActivation(conv: "conv1", norm: "bn1", inChannels: spec.inputChannels, outChannels: stemWidth,
                               kernel: 7, stride: 2, padding: 3, activation: .relu, store: store, workspace: workspace),
        ], pool: MaxPool2d(kernel: 3, stride: 2, padding: 1))
        var units: [any NetworkUnit] = [stem]
        var channels = stemWidth
        for (s, count) in blocksPerStage.enumerated() {
            let width = spec.scaled(64 << s)
            for b in 0..<count {
                let name = "layer\(s + 1).\(b)", stride = (s > 0 && b == 0) ? 2 : 1
                switch block {
                case .basic:
                    units.append(BasicBlock(name: name, inChannels: channels, outChannels: width, stride: stride,
                                            store: store, workspace: workspace))
                    channels = width
                case .bottleneck:
                    units.append(Bottleneck(name: name, inChannels: channels, width: width, stride: stride,
                                            store: store, workspace: workspace))
                    channels = width * Bottleneck.expansion
                }
            }
        }
        units.append(ClassifierHead(name: "fc", features: channels, classes: spec.classes, store: store,
                                    workspace: workspace))
        return NetworkDefinition(units: units)
    }
}
