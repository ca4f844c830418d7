import Kernels
import Layers

/// Bits of one conv/linear layer: its weights, and its input (nil = the
/// input stays in floating point).
public struct LayerBits: Sendable, Equatable, Codable, CustomStringConvertible {
    public var weight: Int
    public var activation: Int?

    public init(weight: Int, activation: Int?) {
        self.weight = weight
        self.activation = activation
    }

    public var description: String { "W\(weight)A\(activation.map(String.init) ?? "-")" }
}

/// Which bit widths every layer gets, as data.
///
/// The default is the reference recipe of BRECQ and Genie: the first layer's
/// weights at 8 bits with its input (the image) not quantized, the last
/// (classifier) layer at W8A8, every other layer at the target bits.
/// `overrides` replaces the bits of named layers.
public struct QuantizationPolicy: Sendable, Equatable {
    public var weightBits: Int
    public var activationBits: Int
    public var firstLayer = LayerBits(weight: 8, activation: nil)
    public var lastLayer = LayerBits(weight: 8, activation: 8)
    public var overrides: [String: LayerBits] = [:]

    public init(weightBits: Int, activationBits: Int) {
        self.weightBits = weightBits
        self.activationBits = activationBits
    }

    /// The bits of layer `index` of `count` layers named `name`.
    public func bits(layer name: String, index: Int, count: Int) -> LayerBits {
        if let bits = overrides[name] { return bits }
        if index == 0 { return firstLayer }
        if index == count - 1 { return lastLayer }
        return LayerBits(weight: weightBits, activation: activationBits)
    }

    /// Parses "W4A8", "w4a-" or "w8" (weights only, input not quantized).
    public static func parseBits(_ text: String) -> LayerBits? {
        let t = text.lowercased()
        guard t.hasPrefix("w") else { return nil }
        let parts = t.dropFirst().split(separator: "a", maxSplits: 1, omittingEmptySubsequences: false)
        guard let w = Int(parts[0]), (2...8).contains(w) else { return nil }
        if parts.count == 1 || parts[1] == "-" { return LayerBits(weight: w, activation: nil) }
        guard let a = Int(parts[1]), (2...8).contains(a) else { return nil }
        return LayerBits(weight: w, activation: a)
    }

    /// Sets every layer's grids from the policy and turns quantization on.
    public func apply(to model: ResNet) {
        let layers = model.layers
        for (i, layer) in layers.enumerated() {
            let bits = self.bits(layer: layer.name, index: i, count: layers.count)
            layer.weightQuantizer.grid = QuantGrid(bits: bits.weight, signed: true)
            layer.weightQuantizer.enabled = true
            if let a = bits.activation {
                layer.inputQuantizer.grid = QuantGrid(bits: a, signed: false)
                layer.inputQuantizer.enabled = true
            } else {
                layer.inputQuantizer.enabled = false
            }
        }
    }
}

extension ResNet {
    /// Turns fake quantization off everywhere (the FP32 model).
    public func disableQuantization() {
        for layer in layers {
            layer.weightQuantizer.enabled = false
            layer.inputQuantizer.enabled = false
        }
    }
}
