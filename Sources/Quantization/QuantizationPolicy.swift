import Foundation
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
///
/// Weights are quantized per output channel and layer inputs per tensor,
/// each with its scheme: by default symmetric weights (signed grid, zero
/// point 0) and asymmetric inputs (unsigned grid, integer zero point), as
/// PyTorch's default QAT config.
public struct QuantizationPolicy: Sendable, Equatable {
    public var weightBits: Int
    public var activationBits: Int
    public var weightScheme: QuantScheme = .symmetric
    public var activationScheme: QuantScheme = .asymmetric
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

    /// Sets every layer's grids from the policy (signed for a symmetric
    /// scheme, unsigned for an asymmetric one) and turns quantization on.
    public func apply(to model: Network) {
        let layers = model.layers
        for (i, layer) in layers.enumerated() {
            let bits = self.bits(layer: layer.name, index: i, count: layers.count)
            layer.weightQuantizer.grid = weightScheme.grid(bits: bits.weight)
            layer.weightQuantizer.enabled = true
            if let a = bits.activation {
                layer.inputQuantizer.grid = activationScheme.grid(bits: a)
                layer.inputQuantizer.enabled = true
            } else {
                layer.inputQuantizer.enabled = false
            }
        }
    }
}

extension QuantizationPolicy {
    /// Reads a policy from JSON, e.g.
    ///
    ///     {"weight_bits": 4, "activation_bits": 4,
    ///      "first_layer": "W8A-", "last_layer": "W8A8",
    ///      "layers": {"layer3.2.conv2": "W8A8"}}
    ///
    /// Every key is optional; missing ones keep the values of `base`.
    public static func parse(json data: [UInt8], base: QuantizationPolicy, source: String) throws -> QuantizationPolicy {
        struct File: Decodable {
            var weight_bits: Int?
            var activation_bits: Int?
            var first_layer: String?
            var last_layer: String?
            var layers: [String: String]?
        }
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: Data(data))
        } catch {
            throw PolicyError("\(source): not a policy file: \(error)")
        }
        func bits(_ text: String, _ key: String) throws -> LayerBits {
            guard let bits = parseBits(text) else {
                throw PolicyError("\(source): \(key) is '\(text)'; expected W<bits>A<bits> with bits 2...8, e.g. W4A8, or W8A- for a float input")
            }
            return bits
        }
        var policy = base
        for (key, value) in [("weight_bits", file.weight_bits), ("activation_bits", file.activation_bits)] {
            if let value, !(2...8).contains(value) { throw PolicyError("\(source): \(key) must be 2...8, got \(value)") }
        }
        policy.weightBits = file.weight_bits ?? policy.weightBits
        policy.activationBits = file.activation_bits ?? policy.activationBits
        if let first = file.first_layer { policy.firstLayer = try bits(first, "first_layer") }
        if let last = file.last_layer { policy.lastLayer = try bits(last, "last_layer") }
        for (name, text) in file.layers ?? [:] { policy.overrides[name] = try bits(text, "layers.\(name)") }
        return policy
    }

    /// Names in `overrides` that are not layers of `model`: almost always a typo.
    public func unknownLayers(in model: Network) -> [String] {
        let names = Set(model.layers.map(\.name))
        return overrides.keys.filter { !names.contains($0) }.sorted()
    }
}

/// A policy that cannot be used, with a message saying why.
public struct PolicyError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
