#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a reader does with a gzip-compressed file.
enum GzipPolicy {
    /// Refuse it, saying to decompress it first.
    case refuse
    /// Decompress it in memory (gzip content, by its signature); a file
    /// named `*.gz` must then hold gzip data.
    case decompress
}

/// Reads a whole file into memory, turning the usual failures (missing,
/// a directory, unreadable, compressed when `gzip` is `.refuse`, bad gzip
/// data when it is `.decompress`) into `DataError`s.
func readFile(_ path: String, gzip: GzipPolicy = .refuse) throws -> [UInt8] {
    let namedGzip = path.hasSuffix(".gz")
    switch gzip {
    case .refuse:
        let compressed = DataError(file: path, problem: .compressed, hint: "Decompress it first: gunzip \(path)")
        guard !namedGzip else { throw compressed }
        let bytes = try readBytes(path)
        // No supported format starts with the gzip signature 1f 8b.
        guard !Gzip.isCompressed(bytes) else { throw compressed }
        return bytes
    case .decompress:
        let bytes = try readBytes(path)
        return namedGzip || Gzip.isCompressed(bytes) ? try Gzip.decompress(bytes, file: path) : bytes
    }
}

/// The bytes of the regular file at `path`, as they are.
private func readBytes(_ path: String) throws -> [UInt8] {
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
    return bytes
}

/// Runs `body`; a missing-file error it throws gains the hint to run
/// `command`, the setup step that fetches the file.
func suggestingSetup<T>(_ command: String, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as DataError where error.problem == .missing {
        throw DataError(file: error.file, problem: .missing, hint: "Run \(command) to download it")
    }
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
