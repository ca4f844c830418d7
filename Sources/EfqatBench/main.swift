import ArgumentParser
import Distributed
import Foundation
import Kernels
import Layers
import Quantization
import Training

/// Throughput of one training step of ResNet-20 on 1x28x28 images, FP32
/// and fake-quantized, on one thread, next to OpenBLAS's own GEMM speed.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "efqat-bench",
        abstract: "Measure training-step throughput (images/s) of ResNet-20 and OpenBLAS sgemm GFLOP/s.")

    @Option(help: "Images per step.")
    var batch = 128
    @Option(help: "Timed steps per configuration (after 2 warm-up steps).")
    var steps = 10
    @Option(help: "OpenBLAS threads.")
    var threads = 1
    @Option(help: "Quantized configurations to time, as W<bits>A<bits>, comma-separated.")
    var quantized = "W4A4"

    func run() throws {
        setBLASThreads(threads)
        print("efqat-bench: ResNet-20, batch \(batch), 1x28x28, \(threads) thread(s), \(steps) timed steps")
        print(gemmReport())
        var rows: [[String]] = []
        rows.append(measure(label: "FP32", policy: nil))
        for text in quantized.split(separator: ",") {
            guard let bits = QuantizationPolicy.parseBits(String(text)), let a = bits.activation else {
                throw ValidationError("--quantized: cannot read '\(text)'")
            }
            rows.append(measure(label: "QAT " + String(text), policy: QuantizationPolicy(weightBits: bits.weight, activationBits: a)))
        }
        print(renderTable(header: ["step", "images/s", "forward ms", "backward ms", "update ms"], rows: rows))
    }

    /// Times forward, backward and the SGD update of full training steps.
    func measure(label: String, policy: QuantizationPolicy?) -> [String] {
        let model = ResNet(.resnet20())
        model.initialize(seed: 1)
        let images = FloatBuffer(capacity: batch * 784)
        var rng = SplitMix64(seed: 2)
        for i in 0..<(batch * 784) { images.pointer[i] = rng.nextNormal() }
        let labels = (0..<batch).map { Int32($0 % 10) }
        let x = FeatureMap(data: images.pointer, channels: 1, batch: batch, height: 28, width: 28)
        if let policy {
            policy.apply(to: model)
            calibrate(model, communicator: SingleProcessCommunicator()) { _ = model.forward(x, training: false) }
        }
        let sgd = SGD(layout: model.store.parameterLayout, momentum: 0.9, weightDecay: 5e-4)
        let spans = model.store.allTrainedSpans
        let dLogits = FloatBuffer(capacity: 10 * batch)
        var times = [0.0, 0.0, 0.0]
        for step in 0..<(steps + 2) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            let logits = model.forward(x, training: true)
            _ = labels.withUnsafeBufferPointer {
                softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: dLogits.pointer,
                                    gradientScale: 1 / Float(batch))
            }
            let t1 = DispatchTime.now().uptimeNanoseconds
            model.store.gradients.zero()
            model.backward(FeatureMap(data: dLogits.pointer, channels: 10, batch: batch, height: 1, width: 1))
            let t2 = DispatchTime.now().uptimeNanoseconds
            sgd.step(parameters: model.store.parameters, gradients: model.store.gradients, spans: spans, learningRate: 0.01)
            model.commitRunningStatistics()
            let t3 = DispatchTime.now().uptimeNanoseconds
            if step >= 2 {
                times[0] += Double(t1 - t0) / 1e9
                times[1] += Double(t2 - t1) / 1e9
                times[2] += Double(t3 - t2) / 1e9
            }
        }
        let total = times.reduce(0, +)
        let perStep = times.map { String(format: "%.1f", $0 / Double(steps) * 1000) }
        return [label, String(format: "%.0f", Double(batch * steps) / total)] + perStep
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
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<reps { sgemm(m: m, n: n, k: k, a.pointer, lda: k, b.pointer, ldb: n, c.pointer, ldc: n) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            lines.append(String(format: "sgemm %dx%dx%d: %.1f GFLOP/s", m, n, k, 2 * Double(m * n * k) * Double(reps) / seconds / 1e9))
        }
        return lines.joined(separator: "\n")
    }
}

Bench.main()
