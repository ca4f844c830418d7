import Foundation
import XCTest

/// A job that goes wrong must end, non-zero, with one clear message, and
/// leave no process behind: a failing rank, a bad option, missing data.
final class FailureTests: XCTestCase {
    /// A failed job must be over within this time (it is killed after it).
    static let deadline: TimeInterval = 60

    private var folder = ""

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("efqat-failure-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if ProcessInfo.processInfo.environment["EFQAT_KEEP_TEST_RUNS"] == nil {
            try? FileManager.default.removeItem(atPath: folder)
        }
    }

    /// A short job (4 FP32 and 4 QAT steps) in this test's folder.
    private func shortJob(_ extra: [String]) throws -> [String] {
        [
            "--data-dir", try Locations.mnistFolder(), "--output", folder + "/run",
            "--train-samples", "256", "--batch-size", "64", "--fp32-epochs", "1", "--qat-epochs", "1",
        ] + extra
    }

    private func assertFailedCleanly(_ job: JobResult, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(job.timedOut, "the job did not end within \(Int(Self.deadline)) s and was killed\n\(job.report)",
                       file: file, line: line)
        XCTAssertLessThan(job.seconds, Self.deadline, file: file, line: line)
        XCTAssertNotEqual(job.status, 0, "the job should fail\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.leftovers, [], "efqat-train processes left behind after the job ended\n\(job.report)",
                       file: file, line: line)
    }

    // MARK: A rank fails during QAT

    // `--inject-failure RANK:STEP` makes that rank throw during QAT; the
    // other ranks are then in (or about to enter) a collective, so only
    // MPI_Abort can end the job. These tests do not depend on the exact
    // step at which the failure fires.

    func testFailingRankEndsTheWholeJob() throws {
        let job = try Jobs.mpi(ranks: 4, try shortJob(["--inject-failure", "2:3"]), marker: folder, folder: folder,
                               timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: "injected failure"), 1, "one message about the failure\n\(job.report)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/run/final.safetensors"),
                       "a failed job must not write a final model")
    }

    func testFailingRootEndsTheWholeJob() throws {
        let job = try Jobs.mpi(ranks: 4, try shortJob(["--inject-failure", "0:3"]), marker: folder, folder: folder,
                               timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: "injected failure"), 1, "one message about the failure\n\(job.report)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/run/final.safetensors"),
                       "a failed job must not write a final model")
    }

    // MARK: Bad command lines

    private let weightBitsMessage = "--weight-bits must be between 2 and 8"

    func testBadOptionIsReportedOnceUnderMPI() throws {
        let job = try Jobs.mpi(ranks: 4, ["--weight-bits", "12", "--output", folder + "/run"], marker: folder,
                               folder: folder, timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: weightBitsMessage), 1,
                       "the message about --weight-bits should appear exactly once\n\(job.report)")
    }

    func testBadOptionIsReportedOnceInOneProcess() throws {
        let job = try Jobs.single(["--weight-bits", "12", "--output", folder + "/run"], marker: folder,
                                  folder: folder, timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: weightBitsMessage), 1,
                       "the message about --weight-bits should appear exactly once\n\(job.report)")
    }

    // MARK: Missing data

    private let missingFile = "/nonexistent/mnist_5k.csv"

    func testMissingDataIsReportedOnceWithTheFileName() throws {
        let job = try Jobs.single(["--data-dir", "/nonexistent", "--output", folder + "/run"], marker: folder,
                                  folder: folder, timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: missingFile), 1, "one error naming \(missingFile)\n\(job.report)")
    }

    func testMissingDataIsReportedOnceUnderMPI() throws {
        let job = try Jobs.mpi(ranks: 4, ["--data-dir", "/nonexistent", "--output", folder + "/run"], marker: folder,
                               folder: folder, timeout: Self.deadline)
        assertFailedCleanly(job)
        XCTAssertEqual(job.occurrences(of: missingFile), 1, "one error naming \(missingFile)\n\(job.report)")
    }
}
