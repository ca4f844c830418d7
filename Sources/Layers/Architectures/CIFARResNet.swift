import Kernels

/// The CIFAR-style ResNet of He et al. (ResNet-20/32/44/56): a 3x3 stem,
/// three stages of n basic blocks with 16, 32 and 64 channels (stride 2 at
/// the start of every stage but the first), global average pooling and a
/// linear classifier; depth 6n + 2. Names follow torchvision's ResNet
/// (`conv1`, `layer2.0.downsample.1`, `fc`), with a 1x1 conv + BN shortcut
/// where the shape changes (option B).
enum CIFARResNet {
    static func build(_ spec: ModelSpec, blocksPerStage: Int, store: ParameterStore,
                      workspace: Workspace) -> NetworkDefinition {
        let widths = [16, 32, 64].map(spec.scaled)
        let stem = ConvStem(name: "stem", [
            ConvNormActivation(conv: "conv1", norm: "bn1", inChannels: spec.inputChannels, outChannels: widths[0],
                               kernel: 3, padding: 1, activation: .relu, store: store, workspace: workspace),
        ])
        var units: [any NetworkUnit] = [stem]
        var channels = widths[0]
        for (s, width) in widths.enumerated() {
            for b in 0..<blocksPerStage {
                units.append(BasicBlock(name: "layer\(s + 1).\(b)", inChannels: channels, outChannels: width,
                                        stride: (s > 0 && b == 0) ? 2 : 1, store: store, workspace: workspace))
                channels = width
            }
        }
        units.append(ClassifierHead(name: "fc", features: channels, classes: spec.classes, store: store,
                                    workspace: workspace))
        return NetworkDefinition(units: units)
    }
}
