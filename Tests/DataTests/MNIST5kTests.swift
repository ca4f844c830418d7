import Data
import Foundation
import XCTest

/// Reads the real `mnist_5k.csv` fetched by `launch/setup-data.sh`.
final class MNIST5kFileTests: XCTestCase {
    /// `mnist_5k.csv` in the data cache's `mnist` folder, where efqat-train
    /// looks for it by default.
    private static let csvPath = DataCache.directory(for: .mnist5k) + "/" + MNIST5k.fileName

    private func readRealFile() throws -> (train: Dataset, test: Dataset, lines: [Substring]) {
        guard FileManager.default.fileExists(atPath: Self.csvPath) else {
            throw MissingDataFile(path: Self.csvPath, setup: "launch/setup-data.sh")
        }
        let (train, test) = try MNIST5k.read(Self.csvPath)
        let text = try String(contentsOfFile: Self.csvPath, encoding: .utf8)
        return (train, test, text.split(separator: "\n"))
    }

    func testSplitsIntoTrainAndTestPerClass() throws {
        let (train, test, _) = try readRealFile()
        XCTAssertEqual(train.count, 4500)
        XCTAssertEqual(test.count, 500)
        for set in [train, test] {
            XCTAssertEqual(set.channels, 1)
            XCTAssertEqual(set.height, 28)
            XCTAssertEqual(set.width, 28)
            XCTAssertEqual(set.classes, 10)
            XCTAssertEqual(set.mean, [0.1307])
            XCTAssertEqual(set.std, [0.3081])
            XCTAssertEqual(set.pixels.count, set.count * 784)
        }
        for label in Int32(0)..<10 {
            XCTAssertEqual(train.labels.filter { $0 == label }.count, 450, "train class \(label)")
            XCTAssertEqual(test.labels.filter { $0 == label }.count, 50, "test class \(label)")
        }
    }

    func testPixelsAreScaledToUnitRange() throws {
        let (train, test, _) = try readRealFile()
        for set in [train, test] {
            XCTAssertEqual(set.pixels.min(), 0)
            XCTAssertEqual(set.pixels.max(), 1)
        }
    }

    /// Rows are sorted by label, so the test set starts at row 450 (the 451st
    /// zero) and the training set at row 0.
    func testSamplesMatchTheirRows() throws {
        let (train, test, lines) = try readRealFile()
        XCTAssertEqual(lines.count, 5000)
        assertSample(0, of: test, equals: lines[450])
        assertSample(0, of: train, equals: lines[0])
        assertSample(449, of: train, equals: lines[449])
        assertSample(450, of: train, equals: lines[500])
        assertSample(499, of: test, equals: lines[4999])
    }

    private func assertSample(_ sample: Int, of set: Dataset, equals line: Substring,
                              file: StaticString = #filePath, lineNumber: UInt = #line) {
        let fields = line.split(separator: ",").map { Int($0)! }
        XCTAssertEqual(fields.count, 785, file: file, line: lineNumber)
        XCTAssertEqual(Int(set.labels[sample]), fields[784], file: file, line: lineNumber)
        let expected = fields[..<784].map { Float($0) / 255 }
        XCTAssertEqual(Array(set.pixels[sample * 784 ..< (sample + 1) * 784]), expected,
                       file: file, line: lineNumber)
    }
}

/// Malformed CSV files give errors naming the file, line and field.
final class MNIST5kMalformedTests: XCTestCase {
    private let pixels = Array(repeating: "0", count: 784)

    private func row(label: String = "3", replacing field: Int? = nil, with text: String = "") -> String {
        var fields = pixels + [label]
        if let field { fields[field] = text }
        return fields.joined(separator: ",")
    }

    private func readError(_ text: String) throws -> DataError? {
        let directory = try TemporaryDirectory()
        let file = try directory.write(MNIST5k.fileName, text: text)
        let error = expectError(DataError.self) { _ = try MNIST5k.read(file) }
        XCTAssertEqual(error?.file, file)
        XCTAssertTrue(error?.description.hasPrefix(file + ": ") ?? false, "\(String(describing: error))")
        return error
    }

    func testNonNumericField() throws {
        let error = try readError(row() + "\n" + row(replacing: 4, with: "1x") + "\n")
        XCTAssertEqual(error?.problem, .notAnInteger(line: 2, field: 5, text: "1x"))
        XCTAssertTrue(error?.description.contains("line 2, field 5") ?? false)
    }

    func testEmptyField() throws {
        let error = try readError(row(replacing: 10, with: "") + "\n")
        XCTAssertEqual(error?.problem, .notAnInteger(line: 1, field: 11, text: ""))
    }

    func testTooFewAndTooManyFields() throws {
        let short = pixels.dropLast().joined(separator: ",") + ",3"
        XCTAssertEqual(try readError(row() + "\n" + short + "\n")?.problem,
                       .wrongFieldCount(line: 2, expected: 785, found: 784))
        XCTAssertEqual(try readError(row() + ",1,2\n")?.problem,
                       .wrongFieldCount(line: 1, expected: 785, found: 787))
        XCTAssertEqual(try readError(row() + "\n\n")?.problem,
                       .wrongFieldCount(line: 2, expected: 785, found: 1))
    }

    func testValuesOutOfRange() throws {
        XCTAssertEqual(try readError(row(replacing: 0, with: "256"))?.problem,
                       .valueOutOfRange(line: 1, field: 1, value: "256", range: 0...255))
        XCTAssertEqual(try readError(row(label: "10"))?.problem,
                       .valueOutOfRange(line: 1, field: 785, value: "10", range: 0...9))
    }

    func testWrongClassCounts() throws {
        let error = try readError(row(label: "0") + "\r\n" + row(label: "1") + "\r\n")
        XCTAssertEqual(error?.problem, .classCount(label: 0, expected: 500, found: 1))
    }

    func testEmptyFile() throws {
        XCTAssertEqual(try readError("")?.problem, .empty)
    }

    func testMissingFileSuggestsSetupScript() throws {
        let directory = try TemporaryDirectory()
        let error = expectError(DataError.self) { _ = try DatasetFormat.mnist5k.load(from: directory.path) }
        XCTAssertEqual(error?.problem, .missing)
        XCTAssertEqual(error?.file, directory.path + "/mnist_5k.csv")
        XCTAssertTrue(error?.description.contains("launch/setup-data.sh") ?? false)
    }

    func testGzipContentIsRecognised() throws {
        let directory = try TemporaryDirectory()
        let file = try directory.write(MNIST5k.fileName, [0x1F, 0x8B, 0x08, 0x00])
        let error = expectError(DataError.self) { _ = try MNIST5k.read(file) }
        XCTAssertEqual(error?.problem, .compressed)
        XCTAssertTrue(error?.description.contains("gunzip") ?? false)
    }
}
