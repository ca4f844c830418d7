import Checkpoint
import Data
import Distributed
import Foundation
import Kernels
import Layers
import Quantization
import Training
import XCTest

/// A small, learnable problem: 3 classes of 8x8 images whose class shifts
/// the mean brightness, so a tiny ResNet trains in milliseconds.
func syntheticDataset(count: Int = 96, seed: UInt64 = 5) -> Dataset {
    var rng = SplitMix64(seed: seed)
    var pixels = [Float](repeating: 0, count: count * 64)
    var labels = [Int32](repeating: 0, count: count)
    for n in 0..<count {
        labels[n] = Int32(n % 3)
        for i in 0..<64 { pixels[n * 64 + i] = min(max(0.3 * Float(n % 3) + 0.2 * rng.nextUniform(), 0), 1) }
    }
    return Dataset(channels: 1, height: 8, width: 8, classes: 3, pixels: pixels, labels: labels, mean: [0.5], std: [0.3])
}

func tinyModel(seed: UInt64 = 1) -> Network {
    let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.25))
    model.initialize(seed: seed)
    return model
}

func phase(epochs: Int) -> PhaseOptions {
    var options = PhaseOptions(name: "test", epochs: epochs, globalBatch: 16, learningRate: 0.05, seed: 3)
    options.logEvery = 0
    return options
}

/// Every parameter and state value as bits, so equality is bitwise and a
/// failure message stays short.
func snapshot(_ model: Network) -> [UInt32] {
    (Array(model.store.parameters.all) + Array(model.store.state.all)).map(\.bitPattern)
}

/// W4A4 with min-max ranges from one pass over `data`.
func quantize(_ model: Network, data: Dataset) {
    QuantizationPolicy(weightBits: 4, activationBits: 4).apply(to: model)
    let images = FloatBuffer(capacity: data.count * data.sampleSize)
    var labels = [Int32](repeating: 0, count: data.count)
    labels.withUnsafeMutableBufferPointer { data.gatherBatch(0..<data.count, pixels: images.pointer, labels: $0.baseAddress!) }
    calibrate(model, communicator: SingleProcessCommunicator()) {
        _ = model.forward(FeatureMap(data: images.pointer, channels: 1, batch: data.count, height: 8, width: 8), training: false)
    }
}

final class TrainingTests: XCTestCase {
    let communicator = SingleProcessCommunicator()

    func temporaryPath(_ name: String) -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("efqat-training-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent(name).path
    }

    func testTrainingLowersTheLoss() throws {
        let model = tinyModel(), data = syntheticDataset()
        let trainer = try Trainer(model: model, data: data, options: phase(epochs: 4), communicator: communicator,
                                  log: RunLog(active: false, metricsPath: nil))
        let before = evaluate(model, on: data, communicator: communicator)
        let report = try trainer.run { _ in }
        let after = evaluate(model, on: data, communicator: communicator)
        XCTAssertEqual(report.steps, 4 * (96 / 16))
        XCTAssertLessThan(after.loss, before.loss * 0.7)
    }

    /// Saving model, quantizers, optimizer and BN counters, then restoring
    /// them into a fresh model, reproduces every value bit for bit.
    func testCheckpointRoundTripRestoresEverything() throws {
        let model = tinyModel(), data = syntheticDataset()
        quantize(model, data: data)
        let trainer = try Trainer(model: model, data: data, options: phase(epochs: 1), communicator: communicator,
                                  log: RunLog(active: false, metricsPath: nil))
        _ = try trainer.run { _ in }
        let path = temporaryPath("round.safetensors")
        try SafeTensorsFile(tensors: ModelCheckpoint.tensors(of: model, includeQuantizers: true, optimizer: trainer.optimizer))
            .write(to: path)

        let restored = tinyModel(seed: 99)
        let optimizer = SGD(layout: restored.store.parameterLayout, momentum: 0.9, weightDecay: 0)
        try ModelCheckpoint.restore(SafeTensorsFile.read(from: path), path: path, into: restored,
                                    requireQuantizers: true, optimizer: optimizer)
        XCTAssertTrue(snapshot(restored) == snapshot(model), "restored values differ")
        XCTAssertTrue(Array(optimizer.velocity.all) == Array(trainer.optimizer.velocity.all), "momentum differs")
        XCTAssertEqual(restored.batchNorms.map(\.batchesTracked), model.batchNorms.map(\.batchesTracked))
        XCTAssertEqual(model.norm("bn1").batchesTracked, 6)
    }

    /// The FP32 model file has exactly torchvision's state_dict keys.
    func testModelFileHasPyTorchNamesOnly() {
        let names = Set(ModelCheckpoint.tensors(of: tinyModel(), includeQuantizers: false, optimizer: nil).map(\.name))
        XCTAssertTrue(names.contains("layer2.0.downsample.1.num_batches_tracked"))
        XCTAssertTrue(names.contains("fc.weight"))
        XCTAssertFalse(names.contains { $0.contains("quantizer") || $0.hasPrefix("optimizer.") })
    }

    func testRestoringAnotherModelFailsClearly() throws {
        let path = temporaryPath("other.safetensors")
        try SafeTensorsFile(tensors: ModelCheckpoint.tensors(of: tinyModel(), includeQuantizers: true, optimizer: nil))
            .write(to: path)
        let wider = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.5))
        XCTAssertThrowsError(try ModelCheckpoint.restore(SafeTensorsFile.read(from: path), path: path, into: wider,
                                                         requireQuantizers: true, optimizer: nil)) { error in
            XCTAssertTrue("\(error)".contains("conv1.weight has shape [4, 1, 3, 3], this model needs [8, 1, 3, 3]"), "\(error)")
        }
    }

    /// A run stopped at an epoch end and resumed from its checkpoint ends
    /// with exactly the weights of the uninterrupted run.
    func testResumeFromEpochCheckpointIsExact() throws {
        let data = syntheticDataset()
        let log = RunLog(active: false, metricsPath: nil)
        let straight = tinyModel()
        _ = try Trainer(model: straight, data: data, options: phase(epochs: 3), communicator: communicator, log: log)
            .run { _ in }

        let path = temporaryPath("resume.safetensors")
        let first = tinyModel()
        var savedPosition = TrainingPosition()
        let interrupted = try Trainer(model: first, data: data, options: phase(epochs: 3), communicator: communicator, log: log)
        struct Stop: Error {}
        XCTAssertThrowsError(try interrupted.run { t in
            try SafeTensorsFile(tensors: ModelCheckpoint.tensors(of: first, includeQuantizers: true, optimizer: t.optimizer))
                .write(to: path)
            savedPosition = t.position
            throw Stop()
        })
        XCTAssertEqual(savedPosition, TrainingPosition(epoch: 1, step: 0))

        let second = tinyModel(seed: 42)
        let resumed = try Trainer(model: second, data: data, options: phase(epochs: 3), communicator: communicator, log: log)
        try ModelCheckpoint.restore(SafeTensorsFile.read(from: path), path: path, into: second,
                                    requireQuantizers: true, optimizer: resumed.optimizer)
        resumed.resume(at: savedPosition)
        _ = try resumed.run { _ in }
        XCTAssertTrue(snapshot(second) == snapshot(straight), "resumed run differs from the uninterrupted one")
    }

    /// SGD leaves everything outside its spans, and their momentum, untouched.
    func testOptimizerTouchesOnlyItsSpans() {
        let model = tinyModel()
        let store = model.store
        for i in store.gradients.all.indices { store.gradients.all[i] = 1 }
        let before = Array(store.parameters.all)
        let slot = model.layer("conv1").weight
        let sgd = SGD(layout: store.parameterLayout, momentum: 0.9, weightDecay: 0)
        sgd.step(parameters: store.parameters, gradients: store.gradients,
                 spans: [TrainedSpan(range: slot.offset..<(slot.offset + 9), role: .weight)], learningRate: 0.1)
        let after = Array(store.parameters.all)
        for i in after.indices {
            if (slot.offset..<(slot.offset + 9)).contains(i) {
                XCTAssertEqual(after[i], before[i] - 0.1, accuracy: 1e-6)
            } else {
                XCTAssertEqual(after[i], before[i])
                XCTAssertEqual(sgd.velocity.all[i], 0)
            }
        }
    }

    func testSchedules() {
        XCTAssertEqual(LearningRateSchedule.cosine.rate(step: 1000, totalSteps: 1000, peak: 0.1), 0, accuracy: 1e-6)
        XCTAssertEqual(LearningRateSchedule.cosine.rate(step: 20, totalSteps: 1000, peak: 0.1), 0.1, accuracy: 1e-4)
        let onecycle = (0...100).map { LearningRateSchedule.onecycle.rate(step: $0, totalSteps: 100, peak: 1) }
        XCTAssertEqual(onecycle[0], 1 / 25, accuracy: 1e-6)
        XCTAssertEqual(onecycle[30], 1, accuracy: 1e-6)
        XCTAssertLessThan(onecycle[100], 1e-4)
    }
}

extension Network {
    /// The conv or linear layer called `name` (tests reach layers by name).
    func layer(_ name: String) -> Conv2d { layers.first { $0.name == name }! }
    /// The batch-norm layer called `name`.
    func norm(_ name: String) -> BatchNorm2d { batchNorms.first { $0.name == name }! }
    /// The residual blocks, in order.
    var blocks: [BasicBlock] { units.compactMap { $0 as? BasicBlock } }
}
