#if canImport(Glibc)
import Glibc
#endif

/// Unbuffered writes to a standard stream, safe to call right before exit.
public struct FileHandleOutput: Sendable {
    let descriptor: Int32
    public static let standardError = FileHandleOutput(descriptor: 2)
    public static let standardOutput = FileHandleOutput(descriptor: 1)

    public func write(_ text: String) {
        var bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(descriptor, $0.baseAddress! + offset, $0.count - offset) }
            if n <= 0 { return }
            offset += n
        }
    }
}
