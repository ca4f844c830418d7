/// CRC-32 with the zlib/IEEE polynomial, the same value as Python's
/// `zlib.crc32`, so a checkpoint's checksum can be verified from Python.
///
/// Checkpoints are tens of megabytes, so this uses "slicing-by-8": eight
/// lookup tables let each step consume eight bytes instead of one.
public struct CRC32: Sendable {
    private var state: UInt32 = 0xFFFF_FFFF

    public init() {}

    /// The checksum of all bytes fed so far.
    public var value: UInt32 { ~state }

    /// The checksum as Python prints it with `format(crc, "08x")`.
    public var hexValue: String {
        let hex = String(value, radix: 16)
        return String(repeating: "0", count: 8 - hex.count) + hex
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        var crc = state
        var offset = 0
        CRC32.table.withUnsafeBufferPointer { table in
            // Eight bytes at a time: table k gives the CRC contribution of a
            // byte that is followed by k more bytes of the block.
            while bytes.count - offset >= 8 {
                let low = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) ^ crc
                let high = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
                crc = table[7 * 256 + Int(low & 0xFF)]
                    ^ table[6 * 256 + Int((low >> 8) & 0xFF)]
                    ^ table[5 * 256 + Int((low >> 16) & 0xFF)]
                    ^ table[4 * 256 + Int(low >> 24)]
                    ^ table[3 * 256 + Int(high & 0xFF)]
                    ^ table[2 * 256 + Int((high >> 8) & 0xFF)]
                    ^ table[1 * 256 + Int((high >> 16) & 0xFF)]
                    ^ table[Int(high >> 24)]
                offset += 8
            }
            // The last few bytes one at a time.
            while offset < bytes.count {
                crc = table[Int((crc ^ UInt32(bytes[offset])) & 0xFF)] ^ (crc >> 8)
                offset += 1
            }
        }
        state = crc
    }

    /// Eight 256-entry tables, one after the other. Table 0 is the classic
    /// byte-at-a-time table for the reflected polynomial 0xEDB88320; table k
    /// advances table k-1's entries by one more zero byte.
    private static let table: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 8 * 256)
        for byte in 0..<256 {
            var crc = UInt32(byte)
            for _ in 0..<8 {
                crc = crc & 1 == 1 ? (crc >> 1) ^ 0xEDB8_8320 : crc >> 1
            }
            table[byte] = crc
        }
        for index in 256..<(8 * 256) {
            let previous = table[index - 256]
            table[index] = (previous >> 8) ^ table[Int(previous & 0xFF)]
        }
        return table
    }()
}
