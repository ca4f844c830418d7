import Foundation
import XCTest

/// `efqat-train synthesize` as real jobs: every batch depends only on the
/// seed and its index, so one process, 2 ranks and 4 ranks write the very
/// same data set file, byte for byte, and so does a 2-rank run that is
/// interrupted after some batches and run again.
final class SynthesisJobTests: JobTestCase {
    static let timeout: TimeInterval = 300

    func testAnyNumberOfRanksWritesTheSameDataSet() throws {
        // The teacher: a short FP32 run (4 steps), enough for real batch-norm statistics.
        let teacher = folder + "/teacher"
        try assertSucceeded(try Jobs.single([
            "--data-dir", try Locations.mnistFolder(), "--output", teacher, "--train-samples", "256",
            "--batch-size", "64", "--fp32-epochs", "1", "--qat-epochs", "0",
        ], marker: folder, folder: folder, timeout: Self.timeout))

        // 6 batches of 4: 4 ranks have an idle rank in their second round.
        func synthesize(images: Int, output: String) -> [String] {
            ["synthesize", "--model", teacher + "/fp32.safetensors", "--output", folder + "/" + output,
             "--zero-shot-images", String(images), "--synthesis-batch-size", "4", "--synthesis-iterations", "5", "--seed", "7", "--log-every", "1"]
        }
        let one = try Jobs.single(synthesize(images: 24, output: "one"), marker: folder, folder: folder,
                                  timeout: Self.timeout)
        try assertSucceeded(one)
        for ranks in [2, 4] {
            try assertSucceeded(try Jobs.mpi(ranks: ranks, synthesize(images: 24, output: "mpi-\(ranks)"),
                                             marker: folder, folder: folder, timeout: Self.timeout))
        }
        let first = try Jobs.mpi(ranks: 2, synthesize(images: 8, output: "resumed"), marker: folder, folder: folder,
                                 timeout: Self.timeout)
        try assertSucceeded(first)
        let rest = try Jobs.mpi(ranks: 2, synthesize(images: 24, output: "resumed"), marker: folder, folder: folder,
                                timeout: Self.timeout)
        try assertSucceeded(rest)
        XCTAssertEqual(rest.occurrences(of: "resuming: 2 of 6 batches"), 1, rest.report)

        let reference = try Data(contentsOf: URL(fileURLWithPath: folder + "/one/genie.safetensors"))
        XCTAssertGreaterThan(reference.count, 24 * 28 * 28 * 4)
        for output in ["mpi-2", "mpi-4", "resumed"] {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(folder)/\(output)/genie.safetensors"))
            XCTAssert(data == reference, "\(output)/genie.safetensors differs from the one-process file")
        }

        // Rank 0 alone reports, logs every batch once and draws the grid.
        XCTAssertEqual(one.occurrences(of: "batch 6 done (6/6)"), 1, one.report)
        let records = try metricsRecords(in: folder + "/one", file: "genie.jsonl")
        XCTAssertEqual(records.filter { $0["event"] as? String == "genie_batch" }.count, 6)
        XCTAssertEqual(records.filter { $0["event"] as? String == "genie_summary" }.count, 1)
        let png = try Data(contentsOf: URL(fileURLWithPath: folder + "/mpi-4/genie-samples.png"))
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
    }

    func testMissingModelFailsWithOneMessage() throws {
        let job = try Jobs.mpi(ranks: 2, ["synthesize", "--output", folder + "/none", "--synthesis-iterations", "1"],
                               marker: folder, folder: folder, timeout: 60)
        XCTAssertNotEqual(job.status, 0, job.report)
        XCTAssertEqual(job.occurrences(of: "no model at \(folder)/none/fp32.safetensors"), 1, job.report)
        XCTAssertEqual(job.leftovers, [], "processes left behind")
    }
}
