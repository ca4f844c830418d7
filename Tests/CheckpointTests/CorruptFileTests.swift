import Checkpoint
import Foundation
import XCTest

/// Damaged or foreign files must be refused with a message that says what
/// is wrong, never loaded.
final class CorruptFileTests: CheckpointTestCase {
    private func read(_ path: String) throws -> SafeTensorsFile {
        try SafeTensorsFile.read(from: path)
    }

    func testFlippedPayloadByteIsACorruptFile() throws {
        let target = path("model.safetensors")
        try sampleCheckpoint().write(to: target)
        var bytes = try contents(of: target)
        bytes[bytes.count - 3] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: target))

        guard let reason = failureReason(path: target, { try read(target) }),
              case .checksumMismatch = reason else {
            return XCTFail("expected a checksum mismatch")
        }
        XCTAssertTrue("\(reason)".hasPrefix("checksum mismatch: file is corrupt"), "\(reason)")
    }

    func testMissingFile() {
        let target = path("nothing-here.safetensors")
        XCTAssertEqual(failureReason(path: target) { try read(target) }, .fileNotFound)
    }

    func testTruncatedFiles() throws {
        let target = path("model.safetensors")
        try sampleCheckpoint().write(to: target)
        let bytes = try contents(of: target)
        let bufferStart = 8 + headerLength(of: bytes)

        try Data().write(to: URL(fileURLWithPath: target))
        XCTAssertEqual(failureReason(path: target) { try read(target) }, .truncated(fileSize: 0, needed: 8))

        try Data(bytes[..<100]).write(to: URL(fileURLWithPath: target))
        XCTAssertEqual(failureReason(path: target) { try read(target) },
                       .truncated(fileSize: 100, needed: bufferStart))

        // Cut inside the data: the last tensor in the buffer runs past its end.
        try Data(bytes.dropLast()).write(to: URL(fileURLWithPath: target))
        let bufferSize = bytes.count - bufferStart
        XCTAssertEqual(failureReason(path: target) { try read(target) },
                       .tensorOutOfBounds(tensor: "fc.scale", range: (bufferSize - 8)..<bufferSize,
                                          bufferSize: bufferSize - 1))
    }

    func testTextFileClaimsAnAbsurdHeaderLength() throws {
        let target = path("notes.safetensors")
        try "just some notes, not a checkpoint".write(toFile: target, atomically: false, encoding: .utf8)
        guard case .headerTooLarge? = failureReason(path: target, { try read(target) }) else {
            return XCTFail("expected header too large")
        }
    }

    func testGarbageHeaders() throws {
        let target = path("model.safetensors")
        for garbage in ["not json at all", "[1, 2, 3]", #"{"w": {"dtype": "F32"}}"#,
                        #"{"w": {"dtype": "F32", "shape": ["two"], "data_offsets": [0, 8]}}"#,
                        #"{"__metadata__": {"epoch": 3}}"#] {
            try writeRawFile(header: garbage, to: target)
            guard case .badHeader? = failureReason(path: target, { try read(target) }) else {
                XCTFail("expected a bad header for \(garbage)")
                continue
            }
        }
    }

    func testUnsupportedDType() throws {
        let target = path("model.safetensors")
        try writeRawFile(header: #"{"w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}"#,
                         buffer: [0, 0, 0, 0], to: target)
        XCTAssertEqual(failureReason(path: target) { try read(target) },
                       .unsupportedDType(tensor: "w", dtype: "BF16"))
    }

    func testSizeMustMatchDTypeAndShape() throws {
        let target = path("model.safetensors")
        try writeRawFile(header: #"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
                         buffer: Array(repeating: 0, count: 8), to: target)
        XCTAssertEqual(failureReason(path: target) { try read(target) },
                       .tensorSizeMismatch(tensor: "w", expected: 12, actual: 8))
    }

    func testTensorsMustTileTheBufferExactly() throws {
        let target = path("model.safetensors")
        let layouts = [
            "overlap": #""a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}, "#
                + #""b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}"#,
            "gap": #""a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, "#
                + #""b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}"#,
            "leftover": #""a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}"#,
            "backwards": #""a": {"dtype": "U8", "shape": [0], "data_offsets": [8, 0]}"#,
        ]
        for (problem, entries) in layouts {
            try writeRawFile(header: "{\(entries)}", buffer: Array(repeating: 7, count: 8), to: target)
            guard case .badLayout? = failureReason(path: target, { try read(target) }) else {
                XCTFail("expected a bad layout for \(problem)")
                continue
            }
        }
    }

    func testNewerFormatVersionIsRefused() throws {
        let target = path("model.safetensors")
        try writeRawFile(header: #"{"__metadata__": {"efqat.format": "2"}}"#, to: target)
        XCTAssertEqual(failureReason(path: target) { try read(target) }, .unsupportedFormatVersion("2"))
    }

    func testFileWithoutIntegrityMetadataIsAccepted() throws {
        // As written by other tools, e.g. Python's safetensors.
        let target = path("foreign.safetensors")
        try writeRawFile(header: #"{"w": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}"#,
                         buffer: [1, 0, 0, 0, 255, 255, 255, 255], to: target)
        let file = try read(target)
        XCTAssertEqual(file.metadata, [:])
        XCTAssertEqual(try file["w"]?.values(as: Int32.self), [1, -1])
    }
}
