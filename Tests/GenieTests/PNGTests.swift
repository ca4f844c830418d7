import Foundation
import Genie
import XCTest

/// The PNG encoder's output, decoded by Python's zlib (chunk CRCs, the
/// zlib stream with its Adler-32, the filter bytes and the pixels).
final class PNGTests: XCTestCase {
    func decodeWithPython(_ png: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("genie-\(UUID().uuidString).png").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Data(png).write(to: URL(fileURLWithPath: path))
        let script = """
            import struct, sys, zlib
            data = open(sys.argv[1], "rb").read()
            assert data[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
            pos, chunks = 8, []
            while pos < len(data):
                length, = struct.unpack(">I", data[pos:pos + 4])
                kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
                crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
                assert zlib.crc32(kind + body) == crc, kind
                chunks.append((kind, body))
                pos += 12 + length
            assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"], chunks
            w, h, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
            raw = zlib.decompress(chunks[1][1])
            channels = {0: 1, 2: 3}[colour]
            stride = w * channels + 1
            assert len(raw) == h * stride and all(raw[r * stride] == 0 for r in range(h))
            pixels = b"".join(raw[r * stride + 1:(r + 1) * stride] for r in range(h))
            print(w, h, depth, channels, list(pixels))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, path]
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let problem = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, "python3 could not decode the PNG: \(problem)")
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func testGrayAndRGBImagesDecode() throws {
        let gray: [UInt8] = [0, 1, 2, 250, 255, 128]
        XCTAssertEqual(try decodeWithPython(PNG.encode(width: 3, height: 2, channels: 1, pixels: gray)),
                       "3 2 8 1 \(gray)")
        let rgb = (0..<(2 * 2 * 3)).map { UInt8($0 * 20) }
        XCTAssertEqual(try decodeWithPython(PNG.encode(width: 2, height: 2, channels: 3, pixels: rgb)),
                       "2 2 8 3 \(rgb)")
    }

    /// More than one stored deflate block (65535 bytes each).
    func testLargeImageSpansSeveralDeflateBlocks() throws {
        let pixels = (0..<(300 * 250)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let decoded = try decodeWithPython(PNG.encode(width: 300, height: 250, channels: 1, pixels: pixels))
        XCTAssert(decoded.hasPrefix("300 250 8 1 "), String(decoded.prefix(40)))
        XCTAssertEqual(decoded, "300 250 8 1 \(pixels)")
    }

    /// Two 2x2 images side by side with 1-pixel gaps, each stretched to 0...255.
    func testSampleGrid() throws {
        let images: [Float] = [-1, 0, 0, 1, 5, 5, 5, 7]
        let png = sampleGridPNG(images: images, channels: 1, height: 2, width: 2, columns: 8)
        let row0: [UInt8] = [0, 0, 0, 0, 0, 0, 0]
        let row1: [UInt8] = [0, 0, 128, 0, 0, 0, 0]
        let row2: [UInt8] = [0, 128, 255, 0, 0, 255, 0]
        XCTAssertEqual(try decodeWithPython(png), "7 4 8 1 \(row0 + row1 + row2 + row0)")
    }
}
