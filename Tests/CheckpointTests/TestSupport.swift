import Checkpoint
import Foundation
import XCTest

/// A test case with a fresh, empty folder for its files, removed afterwards.
class CheckpointTestCase: XCTestCase {
    private(set) var folder = ""

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("checkpoint-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try FileManager.default.removeItem(atPath: folder)
    }

    /// A path for `name` inside this test's folder.
    func path(_ name: String) -> String { "\(folder)/\(name)" }

    /// One tensor of every dtype, a scalar, an empty tensor and metadata
    /// that needs JSON escaping.
    func sampleCheckpoint() -> SafeTensorsFile {
        SafeTensorsFile(
            tensors: [
                TensorRecord(name: "conv1.weight", shape: [2, 3],
                             values: [Float(0), 1.5, -2, 3.25, 1e-3, .infinity]),
                TensorRecord(name: "conv1.bias", shape: [3], values: [0.1, -0.2, Double.pi]),
                TensorRecord(name: "step", shape: [], values: [Int64(12_345_678_901_234)]),
                TensorRecord(name: "bn.num_batches_tracked", shape: [2, 2],
                             values: [Int32.min, -1, 0, Int32.max]),
                TensorRecord(name: "mask", shape: [5], values: [UInt8(0), 1, 2, 254, 255]),
                TensorRecord(name: "empty", shape: [0, 4], values: [Float]()),
                TensorRecord(name: "fc.scale", shape: [1], values: [Int64.min]),
            ],
            metadata: ["epoch": "3", "note": "héllo \"quoted\" \\ a/b\ttab"])
    }

    /// Runs `body`, which must throw a `CheckpointError` naming `path`, and
    /// returns that error's reason.
    func failureReason(path: String, file: StaticString = #filePath, line: UInt = #line,
                       _ body: () throws -> Any) -> CheckpointError.Reason? {
        do {
            _ = try body()
            XCTFail("expected a CheckpointError", file: file, line: line)
        } catch let error as CheckpointError {
            XCTAssertTrue(error.description.hasPrefix("checkpoint \(path): "),
                          "message should name the file: \(error)", file: file, line: line)
            XCTAssertFalse(error.description.contains("\n"), "message should be one line: \(error)",
                           file: file, line: line)
            return error.reason
        } catch {
            XCTFail("expected a CheckpointError, got \(error)", file: file, line: line)
        }
        return nil
    }

    /// Writes a file with a hand-made JSON header (unpadded) and buffer, to
    /// test how reading copes with files this module would never write.
    func writeRawFile(header: String, buffer: [UInt8] = [], to path: String) throws {
        let json = Array(header.utf8)
        let length = withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) }
        try Data(length + json + buffer).write(to: URL(fileURLWithPath: path))
    }

    /// The little-endian header length a safetensors file starts with.
    func headerLength(of bytes: [UInt8]) -> Int {
        bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
    }

    func contents(of path: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }
}
