import Kernels

/// The architectures `--arch` names, as torchvision (and the CIFAR ResNet
/// papers) call them. Each builds its units in its own file.
public enum Architecture: String, Codable, CaseIterable, Sendable {
    /// CIFAR-style: 3 stages of n basic blocks, depth 6n + 2 (resnet8:
    /// one block per stage, as MLPerf Tiny's; small and quick for tests).
    case resnet8, resnet20, resnet32, resnet44, resnet56
    case resnet18, resnet50
    case mobilenetV2 = "mobilenet_v2"

    func build(_ spec: ModelSpec, store: ParameterStore, workspace: Workspace) -> NetworkDefinition {
        switch self {
        case .resnet8, .resnet20, .resnet32, .resnet44, .resnet56:
            CIFARResNet.build(spec, blocksPerStage: (cifarDepth! - 2) / 6, store: store, workspace: workspace)
        case .resnet18:
            ImageNetResNet.build(spec, block: .basic, blocksPerStage: [2, 2, 2, 2], store: store, workspace: workspace)
        case .resnet50:
            ImageNetResNet.build(spec, block: .bottleneck, blocksPerStage: [3, 4, 6, 3], store: store,
                                 workspace: workspace)
        case .mobilenetV2:
            MobileNetV2.build(spec, store: store, workspace: workspace)
        }
    }

    /// 6n + 2 for a CIFAR-style ResNet, nil for the others.
    var cifarDepth: Int? {
        switch self {
        case .resnet8: 8
        case .resnet20: 20
        case .resnet32: 32
        case .resnet44: 44
        case .resnet56: 56
        default: nil
        }
    }
}

/// What a network is, apart from its weights: saved in every checkpoint,
/// so a file says which network it belongs to.
public struct ModelSpec: Codable, Equatable, Sendable, CustomStringConvertible {
    public var architecture: Architecture
    /// Image channels (1 for MNIST-like data, 3 for colour).
    public var inputChannels: Int
    public var classes: Int
    /// Scales every layer's channels (torchvision's `width_mult` for
    /// MobileNetV2; ResNets round each width to an integer).
    public var widthMultiplier: Double

    public init(architecture: Architecture, inputChannels: Int, classes: Int, widthMultiplier: Double = 1) {
        self.architecture = architecture
        self.inputChannels = inputChannels
        self.classes = classes
        self.widthMultiplier = widthMultiplier
    }

    /// A message for the first invalid setting, nil when all are valid.
    public var problem: String? {
        if inputChannels <= 0 { return "input channels must be positive, got \(inputChannels)" }
        if classes <= 0 { return "classes must be positive, got \(classes)" }
        if !(widthMultiplier > 0 && widthMultiplier <= 64) {
            return "width multiplier must be in (0, 64], got \(widthMultiplier)"
        }
        return nil
    }

    /// `resnet20`, or `resnet20 x0.5` with a width multiplier.
    public var description: String {
        architecture.rawValue + (widthMultiplier == 1 ? "" : " x\(widthMultiplier.formatted)")
    }

    /// The description with the input and output sizes, for messages.
    public var details: String { "\(description), \(inputChannels) input channel(s), \(classes) classes" }

    /// `width * widthMultiplier`, at least 1.
    func scaled(_ width: Int) -> Int { max(1, Int((Double(width) * widthMultiplier).rounded())) }
}

extension Double {
    /// 2 rather than 2.0; 0.5 as it is.
    var formatted: String { self == rounded() && abs(self) < 1e15 ? String(Int(self)) : String(self) }
}
