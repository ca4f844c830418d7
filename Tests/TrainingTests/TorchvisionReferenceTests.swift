import Checkpoint
import Foundation
import Kernels
import Layers
import Training
import XCTest

/// Every architecture's FP32 eval forward against an independent NumPy
/// (float64) implementation of the torchvision / PyTorch model
/// (Tests/Reference/torchvision_reference.py), fed the state_dict we save.
///
/// Batch-norm affine parameters and running statistics are randomised so
/// that BN is not the identity, the classifier gets PyTorch's default
/// Linear init (MobileNetV2's zero bias would otherwise go untested), and
/// the model is saved with `ModelCheckpoint` exactly as `fp32.safetensors`
/// is; the reference must consume every key exactly once and the key set
/// must be the one the torchvision module tree has.
///
/// Needs `python3` with numpy and safetensors (`pip install safetensors
/// numpy`): the test fails, rather than skips, without them.
final class TorchvisionReferenceTests: XCTestCase {
    struct Case {
        var architecture: Architecture
        var multiplier: Double
        var channels: Int
        var height: Int
        var width: Int

        init(_ architecture: Architecture, _ multiplier: Double, channels: Int, size: Int) {
            self.init(architecture, multiplier, channels: channels, height: size, width: size)
        }

        init(_ architecture: Architecture, _ multiplier: Double, channels: Int, height: Int, width: Int) {
            self.architecture = architecture
            self.multiplier = multiplier
            self.channels = channels
            self.height = height
            self.width = width
        }
    }

    /// 28x28 and 32x32 for every family, one- and three-channel; at these
    /// sizes the ImageNet ResNets and MobileNetV2 end on a 1x1 map, so a
    /// non-square case per family also checks the average
    /// pool (2x2 at the end) and that height and width are not swapped.
    static let cases: [Case] = [
        Case(.resnet8, 0.25, channels: 1, size: 28),
        Case(.resnet8, 0.25, channels: 3, size: 32),
        Case(.resnet20, 0.25, channels: 3, size: 28),
        Case(.resnet20, 0.25, channels: 1, size: 32),
        Case(.resnet20, 0.25, channels: 3, height: 24, width: 20),
        Case(.resnet18, 0.125, channels: 1, size: 28),
        Case(.resnet18, 0.125, channels: 3, size: 32),
        Case(.resnet18, 0.125, channels: 3, height: 48, width: 64),
        Case(.resnet50, 0.125, channels: 3, size: 28),
        Case(.resnet50, 0.125, channels: 1, size: 32),
        Case(.resnet50, 0.125, channels: 1, height: 64, width: 40),
        Case(.mobilenetV2, 0.25, channels: 1, size: 28),
        Case(.mobilenetV2, 0.25, channels: 3, size: 32),
        Case(.mobilenetV2, 0.25, channels: 3, height: 48, width: 64),
    ]

    static let batch = 3
    static let classes = 10
    /// Largest |ours - reference| allowed, relative to the largest |logit|.
    /// Float32 rounding alone reaches a few 1e-5 on ResNet-50 (the same
    /// NumPy reference rounding every conv and BN output to float32 differs
    /// from its float64 result by about as much as we do), while every
    /// structural mistake tried on the reference (BN eps 1e-3, ReLU instead
    /// of ReLU6, flipped kernels, TF-style stride-2 padding, max instead of
    /// average pool) moves the logits by 4e-3 or more.
    static let relativeTolerance = 1e-4

    var folder: URL!

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("efqat-tvref-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let folder { try? FileManager.default.removeItem(at: folder) }
    }

    func testForwardMatchesNumPyTorchvisionReference() throws {
        let (status, output) = try python(["-c", "import safetensors.numpy, numpy"])
        guard status == 0 else {
            XCTFail("python3 with safetensors and numpy is needed: run `pip install safetensors numpy`\n\(output)")
            return
        }
        var report: [String] = []
        for (index, testCase) in Self.cases.enumerated() {
            report.append(try check(testCase, seed: UInt64(100 + index)))
        }
        print("torchvision NumPy reference, largest |ours - reference| per case:\n" + report.joined(separator: "\n"))
    }

    /// Runs one case; returns its line for the report.
    private func check(_ c: Case, seed: UInt64) throws -> String {
        let label = "\(c.architecture.rawValue) x\(c.multiplier) \(c.channels)ch \(c.height)x\(c.width)"
        let spec = ModelSpec(architecture: c.architecture, inputChannels: c.channels, classes: Self.classes,
                             widthMultiplier: c.multiplier)
        let model = Network(spec)
        model.initialize(seed: seed)
        randomizeBatchNormAndClassifier(model, channels: c.channels, height: c.height, width: c.width, seed: seed)

        // The model exactly as fp32.safetensors holds it.
        let records = ModelCheckpoint.tensors(of: model, includeQuantizers: false, optimizer: nil)
        let modelPath = folder.appendingPathComponent("\(c.architecture.rawValue)-\(c.channels)-\(c.height)x\(c.width).safetensors").path
        try SafeTensorsFile(tensors: records).write(to: modelPath)

        // Input: NCHW for PyTorch, CNHW for us.
        let (n, ch, h, w) = (Self.batch, c.channels, c.height, c.width)
        var rng = SplitMix64(seed: seed, stream: [0x494E_5055])
        var nchw = [Float](repeating: 0, count: n * ch * h * w)
        for i in nchw.indices { nchw[i] = rng.nextNormal() }
        let inputPath = folder.appendingPathComponent("input-\(c.architecture.rawValue)-\(c.channels)-\(c.height)x\(c.width).safetensors").path
        try SafeTensorsFile(tensors: [TensorRecord(name: "input", shape: [n, ch, h, w], values: nchw)]).write(to: inputPath)
        let images = FloatBuffer(capacity: nchw.count)
        for b in 0..<n {
            for k in 0..<ch {
                for p in 0..<(h * w) { images.pointer[(k * n + b) * h * w + p] = nchw[(b * ch + k) * h * w + p] }
            }
        }
        let logitsMap = model.forward(FeatureMap(data: images.pointer, channels: ch, batch: n, height: h, width: w),
                                      training: false)
        XCTAssertEqual([logitsMap.channels, logitsMap.batch, logitsMap.height, logitsMap.width],
                       [Self.classes, n, 1, 1], label)
        // ours[b][k]: logits come as [classes, N, 1, 1].
        let ours = (0..<n).map { b in (0..<Self.classes).map { k in Double(logitsMap.data[k * n + b]) } }

        // The reference.
        let outPath = folder.appendingPathComponent("reference-\(c.architecture.rawValue).json").path
        let script = Self.referenceScript
        let (status, output) = try python([script, c.architecture.rawValue, modelPath, inputPath, outPath,
                                           "--width-mult", String(c.multiplier)])
        guard status == 0 else {
            XCTFail("\(label): the NumPy reference failed:\n\(output)")
            return "\(label): reference failed"
        }
        let json = try JSONSerialization.jsonObject(with: Foundation.Data(contentsOf: URL(fileURLWithPath: outPath)))
        guard let result = json as? [String: Any], let reference = result["logits"] as? [[Double]],
              let expectedKeys = result["expected_keys"] as? [String] else {
            XCTFail("\(label): unreadable reference output")
            return "\(label): unreadable reference output"
        }

        // The saved key set is torchvision's state_dict key set.
        let savedKeys = records.map(\.name)
        XCTAssertEqual(Set(savedKeys).count, savedKeys.count, "\(label): repeated keys")
        XCTAssertEqual(Set(savedKeys), Set(expectedKeys),
                       "\(label): missing \(Set(expectedKeys).subtracting(savedKeys).sorted()), " +
                       "extra \(Set(savedKeys).subtracting(expectedKeys).sorted())")

        XCTAssertEqual(reference.count, n, label)
        XCTAssertEqual(reference.first?.count, Self.classes, label)
        guard reference.count == n, reference.allSatisfy({ $0.count == Self.classes }) else { return "\(label): shape" }
        let scale = reference.joined().map(abs).max() ?? 0
        var largest = 0.0
        for b in 0..<n {
            for k in 0..<Self.classes { largest = max(largest, abs(ours[b][k] - reference[b][k])) }
        }
        // The logits must depend on the images, or the comparison would test
        // little more than the classifier bias.
        let spread = (0..<Self.classes).map { k in abs(reference[0][k] - reference[1][k]) }.max() ?? 0
        XCTAssertGreaterThan(scale, 0, label)
        XCTAssertGreaterThan(spread, 0.05 * scale, "\(label): logits barely depend on the input")
        XCTAssertLessThanOrEqual(largest, Self.relativeTolerance * scale,
                                 "\(label): largest |ours - reference| = \(largest), max |logit| = \(scale)")
        let line = "\(label): max |diff| \(String(format: "%.3e", largest)), max |logit| \(String(format: "%.4f", scale))"
            + ", relative \(String(format: "%.2e", largest / scale)), \(savedKeys.count) keys"
        return line
    }

    /// BN: gamma in [0.5, 1.5), beta in [-0.5, 0.5), num_batches_tracked
    /// nonzero, and running statistics drawn around the statistics each BN
    /// actually sees on a separate calibration batch of 16 images (mean mu + sigma * U(-0.5, 0.5),
    /// variance sigma^2 * U(0.5, 2)): with fixed ranges instead, Kaiming
    /// fan-out init shrinks MobileNetV2's depthwise outputs so much that the
    /// BN offsets drown them and its logits stop depending on the input
    /// (measured: 1e-8 of the logits). Linear layers (2-D weights):
    /// PyTorch's default init, U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    private func randomizeBatchNormAndClassifier(_ model: Network, channels: Int, height: Int, width: Int, seed: UInt64) {
        let store = model.store
        var rng = SplitMix64(seed: seed, stream: [0x424E])
        func fill(_ slot: ParameterSlot, _ low: Float, _ high: Float) {
            let values = store[slot]
            for i in values.indices { values[i] = low + (high - low) * rng.nextUniform() }
        }
        for layer in model.layers where layer.weight.shape.count == 2 {
            let bound = 1 / Float(layer.weight.shape[1]).squareRoot()
            fill(layer.weight, -bound, bound)
            if let bias = layer.bias { fill(bias, -bound, bound) }
        }
        for (index, norm) in model.batchNorms.enumerated() {
            fill(norm.weight, 0.5, 1.5)
            fill(norm.bias, -0.5, 0.5)
            norm.batchesTracked = Int64(17 + index)
            // Called with the BN's input before it reads its running
            // statistics, so one eval pass sets every BN in order.
            norm.inputObserver = { x in
                let m = x.plane
                let mean = store[norm.runningMean], variance = store[norm.runningVar]
                for c in 0..<x.channels {
                    let plane = UnsafeBufferPointer(start: x.data + c * m, count: m)
                    let mu = plane.reduce(0, +) / Float(m)
                    let sigma2 = max(plane.reduce(0) { $0 + ($1 - mu) * ($1 - mu) } / Float(m), 1e-2)
                    mean[c] = mu + sigma2.squareRoot() * (rng.nextUniform() - 0.5)
                    variance[c] = sigma2 * (0.5 + 1.5 * rng.nextUniform())
                }
            }
        }
        let n = 16
        let images = FloatBuffer(capacity: channels * n * height * width)
        for i in 0..<(channels * n * height * width) { images.pointer[i] = rng.nextNormal() }
        _ = model.forward(FeatureMap(data: images.pointer, channels: channels, batch: n, height: height, width: width),
                          training: false)
        for norm in model.batchNorms { norm.inputObserver = nil }
    }

    private static var referenceScript: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Reference/torchvision_reference.py").path
    }

    /// Runs `python3` with `arguments`; returns its exit status and its
    /// stdout and stderr together.
    private func python(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: output, as: UTF8.self))
    }
}
