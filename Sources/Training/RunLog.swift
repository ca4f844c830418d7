import Foundation

/// What rank 0 tells the user and the metrics file. Other ranks hold a
/// silent log, so call sites need no rank checks.
public final class RunLog {
    public let isActive: Bool
    private var metricsPath: String?
    /// Opened at the first record, so a run that fails early leaves no file.
    private var metrics: FileHandle?
    private let interactive: Bool
    private var barShown = false

    /// `metricsPath`: JSON lines appended there (rank 0 only).
    /// The progress bar is drawn when standard output is a terminal, or as
    /// `EFQAT_PROGRESS` says (`bar` or `lines`): under mpirun every rank's
    /// output is a pseudo-terminal whatever mpirun's own output is, so the
    /// launch script, which can tell, passes the answer on.
    public init(active: Bool, metricsPath: String?) {
        isActive = active
        self.metricsPath = active ? metricsPath : nil
        switch ProcessInfo.processInfo.environment["EFQAT_PROGRESS"] {
        case "bar": interactive = active
        case "lines": interactive = false
        default: interactive = active && isatty(1) == 1
        }
    }

    private func openMetrics(_ path: String) throws -> FileHandle {
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else { throw RunError.unwritable(path) }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw RunError.unwritable(path) }
        handle.seekToEndOfFile()
        return handle
    }

    /// A line for the person watching.
    public func say(_ text: String) {
        guard isActive else { return }
        if barShown { FileHandle.standardOutput.write(Data("\n".utf8)); barShown = false }
        FileHandle.standardOutput.write(Data((text + "\n").utf8))
    }

    /// One JSON object per line in the metrics file.
    public func record(_ event: String, _ fields: [String: Any]) {
        guard let metricsPath else { return }
        if metrics == nil {
            do { metrics = try openMetrics(metricsPath) } catch {
                say("warning: \(error); metrics are not recorded")
                self.metricsPath = nil
                return
            }
        }
        guard let metrics else { return }
        var object = fields
        object["event"] = event
        object["time"] = Date().timeIntervalSince1970
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        do { try metrics.write(contentsOf: data + Data("\n".utf8)) } catch {
            // A full disk: the checkpoints, which matter more, fail with their own error.
            say("warning: cannot append to \(metricsPath): \(error.localizedDescription); metrics are not recorded")
            self.metricsPath = nil
        }
    }

    /// A progress bar redrawn in place on a terminal; on a pipe or file, a
    /// plain line every `every` steps and at the end.
    public func progress(_ label: String, done: Int, total: Int, every: Int, detail: String) {
        guard isActive else { return }
        if interactive {
            let width = 30
            let filled = total > 0 ? width * done / total : width
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardOutput.write(Data("\r\(label) [\(bar)] \(done)/\(total) \(detail)\u{1B}[K".utf8))
            barShown = true
            if done == total { say("") }
        } else if done == total || (every > 0 && done % every == 0) {
            say("\(label) \(done)/\(total) \(detail)")
        }
    }
}

/// A fatal problem with the run's inputs or outputs, with one clear message.
public enum RunError: Error, CustomStringConvertible {
    case unwritable(String)
    case invalid(String)

    public var description: String {
        switch self {
        case .unwritable(let path): return "cannot write \(path)"
        case .invalid(let message): return message
        }
    }
}
