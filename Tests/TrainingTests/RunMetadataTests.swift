import Checkpoint
import Data
import Layers
import Training
import XCTest

/// The `efqat.run` record: one JSON value that reads back equal, and a
/// clear refusal of what is not one.
final class RunMetadataTests: XCTestCase {
    func testRecordReadsBackEqualFromAFile() throws {
        var record = RunMetadata(content: .qatCheckpoint,
                                 model: ModelSpec(architecture: .mobilenetV2, inputChannels: 1, classes: 10,
                                                  widthMultiplier: 0.35),
                                 dataset: .fashionMNIST)
        record.seed = 7
        record.globalBatch = 128
        record.worldSize = 8
        record.fp32Accuracy = 0.9312
        record.ptqAccuracy = .nan  // a run whose PTQ stage was not evaluated
        record.layerBits = ["features.0.0": "W8A-", "classifier.1": "W8A8"]
        record.training = RunMetadata.TrainingState(position: TrainingPosition(epoch: 2, step: 17), microBatches: 8,
                                                    trainSamples: 60000)
        record.efqat = RunMetadata.EfqatSelection(settings: "cwpn p=0.1 refresh=epoch", selectedAtStep: 938)
        var phase = PhaseOptions(name: "fp32", epochs: 30, globalBatch: 128, learningRate: 0.1, seed: 7)
        phase.augmentation = Augmentation(maxShift: 2, flip: true)
        record.fp32Recipe = RunMetadata.FP32Recipe(phase: phase, trainSamples: nil, zeroInitResidual: false)

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("run-\(UUID().uuidString).safetensors").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try SafeTensorsFile(metadata: record.entry).write(to: path)
        let file = try SafeTensorsFile.read(from: path)
        let back = try XCTUnwrap(try RunMetadata.of(file, path: path))
        XCTAssert(back.ptqAccuracy!.isNaN)
        record.ptqAccuracy = nil
        var backWithoutNaN = back
        backWithoutNaN.ptqAccuracy = nil
        XCTAssertEqual(backWithoutNaN, record)
        XCTAssertEqual(back.content.resumablePhase, .qat)
        // Snake-case keys, as the docs list them.
        let json = try XCTUnwrap(file.metadata[RunMetadata.key])
        for key in ["\"input_channels\":1", "\"selected_at_step\":938", "\"augment_flip\":true", "\"micro_batches\":8"] {
            XCTAssert(json.contains(key), "\(key) in \(json)")
        }
    }

    func testFilesWithoutOrWithADamagedRecord() throws {
        XCTAssertNil(try RunMetadata.of(SafeTensorsFile(metadata: ["other": "x"]), path: "plain.safetensors"))
        XCTAssertThrowsError(try RunMetadata.required(SafeTensorsFile(), path: "plain.safetensors")) { error in
            XCTAssertEqual("\(error)", "plain.safetensors: no efqat.run metadata; expected a file written by efqat-train")
        }
        let damaged = SafeTensorsFile(metadata: [RunMetadata.key: "{\"content\": \"fp32\"}"])
        XCTAssertThrowsError(try RunMetadata.of(damaged, path: "d.safetensors")) { error in
            XCTAssert("\(error)".hasPrefix("d.safetensors: its efqat.run metadata does not describe an efqat-train file"),
                      "\(error)")
        }
    }
}
