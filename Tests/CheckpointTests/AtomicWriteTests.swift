import Checkpoint
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A failed save must leave the previous checkpoint as it was and no
/// temporary files behind. Tests run as root, whom file permissions do not
/// stop, so the failures are caused by other means.
final class AtomicWriteTests: CheckpointTestCase {
    private func small(_ value: Float) -> SafeTensorsFile {
        SafeTensorsFile(tensors: [TensorRecord(name: "w", shape: [1], values: [value])])
    }

    private func folderListing() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: folder).sorted()
    }

    func testOverwriteReplacesTheFileAndLeavesNoTemporaryFile() throws {
        let target = path("model.safetensors")
        try small(1).write(to: target)
        try small(2).write(to: target)
        XCTAssertEqual(try SafeTensorsFile.read(from: target), small(2))
        XCTAssertEqual(try folderListing(), ["model.safetensors"])
    }

    func testMissingFolder() {
        let target = path("no-such-folder/model.safetensors")
        XCTAssertEqual(failureReason(path: target) { try small(1).write(to: target) },
                       .folderMissing(path("no-such-folder")))
    }

    func testFolderThatIsARegularFile() throws {
        try "plain".write(toFile: path("plain.txt"), atomically: false, encoding: .utf8)
        let target = path("plain.txt/model.safetensors")
        XCTAssertEqual(failureReason(path: target) { try small(1).write(to: target) }, .notAFolder)
    }

    func testFailingToCreateTheTemporaryFileKeepsTheOldFile() throws {
        let target = path("model.safetensors")
        try small(1).write(to: target)
        let before = try contents(of: target)
        // A folder squatting on the temporary name makes creating it fail.
        let squatter = path(".model.safetensors.tmp-\(getpid())")
        try FileManager.default.createDirectory(atPath: squatter, withIntermediateDirectories: false)

        XCTAssertNotNil(failureReason(path: target) { try small(2).write(to: target) })
        XCTAssertEqual(try contents(of: target), before)
        XCTAssertTrue(FileManager.default.fileExists(atPath: squatter), "must not delete what it did not create")
    }

    func testFailingMidwayKeepsTheOldFileAndRemovesTheTemporaryOne() throws {
        let target = path("model.safetensors")
        try small(1).write(to: target)
        let before = try contents(of: target)
        let large = SafeTensorsFile(tensors: [
            TensorRecord(name: "big", shape: [100_000], values: [Float](repeating: 1, count: 100_000)),
        ])

        // A file-size limit stops writes past 64 KiB with EFBIG, as a full
        // disk would with ENOSPC (ignoring SIGXFSZ, which would kill us).
        let reason = try withFileSizeLimit(65_536) {
            failureReason(path: target) { try large.write(to: target) }
        }
        XCTAssertEqual(reason, .systemCall("write", errno: EFBIG))
        XCTAssertEqual(try contents(of: target), before)
        XCTAssertEqual(try folderListing(), ["model.safetensors"])
    }

    private func withFileSizeLimit<Result>(_ bytes: rlim_t, _ body: () throws -> Result) throws -> Result {
        var original = rlimit()
        XCTAssertEqual(getrlimit(RLIMIT_FSIZE_ID, &original), 0)
        var limited = original
        limited.rlim_cur = bytes
        XCTAssertEqual(setrlimit(RLIMIT_FSIZE_ID, &limited), 0)
        let originalHandler = signal(SIGXFSZ, SIG_IGN)
        defer {
            signal(SIGXFSZ, originalHandler)
            setrlimit(RLIMIT_FSIZE_ID, &original)
        }
        return try body()
    }
}

/// Glibc imports RLIMIT_FSIZE as an enum case; the calls take its raw value.
private let RLIMIT_FSIZE_ID = __rlimit_resource_t(RLIMIT_FSIZE.rawValue)
