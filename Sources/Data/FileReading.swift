#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a whole file into memory, turning the usual failures (missing,
/// a directory, unreadable, still gzip-compressed) into `DataError`s.
func readFile(_ path: String) throws -> [UInt8] {
    let gunzipHint = "Decompress it first: gunzip \(path)"
    if path.hasSuffix(".gz") {
        throw DataError(file: path, problem: .compressed, hint: gunzipHint)
    }
    var info = stat()
    guard stat(path, &info) == 0 else {
        throw DataError(file: path, problem: errno == ENOENT ? .missing : .unreadable(reason: systemError()))
    }
    guard info.st_mode & S_IFMT == S_IFREG else {
        throw DataError(file: path, problem: .notAFile)
    }
    let descriptor = open(path, O_RDONLY)
    guard descriptor >= 0 else {
        throw DataError(file: path, problem: .unreadable(reason: systemError()))
    }
    defer { close(descriptor) }

    let size = Int(info.st_size)
    let bytes = try [UInt8](unsafeUninitializedCapacity: size) { buffer, initialized in
        while initialized < size {
            let got = read(descriptor, buffer.baseAddress! + initialized, size - initialized)
            if got > 0 {
                initialized += got
            } else if got == 0 {
                throw DataError(file: path, problem: .unreadable(reason: "file shrank while reading"))
            } else if errno != EINTR {
                throw DataError(file: path, problem: .unreadable(reason: systemError()))
            }
        }
    }
    // No supported format starts with the gzip signature 1f 8b.
    if bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B {
        throw DataError(file: path, problem: .compressed, hint: gunzipHint)
    }
    return bytes
}

/// `directory/name`, without doubling a trailing slash.
func path(_ name: String, in directory: String) -> String {
    directory.hasSuffix("/") ? directory + name : directory + "/" + name
}

/// True if something exists at `path`.
func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

/// Converts bytes 0...255 to Floats in [0, 1].
func scalePixels(_ bytes: UnsafeBufferPointer<UInt8>, into destination: UnsafeMutablePointer<Float>) {
    for i in 0..<bytes.count {
        destination[i] = Float(bytes[i]) / 255
    }
}

private func systemError() -> String {
    String(cString: strerror(errno))
}
