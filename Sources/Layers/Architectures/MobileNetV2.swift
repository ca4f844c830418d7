import Kernels

/// torchvision's MobileNetV2: `features.0` (3x3 stride-2 conv, BN, ReLU6),
/// seventeen inverted residual blocks `features.1` ... `features.17`,
/// `features.18` (1x1 conv to 1280 channels, BN, ReLU6), global average
/// pooling and the linear `classifier.1`. torchvision's dropout before the
/// classifier (`classifier.0`, p = 0.2) is left out: it has no parameters
/// and is the identity at evaluation, so weights load and predict alike.
enum MobileNetV2 {
    /// (expansion t, channels c, repeats n, first stride s) per stage.
    static let stages: [(t: Int, c: Int, n: Int, s: Int)] = [
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
    ]

    /// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at
    /// least 8, and never 10% below v.
    static func divisible(_ v: Double, by divisor: Int = 8) -> Int {
        var rounded = max(divisor, Int(v + Double(divisor) / 2) / divisor * divisor)
        if Double(rounded) < 0.9 * v { rounded += divisor }
        return rounded
    }

    static func build(_ spec: ModelSpec, store: ParameterStore, workspace: Workspace) -> NetworkDefinition {
        let m = spec.widthMultiplier
        var channels = divisible(32 * m)
        let last = divisible(1280 * max(1, m))
        var units: [any NetworkUnit] = [
            ConvStem(name: "features.0", [
                ConvNormActivation(conv: "features.0.0", norm: "features.0.1", inChannels: spec.inputChannels,
                                   outChannels: channels, kernel: 3, stride: 2, padding: 1, activation: .relu6,
                                   store: store, workspace: workspace),
            ]),
        ]
        for stage in stages {
            let out = divisible(Double(stage.c) * m)
            for i in 0..<stage.n {
                units.append(InvertedResidual(name: "features.\(units.count)", inChannels: channels, outChannels: out,
                                              stride: i == 0 ? stage.s : 1, expansion: stage.t, store: store,
                                              workspace: workspace))
                channels = out
            }
        }
        let head = "features.\(units.count)"
        units.append(ConvStem(name: head, [
            ConvNormActivation(conv: head + ".0", norm: head + ".1", inChannels: channels, outChannels: last,
                               kernel: 1, activation: .relu6, store: store, workspace: workspace),
        ]))
        units.append(ClassifierHead(name: "classifier.1", features: last, classes: spec.classes, store: store,
                                    workspace: workspace))
        return NetworkDefinition(units: units, linearInitialization: .normal(std: 0.01))
    }
}
