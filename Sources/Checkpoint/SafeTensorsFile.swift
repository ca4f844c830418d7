/// A checkpoint: named tensors in order plus string metadata, stored as a
/// safetensors file that Python's `safetensors` package opens as is.
///
/// `write(to:)` adds a CRC-32 of the data and replaces the target
/// atomically; `read(from:)` checks the whole layout and the CRC before
/// handing anything back, so a resumed run never trains on a damaged file.
public struct SafeTensorsFile: Equatable, Sendable {
    /// Tensors in the order their bytes are laid out in the file.
    public var tensors: [TensorRecord]
    /// Free-form metadata. The integrity keys `efqat.crc32` and
    /// `efqat.format` are managed by this type: set on write (overriding
    /// any given here), checked and removed on read.
    public var metadata: [String: String]

    public init(tensors: [TensorRecord] = [], metadata: [String: String] = [:]) {
        self.tensors = tensors
        self.metadata = metadata
    }

    /// The tensor called `name`, if there is one.
    public subscript(name: String) -> TensorRecord? {
        tensors.first { $0.name == name }
    }

    /// Writes the checkpoint to `path`. Afterwards the file holds either
    /// its previous content or the complete new one, never a mix.
    public func write(to path: String) throws {
        try PosixFile.writeAtomically(encoded(path: path), to: path)
    }

    /// Reads and verifies the checkpoint at `path`.
    public static func read(from path: String) throws -> SafeTensorsFile {
        try SafeTensorsFile(decoding: readBytes(from: path), path: path)
    }

    /// The file's bytes as they are, unverified: for handing a checkpoint
    /// to processes that cannot open it themselves (another machine's
    /// disk), which then verify it with `init(decoding:path:)`.
    public static func readBytes(from path: String) throws -> [UInt8] {
        try PosixFile.readAll(path)
    }
}
