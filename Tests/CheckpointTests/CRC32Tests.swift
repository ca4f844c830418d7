import Checkpoint
import XCTest

final class CRC32Tests: XCTestCase {
    private func crc(_ text: String) -> CRC32 {
        var crc = CRC32()
        crc.update(Array(text.utf8))
        return crc
    }

    func testMatchesZlib() {
        // The values Python's zlib.crc32 gives for these inputs.
        XCTAssertEqual(crc("").value, 0)
        XCTAssertEqual(crc("123456789").value, 0xCBF4_3926)
        XCTAssertEqual(crc("The quick brown fox jumps over the lazy dog").value, 0x414F_A339)
        XCTAssertEqual(crc("abc").hexValue, "352441c2")
    }

    func testHexValueKeepsLeadingZeros() {
        XCTAssertEqual(crc("x31").hexValue, "001685f0")
    }

    func testFeedingInPiecesGivesTheSameValue() {
        let bytes = (0..<1_000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ $0 >> 3) }
        var whole = CRC32()
        whole.update(bytes)
        for cut in [0, 1, 7, 8, 9, 500, 999, 1_000] {
            var pieces = CRC32()
            pieces.update(Array(bytes[..<cut]))
            pieces.update(Array(bytes[cut...]))
            XCTAssertEqual(pieces.value, whole.value, "cut at \(cut)")
        }
    }
}
