import Kernels
import Layers

/// Genie-D's generator, from latents z [256, N, 1, 1] to images [C, N, H, W]:
///
///     Linear(256 -> 128 * H/4 * W/4) -> view [128, H/4, W/4] -> BN(128)
///     -> upsample x2 -> conv3x3(128 -> 64) -> BN(64) -> LeakyReLU(0.2)
///     -> upsample x2 -> conv3x3(64 -> C) -> tanh -> BN(C, no affine)
///
/// It is only ever trained, so batch norm always normalises with the
/// batch's own statistics. Parameter names follow the reference code's
/// module names (`linear`, `conv_layers.N`).
public final class Generator {
    public static let latentDimension = 256
    public let channels: Int
    public let height: Int
    public let width: Int
    public let store = ParameterStore()
    private let workspace = Workspace()
    private let linear: Conv2d
    private let unflatten: Unflatten
    private let norm0: BatchNorm2d
    private let upsample1 = Upsample2x()
    private let conv1: Conv2d
    private let norm1: BatchNorm2d
    private let activation = LeakyReLU(slope: 0.2)
    private let upsample2 = Upsample2x()
    private let conv2: Conv2d
    private let tanh = Tanh()
    private let norm2: BatchNorm2d

    /// A generator of `channels` x `height` x `width` images; both sides
    /// must be multiples of 4.
    public init(channels: Int, height: Int, width: Int) {
        precondition(height % 4 == 0 && width % 4 == 0, "the generator needs image sides divisible by 4")
        self.channels = channels
        self.height = height
        self.width = width
        let (h, w) = (height / 4, width / 4)
        linear = Conv2d.linear(name: "linear", inFeatures: Self.latentDimension, outFeatures: 128 * h * w,
                               store: store, workspace: workspace)
        unflatten = Unflatten(channels: 128, height: h, width: w)
        norm0 = BatchNorm2d(name: "conv_layers.0", channels: 128, store: store)
        conv1 = Conv2d(name: "conv_layers.2", inChannels: 128, outChannels: 64, kernel: 3, padding: 1, bias: true,
                       store: store, workspace: workspace)
        norm1 = BatchNorm2d(name: "conv_layers.3", channels: 64, store: store)
        conv2 = Conv2d(name: "conv_layers.6", inChannels: 64, outChannels: channels, kernel: 3, padding: 1,
                       bias: true, store: store, workspace: workspace)
        norm2 = BatchNorm2d(name: "conv_layers.8", channels: channels, affine: false, store: store)
        store.allocate()
    }

    /// PyTorch's default initialisation, drawn from streams of `seed`:
    /// linear and conv weights and biases uniform in +-1/sqrt(fan_in),
    /// batch-norm gamma 1 and beta 0.
    public func initialize(seed: UInt64) {
        store.parameters.zero()
        store.state.zero()
        for (index, layer) in [linear, conv1, conv2].enumerated() {
            var rng = SplitMix64(seed: seed, stream: [UInt64(index)])
            let bound = 1 / Float(layer.patchSize).squareRoot()
            for slot in [layer.weight] + (layer.bias.map { [$0] } ?? []) {
                let values = store.parameters[slot]
                for i in values.indices { values[i] = (2 * rng.nextUniform() - 1) * bound }
            }
        }
        for norm in [norm0, norm1, norm2] { norm.reset() }
    }

    /// Latents [256, N, 1, 1] -> images [C, N, H, W] (a view of the
    /// generator's own buffer, valid until the next forward).
    public func forward(_ z: FeatureMap) -> FeatureMap {
        var x = norm0.forward(unflatten.forward(linear.forward(z)), training: true)
        x = activation.forward(norm1.forward(conv1.forward(upsample1.forward(x)), training: true))
        return norm2.forward(tanh.forward(conv2.forward(upsample2.forward(x))), training: true)
    }

    /// Adds every parameter's gradient into `store.gradients` and returns dL/dz.
    public func backward(_ dImages: FeatureMap) -> FeatureMap {
        var d = upsample2.backward(conv2.backward(tanh.backward(norm2.backward(dImages))))
        d = upsample1.backward(conv1.backward(norm1.backward(activation.backward(d))))
        return linear.backward(unflatten.backward(norm0.backward(d)))
    }
}
