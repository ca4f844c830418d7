import Checkpoint
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Runs that survive: a job killed mid-epoch (`kill -9` of rank 0 or of
/// another rank) ends at once and leaves nothing running; `--resume auto`
/// then finishes it, losing only the steps since the last checkpoint, and
/// ends bit for bit where the uninterrupted run ends. A checkpoint of 4
/// ranks resumes on 2 ranks and on 1 process with the same micro-batches
/// and ends within float tolerance (the all-reduce of 4 ranks adds the
/// micro-batch gradients in another order). Damaged checkpoints are
/// skipped by `--resume auto` (which needs them on rank 0's disk only) and
/// refused by `--resume PATH`, as are checkpoints of another run; an
/// unwritable or full output folder stops the job with one clear error and
/// keeps the last checkpoint.
///
/// Every run is 8 FP32 and 16 QAT steps (512 samples, batch 64) or part of
/// it, checkpointed every 4 steps, with EfQAT re-ranking every 6 steps, so
/// resumed QAT runs re-rank after their checkpoint. About 2 minutes on 2
/// cores.
final class ResumeTests: XCTestCase {
    /// A killed job must be over within this time of the kill.
    static let exitDeadline: TimeInterval = 30
    static let runTimeout: TimeInterval = 300
    static let checkpointEvery = 4
    static let stepsPerEpoch = 8

    static let runs = SharedRuns(prefix: "efqat-resume")

    override class func tearDown() {
        runs.removeFolder()
        super.tearDown()
    }

    /// The other architectures, small: their runs take the same steps.
    static let architectures: [String: [String]] = [
        "resnet18": ["--arch", "resnet18", "--width", "0.125"],
        "resnet50": ["--arch", "resnet50", "--width", "0.0625"],
        "mobilenet_v2": ["--arch", "mobilenet_v2", "--width", "0.25"],
    ]

    private func options(output: String, architecture: String? = nil) throws -> [String] {
        (architecture.map { Self.architectures[$0]! } ?? []) + [
            "--data-dir", try Locations.mnistFolder(), "--output", output,
            "--seed", "7", "--train-samples", "512", "--batch-size", "64",
            "--fp32-epochs", "1", "--qat-epochs", "2",
            "--checkpoint-every", String(Self.checkpointEvery), "--efqat-refresh", "6",
            "--threads", "1", "--log-every", "1",
        ]
    }

    /// 2 ranks from scratch to the end: the run the interrupted ones must match.
    private func uninterrupted(architecture: String? = nil) throws -> Run {
        let run = try Self.runs.run("uninterrupted-2-ranks" + (architecture.map { "-" + $0 } ?? "")) { output, marker in
            try Jobs.mpi(ranks: 2, try self.options(output: output, architecture: architecture), marker: marker,
                         folder: Self.runs.folder, timeout: Self.runTimeout)
        }
        try assertSucceeded(run.job)
        return run
    }

    /// 4 ranks, starting from the FP32 model of `uninterrupted()`.
    private func uninterruptedOnFourRanks() throws -> Run {
        let fp32 = try uninterrupted().output + "/fp32.safetensors"
        let run = try Self.runs.run("uninterrupted-4-ranks") { output, marker in
            try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: fp32, toPath: output + "/fp32.safetensors")
            return try Jobs.mpi(ranks: 4, try self.options(output: output), marker: marker, folder: Self.runs.folder,
                                timeout: Self.runTimeout)
        }
        try assertSucceeded(run.job)
        XCTAssertTrue(run.job.stdout.contains("reusing the FP32 model"), run.job.report)
        return run
    }

    // MARK: kill -9, then --resume auto

    func testRootKilledDuringFP32ResumesToTheSameModel() throws {
        try assertKillAndResume(rank: 0, after: ("fp32", 6), name: "kill-root-fp32")
    }

    func testRankKilledDuringQATResumesToTheSameModel() throws {
        let resumed = try assertKillAndResume(rank: 1, after: ("qat", 6), name: "kill-rank-1-qat")
        // The resumed run trained on the saved selection, then re-ranked
        // (every 6 steps) where the uninterrupted run did.
        let records = try metricsRecords(in: resumed.output).drop { $0["event"] as? String != "resume" }
        let resumedAt = try XCTUnwrap(records.first.flatMap { ($0["epoch"] as? Int ?? 0) * Self.stepsPerEpoch + ($0["step"] as? Int ?? 0) })
        let selections = records.filter { $0["event"] as? String == "efqat_selection" }.compactMap { $0["selected_at"] as? Int }
        XCTAssertEqual(selections.first.map { $0 < resumedAt }, true, "the saved selection first: \(selections)")
        XCTAssertEqual(selections.filter { $0 >= resumedAt }, [6, 12].filter { $0 >= resumedAt }, "\(selections)")
    }

    /// Kills `rank` once rank 0 has logged step `after.step` of phase
    /// `after.phase` (2 steps past a checkpoint), then relaunches with
    /// `--resume auto`; returns the relaunched run.
    @discardableResult
    private func assertKillAndResume(rank: Int, after: (phase: String, step: Int), name: String,
                                     architecture: String? = nil,
                                     file: StaticString = #filePath, line: UInt = #line) throws -> Run {
        let binary = try Locations.trainBinary()
        let output = "\(Self.runs.folder)/\(name)"
        func reached() -> Bool {
            let steps = ((try? metricsRecords(in: output)) ?? []).filter { $0["event"] as? String == "step" }
            return steps.contains { $0["phase"] as? String == after.phase && $0["step"] as? Int ?? 0 >= after.step }
        }
        var killedAt: Date?
        let killed = try Jobs.mpi(ranks: 2, try options(output: output, architecture: architecture), marker: Self.runs.folder,
                                  folder: Self.runs.folder, timeout: Self.runTimeout) {
            let deadline = Date().addingTimeInterval(Self.runTimeout - 30)
            while !reached() && Date() < deadline {
                Thread.sleep(forTimeInterval: 0.02)
            }
            guard let pid = Jobs.ranks(matching: Self.runs.folder, binary: binary)[rank] else { return }
            kill(pid, SIGKILL)
            killedAt = Date()
        }
        let killedAtTime = try XCTUnwrap(killedAt, "rank \(rank) was never killed\n\(killed.report)", file: file, line: line)
        let exitSeconds = killed.ended.timeIntervalSince(killedAtTime)
        print("ResumeTests: \(name): the job exited \(String(format: "%.2f", exitSeconds)) s after kill -9 of rank \(rank)")
        XCTAssertFalse(killed.timedOut, killed.report, file: file, line: line)
        XCTAssertNotEqual(killed.status, 0, "a job with a killed rank must fail\n\(killed.report)", file: file, line: line)
        XCTAssertLessThan(exitSeconds, Self.exitDeadline, killed.report, file: file, line: line)
        XCTAssertEqual(killed.leftovers, [], "processes left behind\n\(killed.report)", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: output + "/final.safetensors"), file: file, line: line)

        // What the killed job left: its newest checkpoint and the last step it logged.
        let newest = try XCTUnwrap(checkpointNames(in: output).last, file: file, line: line)
        let lastStep = try metricsRecords(in: output).last { $0["event"] as? String == "step" }

        let resumed = Run(name: name + "-resumed", output: output,
                          job: try Jobs.mpi(ranks: 2, try options(output: output, architecture: architecture) + ["--resume", "auto"],
                                            marker: Self.runs.folder, folder: Self.runs.folder, timeout: Self.runTimeout))
        try assertSucceeded(resumed.job, file: file, line: line)
        let resume = try XCTUnwrap(metricsRecords(in: output).last { $0["event"] as? String == "resume" },
                                   "no resume record\n\(resumed.job.report)", file: file, line: line)
        XCTAssertEqual(resume["path"] as? String, output + "/" + newest, file: file, line: line)
        // Lost: the steps between the resumed position and the last one the killed job finished.
        XCTAssertEqual(resume["phase"] as? String, after.phase, file: file, line: line)
        XCTAssertEqual(lastStep?["phase"] as? String, after.phase, file: file, line: line)
        let done = try XCTUnwrap(lastStep?["step"] as? Int, file: file, line: line)
        let resumedAt = try XCTUnwrap(resume["epoch"] as? Int, file: file, line: line) * Self.stepsPerEpoch
            + XCTUnwrap(resume["step"] as? Int, file: file, line: line)
        print("ResumeTests: \(name): killed after step \(done) of \(after.phase), resumed at step \(resumedAt)")
        XCTAssertTrue((0..<Self.checkpointEvery).contains(done - resumedAt),
                      "lost \(done - resumedAt) steps; at most those since the last checkpoint", file: file, line: line)
        try assertBitwiseEqual(try uninterrupted(architecture: architecture).output, output, file: file, line: line)
        return resumed
    }

    /// Every architecture family resumes exactly: ImageNet ResNets with
    /// max-pool and bottlenecks, MobileNetV2 with depthwise convolutions.
    func testEveryArchitectureResumesToTheSameModel() throws {
        for architecture in Self.architectures.keys.sorted() {
            try assertKillAndResume(rank: 1, after: ("qat", 6), name: "kill-rank-1-qat-\(architecture)",
                                    architecture: architecture)
        }
    }

    // MARK: --resume auto skips damaged checkpoints; only rank 0 needs them

    /// Rank 1 runs in another folder, where the relative `--output` does
    /// not exist (as on another machine's local disk): it gets the
    /// checkpoint from rank 0.
    func testAutoResumeSkipsDamagedCheckpointsOnRankZerosDiskOnly() throws {
        let original = try uninterrupted().output
        let output = "\(Self.runs.folder)/damaged"
        try FileManager.default.copyItem(atPath: original, toPath: output)
        try FileManager.default.removeItem(atPath: output + "/final.safetensors")
        let names = checkpointNames(in: output)
        XCTAssertEqual(names, ["checkpoint-qat-e0001-s000000.safetensors", "checkpoint-qat-e0001-s000004.safetensors",
                               "checkpoint-qat-e0002-s000000.safetensors"], "the newest 3 are kept")
        try flipByte(in: output + "/" + names[2], fromEnd: 100)        // checksum mismatch
        try truncate(output + "/" + names[1], by: 1000)                // truncated

        let otherDisk = "\(Self.runs.folder)/other-disk"
        try FileManager.default.createDirectory(atPath: otherDisk, withIntermediateDirectories: true)
        // The data through a link in the runs' folder, so that the ranks' command lines hold the marker.
        let data = "\(Self.runs.folder)/data"
        try? FileManager.default.createSymbolicLink(atPath: data, withDestinationPath: try Locations.mnistFolder())
        let arguments = try options(output: "damaged") + ["--data-dir", data, "--resume", "auto"]
        let resumed = try Jobs.mpi(rankFolders: [Self.runs.folder, otherDisk], arguments, marker: Self.runs.folder,
                                   folder: Self.runs.folder, timeout: Self.runTimeout)
        try assertSucceeded(resumed)
        XCTAssertEqual(resumed.occurrences(of: "warning: --resume auto: skipping"), 2, resumed.report)
        XCTAssertEqual(resumed.occurrences(of: "checksum mismatch"), 1, resumed.report)
        XCTAssertEqual(resumed.occurrences(of: "truncated"), 1, resumed.report)
        XCTAssertTrue(resumed.stdout.contains("resuming from damaged/\(names[0])"), resumed.report)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: otherDisk), [], "rank 1 writes nothing")
        try assertBitwiseEqual(original, output)
    }

    // MARK: Another world size

    /// A 4-rank checkpoint, mid-epoch, resumed on 2 ranks × 2 and on 1
    /// process × 4 micro-batches: the same global batches and micro-batches.
    func testFourRankCheckpointResumesOnTwoRanksAndOneProcess() throws {
        let four = try uninterruptedOnFourRanks()
        let checkpoint = four.output + "/checkpoint-qat-e0001-s000004.safetensors"
        let arguments = ["--resume", checkpoint]
        let two = try Self.runs.run("resume-4-on-2") { output, marker in
            try Jobs.mpi(ranks: 2, try self.options(output: output) + arguments + ["--accumulation", "2"],
                         marker: marker, folder: Self.runs.folder, timeout: Self.runTimeout)
        }
        let one = try Self.runs.run("resume-4-on-1") { output, marker in
            try Jobs.single(try self.options(output: output) + arguments + ["--accumulation", "4"],
                            marker: marker, folder: Self.runs.folder, timeout: Self.runTimeout)
        }
        for run in [two, one] {
            try assertSucceeded(run.job)
            XCTAssertTrue(run.job.stdout.contains("resuming from \(checkpoint): phase qat, epoch 1, step 4"), run.job.report)
            let comparison = try CheckpointComparison(four.output + "/final.safetensors", run.output + "/final.safetensors",
                                                      rtol: DataParallelEquivalenceTests.relativeTolerance,
                                                      atol: DataParallelEquivalenceTests.absoluteTolerance)
            print("ResumeTests: \(run.name): " + (comparison.worstRatio == 0 ? "bitwise equal to 4 ranks"
                : "worst tensor \(comparison.worstTensor) at " + String(format: "%.3g", comparison.worstRatio) + " of the tolerance"))
            XCTAssertGreaterThan(comparison.tensorCount, 0)
            XCTAssertEqual(comparison.problems, [], "\(run.name) against 4 ranks")
        }
    }

    // MARK: --resume PATH refuses what is not this run

    func testResumeRefusesDamagedAndMismatchedCheckpoints() throws {
        let source = try uninterrupted().output
        let checkpoint = source + "/checkpoint-qat-e0001-s000004.safetensors"
        let corrupt = "\(Self.runs.folder)/corrupt.safetensors"
        try FileManager.default.copyItem(atPath: checkpoint, toPath: corrupt)
        try flipByte(in: corrupt, fromEnd: 4)
        // One process with 2 micro-batches cuts batches as the 2 ranks did.
        let cases: [(name: String, path: String, extra: [String], message: String)] = [
            ("corrupt", corrupt, [], "\(corrupt): checksum mismatch: file is corrupt"),
            ("not a checkpoint", source + "/fp32.safetensors", [], "not a training checkpoint"),
            ("other width", checkpoint, ["--width", "2"],
             "holds a resnet20, 1 input channel(s), 10 classes model; this run builds a resnet20 x2, 1 input channel(s)"),
            ("other architecture", checkpoint, ["--arch", "resnet8"], "this run builds a resnet8, 1 input channel(s)"),
            ("other bits", checkpoint, ["--weight-bits", "4"], "checkpoint was quantized with other bits than this run asks for: layer1.0.conv1 W8A8 against W4A8"),
            ("other EfQAT", checkpoint, ["--efqat-fraction", "0.2"], "checkpoint trained EfQAT cwpn p=0.1"),
            ("other seed", checkpoint, ["--seed", "8"], "another seed"),
            ("other global batch", checkpoint, ["--batch-size", "128"], "another global batch, so another data order; it has 64, this run 128"),
            ("other samples", checkpoint, ["--train-samples", "640"], "(--train-samples); it has 512, this run 640"),
            ("other micro-batches", checkpoint, ["--accumulation", "1"], "(this run: 1 x 1); it has 2, this run 1"),
        ]
        for (index, test) in cases.enumerated() {
            // The later option wins, so each case overrides the shared ones.
            let arguments = try options(output: "\(Self.runs.folder)/refused-\(index)")
                + ["--accumulation", "2", "--resume", test.path] + test.extra
            let job = try Jobs.single(arguments, marker: Self.runs.folder, folder: Self.runs.folder, timeout: 60)
            XCTAssertNotEqual(job.status, 0, "\(test.name): must fail\n\(job.report)")
            XCTAssertEqual(job.occurrences(of: test.message), 1, "\(test.name): one clear message\n\(job.report)")
            XCTAssertEqual(job.occurrences(of: "error"), 1, "\(test.name): one error line\n\(job.report)")
        }
    }

    // MARK: Unwritable and full output folders

    /// The output folder is a 4 MiB tmpfs: the FP32 model (1.1 MB) and one
    /// QAT checkpoint (2.2 MB) fit, the second checkpoint does not.
    func testFullDiskStopsTheJobAndKeepsTheLastCheckpoint() throws {
        let fp32 = try uninterrupted().output + "/fp32.safetensors"
        let output = try mountedFolder("full", options: "size=4m")
        try FileManager.default.copyItem(atPath: fp32, toPath: output + "/fp32.safetensors")
        let job = try Jobs.mpi(ranks: 2, try options(output: output) + ["--checkpoint-every", "2"],
                               marker: Self.runs.folder, folder: Self.runs.folder, timeout: Self.runTimeout)
        XCTAssertFalse(job.timedOut, job.report)
        XCTAssertNotEqual(job.status, 0, job.report)
        XCTAssertEqual(job.leftovers, [], job.report)
        XCTAssertEqual(job.occurrences(of: "no space left on device"), 1, job.report)
        let left = checkpointNames(in: output)
        XCTAssertEqual(left, ["checkpoint-qat-e0000-s000002.safetensors"], job.report)
        XCTAssertNoThrow(try SafeTensorsFile.read(from: output + "/" + left[0]), "the last checkpoint must stay intact")
        let listing = try FileManager.default.contentsOfDirectory(atPath: output)
        XCTAssertEqual(listing.filter { $0.contains(".tmp-") }, [], "temporary files left: \(listing)")
    }

    /// A read-only output folder (bind mount) with a checkpoint in it:
    /// `--resume auto` fails at once and leaves the checkpoint as it was.
    func testReadOnlyOutputFolderFailsClearlyAndKeepsTheCheckpoint() throws {
        let checkpoint = try uninterrupted().output + "/checkpoint-qat-e0001-s000004.safetensors"
        let output = try mountedFolder("read-only", options: "size=8m")
        try FileManager.default.copyItem(atPath: checkpoint, toPath: output + "/checkpoint-qat-e0001-s000004.safetensors")
        let before = try Data(contentsOf: URL(fileURLWithPath: checkpoint))
        try Self.command("/bin/mount", ["-o", "remount,ro", output])
        let job = try Jobs.mpi(ranks: 2, try options(output: output) + ["--resume", "auto"],
                               marker: Self.runs.folder, folder: Self.runs.folder, timeout: 60)
        XCTAssertNotEqual(job.status, 0, job.report)
        XCTAssertEqual(job.leftovers, [], job.report)
        XCTAssertEqual(job.occurrences(of: "output folder \(output) is not writable: permission denied (or read-only file system)"),
                       1, job.report)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: output + "/checkpoint-qat-e0001-s000004.safetensors")),
                       before)
    }

    /// A fresh tmpfs mounted at a new folder, unmounted when the test ends;
    /// skips the test where mounting is not allowed.
    private func mountedFolder(_ name: String, options: String) throws -> String {
        guard getuid() == 0 else { throw XCTSkip("mounting a tmpfs needs root (CI runs as root)") }
        let folder = "\(Self.runs.folder)/\(name)-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        do { try Self.command("/bin/mount", ["-t", "tmpfs", "-o", options, "tmpfs", folder]) } catch {
            throw XCTSkip("cannot mount a tmpfs here: \(error)")
        }
        addTeardownBlock { XCTAssertNoThrow(try Self.command("/bin/umount", ["--lazy", folder])) }
        return folder
    }

    /// Runs a system command, throwing its output if it fails.
    private static func command(_ executable: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw SetupError("\(executable) \(arguments.joined(separator: " ")): \(output)")
        }
    }

    // MARK: Helpers

    private func assertSucceeded(_ job: JobResult, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(job.timedOut, "the job hung and was killed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.status, 0, "the job failed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.leftovers, [], "processes left behind", file: file, line: line)
        guard job.status == 0 else { throw SetupError("a job failed; see above") }
    }

    /// The final models of two runs hold the same tensors, byte for byte.
    private func assertBitwiseEqual(_ folderA: String, _ folderB: String,
                                    file: StaticString = #filePath, line: UInt = #line) throws {
        let a = try SafeTensorsFile.read(from: folderA + "/final.safetensors")
        let b = try SafeTensorsFile.read(from: folderB + "/final.safetensors")
        XCTAssertEqual(a.tensors.map(\.name), b.tensors.map(\.name), file: file, line: line)
        let differing = a.tensors.filter { $0 != b[$0.name] }.map(\.name)
        XCTAssertEqual(differing, [], "final.safetensors of \(folderB) differs from the uninterrupted run",
                       file: file, line: line)
    }

    /// Checkpoint file names in `folder`, oldest first (their zero-padded
    /// positions sort in run order).
    private func checkpointNames(in folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
            .filter { $0.hasPrefix("checkpoint-") }.sorted()
    }

    private func flipByte(in path: String, fromEnd offset: Int) throws {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        bytes[bytes.count - offset] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: path))
    }

    private func truncate(_ path: String, by count: Int) throws {
        let bytes = try Data(contentsOf: URL(fileURLWithPath: path))
        try bytes.prefix(bytes.count - count).write(to: URL(fileURLWithPath: path))
    }
}
