import Data
import XCTest

final class MNISTIDXTests: XCTestCase {
    private let imagesMagic: UInt32 = 2051, labelsMagic: UInt32 = 2049

    /// Three 2 × 3 images whose pixels count up from `first`, labelled 7, 0, 9.
    private func writeSet(_ directory: TemporaryDirectory, images: String, labels: String,
                          first: UInt8 = 0) throws {
        let pixels = (0..<18).map { first + UInt8($0) * 10 }
        try directory.write(images, idx(magic: imagesMagic, dimensions: [3, 2, 3], payload: pixels))
        try directory.write(labels, idx(magic: labelsMagic, dimensions: [3], payload: [7, 0, 9]))
    }

    func testLoadsTrainAndTestFromDirectory() throws {
        let directory = try TemporaryDirectory()
        try writeSet(directory, images: MNISTIDX.trainImages, labels: MNISTIDX.trainLabels)
        try writeSet(directory, images: MNISTIDX.testImages, labels: MNISTIDX.testLabels, first: 5)
        let (train, test) = try DatasetFormat.mnistIDX.load(from: directory.path)
        for set in [train, test] {
            XCTAssertEqual(set.count, 3)
            XCTAssertEqual([set.channels, set.height, set.width, set.classes], [1, 2, 3, 10])
            XCTAssertEqual(set.labels, [7, 0, 9])
            XCTAssertEqual(set.mean, [0.1307])
            XCTAssertEqual(set.std, [0.3081])
        }
        XCTAssertEqual(train.pixels, (0..<18).map { Float($0 * 10) / 255 })
        XCTAssertEqual(test.pixels, (0..<18).map { Float(5 + $0 * 10) / 255 })
    }

    private func readError(images: [UInt8], labels: [UInt8]) throws -> (DataError?, images: String, labels: String) {
        let directory = try TemporaryDirectory()
        let imagesFile = try directory.write("images", images)
        let labelsFile = try directory.write("labels", labels)
        let error = expectError(DataError.self) { _ = try MNISTIDX.read(images: imagesFile, labels: labelsFile) }
        return (error, imagesFile, labelsFile)
    }

    private let goodImages = idx(magic: 2051, dimensions: [2, 2, 2], payload: Array(repeating: 1, count: 8))
    private let goodLabels = idx(magic: 2049, dimensions: [2], payload: [1, 2])

    func testTruncatedImages() throws {
        let (error, images, _) = try readError(images: Array(goodImages.dropLast()), labels: goodLabels)
        XCTAssertEqual(error?.file, images)
        XCTAssertEqual(error?.problem, .truncated(expectedBytes: 24, actualBytes: 23))
        XCTAssertTrue(error?.description.hasPrefix(images + ": truncated") ?? false)
        let (shortHeader, _, _) = try readError(images: Array(goodImages.prefix(10)), labels: goodLabels)
        XCTAssertEqual(shortHeader?.problem, .truncated(expectedBytes: 16, actualBytes: 10))
    }

    func testTrailingBytes() throws {
        let (error, _, labels) = try readError(images: goodImages, labels: goodLabels + [0])
        XCTAssertEqual(error?.file, labels)
        XCTAssertEqual(error?.problem, .trailingBytes(expectedBytes: 10, actualBytes: 11))
    }

    func testBadMagic() throws {
        // Label and image files swapped.
        let (error, images, _) = try readError(images: goodLabels, labels: goodImages)
        XCTAssertEqual(error?.file, images)
        XCTAssertEqual(error?.problem, .badMagic(expected: 2051, found: 2049))
    }

    func testWrongDimensions() throws {
        let empty = idx(magic: imagesMagic, dimensions: [0, 28, 28], payload: [])
        XCTAssertEqual(try readError(images: empty, labels: goodLabels).0?.problem,
                       .wrongDimensions("0 × 28 × 28 holds no data"))
        let huge = idx(magic: imagesMagic, dimensions: [.max, .max, .max], payload: [])
        XCTAssertEqual(try readError(images: huge, labels: goodLabels).0?.problem,
                       .wrongDimensions("4294967295 × 4294967295 × 4294967295 is impossibly large"))
    }

    func testImageAndLabelCountsMustAgree() throws {
        let threeLabels = idx(magic: labelsMagic, dimensions: [3], payload: [1, 2, 3])
        let (error, images, labels) = try readError(images: goodImages, labels: threeLabels)
        XCTAssertEqual(error?.file, labels)
        XCTAssertEqual(error?.problem, .labelCountMismatch(labels: 3, images: 2, imagesFile: images))
    }

    func testLabelOutOfRange() throws {
        let badLabel = idx(magic: labelsMagic, dimensions: [2], payload: [1, 10])
        let (error, _, labels) = try readError(images: goodImages, labels: badLabel)
        XCTAssertEqual(error?.file, labels)
        XCTAssertEqual(error?.problem, .labelOutOfRange(label: 10, sample: 1, classes: 10))
    }

    func testCompressedFilesMustBeDecompressedFirst() throws {
        let directory = try TemporaryDirectory()
        let gzipped = try directory.write(MNISTIDX.trainImages + ".gz", [0x1F, 0x8B, 0x08])
        let error = expectError(DataError.self) { _ = try DatasetFormat.mnistIDX.load(from: directory.path) }
        XCTAssertEqual(error?.file, gzipped)
        XCTAssertEqual(error?.problem, .compressed)
        XCTAssertTrue(error?.description.contains("gunzip") ?? false)
    }

    func testMissingFileIsNamed() throws {
        let directory = try TemporaryDirectory()
        let error = expectError(DataError.self) { _ = try DatasetFormat.mnistIDX.load(from: directory.path) }
        XCTAssertEqual(error?.file, directory.path + "/" + MNISTIDX.trainImages)
        XCTAssertEqual(error?.problem, .missing)
        XCTAssertTrue(error?.description.contains("file not found") ?? false)
    }
}

final class CIFAR10Tests: XCTestCase {
    private let recordBytes = 1 + 3072

    /// `count` records; record r has label (first + r) % 10 and pixel i = (r + i) % 256.
    private func records(_ count: Int, firstLabel: Int = 0) -> [UInt8] {
        var bytes = [UInt8]()
        for record in 0..<count {
            bytes.append(UInt8((firstLabel + record) % 10))
            bytes += (0..<3072).map { UInt8((record + $0) % 256) }
        }
        return bytes
    }

    func testLoadsAndConcatenatesBatches() throws {
        let directory = try TemporaryDirectory()
        for (batch, file) in CIFAR10.trainFiles.enumerated() {
            try directory.write(file, records(batch + 1, firstLabel: batch))
        }
        try directory.write(CIFAR10.testFile, records(2, firstLabel: 7))
        let (train, test) = try DatasetFormat.cifar10.load(from: directory.path)

        XCTAssertEqual(train.count, 1 + 2 + 3 + 4 + 5)
        XCTAssertEqual(test.count, 2)
        XCTAssertEqual([train.channels, train.height, train.width, train.classes], [3, 32, 32, 10])
        XCTAssertEqual(train.mean, [0.4914, 0.4822, 0.4465])
        XCTAssertEqual(train.std, [0.2470, 0.2435, 0.2616])
        XCTAssertEqual(train.labels, [0, 1, 2, 2, 3, 4, 3, 4, 5, 6, 4, 5, 6, 7, 8])
        XCTAssertEqual(test.labels, [7, 8])
        // Sample 3 is record 0 of the third batch: pixel i is i / 255.
        XCTAssertEqual(Array(train.pixels[3 * 3072 ..< 4 * 3072]), (0..<3072).map { Float($0 % 256) / 255 })
        XCTAssertEqual(Array(test.pixels[3072...]), (0..<3072).map { Float(($0 + 1) % 256) / 255 })
    }

    private func readError(_ bytes: [UInt8]) throws -> (DataError?, file: String) {
        let directory = try TemporaryDirectory()
        let file = try directory.write(CIFAR10.testFile, bytes)
        return (expectError(DataError.self) { _ = try CIFAR10.read([file]) }, file)
    }

    func testPartialRecordIsRejected() throws {
        let (error, file) = try readError(records(2) + [5, 1, 2])
        XCTAssertEqual(error?.file, file)
        XCTAssertEqual(error?.problem, .partialRecord(recordBytes: recordBytes, fileBytes: 2 * recordBytes + 3))
        XCTAssertTrue(error?.description.contains("2 records and 3 bytes left over") ?? false)
        XCTAssertEqual(try readError(Array(records(1).dropLast())).0?.problem,
                       .partialRecord(recordBytes: recordBytes, fileBytes: recordBytes - 1))
    }

    func testEmptyFileAndBadLabel() throws {
        XCTAssertEqual(try readError([]).0?.problem, .empty)
        var bytes = records(3)
        bytes[2 * recordBytes] = 12
        XCTAssertEqual(try readError(bytes).0?.problem, .labelOutOfRange(label: 12, sample: 2, classes: 10))
    }

    func testMissingBatchIsNamed() throws {
        let directory = try TemporaryDirectory()
        try directory.write(CIFAR10.trainFiles[0], records(1))
        let error = expectError(DataError.self) { _ = try DatasetFormat.cifar10.load(from: directory.path + "/") }
        XCTAssertEqual(error?.file, directory.path + "/" + CIFAR10.trainFiles[1])
        XCTAssertEqual(error?.problem, .missing)
    }

    func testDirectoryIsNotAFile() throws {
        let directory = try TemporaryDirectory()
        let error = expectError(DataError.self) { _ = try CIFAR10.read([directory.path]) }
        XCTAssertEqual(error?.problem, .notAFile)
    }
}
