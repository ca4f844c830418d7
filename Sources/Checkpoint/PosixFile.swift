#if canImport(Glibc)
import Glibc
#endif

/// File access through POSIX calls, where every step's result can be
/// checked and `errno` turned into a clear `CheckpointError`.
enum PosixFile {
    /// The whole content of the file at `path`.
    static func readAll(_ path: String) throws -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            throw code == ENOENT ? CheckpointError(path: path, reason: .fileNotFound)
                                 : CheckpointError.posix("open", path: path, errno: code)
        }
        defer { close(descriptor) }

        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw CheckpointError.posix("fstat", path: path, errno: errno)
        }
        let size = Int(status.st_size)
        return try [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
            count = 0
            while count < size {
                let got = read(descriptor, buffer.baseAddress! + count, size - count)
                if got < 0 && errno == EINTR { continue }
                guard got >= 0 else { throw CheckpointError.posix("read", path: path, errno: errno) }
                if got == 0 { break }  // The file shrank meanwhile; decoding reports it as truncated.
                count += got
            }
        }
    }

    /// Replaces the file at `path` with `chunks`, written one after the
    /// other, so that `path` holds either its old content or the complete
    /// new one, even if the machine crashes midway:
    ///
    /// 1. write everything to `.name.tmp-<pid>` in the same folder,
    /// 2. fsync it, so its data is on disk before it gets the real name,
    /// 3. rename it over `path` (atomic within one file system),
    /// 4. fsync the folder, so the rename itself survives a crash.
    ///
    /// If any step before the rename fails, the temporary file is removed
    /// and the old file is left untouched.
    static func writeAtomically(_ chunks: [[UInt8]], to path: String) throws {
        let (folder, name) = split(path)
        let temporary = "\(folder)/.\(name).tmp-\(getpid())"

        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            let code = errno
            throw code == ENOENT ? CheckpointError(path: path, reason: .folderMissing(folder))
                                 : CheckpointError.posix("create \(temporary)", path: path, errno: code)
        }
        do {
            for chunk in chunks {
                try writeAll(chunk, to: descriptor, path: path)
            }
            guard fsync(descriptor) == 0 else { throw CheckpointError.posix("fsync", path: path, errno: errno) }
        } catch {
            close(descriptor)
            unlink(temporary)
            throw error
        }
        // close can report a failed write-back (on network file systems).
        guard close(descriptor) == 0 else {
            let code = errno
            unlink(temporary)
            throw CheckpointError.posix("close", path: path, errno: code)
        }
        guard rename(temporary, path) == 0 else {
            let code = errno
            unlink(temporary)
            throw CheckpointError.posix("rename", path: path, errno: code)
        }
        try syncFolder(folder, path: path)
    }

    /// Writes all of `bytes`, continuing after partial writes and signals.
    private static func writeAll(_ bytes: [UInt8], to descriptor: Int32, path: String) throws {
        try bytes.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(descriptor, bytes.baseAddress! + offset, bytes.count - offset)
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else {
                    // write returning 0 for a non-empty request means no progress: treat as a full disk.
                    throw CheckpointError.posix("write", path: path, errno: written == 0 ? ENOSPC : errno)
                }
                offset += written
            }
        }
    }

    /// Flushes the folder's entry list. The new file is already in place;
    /// a failure here means only that the rename might not survive a crash.
    private static func syncFolder(_ folder: String, path: String) throws {
        let descriptor = open(folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw CheckpointError.posix("open folder \(folder)", path: path, errno: errno) }
        defer { close(descriptor) }
        // EINVAL: this file system cannot sync folders, so there is nothing to wait for.
        guard fsync(descriptor) == 0 || errno == EINVAL else {
            throw CheckpointError.posix("fsync folder \(folder)", path: path, errno: errno)
        }
    }

    /// "dir/name" as ("dir", "name"); a bare name lives in ".".
    private static func split(_ path: String) -> (folder: String, name: String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let folder = path[..<slash]
        return (folder.isEmpty ? "/" : String(folder), String(path[path.index(after: slash)...]))
    }
}
