import Kernels

/// One named part of a network: a stem, a residual block, a classifier.
/// Units are the grain of block reconstruction (each is reconstructed on
/// its own) and of the overlapped all-reduce (the backward pass reports
/// each unit as finished). A unit owns its layers and runs them in an
/// explicit forward and backward; everything else about a network is
/// derived from its units by `Network`.
public protocol NetworkUnit: AnyObject {
    /// The unit's name in parameter names (`layer2.0`), or a label for
    /// units without a prefix of their own ("stem", "head").
    var name: String { get }
    /// Its conv and linear layers (the quantized layers), in forward order.
    var convolutions: [Conv2d] { get }
    /// Its batch-norm layers, in forward order.
    var batchNorms: [BatchNorm2d] { get }
    /// The layers that read the unit's input directly: in the first unit
    /// of a network nothing upstream needs their dL/dx.
    var inputLayers: [Conv2d] { get }
    /// Feature map in (CNHW) -> feature map out; `training` selects batch
    /// statistics in batch norm.
    func forward(_ x: FeatureMap, training: Bool) -> FeatureMap
    /// Adds the unit's parameter gradients into the gradient arena and
    /// returns dL/dx of the last forward.
    func backward(_ dy: FeatureMap) -> FeatureMap
    /// The batch norm that ends a residual branch, whose output is added to
    /// the shortcut (nil: the unit has none). Zeroing its scale makes the
    /// unit start as the identity (`initialize(seed:zeroInitResidual:)`).
    var residualBranchNorm: BatchNorm2d? { get }
}

extension NetworkUnit {
    public var residualBranchNorm: BatchNorm2d? { nil }

    /// The slots whose gradients `backward` adds to.
    public var trainableSlots: [ParameterSlot] {
        convolutions.flatMap(\.trainableSlots) + batchNorms.flatMap(\.trainableSlots)
    }
}

/// How a network's linear layers are initialised (convolutions always get
/// Kaiming-normal, fan-out, as torchvision's models do).
public enum LinearInitialization: Sendable {
    /// PyTorch's nn.Linear default: weight and bias uniform in
    /// +-1/sqrt(fan_in) (torchvision's ResNets keep it).
    case pytorchDefault
    /// Weight normal(0, std), bias 0 (torchvision's MobileNetV2: 0.01).
    case normal(std: Float)
}

/// What an architecture builds: its units in forward order and how its
/// linear layers start.
public struct NetworkDefinition {
    public var units: [any NetworkUnit]
    public var linearInitialization: LinearInitialization

    public init(units: [any NetworkUnit], linearInitialization: LinearInitialization = .pytorchDefault) {
        self.units = units
        self.linearInitialization = linearInitialization
    }
}

/// A network: a spec (architecture and settings), the arenas its layers
/// registered in, and its units in forward order. Every stage walks it
/// through `units`, `layers` and `batchNorms`; none knows the architecture.
public final class Network {
    public let spec: ModelSpec
    public let store: ParameterStore
    public let workspace: Workspace
    public let units: [any NetworkUnit]
    /// Every conv and linear layer, in forward order.
    public let layers: [Conv2d]
    /// Every batch-norm layer, in forward order.
    public let batchNorms: [BatchNorm2d]
    private let linearInitialization: LinearInitialization

    public init(_ spec: ModelSpec) {
        self.spec = spec
        let store = ParameterStore(), workspace = Workspace()
        self.store = store
        self.workspace = workspace
        let definition = spec.architecture.build(spec, store: store, workspace: workspace)
        precondition(!definition.units.isEmpty, "\(spec.architecture.rawValue): a network needs units")
        units = definition.units
        linearInitialization = definition.linearInitialization
        layers = units.flatMap(\.convolutions)
        batchNorms = units.flatMap(\.batchNorms)
        store.allocate()
        for layer in inputLayers { layer.needsInputGradient = false }
    }

    /// The layers that read the images.
    public var inputLayers: [Conv2d] { units[0].inputLayers }

    /// A new network of the same spec holding a copy of this one's
    /// parameters and state (not its gradients or layer switches).
    public func clone() -> Network {
        let copy = Network(spec)
        copy.store.parameters.copy(from: store.parameters)
        copy.store.state.copy(from: store.state)
        for (a, b) in zip(copy.batchNorms, batchNorms) { a.batchesTracked = b.batchesTracked }
        return copy
    }

    /// torchvision's initialisation: Kaiming-normal (fan-out, ReLU) conv
    /// weights, BN gamma 1 and beta 0, linear layers as the architecture
    /// says. Each tensor draws from its own stream of `seed` (the layer's
    /// index), so the result depends on nothing else.
    public func initialize(seed: UInt64, zeroInitResidual: Bool = false) {
        store.parameters.zero()
        store.state.zero()
        for (index, layer) in layers.enumerated() {
            var rng = SplitMix64(seed: seed, stream: [0x494E_4954, UInt64(index)])
            let w = store.parameters[layer.weight]
            if layer.weight.shape.count == 2 {
                switch linearInitialization {
                case .pytorchDefault:
                    let bound = 1 / Float(layer.inChannels).squareRoot()
                    for i in w.indices { w[i] = (2 * rng.nextUniform() - 1) * bound }
                    if let b = layer.bias {
                        let bias = store.parameters[b]
                        for i in bias.indices { bias[i] = (2 * rng.nextUniform() - 1) * bound }
                    }
                case .normal(let std):
                    for i in w.indices { w[i] = rng.nextNormal() * std }
                }
            } else {
                let std = (2 / Float(layer.outChannels * layer.kernel * layer.kernel)).squareRoot()
                for i in w.indices { w[i] = rng.nextNormal() * std }
            }
        }
        for norm in batchNorms { norm.reset() }
        if zeroInitResidual {
            for norm in units.compactMap(\.residualBranchNorm) { store.parameters[norm.weight].update(repeating: 0) }
        }
    }

    /// Images in CNHW layout -> logits [classes, N, 1, 1].
    public func forward(_ images: FeatureMap, training: Bool) -> FeatureMap {
        var x = images
        for unit in units { x = unit.forward(x, training: training) }
        return x
    }

    /// Adds every parameter's gradient into `store.gradients` and returns
    /// dL/d(images), which is computed only when the input layers'
    /// `needsInputGradient` is set (Genie-D optimises the images; training
    /// does not need them).
    ///
    /// `finished`, when given, is told each time the pass is done with a
    /// unit, with that unit's trainable slots, from the last unit to the
    /// first: a data-parallel trainer starts reducing those gradients while
    /// the pass goes on.
    @discardableResult
    public func backward(_ dLogits: FeatureMap, finished: (([ParameterSlot]) -> Void)? = nil) -> FeatureMap {
        var d = dLogits
        for unit in units.reversed() {
            d = unit.backward(d)
            finished?(unit.trainableSlots)
        }
        return d
    }

    public func commitRunningStatistics() {
        for norm in batchNorms { norm.commitRunningStatistics() }
    }
}
