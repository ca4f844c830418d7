import ArgumentParser
import Checkpoint
import Distributed
import Foundation
import Layers
import Quantization
import Training

/// `efqat-train search-bits`: MixQuant's per-layer weight bit search on a
/// trained FP32 model, as a table or JSON.
struct SearchBitsCommand: RankCommand {
    static let configuration = CommandConfiguration(
        commandName: "search-bits",
        abstract: "MixQuant: choose per-layer weight bits from the roundoff error of each layer's weights.",
        discussion: """
        For every searched layer and every b in 2...8 it computes the relative roundoff error \
        E(b) = ||W - Q_b(W)||^2 / ||W||^2 with the per-channel symmetric weight quantizer and \
        --weight-calibration, then picks each layer's weight bits by --rule.

        threshold:M (M >= 1): E_ref is the mean of E(--weight-bits) over the searched layers; a layer gets \
        the smallest b with E(b) <= M * E_ref (8 if none).

        budget:B (2 <= B <= 8): greedy; every searched layer starts at 2 bits, then the layer with the \
        largest error drop per added bit gets one more bit, while the weight-count-weighted mean bit width \
        of the searched layers stays <= B.

        The first and last layer keep 8 bits unless --include-first-last. Train with the result through \
        `efqat-train --mixquant RULE`, or pass the printed layer bits to --layer-bits. Needs no data set; \
        under MPI every rank computes the same result and rank 0 prints it. See docs/mixquant.md.
        """)

    @OptionGroup(title: "Run folder") var folder: RunFolderOptions

    @Option(help: "Selection rule: threshold:<multiplier >= 1> or budget:<mean weight bits> (default: threshold:1.5).",
            transform: { try MixQuantRule(parsing: $0) })
    var rule: MixQuantRule = .threshold(multiplier: 1.5)

    @Option(help: "Target weight bits (the threshold rule's reference; the bits of the uniform policy).")
    var weightBits = 4

    @Option(help: "Activation (layer input) bits kept for the searched layers (last layer: 8; the image is not quantized).")
    var activationBits = 8

    @Option(help: "How weight ranges are chosen per channel: minmax, percentile or lp (L_p clip search, p = 2.4).")
    var weightCalibration: RangeEstimator = .minMax

    @Option(help: "Percentile kept by --weight-calibration percentile.")
    var percentile = 99.99

    @Flag(help: "Also search the first and last layer (otherwise kept at 8 bits).")
    var includeFirstLast = false

    @Option(help: ArgumentHelp("Also write the result as JSON to this file.", valueName: "path"))
    var jsonFile: String?

    @Option(help: "What to print: table or json.")
    var format: OutputFormat = .table

    @OptionGroup(title: "Runtime") var runtime: RuntimeOptions

    enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
        case table, json
    }

    func validate() throws {
        for (name, value) in [("--weight-bits", weightBits), ("--activation-bits", activationBits)] where !(2...8).contains(value) {
            throw ValidationError("\(name) must be between 2 and 8, got \(value)")
        }
        if !(percentile > 50 && percentile <= 100) { throw ValidationError("--percentile must be in (50, 100], got \(percentile)") }
    }

    func run(communicator: Communicator) throws {
        let model = folder.modelPath
        let (network, record) = try loadModel(model)

        var calibration = CalibrationOptions()
        calibration.weights = weightCalibration
        calibration.percentile = percentile
        let policy = QuantizationPolicy(weightBits: weightBits, activationBits: activationBits)
        let result = try MixQuant.search(network, policy: policy,
                                         options: MixQuantOptions(rule: rule, includeFirstLast: includeFirstLast),
                                         calibration: calibration)
        guard communicator.isRoot else { return }
        let json = try result.json()
        if let jsonFile {
            let url = URL(fileURLWithPath: jsonFile)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try (json + "\n").write(to: url, atomically: true, encoding: .utf8)
        }
        switch format {
        case .table:
            FileHandleOutput.standardOutput.write(
                "\(model): \(network.spec), \(record.content.rawValue)\n"
                + result.render() + "\n"
                + "layer bits (for --layer-bits): \(result.layerBitsArgument)\n"
                + (jsonFile.map { "wrote \($0)\n" } ?? ""))
        case .json:
            FileHandleOutput.standardOutput.write(json + "\n")
        }
    }
}
