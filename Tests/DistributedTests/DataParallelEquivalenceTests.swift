import Checkpoint
import Foundation
import XCTest

/// Data parallelism must not change what is trained: the global batch is cut
/// into ranks × accumulation micro-batches, so one process with
/// `--accumulation N` and N ranks with `--accumulation 1` train on the same
/// micro-batches, average the same gradients and batch-norm statistics, and
/// must end with the same model up to float rounding. Two runs with the same
/// settings must end bit for bit alike.
///
/// The runs are real jobs of the built `efqat-train` (8 of them, about three
/// minutes on 2 cores), started once and shared by the tests below.
///
/// Why the learning rates are small: the summation order differs between
/// the set-ups (one process adds micro-batch gradients in place, MPI adds
/// per-rank sums), so results differ by rounding, and training amplifies
/// rounding. At the default rates (0.1 / 0.01) two single-process runs that
/// differ only in the OpenBLAS thread count already end with conv1 weights
/// a few per cent apart after 16 steps, and the first layer's LSQ steps
/// even further. At 0.002 / 0.0002 the set-ups agree to about 1e-4 relative
/// (running statistics 1e-3), while a real partition bug (measured by
/// comparing --accumulation 2 with --accumulation 4, i.e. other
/// micro-batches) gives about ten times the tolerance below.
final class DataParallelEquivalenceTests: XCTestCase {
    /// ‖a − b‖₂ ≤ rtol·‖a‖₂ + atol·√n for every float tensor of final.safetensors.
    static let relativeTolerance = 3e-3
    static let absoluteTolerance = 3e-4
    static let runTimeout: TimeInterval = 300

    static let runs = SharedRuns(prefix: "efqat-dp")

    override class func tearDown() {
        runs.removeFolder()
        super.tearDown()
    }

    /// The settings every run shares: 512 samples, global batch 64, one
    /// FP32 and one QAT epoch (8 steps each), a loss record every step.
    private func options(output: String) throws -> [String] {
        [
            "--data-dir", try Locations.mnistFolder(), "--output", output,
            "--seed", "3", "--train-samples", "512", "--batch-size", "64",
            "--fp32-epochs", "1", "--qat-epochs", "1", "--lr", "0.002", "--qat-lr", "0.0002",
            "--log-every", "1",
        ]
    }

    private func singleProcess(accumulation: Int, name: String, extra: [String] = []) throws -> Run {
        try Self.runs.run(name) { output, marker in
            try Jobs.single(try self.options(output: output) + ["--accumulation", String(accumulation)] + extra,
                            marker: marker, folder: Self.runs.folder, timeout: Self.runTimeout)
        }
    }

    private func mpi(ranks: Int, name: String, extra: [String] = []) throws -> Run {
        try Self.runs.run(name) { output, marker in
            try Jobs.mpi(ranks: ranks, try self.options(output: output) + extra, marker: marker,
                         folder: Self.runs.folder, timeout: Self.runTimeout)
        }
    }

    /// EfQAT (p = 0.1, CWPN, the default) re-ranking every 3 steps, so the
    /// 8 QAT steps train three selections and the buckets are rebuilt twice.
    static let refreshing = ["--efqat-refresh", "3"]
    static let overlapped = refreshing + ["--overlap-reduce", "on"]

    /// The all-reduce overlapped with the backward pass averages what one
    /// process with two micro-batches averages, across selection refreshes.
    func testTwoRanksWithOverlapTrainLikeOneProcess() throws {
        let single = try singleProcess(accumulation: 2, name: "one-process-refreshing", extra: Self.refreshing)
        let mpi = try mpi(ranks: 2, name: "mpi-2-ranks-overlapped", extra: Self.overlapped)
        try assertEquivalent(single: single, mpi: mpi, ranks: 2)
        for run in [single, mpi] {
            let selections = try metricsRecords(in: run.output).filter { $0["event"] as? String == "efqat_selection" }
            XCTAssertEqual(selections.map { $0["step"] as? Int }, [0, 3, 6], "\(run.name): QAT selections")
        }
        XCTAssertEqual(try bucketsStartedEarly(single), 0, "one process has nothing to reduce")
        XCTAssertGreaterThan(try bucketsStartedEarly(mpi) ?? 0, 0, "buckets should start during the backward pass")
    }

    func testTwoOverlappedRunsAreBitwiseIdentical() throws {
        let first = try mpi(ranks: 2, name: "mpi-2-ranks-overlapped", extra: Self.overlapped)
        let second = try mpi(ranks: 2, name: "mpi-2-ranks-overlapped-again", extra: Self.overlapped)
        try assertBitwiseIdentical(first, second)
    }

    /// Gradient buckets QAT started during the backward pass, over its steps.
    private func bucketsStartedEarly(_ run: Run) throws -> Int? {
        let summary = try metricsRecords(in: run.output).first { $0["event"] as? String == "summary" }
        let stages = summary?["stages"] as? [[String: Any]] ?? []
        return stages.last { $0["buckets_started_early"] != nil }?["buckets_started_early"] as? Int
    }

    func testTwoRanksTrainLikeOneProcessWithTwoMicroBatches() throws {
        try assertEquivalent(single: try singleProcess(accumulation: 2, name: "one-process-accumulation-2"),
                             mpi: try mpi(ranks: 2, name: "mpi-2-ranks"), ranks: 2)
    }

    func testFourRanksTrainLikeOneProcessWithFourMicroBatches() throws {
        try assertEquivalent(single: try singleProcess(accumulation: 4, name: "one-process-accumulation-4"),
                             mpi: try mpi(ranks: 4, name: "mpi-4-ranks"), ranks: 4)
    }

    /// Calibration sees the union of the ranks' samples: min/max and the
    /// histograms are reduced over ranks, so 4 ranks end with the quantizer
    /// parameters of 1 process calibrating the same FP32 model on the same
    /// samples (here with the histogram-based L_p search). Not bit for bit:
    /// 4 ranks run batches of 50 where 1 process runs 128 and 72, and
    /// OpenBLAS's kernels on some processors (AMD EPYC here) round a column
    /// differently with the width of the product, so the activations agree
    /// to the last bits only.
    func testFourRanksCalibrateLikeOneProcess() throws {
        let trained = try singleProcess(accumulation: 2, name: "one-process-accumulation-2")
        try assertSucceeded(trained, ranks: 1)
        let calibration = ["--qat-epochs", "0", "--weight-bits", "4", "--activation-bits", "4",
                           "--weight-calibration", "lp", "--activation-calibration", "lp", "--calibration-samples", "200"]
        func calibrated(_ name: String, ranks: Int) throws -> SafeTensorsFile {
            let run = try Self.runs.run(name) { output, marker in
                // Both start from the same FP32 model, which the run reuses.
                try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
                try FileManager.default.copyItem(atPath: trained.output + "/fp32.safetensors",
                                                 toPath: output + "/fp32.safetensors")
                let arguments = try self.options(output: output) + calibration
                return ranks == 1
                    ? try Jobs.single(arguments, marker: marker, folder: Self.runs.folder, timeout: Self.runTimeout)
                    : try Jobs.mpi(ranks: ranks, arguments, marker: marker, folder: Self.runs.folder, timeout: Self.runTimeout)
            }
            XCTAssertEqual(run.job.status, 0, run.job.output)
            XCTAssertTrue(run.job.stdout.contains("reusing the FP32 model"), run.job.stdout)
            return try SafeTensorsFile.read(from: run.output + "/final.safetensors")
        }
        let one = try calibrated("calibrate-1-rank", ranks: 1)
        let four = try calibrated("calibrate-4-ranks", ranks: 4)
        let quantizers = one.tensors.filter { $0.name.contains("_quantizer.") }
        XCTAssertEqual(quantizers.count, 4 * 22)  // step and zero point of weights and input, 22 layers
        for tensor in quantizers {
            let a: [Float] = try tensor.values(), b: [Float] = try XCTUnwrap(four[tensor.name]).values()
            XCTAssertEqual(a.count, b.count, tensor.name)
            for (x, y) in zip(a, b) {
                if tensor.name.hasSuffix("zero_point") {
                    XCTAssertEqual(x, y, accuracy: 1, "\(tensor.name) differs between 1 and 4 ranks")
                } else {
                    XCTAssertEqual(x, y, accuracy: 1e-4 * abs(x), "\(tensor.name) differs between 1 and 4 ranks")
                }
            }
        }
    }

    /// Every architecture family: 2 ranks train like 1 process with 2
    /// micro-batches, and two 2-rank runs are bitwise identical. FP32
    /// training only (16 steps): QAT's data parallelism does not depend on
    /// the network (ResNet-20 checks it above), and after 8 steps at this
    /// learning rate MobileNetV2's running statistics are still far from its
    /// batch statistics, so min-max ranges calibrated on them make LSQ's
    /// steps diverge, in 1 process and on 2 ranks alike. One OpenBLAS thread
    /// everywhere: these networks end in 1x1 maps whose batch norm over 32
    /// values magnifies rounding, and 2 threads' GEMMs round differently
    /// enough to move MobileNetV2's loss by 0.02 after 2 steps.
    func testEveryArchitectureTrainsLikeOneProcessAndReproducibly() throws {
        for (architecture, arguments) in ResumeTests.architectures.sorted(by: { $0.key < $1.key }) {
            let extra = arguments + ["--fp32-epochs", "2", "--qat-epochs", "0", "--threads", "1"]
            try assertEquivalent(single: try singleProcess(accumulation: 2, name: "one-process-\(architecture)",
                                                           extra: extra),
                                 mpi: try mpi(ranks: 2, name: "mpi-2-ranks-\(architecture)", extra: extra), ranks: 2,
                                 rows: ["FP32 "])
            try assertBitwiseIdentical(try mpi(ranks: 2, name: "mpi-2-ranks-\(architecture)", extra: extra),
                                       try mpi(ranks: 2, name: "mpi-2-ranks-again-\(architecture)", extra: extra))
        }
    }

    func testTwoRankRunsAreBitwiseIdentical() throws {
        try assertBitwiseIdentical(try mpi(ranks: 2, name: "mpi-2-ranks"), try mpi(ranks: 2, name: "mpi-2-ranks-again"))
    }

    // MARK: Checks

    private func assertBitwiseIdentical(_ first: Run, _ second: Run) throws {
        try assertSucceeded(first, ranks: 2)
        try assertSucceeded(second, ranks: 2)
        let a = try SafeTensorsFile.read(from: first.output + "/final.safetensors")
        let b = try SafeTensorsFile.read(from: second.output + "/final.safetensors")
        XCTAssertEqual(a.tensors.map(\.name), b.tensors.map(\.name))
        for x in a.tensors {
            XCTAssertTrue(x == b[x.name], "\(x.name) differs between two identical 2-rank runs")
        }
        let checksums = try [first, second].map { run in
            try metricsRecords(in: run.output).first { $0["event"] as? String == "weights" }?["checksum"] as? String
        }
        XCTAssertNotNil(checksums[0])
        XCTAssertEqual(checksums[0], checksums[1], "weight checksums of two identical runs")
    }

    /// The run ended well, on `ranks` ranks, with ranks that agree.
    private func assertSucceeded(_ run: Run, ranks: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let job = run.job
        XCTAssertFalse(job.timedOut, "the job hung and was killed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.status, 0, "the job failed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.leftovers, [], "processes left behind", file: file, line: line)
        guard job.status == 0 else { throw SetupError("\(run.name) failed; see above") }

        let records = try metricsRecords(in: run.output)
        let weights = records.first { $0["event"] as? String == "weights" }
        XCTAssertEqual(weights?["ranks_agree"] as? Bool, true,
                       "\(run.name): metrics.jsonl should say \"ranks_agree\":true, has \(String(describing: weights))",
                       file: file, line: line)
        let summary = records.first { $0["event"] as? String == "summary" }
        XCTAssertEqual(summary?["world_size"] as? Int, ranks,
                       "\(run.name): the summary record should report \(ranks) rank(s)", file: file, line: line)
    }

    private func assertEquivalent(single: Run, mpi: Run, ranks: Int, rows: [String] = ["QAT ", "EfQAT "],
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        try assertSucceeded(single, ranks: 1, file: file, line: line)
        try assertSucceeded(mpi, ranks: ranks, file: file, line: line)

        // Every tensor of the final model.
        let comparison = try CheckpointComparison(single.output + "/final.safetensors", mpi.output + "/final.safetensors",
                                                  rtol: Self.relativeTolerance, atol: Self.absoluteTolerance)
        XCTAssertGreaterThan(comparison.tensorCount, 0, file: file, line: line)
        XCTAssertEqual(comparison.problems, [], """
            final.safetensors of 1 process × \(ranks) micro-batches and of \(ranks) ranks differ beyond \
            rtol \(Self.relativeTolerance), atol \(Self.absoluteTolerance) (worst: \(comparison.worstTensor), \
            \(String(format: "%.2f", comparison.worstRatio))× the tolerance)
            """, file: file, line: line)

        // The loss of every step. The first two steps start from the same
        // weights up to rounding, so their losses agree to ~1e-7; a wrong
        // partition or averaging shows there first (1e-4 or more).
        let lossesA = try stepLosses(single), lossesB = try stepLosses(mpi)
        XCTAssertEqual(lossesA.count, 16, "16 steps should be logged", file: file, line: line)
        XCTAssertEqual(lossesA.count, lossesB.count, file: file, line: line)
        for (step, (a, b)) in zip(lossesA, lossesB).enumerated() {
            let tolerance = step < 2 ? 1e-5 : 1e-2
            XCTAssertEqual(a, b, accuracy: tolerance, "loss of step \(step + 1) (\(lossesA.count) steps)",
                           file: file, line: line)
        }

        // The summary tables' accuracy of the last trained stage (500 test
        // images: 0.2 % each).
        let accuracyA = summaryQATAccuracy(single.job.stdout, rows: rows)
        let accuracyB = summaryQATAccuracy(mpi.job.stdout, rows: rows)
        XCTAssertNotNil(accuracyA, "no \(rows) row in the summary\n\(single.job.report)", file: file, line: line)
        XCTAssertNotNil(accuracyB, "no \(rows) row in the summary\n\(mpi.job.report)", file: file, line: line)
        if let accuracyA, let accuracyB {
            XCTAssertEqual(accuracyA, accuracyB, accuracy: 2.0, "\(rows) test accuracy (%) in the summary",
                           file: file, line: line)
        }
    }

    private func stepLosses(_ run: Run) throws -> [Double] {
        try metricsRecords(in: run.output)
            .filter { $0["event"] as? String == "step" }
            .map { record in
                guard let loss = record["loss"] as? Double else { throw SetupError("\(run.name): step record without a loss: \(record)") }
                return loss
            }
    }
}

/// A job and its output folder.
struct Run: Sendable {
    var name: String
    var output: String
    var job: JobResult
}

/// Jobs started once per test process and shared by several tests, in one
/// temporary folder whose path also marks the jobs' processes.
final class SharedRuns: @unchecked Sendable {
    let folder: String
    private let lock = NSLock()
    private var done: [String: Run] = [:]

    init(prefix: String) {
        folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))").path
    }

    /// The run called `name`, started by `start(output folder, marker)` on first use.
    func run(_ name: String, start: (String, String) throws -> JobResult) throws -> Run {
        lock.lock()
        defer { lock.unlock() }
        if let run = done[name] { return run }
        let output = "\(folder)/\(name)"
        let run = Run(name: name, output: output, job: try start(output, folder))
        done[name] = run
        return run
    }

    /// Deletes the folder unless EFQAT_KEEP_TEST_RUNS is set.
    func removeFolder() {
        if ProcessInfo.processInfo.environment["EFQAT_KEEP_TEST_RUNS"] != nil {
            print("DistributedTests: runs kept in \(folder)")
        } else {
            try? FileManager.default.removeItem(atPath: folder)
        }
    }
}
