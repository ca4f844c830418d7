import Checkpoint
import Foundation
import Layers
import Training
import XCTest

/// Checkpoint files named by position, the kept window, and `--resume
/// auto`'s choice of the newest checkpoint that verifies.
final class CheckpointFolderTests: XCTestCase {
    private var folder = ""

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("efqat-folder-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: folder)
    }

    private func position(_ phase: CheckpointPosition.Phase, _ epoch: Int, _ step: Int) -> CheckpointPosition {
        CheckpointPosition(phase: phase, epoch: epoch, step: step)
    }

    private func checkpoint(_ p: CheckpointPosition) -> SafeTensorsFile {
        var record = self.record(p.phase == .fp32 ? .fp32Checkpoint : .qatCheckpoint)
        record.training = RunMetadata.TrainingState(position: TrainingPosition(epoch: p.epoch, step: p.step),
                                                    microBatches: 1, trainSamples: 64)
        return SafeTensorsFile(tensors: [TensorRecord(name: "w", shape: [2], values: [Float(p.epoch), Float(p.step)])],
                               metadata: record.entry)
    }

    private func record(_ content: RunMetadata.Content) -> RunMetadata {
        RunMetadata(content: content, model: ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 10),
                    dataset: .mnist5k)
    }

    private func listing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
    }

    func testNamesStateThePositionAndSortInRunOrder() {
        let positions = [position(.fp32, 0, 4), position(.fp32, 1, 0), position(.qat, 0, 12), position(.qat, 2, 0),
                         position(.qat, 10, 3)]
        XCTAssertEqual(positions[2].fileName, "checkpoint-qat-e0000-s000012.safetensors")
        XCTAssertEqual(positions.map(\.fileName).map(CheckpointPosition.init(fileName:)), positions)
        XCTAssertEqual(positions.sorted(), positions)
        XCTAssertEqual(positions.map(\.fileName).sorted(), positions.map(\.fileName), "a listing sorts in run order")
        for other in ["checkpoint.safetensors", "checkpoint-int8-e0001-s000002.safetensors", "final.safetensors",
                      ".checkpoint-qat-e0000-s000004.safetensors.tmp-12", "checkpoint-qat-e1-s2.json"] {
            XCTAssertNil(CheckpointPosition(fileName: other), other)
        }
    }

    func testSavingKeepsTheNewestAndRemovesLaterOnesAndInterruptedSaves() throws {
        let checkpoints = CheckpointFolder(path: folder, keep: 2)
        var warnings: [String] = []
        try Data().write(to: URL(fileURLWithPath: folder + "/.checkpoint-qat-e0000-s000004.safetensors.tmp-99"))
        for p in [position(.fp32, 0, 4), position(.fp32, 1, 0), position(.qat, 0, 4)] {
            try checkpoints.save(checkpoint(p), at: p) { warnings.append($0) }
        }
        XCTAssertEqual(try listing(), ["checkpoint-fp32-e0001-s000000.safetensors", "checkpoint-qat-e0000-s000004.safetensors"])

        // A run that went back to an older position: what came after it is gone.
        try checkpoints.save(checkpoint(position(.fp32, 0, 4)), at: position(.fp32, 0, 4)) { warnings.append($0) }
        XCTAssertEqual(try listing(), ["checkpoint-fp32-e0000-s000004.safetensors"])
        XCTAssertEqual(warnings, [])
    }

    func testNewestValidSkipsDamagedCheckpointsWithAWarningEach() throws {
        let checkpoints = CheckpointFolder(path: folder, keep: 5)
        let positions = [position(.fp32, 1, 0), position(.qat, 0, 4), position(.qat, 0, 8), position(.qat, 1, 0)]
        for p in positions { try checkpoints.save(checkpoint(p), at: p) { _ in } }
        let path = { (p: CheckpointPosition) in self.folder + "/" + p.fileName }
        var damaged = try Data(contentsOf: URL(fileURLWithPath: path(positions[3])))
        damaged[damaged.count - 1] ^= 1
        try damaged.write(to: URL(fileURLWithPath: path(positions[3])))                       // checksum
        try Data(damaged.prefix(20)).write(to: URL(fileURLWithPath: path(positions[2])))      // truncated
        try SafeTensorsFile(metadata: record(.quantizedModel).entry).write(to: path(positions[1]))  // not resumable

        var warnings: [String] = []
        let found = checkpoints.newestValid { warnings.append($0) }
        XCTAssertEqual(found?.path, path(positions[0]))
        XCTAssertEqual(found.map { try? SafeTensorsFile(decoding: $0.bytes, path: "") }, checkpoint(positions[0]))
        XCTAssertEqual(warnings.count, 3, "\(warnings)")
        XCTAssertTrue(warnings[0].contains("skipping \(path(positions[3])): ") && warnings[0].contains("checksum mismatch"), warnings[0])
        XCTAssertTrue(warnings[1].contains("truncated"), warnings[1])
        XCTAssertTrue(warnings[2].contains("not a training checkpoint"), warnings[2])

        try FileManager.default.removeItem(atPath: path(positions[0]))
        XCTAssertNil(checkpoints.newestValid { _ in }, "nothing valid: start afresh")
    }

    func testAnOutputFolderThatCannotBeMadeIsReportedClearly() throws {
        try Data().write(to: URL(fileURLWithPath: folder + "/plain"))
        let checkpoints = CheckpointFolder(path: folder + "/plain/run", keep: 1)
        XCTAssertThrowsError(try checkpoints.checkWritable()) { error in
            XCTAssertEqual("\(error)", "cannot make the output folder \(self.folder)/plain/run: Not a directory")
        }
        XCTAssertNoThrow(try CheckpointFolder(path: folder + "/new/run", keep: 1).checkWritable())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder + "/new/run"), [], "the probe is removed")
    }
}
