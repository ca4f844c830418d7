import Kernels

// The units networks are made of. Each runs its layers in an explicit
// forward and backward; names follow the PyTorch modules they mirror.

/// The nonlinearity after a convolution and its batch norm.
public enum Activation: Sendable {
    case relu
    /// min(max(x, 0), 6): MobileNetV2's.
    case relu6

    func make() -> ActivationLayer {
        switch self {
        case .relu: .relu(ReLU())
        case .relu6: .relu6(ReLU6())
        }
    }
}

/// An activation layer of either kind, called without dynamic dispatch.
enum ActivationLayer {
    case relu(ReLU)
    case relu6(ReLU6)

    func forward(_ x: FeatureMap) -> FeatureMap {
        switch self {
        case .relu(let layer): layer.forward(x)
        case .relu6(let layer): layer.forward(x)
        }
    }

    func backward(_ dy: FeatureMap) -> FeatureMap {
        switch self {
        case .relu(let layer): layer.backward(dy)
        case .relu6(let layer): layer.backward(dy)
        }
    }
}

/// conv -> batch norm -> optional activation, the building brick of every
/// CNN here (torchvision's Conv2dNormActivation).
public final class ConvNormActivation {
    public let conv: Conv2d
    public let norm: BatchNorm2d
    private let activation: ActivationLayer?

    /// `conv` and `norm` are the two layers' full names.
    public init(conv: String, norm: String, inChannels: Int, outChannels: Int, kernel: Int, stride: Int = 1,
                padding: Int = 0, groups: Int = 1, activation: Activation?, store: ParameterStore,
                workspace: Workspace) {
        self.conv = Conv2d(name: conv, inChannels: inChannels, outChannels: outChannels, kernel: kernel,
                           stride: stride, padding: padding, groups: groups, store: store, workspace: workspace)
        self.norm = BatchNorm2d(name: norm, channels: outChannels, store: store)
        self.activation = activation?.make()
    }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        let y = norm.forward(conv.forward(x), training: training)
        return activation?.forward(y) ?? y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        conv.backward(norm.backward(activation?.backward(dy) ?? dy))
    }
}

extension Array where Element == ConvNormActivation {
    /// The bricks one after another.
    func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        reduce(x) { $1.forward($0, training: training) }
    }

    /// Their backward passes, last brick first.
    func backward(_ dy: FeatureMap) -> FeatureMap {
        reversed().reduce(dy) { $1.backward($0) }
    }
}

/// A chain of conv-BN-activation bricks without a shortcut, optionally
/// followed by a max-pool: a network's stem, or MobileNetV2's last 1x1
/// convolution.
public final class ConvStem: NetworkUnit {
    public let name: String
    public let parts: [ConvNormActivation]
    public let pool: MaxPool2d?

    public init(name: String, _ parts: [ConvNormActivation], pool: MaxPool2d? = nil) {
        precondition(!parts.isEmpty, "\(name): a stem needs a convolution")
        self.name = name
        self.parts = parts
        self.pool = pool
    }

    public var convolutions: [Conv2d] { parts.map(\.conv) }
    public var batchNorms: [BatchNorm2d] { parts.map(\.norm) }
    public var inputLayers: [Conv2d] { [parts[0].conv] }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        let y = parts.forward(x, training: training)
        return pool?.forward(y) ?? y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap { parts.backward(pool?.backward(dy) ?? dy) }
}

/// The residual block of ResNet-18/20 (torchvision's BasicBlock):
/// out = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), where the
/// shortcut is a 1x1 conv + BN ("downsample") when the shape changes.
public final class BasicBlock: NetworkUnit {
    public let name: String
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    public let downsample: (conv: Conv2d, norm: BatchNorm2d)?
    private let relu1 = ReLU()
    private let join = AddReLU()

    public init(name: String, inChannels: Int, outChannels: Int, stride: Int,
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
    public var residualBranchNorm: BatchNorm2d? { bn2 }
    public var inputLayers: [Conv2d] { [conv1] + (downsample.map { [$0.conv] } ?? []) }

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

/// torchvision's Bottleneck (ResNet-50): 1x1 reduce, 3x3 (carrying the
/// stride), 1x1 expand to 4x the width, each with batch norm, and
/// out = relu(main + shortcut(x)) with a 1x1 conv + BN shortcut
/// ("downsample") when the shape changes.
public final class Bottleneck: NetworkUnit {
    public static let expansion = 4
    public let name: String
    public let reduce: ConvNormActivation
    public let spatial: ConvNormActivation
    public let expand: ConvNormActivation
    public let downsample: (conv: Conv2d, norm: BatchNorm2d)?
    private let join = AddReLU()

    public init(name: String, inChannels: Int, width: Int, stride: Int, store: ParameterStore, workspace: Workspace) {
        self.name = name
        let out = width * Self.expansion
        reduce = ConvNormActivation(conv: "\(name).conv1", norm: "\(name).bn1", inChannels: inChannels,
                                    outChannels: width, kernel: 1, activation: .relu, store: store, workspace: workspace)
        spatial = ConvNormActivation(conv: "\(name).conv2", norm: "\(name).bn2", inChannels: width, outChannels: width,
                                     kernel: 3, stride: stride, padding: 1, activation: .relu, store: store,
                                     workspace: workspace)
        expand = ConvNormActivation(conv: "\(name).conv3", norm: "\(name).bn3", inChannels: width, outChannels: out,
                                    kernel: 1, activation: nil, store: store, workspace: workspace)
        if stride != 1 || inChannels != out {
            downsample = (
                Conv2d(name: "\(name).downsample.0", inChannels: inChannels, outChannels: out, kernel: 1,
                       stride: stride, store: store, workspace: workspace),
                BatchNorm2d(name: "\(name).downsample.1", channels: out, store: store)
            )
        } else {
            downsample = nil
        }
    }

    public var convolutions: [Conv2d] { [reduce.conv, spatial.conv, expand.conv] + (downsample.map { [$0.conv] } ?? []) }
    public var batchNorms: [BatchNorm2d] { [reduce.norm, spatial.norm, expand.norm] + (downsample.map { [$0.norm] } ?? []) }
    public var residualBranchNorm: BatchNorm2d? { expand.norm }
    public var inputLayers: [Conv2d] { [reduce.conv] + (downsample.map { [$0.conv] } ?? []) }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        let h = spatial.forward(reduce.forward(x, training: training), training: training)
        let main = expand.forward(h, training: training)
        let shortcut = downsample.map { $0.norm.forward($0.conv.forward(x), training: training) } ?? x
        return join.forward(main, shortcut)
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        let dSum = join.backward(dy)
        let dx = reduce.backward(spatial.backward(expand.backward(dSum)))
        let dShortcut = downsample.map { $0.conv.backward($0.norm.backward(dSum)) } ?? dSum
        accumulate(dShortcut, into: dx)
        return dx
    }
}

/// MobileNetV2's inverted residual (torchvision's InvertedResidual): an
/// optional 1x1 expansion to t times the channels, a 3x3 depthwise
/// convolution (carrying the stride), both with BN and ReLU6, then a linear
/// 1x1 projection with BN; out = x + that when the stride is 1 and the
/// channels match, with no activation after the sum. Layers are named as
/// torchvision's `conv` Sequential: `conv.0.0` ... `conv.2`/`conv.3`.
public final class InvertedResidual: NetworkUnit {
    public let name: String
    /// Expansion (when t > 1), depthwise, projection.
    public let parts: [ConvNormActivation]
    public let residual: Bool
    private let join = Add()

    public init(name: String, inChannels: Int, outChannels: Int, stride: Int, expansion: Int,
                store: ParameterStore, workspace: Workspace) {
        self.name = name
        let hidden = inChannels * expansion
        var parts: [ConvNormActivation] = []
        if expansion != 1 {
            parts.append(ConvNormActivation(conv: "\(name).conv.0.0", norm: "\(name).conv.0.1", inChannels: inChannels,
                                            outChannels: hidden, kernel: 1, activation: .relu6, store: store,
                                            workspace: workspace))
        }
        let d = parts.count
        parts.append(ConvNormActivation(conv: "\(name).conv.\(d).0", norm: "\(name).conv.\(d).1", inChannels: hidden,
                                        outChannels: hidden, kernel: 3, stride: stride, padding: 1, groups: hidden,
                                        activation: .relu6, store: store, workspace: workspace))
        parts.append(ConvNormActivation(conv: "\(name).conv.\(d + 1)", norm: "\(name).conv.\(d + 2)", inChannels: hidden,
                                        outChannels: outChannels, kernel: 1, activation: nil, store: store,
                                        workspace: workspace))
        self.parts = parts
        residual = stride == 1 && inChannels == outChannels
    }

    public var convolutions: [Conv2d] { parts.map(\.conv) }
    public var batchNorms: [BatchNorm2d] { parts.map(\.norm) }
    public var residualBranchNorm: BatchNorm2d? { residual ? parts.last!.norm : nil }
    public var inputLayers: [Conv2d] { [parts[0].conv] }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap {
        let y = parts.forward(x, training: training)
        return residual ? join.forward(y, x) : y
    }

    public func backward(_ dy: FeatureMap) -> FeatureMap {
        let dx = parts.backward(residual ? join.backward(dy) : dy)
        if residual { accumulate(dy, into: dx) }
        return dx
    }
}

/// Global average pooling and a linear classifier: [C, N, H, W] -> logits
/// [classes, N, 1, 1]. Named after its linear layer (`fc`).
public final class ClassifierHead: NetworkUnit {
    public let name: String
    public let fc: Conv2d
    private let pool = GlobalAveragePool()

    public init(name: String, features: Int, classes: Int, store: ParameterStore, workspace: Workspace) {
        self.name = name
        fc = Conv2d.linear(name: name, inFeatures: features, outFeatures: classes, store: store, workspace: workspace)
    }

    public var convolutions: [Conv2d] { [fc] }
    public var batchNorms: [BatchNorm2d] { [] }
    public var inputLayers: [Conv2d] { [fc] }

    public func forward(_ x: FeatureMap, training: Bool) -> FeatureMap { fc.forward(pool.forward(x)) }

    public func backward(_ dy: FeatureMap) -> FeatureMap { pool.backward(fc.backward(dy)) }
}
