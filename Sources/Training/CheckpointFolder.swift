import Checkpoint
import Foundation

/// Where a resumable checkpoint stands: the phase and the next step to run
/// in it. Orders checkpoints by the run's progress.
public struct CheckpointPosition: Comparable, Sendable {
    /// The training phases, in the order a run goes through them.
    public enum Phase: String, CaseIterable, Sendable {
        case fp32, qat
    }

    public var phase: Phase
    public var epoch: Int
    public var step: Int

    public init(phase: Phase, epoch: Int, step: Int) {
        self.phase = phase
        self.epoch = epoch
        self.step = step
    }

    /// `checkpoint-qat-e0001-s000004.safetensors`: phase, epoch and step of
    /// the next step to run, zero-padded so that a listing sorts in run order.
    public var fileName: String {
        "checkpoint-\(phase.rawValue)-e\(Self.padded(epoch, 4))-s\(Self.padded(step, 6)).safetensors"
    }

    /// The position a checkpoint file name states; nil for other names.
    public init?(fileName: String) {
        guard fileName.hasPrefix("checkpoint-"), fileName.hasSuffix(".safetensors") else { return nil }
        let parts = fileName.dropFirst("checkpoint-".count).dropLast(".safetensors".count).split(separator: "-")
        guard parts.count == 3, let phase = Phase(rawValue: String(parts[0])),
              parts[1].first == "e", let epoch = Int(parts[1].dropFirst()),
              parts[2].first == "s", let step = Int(parts[2].dropFirst())
        else { return nil }
        self.init(phase: phase, epoch: epoch, step: step)
    }

    public static func < (a: Self, b: Self) -> Bool {
        let order = Phase.allCases
        return (order.firstIndex(of: a.phase)!, a.epoch, a.step) < (order.firstIndex(of: b.phase)!, b.epoch, b.step)
    }

    private static func padded(_ value: Int, _ width: Int) -> String {
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

/// The run checkpoints of an output folder, one file per saved position.
/// Rank 0 alone uses it.
///
/// After each save the folder holds the new checkpoint and the `keep − 1`
/// before it. Checkpoints positioned after the new one are removed too:
/// they belong to a run that was abandoned (a fresh start, or a resume
/// from an older file), and `newestValid` must never return to them.
public struct CheckpointFolder: Sendable {
    public let path: String
    /// How many checkpoints to keep (at least 1).
    public let keep: Int

    public init(path: String, keep: Int) {
        precondition(keep >= 1, "a run keeps at least its newest checkpoint")
        self.path = path
        self.keep = keep
    }

    /// The checkpoints in the folder by their names, newest first.
    public func checkpoints() -> [(position: CheckpointPosition, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.compactMap { name in CheckpointPosition(fileName: name).map { ($0, path + "/" + name) } }
            .sorted { $0.position > $1.position }
    }

    /// Writes `file` durably (`SafeTensorsFile.write`), then removes what
    /// falls outside the kept window, and the temporary files of saves that
    /// were interrupted. A failed removal costs disk space only, so it is
    /// reported through `warn` rather than thrown.
    public func save(_ file: SafeTensorsFile, at position: CheckpointPosition, warn: (String) -> Void) throws {
        try file.write(to: path + "/" + position.fileName)
        let all = checkpoints()
        let stale = all.filter { $0.position > position }.map(\.path)
            + all.filter { $0.position < position }.dropFirst(keep - 1).map(\.path)
            + interruptedSaves()
        for file in stale {
            do { try FileManager.default.removeItem(atPath: file) } catch {
                warn("could not remove \(file): \(error.localizedDescription)")
            }
        }
    }

    /// The newest checkpoint that reads back intact (checksum, layout,
    /// header) and is resumable, with its bytes. Each newer one that is not
    /// is reported through `warn` and skipped.
    public func newestValid(warn: (String) -> Void) -> (path: String, bytes: [UInt8])? {
        for (_, file) in checkpoints() {
            do {
                let bytes = try SafeTensorsFile.readBytes(from: file)
                let record = try RunMetadata.of(try SafeTensorsFile(decoding: bytes, path: file), path: file)
                guard record?.content.resumablePhase != nil, record?.training != nil else {
                    warn("skipping \(file): not a training checkpoint (no resumable phase in its metadata)")
                    continue
                }
                return (file, bytes)
            } catch {
                warn("skipping \(file): \(error)")
            }
        }
        return nil
    }

    /// Fails with one clear message unless a file can be created in the
    /// folder (it is made if missing): better at the start than at the
    /// first save, an epoch later.
    public func checkWritable() throws {
        // mkdir -p, by hand: Foundation's errors do not say what went wrong.
        var folder = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            folder += "/" + component
            guard mkdir(folder, 0o755) == 0 || errno == EEXIST else {
                throw RunError.invalid("cannot make the output folder \(path): \(String(cString: strerror(errno)))")
            }
        }
        let probe = path + "/.efqat-write-probe"
        do {
            try SafeTensorsFile().write(to: probe)
        } catch let error as CheckpointError {
            throw RunError.invalid("output folder \(path) is not writable: \(error.reason)")
        }
        unlink(probe)
    }

    /// `.checkpoint-….safetensors.tmp-<pid>` files that a killed save left.
    private func interruptedSaves() -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.filter { $0.hasPrefix(".checkpoint-") && $0.contains(".safetensors.tmp-") }.map { path + "/" + $0 }
    }
}
