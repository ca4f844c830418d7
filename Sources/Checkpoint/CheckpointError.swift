#if canImport(Glibc)
import Glibc
#endif

/// Everything that can go wrong while writing or reading a checkpoint.
///
/// The description is one line that names the file and the problem, so it
/// can be printed as is by a training run that fails to save or resume.
public struct CheckpointError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What went wrong, in a form tests and callers can match on.
    public enum Reason: Equatable, Sendable {
        // Reading
        case fileNotFound
        case truncated(fileSize: Int, needed: Int)
        case headerTooLarge(bytes: UInt64, limit: Int)
        case badHeader(String)
        case unsupportedDType(tensor: String, dtype: String)
        case tensorOutOfBounds(tensor: String, range: Range<Int>, bufferSize: Int)
        case tensorSizeMismatch(tensor: String, expected: Int, actual: Int)
        case badLayout(String)
        case checksumMismatch(stored: String, computed: String)
        case unsupportedFormatVersion(String)
        // Writing
        case duplicateTensorName(String)
        case folderMissing(String)
        case notAFolder
        case permissionDenied
        case noSpace
        // Either direction: any other failing system call.
        case systemCall(String, errno: Int32)
        // Using a tensor
        case dtypeMismatch(tensor: String, stored: DType, requested: DType)
    }

    /// The checkpoint file concerned; nil for errors about a tensor in memory.
    public let path: String?
    public let reason: Reason

    public init(path: String?, reason: Reason) {
        self.path = path
        self.reason = reason
    }

    public var description: String {
        guard let path else { return reason.description }
        return "checkpoint \(path): \(reason)"
    }
}

extension CheckpointError.Reason: CustomStringConvertible {
    public var description: String {
        switch self {
        case .fileNotFound:
            return "no such file"
        case let .truncated(fileSize, needed):
            return "file is truncated: it has \(fileSize) bytes but needs at least \(needed)"
        case let .headerTooLarge(bytes, limit):
            return "header too large: \(bytes) bytes (limit \(limit)); not a safetensors file?"
        case let .badHeader(detail):
            return "bad JSON header: \(detail)"
        case let .unsupportedDType(tensor, dtype):
            return "tensor '\(tensor)' has unsupported dtype \(dtype)"
        case let .tensorOutOfBounds(tensor, range, bufferSize):
            return "tensor '\(tensor)' is out of bounds: it needs bytes \(range) of the data buffer, "
                + "which has \(bufferSize) (truncated file?)"
        case let .tensorSizeMismatch(tensor, expected, actual):
            return "tensor '\(tensor)' has \(actual) bytes but its dtype and shape need \(expected)"
        case let .badLayout(detail):
            return "bad tensor layout: \(detail)"
        case let .checksumMismatch(stored, computed):
            return "checksum mismatch: file is corrupt (stored crc32 \(stored), computed \(computed))"
        case let .unsupportedFormatVersion(version):
            return "unsupported efqat.format \(version) (this build reads format 1)"
        case let .duplicateTensorName(name):
            return "cannot write: tensor name '\(name)' is used more than once"
        case let .folderMissing(folder):
            return "cannot write: folder \(folder) does not exist"
        case .notAFolder:
            return "a component of the path is a file, not a folder"
        case .permissionDenied:
            return "permission denied (or read-only file system)"
        case .noSpace:
            return "cannot write: no space left on device (or quota exceeded)"
        case let .systemCall(call, code):
            return "\(call) failed: \(String(cString: strerror(code)))"
        case let .dtypeMismatch(tensor, stored, requested):
            return "tensor '\(tensor)' holds \(stored.rawValue) values, not \(requested.rawValue)"
        }
    }
}

extension CheckpointError {
    /// Names the common `errno` values of a failed system call in plain
    /// words; `ENOENT` is left to the caller, who knows what was missing.
    static func posix(_ call: String, path: String, errno code: Int32) -> CheckpointError {
        let reason: Reason
        switch code {
        case ENOTDIR: reason = .notAFolder
        case EACCES, EPERM, EROFS: reason = .permissionDenied
        case ENOSPC, EDQUOT: reason = .noSpace
        default: reason = .systemCall(call, errno: code)
        }
        return CheckpointError(path: path, reason: reason)
    }
}
