import Foundation

/// The safetensors layout, as this module writes it:
///
///     [8 bytes]  header length N, little-endian UInt64
///     [N bytes]  JSON header, padded with spaces to a multiple of 8
///     [rest]     data buffer: each tensor's bytes, packed in order
enum SafeTensorsFormat {
    static let checksumKey = "efqat.crc32"
    static let versionKey = "efqat.format"
    static let version = "1"
    /// The reference implementation refuses larger headers too.
    static let maxHeaderSize = 100_000_000
    /// Padding the header to this keeps every tensor's data aligned for
    /// readers that map the file into memory.
    static let alignment = 8
}

extension SafeTensorsFile {
    /// The file's bytes as chunks to write one after the other: header
    /// length and header first, then each tensor's bytes, uncopied.
    func encoded(path: String) throws -> [[UInt8]] {
        var entries: [String: HeaderEntry] = [:]
        var checksum = CRC32()
        var offset = 0
        for tensor in tensors {
            guard entries[tensor.name] == nil else {
                throw CheckpointError(path: path, reason: .duplicateTensorName(tensor.name))
            }
            entries[tensor.name] = HeaderEntry(dtype: tensor.dtype.rawValue, shape: tensor.shape,
                                               dataOffsets: [offset, offset + tensor.bytes.count])
            offset += tensor.bytes.count
            checksum.update(tensor.bytes)
        }
        var metadata = self.metadata
        metadata[SafeTensorsFormat.checksumKey] = checksum.hexValue
        metadata[SafeTensorsFormat.versionKey] = SafeTensorsFormat.version

        // Sorted keys make the same content give byte-identical files.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Strings and integers always encode, so this cannot throw.
        var header = Array(try! encoder.encode(Header(metadata: metadata, entries: entries)))
        let padding = (SafeTensorsFormat.alignment - header.count % SafeTensorsFormat.alignment)
            % SafeTensorsFormat.alignment
        header += repeatElement(UInt8(ascii: " "), count: padding)

        let length = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) }
        return [length + header] + tensors.map(\.bytes)
    }

    /// Parses and verifies a whole file's bytes, as `read(from:)` does;
    /// `path` only names the file in errors.
    public init(decoding bytes: [UInt8], path: String) throws {
        func failure(_ reason: CheckpointError.Reason) -> CheckpointError {
            CheckpointError(path: path, reason: reason)
        }
        guard bytes.count >= 8 else {
            throw failure(.truncated(fileSize: bytes.count, needed: 8))
        }
        let headerSize = bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard headerSize <= SafeTensorsFormat.maxHeaderSize else {
            throw failure(.headerTooLarge(bytes: headerSize, limit: SafeTensorsFormat.maxHeaderSize))
        }
        let bufferStart = 8 + Int(headerSize)
        guard bytes.count >= bufferStart else {
            throw failure(.truncated(fileSize: bytes.count, needed: bufferStart))
        }
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(bytes[8..<bufferStart]))
        } catch {
            throw failure(.badHeader(oneLineSummary(of: error)))
        }

        let buffer = bytes[bufferStart...]
        let placements = try TensorPlacement.validated(header.entries, bufferSize: buffer.count,
                                                        failure: failure)

        var metadata = header.metadata
        if let version = metadata.removeValue(forKey: SafeTensorsFormat.versionKey),
           version != SafeTensorsFormat.version {
            throw failure(.unsupportedFormatVersion(version))
        }
        if let stored = metadata.removeValue(forKey: SafeTensorsFormat.checksumKey) {
            var checksum = CRC32()
            buffer.withUnsafeBytes { checksum.update($0) }
            guard stored == checksum.hexValue else {
                throw failure(.checksumMismatch(stored: stored, computed: checksum.hexValue))
            }
        }

        self.init(
            tensors: placements.map { placement in
                let start = bufferStart + placement.range.lowerBound
                return TensorRecord(name: placement.name, dtype: placement.dtype, shape: placement.shape,
                                    bytes: Array(bytes[start..<(start + placement.range.count)]))
            },
            metadata: metadata)
    }
}

/// A header entry that has passed every check, with its byte range in the
/// data buffer.
private struct TensorPlacement {
    let name: String
    let dtype: DType
    let shape: [Int]
    let range: Range<Int>

    /// Checks every entry (known dtype, offsets in bounds and matching the
    /// shape) and that together they tile the buffer exactly: no gaps, no
    /// overlaps, no bytes left over. Returns them in buffer order, which is
    /// the order they were written in. `failure` turns a problem into the
    /// error to throw.
    static func validated(_ entries: [String: HeaderEntry], bufferSize: Int,
                          failure: (CheckpointError.Reason) -> CheckpointError) throws -> [TensorPlacement] {
        var placements: [TensorPlacement] = []
        // In name order, so a file with several faults always reports the same one.
        for (name, entry) in entries.sorted(by: { $0.key < $1.key }) {
            guard let dtype = DType(rawValue: entry.dtype) else {
                throw failure(.unsupportedDType(tensor: name, dtype: entry.dtype))
            }
            guard entry.dataOffsets.count == 2, 0 <= entry.dataOffsets[0],
                  entry.dataOffsets[0] <= entry.dataOffsets[1] else {
                throw failure(.badLayout("tensor '\(name)' has data_offsets \(entry.dataOffsets), "
                                         + "expected [begin, end] with 0 <= begin <= end"))
            }
            let range = entry.dataOffsets[0]..<entry.dataOffsets[1]
            guard range.upperBound <= bufferSize else {
                throw failure(.tensorOutOfBounds(tensor: name, range: range, bufferSize: bufferSize))
            }
            guard let needed = dtype.byteCount(shape: entry.shape) else {
                throw failure(.badHeader("tensor '\(name)' has an impossible shape \(entry.shape)"))
            }
            guard needed == range.count else {
                throw failure(.tensorSizeMismatch(tensor: name, expected: needed, actual: range.count))
            }
            placements.append(TensorPlacement(name: name, dtype: dtype, shape: entry.shape, range: range))
        }

        placements.sort { ($0.range.lowerBound, $0.range.upperBound, $0.name)
            < ($1.range.lowerBound, $1.range.upperBound, $1.name) }
        var end = 0
        var previous = "the start of the buffer"
        for placement in placements {
            if placement.range.lowerBound < end {
                throw failure(.badLayout("tensor '\(placement.name)' overlaps \(previous)"))
            }
            if placement.range.lowerBound > end {
                throw failure(.badLayout("\(placement.range.lowerBound - end) unused bytes "
                                         + "between \(previous) and tensor '\(placement.name)'"))
            }
            end = placement.range.upperBound
            previous = "tensor '\(placement.name)'"
        }
        guard end == bufferSize else {
            throw failure(.badLayout("\(bufferSize - end) unused bytes after \(previous)"))
        }
        return placements
    }
}

/// One line out of a JSON decoding error: what is wrong, and where.
private func oneLineSummary(of error: Error) -> String {
    guard let error = error as? DecodingError else { return "\(error)" }
    let context: DecodingError.Context
    var problem: String
    switch error {
    case let .keyNotFound(key, keyContext):
        context = keyContext
        problem = "missing key '\(key.stringValue)'"
    case let .dataCorrupted(errorContext), let .typeMismatch(_, errorContext), let .valueNotFound(_, errorContext):
        context = errorContext
        problem = errorContext.debugDescription
    @unknown default:
        return "\(error)"
    }
    let location = context.codingPath.map(\.stringValue).joined(separator: ".")
    if !location.isEmpty { problem = "\(location): \(problem)" }
    return problem
}
