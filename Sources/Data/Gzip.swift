import CZlib

/// Gzip decompression through zlib, for data sets shipped as `.gz` files.
enum Gzip {
    /// True if `bytes` start with the gzip signature 1f 8b.
    static func isCompressed(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B
    }

    /// The decompressed contents of gzip data read from `file` (named in
    /// errors). Several members one after the other (`cat a.gz b.gz`)
    /// decompress to their concatenation, as with `gunzip`.
    static func decompress(_ compressed: [UInt8], file: String) throws -> [UInt8] {
        func corrupt(_ detail: String) -> DataError {
            DataError(file: file, problem: .corruptGzip(detail))
        }
        guard isCompressed(compressed) else { throw corrupt("no gzip header") }
        var stream = z_stream()
        // 15 + 16: the largest window, and a gzip (not zlib) header.
        guard inflateInit2_(&stream, 15 + 16, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw DataError(file: file, problem: .unreadable(reason: "zlib cannot start inflating"))
        }
        defer { inflateEnd(&stream) }

        var output = [UInt8](repeating: 0, count: initialCapacity(compressed))
        var produced = 0
        try compressed.withUnsafeBufferPointer { input in
            var consumed = 0
            while true {
                if produced == output.count {
                    output += repeatElement(0, count: output.count)
                }
                let offered = min(input.count - consumed, Int(UInt32.max))
                stream.next_in = UnsafeMutablePointer(mutating: input.baseAddress! + consumed)
                stream.avail_in = UInt32(offered)
                let status = output.withUnsafeMutableBufferPointer { buffer in
                    let room = min(buffer.count - produced, Int(UInt32.max))
                    stream.next_out = buffer.baseAddress! + produced
                    stream.avail_out = UInt32(room)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    produced += room - Int(stream.avail_out)
                    return status
                }
                consumed += offered - Int(stream.avail_in)
                switch status {
                case Z_OK:
                    continue
                case Z_STREAM_END:
                    let rest = input.count - consumed
                    if rest == 0 { return }
                    guard rest >= 2 && input[consumed] == 0x1F && input[consumed + 1] == 0x8B else {
                        throw corrupt("\(rest) bytes of other data after the compressed data")
                    }
                    inflateReset(&stream)  // the next member
                case Z_BUF_ERROR where consumed == input.count:
                    throw corrupt("the compressed data ends early (truncated?)")
                case Z_BUF_ERROR where produced == output.count:
                    continue  // no room left: the output grows
                case Z_MEM_ERROR:
                    throw DataError(file: file, problem: .unreadable(reason: "out of memory while decompressing"))
                default:
                    throw corrupt(stream.msg.map { String(cString: $0) } ?? "zlib error \(status)")
                }
            }
        }
        output.removeLast(output.count - produced)
        return output
    }

    /// The decompressed size that the last member's trailer states (modulo
    /// 2^32), capped at deflate's largest ratio so a damaged trailer cannot
    /// ask for a huge allocation; the output grows past it if need be.
    private static func initialCapacity(_ compressed: [UInt8]) -> Int {
        guard compressed.count >= 18 else { return 1024 }
        let stated = compressed.suffix(4).reversed().reduce(0) { $0 << 8 | Int($1) }
        return max(1024, min(stated, compressed.count * 1032))
    }
}
