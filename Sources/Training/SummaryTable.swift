import Foundation

/// The table that ends a run: one row per stage; training stages also show
/// how much they trained, their backward time and their all-reduce size.
public struct SummaryTable {
    public var rows: [StageResult]

    public func render() -> String {
        let header = ["stage", "test acc", "time (s)", "samples/s", "trained weights", "backward/step",
                      "all-reduced/step"]
        let body = rows.map { r -> [String] in
            let t = r.training
            return [r.name, r.accuracy.isNaN ? "-" : String(format: "%.2f%%", r.accuracy * 100),
                    String(format: "%.1f", r.seconds),
                    t.map { String(format: "%.0f", $0.samplesPerSecond) } ?? "-",
                    t.map { String(format: "%.1f%%", $0.trainedWeightFraction * 100) } ?? "-",
                    t.map { String(format: "%.1f ms", $0.backwardPerStep * 1000) } ?? "-",
                    t.map { Self.bytes($0.floatsPerStep * MemoryLayout<Float>.stride) } ?? "-"]
        }
        return renderTable(header: header, rows: body)
    }

    static func bytes(_ n: Int) -> String {
        if n == 0 { return "-" }
        if n >= 1 << 30 { return String(format: "%.2f GiB", Double(n) / Double(1 << 30)) }
        if n >= 1 << 20 { return String(format: "%.2f MiB", Double(n) / Double(1 << 20)) }
        return String(format: "%.1f KiB", Double(n) / 1024)
    }
}

/// A plain-text table: the first column left-aligned, the others
/// right-aligned, a rule under the header.
public func renderTable(header: [String], rows: [[String]]) -> String {
    let widths = header.indices.map { c in ([header] + rows).map { $0[c].count }.max()! }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { c, text in
            c == 0 ? text.padding(toLength: widths[c], withPad: " ", startingAt: 0)
                   : String(repeating: " ", count: widths[c] - text.count) + text
        }.joined(separator: "  ")
    }
    let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
    return ([line(header), rule] + rows.map(line)).joined(separator: "\n")
}
