import Checkpoint
import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Several machines, simulated: the same job as 4 ranks on one host (plain
/// mpirun, shared memory between all ranks) and as 2 hosts × 2 ranks
/// through the network-namespace harness (clusters/netns/run.sh: mpirun
/// with a hostfile, a launch agent instead of ssh, TCP between the hosts)
/// must end with bitwise-identical weights.
///
/// Why bitwise, not within a tolerance: the world size and seed are the
/// same, each rank runs one OpenBLAS thread, and Open MPI 4's all-reduce
/// (coll/tuned) picks its algorithm, and so its summation order, from the
/// number of ranks and the message size only; shared memory and TCP just
/// carry the bytes. A hierarchical, placement-aware all-reduce (coll/han,
/// hcoll) would break this; docs/distributed.md says how to rule it out.
///
/// Needs root and network namespaces; skipped otherwise. About a minute on
/// 2 cores (two jobs of ~25 s).
final class MultiHostTests: XCTestCase {
    /// The job both set-ups run: 16 FP32 and 16 QAT steps. This is the one
    /// place that describes it; it only uses options that change no
    /// defaults, so it follows whatever the default job becomes.
    static func job(output: String) throws -> [String] {
        [
            "--data-dir", try Locations.mnistFolder(), "--output", output,
            "--seed", "5", "--train-samples", "1024", "--batch-size", "64",
            "--fp32-epochs", "1", "--qat-epochs", "1",
            // One OpenBLAS thread whatever the host's core count: the GEMMs'
            // summation order depends on it.
            "--threads", "1", "--log-every", "8",
        ]
    }

    static let ranks = 4
    static let hosts = 2
    static let runTimeout: TimeInterval = 300

    private var folder = ""
    /// The harness's set of hosts: namespaces <setName>-h0, -h1 and -sw.
    private var setName = ""
    /// Set once this test has made a namespace: tearDown then cleans up.
    private var madeNamespaces = false
    private var harness: String { Locations.repository.appendingPathComponent("clusters/netns").path }

    override func setUpWithError() throws {
        guard getuid() == 0 else {
            throw XCTSkip("multi-host tests create network namespaces and need root (CI runs as root)")
        }
        let tag = UUID().uuidString.prefix(8).lowercased()
        setName = "efqat-test-\(tag)"
        // Can this machine make a namespace and a UTS namespace inside it?
        // (Not in an unprivileged container, for one.) The probe uses the
        // set's switch name, so tearDown removes it if the probe breaks.
        let probe = "\(setName)-sw"
        let made = command(["ip", "netns", "add", probe])
        guard made.status == 0 else {
            throw XCTSkip("`ip netns` cannot create network namespaces here: \(made.output)")
        }
        madeNamespaces = true
        let uts = command(["ip", "netns", "exec", probe, "unshare", "--uts", "true"])
        _ = command(["ip", "netns", "del", probe])
        guard uts.status == 0 else {
            throw XCTSkip("`unshare --uts` does not work inside a network namespace here: \(uts.output)")
        }
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("efqat-multihost-\(tag)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        guard madeNamespaces else { return }
        // run.sh takes its hosts down however the job ends; this covers a
        // harness that was itself killed.
        let down = command(["/bin/bash", harness + "/down.sh", "--name", setName])
        XCTAssertEqual(down.status, 0, "down.sh failed: \(down.output)")
        let left = command(["ip", "netns", "list"]).output.split(separator: "\n").filter { $0.hasPrefix(setName) }
        XCTAssertEqual(left, [], "network namespaces left behind")
        if !folder.isEmpty, ProcessInfo.processInfo.environment["EFQAT_KEEP_TEST_RUNS"] == nil {
            try? FileManager.default.removeItem(atPath: folder)
        } else if !folder.isEmpty {
            print("MultiHostTests: runs kept in \(folder)")
        }
    }

    func testTwoHostsTrainBitwiseLikeOneHost() throws {
        let binary = try Locations.trainBinary()
        let oneHost = try Jobs.mpi(ranks: Self.ranks, try Self.job(output: folder + "/one-host"), marker: folder,
                                   folder: folder, timeout: Self.runTimeout)
        let twoHosts = try Jobs.run(
            "/bin/bash",
            [harness + "/run.sh", "--hosts", String(Self.hosts), "--name", setName, "-n", String(Self.ranks)]
                + (try Self.job(output: folder + "/two-hosts")),
            marker: folder, binary: binary, folder: folder,
            environment: Jobs.environment(extra: ["EFQAT_TRAIN_BINARY": binary]), timeout: Self.runTimeout)

        for (name, job) in [("one host", oneHost), ("two hosts", twoHosts)] {
            XCTAssertFalse(job.timedOut, "\(name): the job hung and was killed\n\(job.report)")
            XCTAssertEqual(job.status, 0, "\(name): the job failed\n\(job.report)")
            XCTAssertEqual(job.leftovers, [], "\(name): processes left behind")
        }
        guard oneHost.status == 0, twoHosts.status == 0 else { return }

        // The harness left nothing up.
        let left = command(["ip", "netns", "list"]).output.split(separator: "\n").filter { $0.hasPrefix(setName) }
        XCTAssertEqual(left, [], "run.sh should take its hosts down")

        // The ranks really were on two hosts, two each (mpirun's job map),
        // and the hosts exchanged the gradients over their link.
        for host in 0..<Self.hosts {
            XCTAssertTrue(twoHosts.output.contains("Data for node: \(setName)-h\(host)\tNum slots: 2\tMax slots: 0\tNum procs: 2"),
                          "mpirun's map should put 2 ranks on \(setName)-h\(host)\n\(twoHosts.report)")
        }
        let sent = linkMiB(in: twoHosts.output, host: "\(setName)-h1")
        XCTAssertNotNil(sent, "run.sh should report the link traffic\n\(twoHosts.report)")
        XCTAssertGreaterThan(sent ?? 0, 1, "host 1 should have sent the all-reduce traffic over its link")

        // Bitwise the same model.
        let a = try SafeTensorsFile.read(from: folder + "/one-host/final.safetensors")
        let b = try SafeTensorsFile.read(from: folder + "/two-hosts/final.safetensors")
        XCTAssertEqual(a.tensors.map(\.name), b.tensors.map(\.name))
        let differing = a.tensors.filter { !($0 == b[$0.name]) }.map(\.name)
        if !differing.isEmpty {
            // How far apart, to tell a reduction-order change (rounding) from a real fault.
            let comparison = try CheckpointComparison(folder + "/one-host/final.safetensors",
                                                      folder + "/two-hosts/final.safetensors", rtol: 1e-3, atol: 1e-4)
            XCTFail("""
                final.safetensors of 1 host × 4 ranks and 2 hosts × 2 ranks differ in \(differing.count) of \
                \(a.tensors.count) tensors (first: \(differing.prefix(3).joined(separator: ", "))); worst \
                \(comparison.worstTensor) at \(String(format: "%.3g", comparison.worstRatio))× (rtol 1e-3, atol 1e-4)
                """)
        }
        let checksums = try [folder + "/one-host", folder + "/two-hosts"].map { output in
            try metricsRecords(in: output).first { $0["event"] as? String == "weights" }?["checksum"] as? String
        }
        XCTAssertNotNil(checksums[0])
        XCTAssertEqual(checksums[0], checksums[1], "weight checksums of the 1-host and the 2-host run")
    }

    // MARK: Helpers

    /// MiB that `host` sent over its link, from run.sh's "==> HOST link: sent X MiB, ..." line.
    private func linkMiB(in output: String, host: String) -> Double? {
        for line in output.split(separator: "\n") where line.hasPrefix("==> \(host) link: sent ") {
            let number = line.dropFirst("==> \(host) link: sent ".count).prefix { $0 != " " }
            return Double(number)
        }
        return nil
    }

    /// Runs a short command to its end; its status and its output (stdout and stderr).
    private func command(_ arguments: [String]) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        // ip lives in /usr/sbin, which the test's PATH may lack.
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = (environment["PATH"] ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            return (-1, "\(arguments.joined(separator: " ")): \(error)")
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
