import ArgumentParser
import Checkpoint
import Distributed
import EfQAT
import Foundation
import Kernels
import Layers
import Quantization
import Training

/// Throughput of one training step of a network (ResNet-20 by default) on 1x28x28 images: FP32,
/// full QAT and EfQAT at several fractions, timed side by side (one step of
/// each configuration per round), next to OpenBLAS's own GEMM speed.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "efqat-bench",
        abstract: "Measure training-step time of a network (FP32, full QAT, EfQAT) and OpenBLAS sgemm GFLOP/s.")

    @Option(help: ArgumentHelp("Network: \(Architecture.allCases.map(\.rawValue).joined(separator: ", ")).",
                               valueName: "name"))
    var arch: Architecture = .resnet20
    @Option(help: "Channel width multiplier of --arch.")
    var width: Double = 1
    @Option(help: "Images per step.")
    var batch = 128
    @Option(help: "Timed steps per configuration (after 2 warm-up steps); the table shows their medians.")
    var steps = 10
    @Option(help: ArgumentHelp("What the step times measure: wall (elapsed time) or cpu (this thread's CPU time, "
                               + "which other processes on the machine disturb far less; needs --threads 1).",
                               valueName: "clock"))
    var clock: Clock = .wall
    @Option(help: "OpenBLAS threads.")
    var threads = 1
    @Option(help: "Full-QAT configurations to time, as W<bits>A<bits>, comma-separated.")
    var quantized = "W4A4"
    @Option(help: "EfQAT fractions p to time at the first --quantized configuration, comma-separated (empty: none).")
    var efqatFractions = "0,0.05,0.1,0.25,1"
    @Option(help: "EfQAT selection mode: cwpn, cwpl or lwpn.")
    var efqatMode: SelectionMode = .cwpn
    @Option(help: ArgumentHelp("Start from these FP32 weights (a fp32.safetensors of a run) instead of the random "
                               + "initialisation; EfQAT's selection, and so its cost, depends on the weights.",
                               valueName: "path"))
    var weights: String?

    /// One timed configuration: its model, what it trains, and its times.
    final class Configuration {
        let label: String
        let model: Network
        let optimizer: SGD
        let spans: [TrainedSpan]
        let floatsPerStep: Int
        let trainedFraction: Double
        /// Seconds of every timed step: forward (with the loss), backward, update.
        var times: [[Double]] = []

        /// Median over the steps of one part (0, 1, 2) or, with nil, of the
        /// whole step: a few slow steps (page faults, a busy neighbour) do
        /// not move it.
        func median(_ part: Int?) -> Double {
            let values = times.map { step in part.map { step[$0] } ?? step.reduce(0, +) }.sorted()
            let middle = values.count / 2
            return values.count % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2
        }

        init(label: String, model: Network, channels: CriticalChannels?) {
            self.label = label
            self.model = model
            optimizer = SGD(layout: model.store.parameterLayout, momentum: 0.9, weightDecay: 5e-4)
            if let channels {
                channels.prepare(step: 0, stepInEpoch: 0, communicator: SingleProcessCommunicator())
                spans = channels.spans
                trainedFraction = channels.trainedWeightFraction
            } else {
                spans = model.store.allTrainedSpans
                trainedFraction = 1
            }
            floatsPerStep = GradientReducer(spans: spans, norms: model.batchNorms, extras: 2).packedCount
        }
    }

    /// The network timed: --arch on 1x28x28 images, 10 classes.
    var spec: ModelSpec { ModelSpec(architecture: arch, inputChannels: 1, classes: 10, widthMultiplier: width) }

    func validate() throws {
        if let problem = spec.problem { throw ValidationError(problem) }
        if clock == .cpu && threads != 1 { throw ValidationError("--clock cpu measures one thread: use --threads 1") }
    }

    func run() throws {
        setBLASThreads(threads)
        print("efqat-bench: \(spec), batch \(batch), 1x28x28, \(threads) thread(s), \(steps) timed steps, \(clock) clock, "
              + "weights: \(weights ?? "random initialisation")")
        print(gemmReport())
        let images = FloatBuffer(capacity: batch * 784)
        var rng = SplitMix64(seed: 2)
        for i in 0..<(batch * 784) { images.pointer[i] = rng.nextNormal() }
        let x = FeatureMap(data: images.pointer, channels: 1, batch: batch, height: 28, width: 28)

        var configurations = [Configuration(label: "FP32", model: try model(), channels: nil)]
        var firstPolicy: (String, QuantizationPolicy)?
        for text in quantized.split(separator: ",") {
            guard let bits = QuantizationPolicy.parseBits(String(text)), let a = bits.activation else {
                throw ValidationError("--quantized: cannot read '\(text)'")
            }
            let policy = QuantizationPolicy(weightBits: bits.weight, activationBits: a)
            firstPolicy = firstPolicy ?? (String(text), policy)
            configurations.append(Configuration(label: "QAT \(text)", model: try model(policy, x), channels: nil))
        }
        for text in efqatFractions.split(separator: ",") {
            guard let p = Double(text), (0...1).contains(p) else { throw ValidationError("--efqat-fractions: cannot read '\(text)'") }
            guard let (name, policy) = firstPolicy else { throw ValidationError("--efqat-fractions needs a --quantized configuration") }
            let m = try model(policy, x)
            let channels = CriticalChannels(layers: m.layers, store: m.store,
                                            options: EfqatOptions(mode: efqatMode, fraction: p, refresh: .never))
            configurations.append(Configuration(label: "EfQAT \(name) \(efqatMode.rawValue) p=\(text)", model: m, channels: channels))
        }

        // Round-robin: one step of every configuration per round, so drift
        // in machine speed hits all of them alike.
        let labels = (0..<batch).map { Int32($0 % 10) }
        let dLogits = FloatBuffer(capacity: 10 * batch)
        for round in 0..<(steps + 2) {
            for c in configurations {
                let t = step(c, x, labels, dLogits)
                if round >= 2 { c.times.append(t) }
            }
        }

        let reference = configurations.first { $0.label == "QAT \(firstPolicy?.0 ?? "")" }
        let rows = configurations.map { c -> [String] in
            let perStep = (0..<3).map { String(format: "%.1f", c.median($0) * 1000) }
            let ratios = reference.map { r in
                [String(format: "%.2fx", r.median(1) / c.median(1)), String(format: "%.2fx", r.median(nil) / c.median(nil)),
                 String(format: "%.1f%%", 100 * Double(c.floatsPerStep) / Double(r.floatsPerStep))]
            } ?? ["-", "-", "-"]
            return [c.label, String(format: "%.1f%%", c.trainedFraction * 100),
                    String(format: "%.0f", Double(batch) / c.median(nil))] + perStep + ratios
        }
        print(renderTable(header: ["step", "trained", "images/s", "forward ms", "backward ms", "update ms",
                                   "backward speed-up", "step speed-up", "all-reduce bytes"], rows: rows))
        print("times are medians over the timed steps")
        if let reference {
            print("speed-ups and all-reduce bytes are against \(reference.label) (full QAT), "
                  + String(format: "whose all-reduce is %d floats per step", reference.floatsPerStep))
        }
    }

    /// --arch with --weights or a seeded initialisation; quantized and
    /// calibrated on the bench batch when a policy is given.
    func model(_ policy: QuantizationPolicy? = nil, _ x: FeatureMap? = nil) throws -> Network {
        let model = Network(spec)
        model.initialize(seed: 1)
        if let weights {
            try ModelCheckpoint.restore(try SafeTensorsFile.read(from: weights), path: weights, into: model,
                                        requireQuantizers: false, optimizer: nil)
        }
        if let policy, let x {
            policy.apply(to: model)
            calibrate(model, communicator: SingleProcessCommunicator()) { _ = model.forward(x, training: false) }
        }
        return model
    }

    /// One training step; returns forward (with the loss), backward and
    /// update seconds.
    func step(_ c: Configuration, _ x: FeatureMap, _ labels: [Int32], _ dLogits: FloatBuffer) -> [Double] {
        let model = c.model
        let t0 = clock.now()
        let logits = model.forward(x, training: true)
        _ = labels.withUnsafeBufferPointer {
            softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: dLogits.pointer,
                                gradientScale: 1 / Float(batch))
        }
        let t1 = clock.now()
        model.store.gradients.zero()
        model.backward(FeatureMap(data: dLogits.pointer, channels: 10, batch: batch, height: 1, width: 1))
        let t2 = clock.now()
        c.optimizer.step(parameters: model.store.parameters, gradients: model.store.gradients, spans: c.spans,
                         learningRate: 0.01)
        model.commitRunningStatistics()
        return [t1 - t0, t2 - t1, clock.now() - t2]
    }

    /// sgemm GFLOP/s on a square problem and on the shape of ResNet-20's
    /// first-stage convolutions (16 x 144 x 784*batch).
    func gemmReport() -> String {
        var lines: [String] = []
        for (m, n, k) in [(1024, 1024, 1024), (16, 784 * batch, 144)] {
            let a = FloatBuffer(capacity: m * k), b = FloatBuffer(capacity: k * n), c = FloatBuffer(capacity: m * n)
            for i in 0..<(m * k) { a.pointer[i] = Float(i % 7) * 0.1 }
            for i in 0..<(k * n) { b.pointer[i] = Float(i % 5) * 0.1 }
            sgemm(m: m, n: n, k: k, a.pointer, lda: k, b.pointer, ldb: n, c.pointer, ldc: n)
            let reps = 5
            let t0 = monotonicSeconds()
            for _ in 0..<reps { sgemm(m: m, n: n, k: k, a.pointer, lda: k, b.pointer, ldb: n, c.pointer, ldc: n) }
            let seconds = monotonicSeconds() - t0
            lines.append(String(format: "sgemm %dx%dx%d: %.1f GFLOP/s", m, n, k, 2 * Double(m * n * k) * Double(reps) / seconds / 1e9))
        }
        return lines.joined(separator: "\n")
    }
}

extension SelectionMode: ExpressibleByArgument {}
extension Architecture: ExpressibleByArgument {}

/// The clock step times are read from.
enum Clock: String, ExpressibleByArgument {
    case wall, cpu

    func now() -> Double {
        switch self {
        case .wall: return monotonicSeconds()
        case .cpu:
            var t = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
    }
}

Bench.main()
