/// A data file that cannot be used, with a message naming the file and what
/// is wrong with it, e.g.
/// `~/.cache/efqat-train/mnist/mnist_5k.csv: line 12, field 40: "2x5" is not an integer`.
public struct DataError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Problem: Equatable, Sendable {
        case missing
        case notAFile
        case unreadable(reason: String)
        /// The file is gzip-compressed (by name or by content).
        case compressed
        /// A gzip file (read to be decompressed) that zlib cannot decompress.
        case corruptGzip(String)
        case empty
        case truncated(expectedBytes: Int, actualBytes: Int)
        case trailingBytes(expectedBytes: Int, actualBytes: Int)
        case badMagic(expected: UInt32, found: UInt32)
        case wrongDimensions(String)
        /// A file of fixed-size records whose length is not a whole number of them.
        case partialRecord(recordBytes: Int, fileBytes: Int)
        case labelOutOfRange(label: Int, sample: Int, classes: Int)
        case labelCountMismatch(labels: Int, images: Int, imagesFile: String)
        // CSV problems; lines and fields count from 1.
        case wrongFieldCount(line: Int, expected: Int, found: Int)
        case notAnInteger(line: Int, field: Int, text: String)
        case valueOutOfRange(line: Int, field: Int, value: String, range: ClosedRange<Int>)
        case classCount(label: Int, expected: Int, found: Int)
    }

    /// Path of the offending file.
    public let file: String
    public let problem: Problem
    /// What to do about it, when there is an obvious fix.
    public let hint: String?

    public init(file: String, problem: Problem, hint: String? = nil) {
        self.file = file
        self.problem = problem
        self.hint = hint
    }

    public var description: String {
        let message = "\(file): \(problem.message)"
        return hint.map { "\(message). \($0)" } ?? message
    }
}

extension DataError.Problem {
    var message: String {
        switch self {
        case .missing:
            "file not found"
        case .notAFile:
            "is not a regular file"
        case .unreadable(let reason):
            "cannot be read (\(reason))"
        case .compressed:
            "is gzip-compressed"
        case .corruptGzip(let detail):
            "is not valid gzip data: \(detail)"
        case .empty:
            "is empty"
        case .truncated(let expected, let actual):
            "truncated: has \(actual) bytes, expected \(expected)"
        case .trailingBytes(let expected, let actual):
            "has \(actual) bytes, expected \(expected) (unexpected data after the end)"
        case .badMagic(let expected, let found):
            "bad magic number \(found), expected \(expected)"
        case .wrongDimensions(let detail):
            "wrong dimensions: \(detail)"
        case .partialRecord(let record, let size):
            "has \(size) bytes, not a whole number of \(record)-byte records "
                + "(\(size / record) records and \(size % record) bytes left over)"
        case .labelOutOfRange(let label, let sample, let classes):
            "label \(label) of sample \(sample) is outside 0..<\(classes)"
        case .labelCountMismatch(let labels, let images, let imagesFile):
            "has \(labels) labels but \(imagesFile) has \(images) images"
        case .wrongFieldCount(let line, let expected, let found):
            "line \(line) has \(found) fields, expected \(expected)"
        case .notAnInteger(let line, let field, let text):
            "line \(line), field \(field): \(text.isEmpty ? "empty field" : "\"\(text)\" is not an integer")"
        case .valueOutOfRange(let line, let field, let value, let range):
            "line \(line), field \(field): \(value) is outside \(range.lowerBound)...\(range.upperBound)"
        case .classCount(let label, let expected, let found):
            "has \(found) rows of class \(label), expected \(expected)"
        }
    }
}
