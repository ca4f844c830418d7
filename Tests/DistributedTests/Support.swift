import Checkpoint
import Data
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Where things are: the repository (found from this file's path), the
/// built `efqat-train`, `mpirun` and the MNIST data.
enum Locations {
    /// `<repo>`, three levels above `<repo>/Tests/DistributedTests/Support.swift`.
    static let repository: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The `efqat-train` to test: `EFQAT_TRAIN_BINARY` if set, else the one
    /// built next to this test bundle (`swift test -c release` builds it
    /// there), else `<repo>/.build/release/efqat-train`.
    static func trainBinary() throws -> String {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["EFQAT_TRAIN_BINARY"], !explicit.isEmpty {
            guard FileManager.default.isExecutableFile(atPath: explicit) else {
                throw SetupError("EFQAT_TRAIN_BINARY=\(explicit) is not an executable file")
            }
            return explicit
        }
        var candidates: [String] = []
        candidates.append(Bundle.main.bundleURL.appendingPathComponent("efqat-train").path)
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("efqat-train").path)
        }
        candidates.append(repository.appendingPathComponent(".build/release/efqat-train").path)
        for path in candidates where FileManager.default.isExecutableFile(atPath: path) {
            return URL(fileURLWithPath: path).standardizedFileURL.path
        }
        throw SetupError("""
            efqat-train is not built (looked in: \(candidates.joined(separator: ", "))). \
            Run launch/test.sh, or `swift build -c release` in \(repository.path), then the tests again.
            """)
    }

    static func mpirun() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for folder in path.split(separator: ":") {
            let candidate = "\(folder)/mpirun"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw SetupError("mpirun is not on PATH: install openmpi-bin and libopenmpi-dev (launch/test.sh does)")
    }

    /// The folder with `mnist_5k.csv`, as launch/setup-data.sh makes it in
    /// the data cache.
    static func mnistFolder() throws -> String {
        let folder = DataCache.directory(for: .mnist5k)
        guard FileManager.default.fileExists(atPath: folder + "/mnist_5k.csv") else {
            throw SetupError("\(folder)/mnist_5k.csv is missing: run launch/setup-data.sh (launch/test.sh does)")
        }
        return folder
    }
}

struct SetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// What a finished (or killed) job left behind.
struct JobResult: Sendable {
    var command: String
    var status: Int32
    var stdout: String
    var stderr: String
    var seconds: Double
    /// When the job ended (or was killed after its timeout).
    var ended: Date
    var timedOut: Bool
    /// Processes of this job still alive after it ended (pid and command line).
    var leftovers: [String]

    var output: String { stdout + stderr }

    /// How many times `text` occurs in stdout and stderr together.
    func occurrences(of text: String) -> Int {
        output.components(separatedBy: text).count - 1
    }

    /// The job's command and output, for failure messages.
    var report: String {
        let limit = 4000
        func tail(_ s: String) -> String { s.count > limit ? "…" + String(s.suffix(limit)) : s }
        return """
            $ \(command)
            exit status \(status) after \(String(format: "%.1f", seconds)) s\(timedOut ? " (TIMED OUT, killed)" : "")
            --- stdout ---
            \(tail(stdout))
            --- stderr ---
            \(tail(stderr))
            """
    }
}

/// Runs processes with a timeout. A job that overruns is killed with its
/// whole process tree (mpirun puts each rank in a process group of its own,
/// so every process whose command line holds the job's `marker` is killed
/// too) and reported as timed out, so a hang fails a test instead of
/// stalling CI.
enum Jobs {
    /// Environment for every job: no MPI launcher variables of an outer job,
    /// plain progress lines, and Open MPI's consent to run as root.
    static func environment(extra: [String: String] = [:]) -> [String: String] {
        var environment = ProcessInfo.processInfo.environment.filter { key, _ in
            !(key.hasPrefix("OMPI_COMM_WORLD") || key.hasPrefix("PMI") || key.hasPrefix("PMIX")
              || key.hasPrefix("SLURM") || key == "OMPI_UNIVERSE_SIZE")
        }
        environment["EFQAT_PROGRESS"] = "lines"
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    /// `efqat-train arguments` in one process.
    static func single(_ arguments: [String], marker: String, folder: String,
                       timeout: TimeInterval) throws -> JobResult {
        let binary = try Locations.trainBinary()
        return try run(binary, arguments, marker: marker, binary: binary, folder: folder,
                       environment: environment(), timeout: timeout)
    }

    /// `mpirun -n ranks efqat-train arguments`, with the flags a small
    /// machine needs: oversubscription, no binding, one BLAS thread per
    /// rank and ranks that yield their core while they wait.
    static func mpi(ranks: Int, _ arguments: [String], marker: String, folder: String,
                    timeout: TimeInterval, while monitor: () -> Void = {}) throws -> JobResult {
        try mpi(contexts: [["-n", String(ranks)]], arguments, marker: marker, folder: folder, timeout: timeout,
                while: monitor)
    }

    /// One rank per folder, each started in its own folder (`-wdir`), so a
    /// relative `--output` names another folder on every rank, as on
    /// machines with local disks. `folder` holds the job's output files.
    static func mpi(rankFolders: [String], _ arguments: [String], marker: String, folder: String,
                    timeout: TimeInterval) throws -> JobResult {
        try mpi(contexts: rankFolders.map { ["-n", "1", "-wdir", $0] }, arguments, marker: marker, folder: folder,
                timeout: timeout)
    }

    /// mpirun with the flags above and one application context (mpirun's
    /// `-n N [-wdir F] program arguments`, joined by `:`) per element of
    /// `contexts`, each running efqat-train with `arguments`.
    private static func mpi(contexts: [[String]], _ arguments: [String], marker: String, folder: String,
                            timeout: TimeInterval, while monitor: () -> Void = {}) throws -> JobResult {
        let binary = try Locations.trainBinary()
        let mpirun = try Locations.mpirun()
        let flags = ["--oversubscribe", "--bind-to", "none",
                     "-x", "OPENBLAS_NUM_THREADS", "-x", "OMPI_MCA_mpi_yield_when_idle", "-x", "EFQAT_PROGRESS"]
        let applications = Array(contexts.map { $0 + [binary] + arguments }.joined(separator: [":"]))
        let env = environment(extra: ["OPENBLAS_NUM_THREADS": "1", "OMPI_MCA_mpi_yield_when_idle": "1"])
        return try run(mpirun, flags + applications, marker: marker, binary: binary, folder: folder,
                       environment: env, timeout: timeout, while: monitor)
    }

    /// `monitor` runs once the job has started, while it runs (to act on
    /// it, e.g. kill one of its ranks); the timeout counts from the start.
    static func run(_ executable: String, _ arguments: [String], marker: String, binary: String,
                    folder: String, environment: [String: String], timeout: TimeInterval,
                    while monitor: () -> Void = {}) throws -> JobResult {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let name = UUID().uuidString.prefix(8)
        let outPath = "\(folder)/job-\(name).stdout", errPath = "\(folder)/job-\(name).stderr"
        guard FileManager.default.createFile(atPath: outPath, contents: nil),
              FileManager.default.createFile(atPath: errPath, contents: nil) else {
            throw SetupError("cannot create files in \(folder)")
        }
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: errPath))
        defer {
            try? out.close()
            try? err.close()
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = environment
        process.currentDirectoryURL = URL(fileURLWithPath: folder)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        let finished = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in finished.signal() }

        let command = ([executable] + arguments).map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
        let start = Date()
        try process.run()
        // Foundation starts the child in a process group of its own.
        let group = process.processIdentifier
        monitor()
        var timedOut = false
        if finished.wait(timeout: .now() + max(0, timeout - Date().timeIntervalSince(start))) == .timedOut {
            timedOut = true
            kill(-group, SIGTERM)  // mpirun passes this on to its ranks
            if finished.wait(timeout: .now() + 5) == .timedOut {
                kill(-group, SIGKILL)
                _ = finished.wait(timeout: .now() + 5)
            }
            killAll(matching: marker, binary: binary)
        }
        let ended = Date()
        let seconds = ended.timeIntervalSince(start)
        let status = process.isRunning ? -1 : process.terminationStatus

        // Ranks must be gone with mpirun; give the kernel a moment to reap.
        var leftovers = processes(matching: marker, binary: binary)
        let deadline = Date().addingTimeInterval(5)
        while !leftovers.isEmpty && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
            leftovers = processes(matching: marker, binary: binary)
        }
        if !leftovers.isEmpty { killAll(matching: marker, binary: binary) }

        let stdout = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let stderr = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        return JobResult(command: command, status: status, stdout: stdout, stderr: stderr, seconds: seconds,
                         ended: ended, timedOut: timedOut, leftovers: leftovers)
    }

    /// Live (not zombie) processes whose command line holds both `binary`
    /// and `marker`, as "pid: command line". Like `pgrep -f`, with the
    /// marker keeping other people's runs of the same binary out.
    static func processes(matching marker: String, binary: String) -> [String] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        let me = getpid()
        var found: [String] = []
        for entry in entries {
            guard let pid = Int32(entry), pid != me else { continue }
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !raw.isEmpty else { continue }
            let commandLine = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            guard commandLine.contains(binary), commandLine.contains(marker) else { continue }
            if let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
               let close = stat.lastIndex(of: ")"),
               stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z") {
                continue
            }
            found.append("\(pid): \(commandLine)")
        }
        return found
    }

    /// The MPI ranks among those processes, as rank: pid (Open MPI puts
    /// each rank's number in its environment).
    static func ranks(matching marker: String, binary: String) -> [Int: pid_t] {
        var ranks: [Int: pid_t] = [:]
        for line in processes(matching: marker, binary: binary) {
            guard let pid = pid_t(line.prefix { $0 != ":" }),
                  let raw = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { continue }
            let prefix = "OMPI_COMM_WORLD_RANK="
            for entry in raw.split(separator: 0) {
                let variable = String(decoding: entry, as: UTF8.self)
                if variable.hasPrefix(prefix), let rank = Int(variable.dropFirst(prefix.count)) { ranks[rank] = pid }
            }
        }
        return ranks
    }

    static func killAll(matching marker: String, binary: String) {
        for line in processes(matching: marker, binary: binary) {
            if let pid = Int32(line.prefix { $0 != ":" }) { kill(pid, SIGKILL) }
        }
    }
}

/// Tests whose jobs write into a fresh temporary folder, removed afterwards
/// unless EFQAT_KEEP_TEST_RUNS is set.
class JobTestCase: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory
            .appendingPathComponent("efqat-\(Self.self)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if ProcessInfo.processInfo.environment["EFQAT_KEEP_TEST_RUNS"] == nil {
            try? FileManager.default.removeItem(atPath: folder)
        }
    }

    /// Fails the test, and throws to end it, unless the job exited cleanly.
    func assertSucceeded(_ job: JobResult, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertFalse(job.timedOut, "the job hung and was killed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.status, 0, "the job failed\n\(job.report)", file: file, line: line)
        XCTAssertEqual(job.leftovers, [], "processes left behind", file: file, line: line)
        guard job.status == 0 else { throw SetupError("job failed; see above") }
    }
}

/// The JSON lines of a run's metrics.jsonl (or another JSON-lines file of the run).
func metricsRecords(in folder: String, file: String = "metrics.jsonl") throws -> [[String: Any]] {
    let text = try String(contentsOfFile: folder + "/" + file, encoding: .utf8)
    return try text.split(separator: "\n").map { line in
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw SetupError("\(folder)/\(file): a line is not a JSON object: \(line)")
        }
        return object
    }
}

/// The test accuracy (in %) of the summary table's QAT row, e.g. "QAT W8A8    91.20%  ...".
func summaryQATAccuracy(_ stdout: String, rows: [String] = ["QAT ", "EfQAT "]) -> Double? {
    // The row of "EfQAT W8A8 cwpn p=0.1" or "QAT W8A8 (full)" (or of other
    // `rows`); its first percentage is the test accuracy.
    for line in stdout.split(separator: "\n") where rows.contains(where: { line.hasPrefix($0) }) {
        for field in line.split(separator: " ") where field.hasSuffix("%") {
            if let value = Double(field.dropLast()) { return value }
        }
    }
    return nil
}

/// How two checkpoints differ, tensor by tensor.
struct CheckpointComparison {
    /// One line per tensor outside the tolerance (or of another name,
    /// dtype or shape).
    var problems: [String] = []
    /// The largest ‖a − b‖ / (rtol‖a‖ + atol√n) seen; ≤ 1 passes.
    var worstRatio: Double = 0
    var worstTensor = ""
    var tensorCount = 0

    /// Float tensors must satisfy ‖a − b‖₂ ≤ rtol·‖a‖₂ + atol·√n (a
    /// relative bound with an RMS floor for tensors near zero); integer
    /// tensors must be equal.
    init(_ pathA: String, _ pathB: String, rtol: Double, atol: Double) throws {
        let a = try SafeTensorsFile.read(from: pathA), b = try SafeTensorsFile.read(from: pathB)
        let namesA = a.tensors.map(\.name), namesB = b.tensors.map(\.name)
        if namesA != namesB {
            problems.append("tensor names differ: only in A \(Set(namesA).subtracting(namesB).sorted()), "
                            + "only in B \(Set(namesB).subtracting(namesA).sorted())")
        }
        for x in a.tensors {
            guard let y = b[x.name] else { continue }
            tensorCount += 1
            guard x.dtype == y.dtype, x.shape == y.shape else {
                problems.append("\(x.name): \(x.dtype.rawValue)\(x.shape) vs \(y.dtype.rawValue)\(y.shape)")
                continue
            }
            guard x.dtype == .f32 else {
                if x.bytes != y.bytes { problems.append("\(x.name) (\(x.dtype.rawValue)): values differ") }
                continue
            }
            let u = try x.values(as: Float.self), v = try y.values(as: Float.self)
            guard !u.isEmpty else { continue }
            var norm = 0.0, difference = 0.0, finite = true
            for (p, q) in zip(u, v) {
                finite = finite && p.isFinite && q.isFinite
                norm += Double(p) * Double(p)
                difference += (Double(p) - Double(q)) * (Double(p) - Double(q))
            }
            norm = norm.squareRoot()
            difference = difference.squareRoot()
            let allowed = rtol * norm + atol * Double(u.count).squareRoot()
            let ratio = difference / allowed
            if ratio > worstRatio { worstRatio = ratio; worstTensor = x.name }
            if !finite {
                problems.append("\(x.name): not finite")
            } else if ratio > 1 {
                problems.append("\(x.name): " + String(format: "‖a−b‖ %.3g > allowed %.3g (‖a‖ %.3g, %d values)",
                                                         difference, allowed, norm, u.count))
            }
        }
    }
}
