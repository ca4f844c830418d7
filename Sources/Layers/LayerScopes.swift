import Kernels

// Switches that stages set on layers for a while: which weight rows get a
// gradient, whether dL/dx is computed, whether quantizers are on, and what
// observes a layer's input. Each is changed only inside a scope that puts
// back what it found, so no stage leaves a switch set for the next.

extension Array where Element == Conv2d {
    /// Runs `body` with each layer's `gradientRows` set to `rows(layer)`.
    @discardableResult
    public func withGradientRows<R>(_ rows: (Conv2d) -> [Range<Int>], _ body: () throws -> R) rethrows -> R {
        let saved = map(\.gradientRows)
        defer { for (layer, r) in zip(self, saved) { layer.gradientRows = r } }
        for layer in self { layer.gradientRows = rows(layer) }
        return try body()
    }

    /// Runs `body` with layer l's `gradientRows` set to `rows[l]`.
    @discardableResult
    public func withGradientRows<R>(_ rows: [[Range<Int>]], _ body: () throws -> R) rethrows -> R {
        precondition(rows.count == count, "one list of rows per layer")
        var index = 0
        return try withGradientRows({ _ in
            defer { index += 1 }
            return rows[index]
        }, body)
    }

    /// Runs `body` with every layer computing dW for all its rows.
    @discardableResult
    public func withAllGradientRows<R>(_ body: () throws -> R) rethrows -> R {
        try withGradientRows({ [0..<$0.outChannels] }, body)
    }

    /// Runs `body` with `needsInputGradient` set to `needed` on every layer.
    @discardableResult
    public func withInputGradient<R>(_ needed: Bool, _ body: () throws -> R) rethrows -> R {
        let saved = map(\.needsInputGradient)
        defer { for (layer, s) in zip(self, saved) { layer.needsInputGradient = s } }
        for layer in self { layer.needsInputGradient = needed }
        return try body()
    }

    /// Runs `body` with fake quantization off in every layer (the FP32
    /// forward).
    @discardableResult
    public func withQuantizationDisabled<R>(_ body: () throws -> R) rethrows -> R {
        let saved = map { ($0.weightQuantizer.enabled, $0.inputQuantizer.enabled) }
        defer {
            for (layer, (w, a)) in zip(self, saved) {
                layer.weightQuantizer.enabled = w
                layer.inputQuantizer.enabled = a
            }
        }
        for layer in self {
            layer.weightQuantizer.enabled = false
            layer.inputQuantizer.enabled = false
        }
        return try body()
    }

    /// Runs `body` with `observe(i, x)` called on the input x of every
    /// forward of layer i (calibration measures ranges through it).
    @discardableResult
    public func withInputObservers<R>(_ observe: @escaping (_ layer: Int, _ input: FeatureMap) -> Void,
                                      _ body: () throws -> R) rethrows -> R {
        let saved = map(\.inputObserver)
        defer { for (layer, s) in zip(self, saved) { layer.inputObserver = s } }
        for (i, layer) in enumerated() { layer.inputObserver = { observe(i, $0) } }
        return try body()
    }

    /// Runs `body` with QDrop on the inputs of the given layers: before each
    /// forward of layer i, `mask(i, x)` gives the drop mask for its input x
    /// (1: the element keeps its float value). Masks are cleared afterwards.
    @discardableResult
    public func withDropMasks<R>(_ mask: @escaping (_ layer: Int, _ input: FeatureMap) -> UnsafePointer<UInt8>,
                                 _ body: () throws -> R) rethrows -> R {
        defer { for layer in self { layer.inputQuantizer.dropMask = nil } }
        let layers = self
        return try withInputObservers({ i, x in layers[i].inputQuantizer.dropMask = mask(i, x) }, body)
    }
}

extension Network {
    /// Runs `body` on the FP32 network: quantization off everywhere.
    @discardableResult
    public func withQuantizationDisabled<R>(_ body: () throws -> R) rethrows -> R {
        try layers.withQuantizationDisabled(body)
    }
}
