import Checkpoint
import Foundation
import XCTest

final class RoundTripTests: CheckpointTestCase {
    func testEveryDTypeAndMetadataSurviveARoundTrip() throws {
        let original = sampleCheckpoint()
        try original.write(to: path("model.safetensors"))
        let loaded = try SafeTensorsFile.read(from: path("model.safetensors"))

        XCTAssertEqual(loaded, original)
        XCTAssertEqual(Set(loaded.tensors.map(\.dtype)), Set(DType.allCases))
        XCTAssertEqual(try loaded["conv1.weight"]?.values(as: Float.self), [0, 1.5, -2, 3.25, 1e-3, .infinity])
        XCTAssertEqual(try loaded["conv1.bias"]?.values(as: Double.self), [0.1, -0.2, .pi])
        XCTAssertEqual(try loaded["step"]?.values(as: Int64.self), [12_345_678_901_234])
        XCTAssertEqual(try loaded["bn.num_batches_tracked"]?.values(as: Int32.self), [.min, -1, 0, .max])
        XCTAssertEqual(try loaded["mask"]?.values(as: UInt8.self), [0, 1, 2, 254, 255])
        XCTAssertEqual(try loaded["empty"]?.values(as: Float.self), [])
        XCTAssertEqual(loaded["empty"]?.shape, [0, 4])
        XCTAssertEqual(loaded["step"]?.shape, [])
    }

    func testSameContentGivesByteIdenticalFiles() throws {
        var first = sampleCheckpoint()
        var second = sampleCheckpoint()
        // Dictionaries built in a different order may iterate differently.
        first.metadata = [:]
        second.metadata = [:]
        for index in 0..<50 { first.metadata["key\(index)"] = "\(index)" }
        for index in (0..<50).reversed() { second.metadata["key\(index)"] = "\(index)" }

        try first.write(to: path("first.safetensors"))
        try second.write(to: path("second.safetensors"))
        XCTAssertEqual(try contents(of: path("first.safetensors")), try contents(of: path("second.safetensors")))
    }

    func testHeaderIsPaddedSoTheDataStartsAligned() throws {
        for nameLength in 1...8 {
            let file = SafeTensorsFile(tensors: [
                TensorRecord(name: String(repeating: "w", count: nameLength), shape: [1], values: [Float(1)]),
            ])
            try file.write(to: path("aligned.safetensors"))
            let bytes = try contents(of: path("aligned.safetensors"))
            let headerLength = headerLength(of: bytes)
            XCTAssertEqual((8 + headerLength) % 8, 0)
            XCTAssertEqual(bytes.count, 8 + headerLength + 4)
        }
    }

    func testWriterAddsChecksumAndFormatVersion() throws {
        try sampleCheckpoint().write(to: path("model.safetensors"))
        let bytes = try contents(of: path("model.safetensors"))
        let headerLength = headerLength(of: bytes)
        let header = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any])
        let metadata = try XCTUnwrap(header["__metadata__"] as? [String: String])

        var crc = CRC32()
        crc.update(Array(bytes[(8 + headerLength)...]))
        XCTAssertEqual(metadata["efqat.crc32"], crc.hexValue)
        XCTAssertEqual(metadata["efqat.format"], "1")
        XCTAssertEqual(metadata["epoch"], "3")
    }

    func testAskingForTheWrongElementTypeFails() {
        let tensor = TensorRecord(name: "step", shape: [], values: [Int64(7)])
        XCTAssertThrowsError(try tensor.values(as: Float.self)) { error in
            XCTAssertEqual((error as? CheckpointError)?.reason,
                           .dtypeMismatch(tensor: "step", stored: .i64, requested: .f32))
            XCTAssertEqual("\(error)", "tensor 'step' holds I64 values, not F32")
        }
    }

    func testDuplicateTensorNamesAreRefusedBeforeWriting() {
        let target = path("model.safetensors")
        let file = SafeTensorsFile(tensors: [
            TensorRecord(name: "w", shape: [1], values: [Float(1)]),
            TensorRecord(name: "w", shape: [1], values: [Float(2)]),
        ])
        XCTAssertEqual(failureReason(path: target) { try file.write(to: target) }, .duplicateTensorName("w"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: target))
    }
}
