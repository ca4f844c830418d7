import Data
import Foundation
import XCTest

/// Reads the real Fashion-MNIST files that `launch/setup-data.sh
/// fashion-mnist` puts in the data cache (launch/test.sh runs it first).
/// Missing files fail these tests, saying to run the setup.
final class FashionMNISTFileTests: XCTestCase {
    private static let directory = DataCache.directory(for: .fashionMNIST)
    private static let files = [FashionMNIST.trainImages, FashionMNIST.trainLabels,
                                FashionMNIST.testImages, FashionMNIST.testLabels]

    /// Both sets, read once for all the tests.
    private static let loaded = Result { () throws -> (train: Dataset, test: Dataset) in
        for name in files where !FileManager.default.fileExists(atPath: directory + "/" + name) {
            throw MissingDataFile(path: directory + "/" + name, setup: "launch/setup-data.sh fashion-mnist")
        }
        return try DatasetFormat.fashionMNIST.load(from: directory)
    }

    private func realData() throws -> (train: Dataset, test: Dataset) {
        try Self.loaded.get()
    }

    func testStandardSplitAndShape() throws {
        let (train, test) = try realData()
        XCTAssertEqual(train.count, 60_000)
        XCTAssertEqual(test.count, 10_000)
        for set in [train, test] {
            XCTAssertEqual([set.channels, set.height, set.width, set.classes], [1, 28, 28, 10])
            XCTAssertEqual(set.pixels.count, set.count * 784)
            XCTAssertEqual(set.mean, FashionMNIST.mean)
            XCTAssertEqual(set.std, FashionMNIST.std)
            XCTAssertEqual(set.pixels.min(), 0)
            XCTAssertEqual(set.pixels.max(), 1)
        }
    }

    func testLabelsAreInRangeAndBalanced() throws {
        let (train, test) = try realData()
        for (set, perClass) in [(train, 6000), (test, 1000)] {
            var counts = [Int](repeating: 0, count: 10)
            for label in set.labels {
                XCTAssertTrue((0..<10).contains(label), "label \(label)")
                counts[Int(max(0, min(9, label)))] += 1
            }
            XCTAssertEqual(counts, [Int](repeating: perClass, count: 10))
        }
    }

    /// Values read from the files with Python's gzip module.
    func testKnownImagesAndLabels() throws {
        let (train, test) = try realData()
        XCTAssertEqual(train.labels.prefix(10), [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
        XCTAssertEqual(test.labels.prefix(10), [9, 2, 1, 1, 6, 1, 4, 6, 5, 7])
        // Row 14, column 14 of the first training image (an ankle boot) is 217.
        XCTAssertEqual(train.pixels[14 * 28 + 14], 217 / 255)
        XCTAssertEqual(train.pixels[10 * 28 + 15], 218 / 255)
        XCTAssertEqual(test.pixels[14 * 28 + 14], 110 / 255)
        XCTAssertEqual(byteSum(train, sample: 0), 76_247)
        XCTAssertEqual(byteSum(test, sample: 0), 33_456)
        XCTAssertEqual(train.labels[59_999], 5)
        XCTAssertEqual(test.pixels[9_999 * 784 + 14 * 28 + 14], 132 / 255)
    }

    /// The stored mean and std are the training pixels' (0.286041, 0.353024).
    func testNormalisationIsTheTrainingSetStatistics() throws {
        let (train, _) = try realData()
        var sum = 0.0, squares = 0.0
        for pixel in train.pixels {
            sum += Double(pixel)
            squares += Double(pixel) * Double(pixel)
        }
        let mean = sum / Double(train.pixels.count)
        let std = (squares / Double(train.pixels.count) - mean * mean).squareRoot()
        XCTAssertEqual(mean, 0.286041, accuracy: 1e-6)
        XCTAssertEqual(std, 0.353024, accuracy: 1e-6)
        XCTAssertEqual(Double(FashionMNIST.mean[0]), mean, accuracy: 5e-5)
        XCTAssertEqual(Double(FashionMNIST.std[0]), std, accuracy: 5e-5)
    }

    /// The test files decompressed by gunzip read as the gzipped ones do.
    func testDecompressedRealFilesGiveTheSameData() throws {
        let (_, test) = try realData()
        let plain = try TemporaryDirectory()
        var paths = [String]()
        for name in [FashionMNIST.testImages, FashionMNIST.testLabels] {
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: Self.directory + "/" + name)))
            let file = try plain.write(name, bytes)
            try runTool(["gunzip", file])
            paths.append(String(file.dropLast(3)))
        }
        let decompressed = try FashionMNIST.read(images: paths[0], labels: paths[1])
        XCTAssertEqual(decompressed.labels, test.labels)
        XCTAssertEqual(decompressed.pixels, test.pixels)
    }

    /// A cut copy of a real file is refused, naming it.
    func testTruncatedRealFileIsRefused() throws {
        _ = try realData()
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: Self.directory + "/" + FashionMNIST.testLabels)))
        let directory = try TemporaryDirectory()
        let labels = try directory.write(FashionMNIST.testLabels, Array(bytes.prefix(bytes.count / 2)))
        let images = Self.directory + "/" + FashionMNIST.testImages
        let error = expectError(DataError.self) { _ = try FashionMNIST.read(images: images, labels: labels) }
        XCTAssertEqual(error?.file, labels)
        XCTAssertEqual(error?.problem, .corruptGzip("the compressed data ends early (truncated?)"))
    }

    private func byteSum(_ set: Dataset, sample: Int) -> Int {
        set.pixels[sample * 784 ..< (sample + 1) * 784].reduce(0) { $0 + Int(($1 * 255).rounded()) }
    }
}

/// The Fashion-MNIST reader on small files made here: gzipped or plain, and
/// damaged in the ways a download or copy can be.
final class FashionMNISTFormatTests: XCTestCase {
    private let imagesMagic: UInt32 = 2051, labelsMagic: UInt32 = 2049

    /// Three 2 × 3 images whose pixels count up from `first`, labelled 7, 0, 9.
    private func images(first: UInt8 = 0) -> [UInt8] {
        idx(magic: imagesMagic, dimensions: [3, 2, 3], payload: (0..<18).map { first + UInt8($0) * 10 })
    }

    private let labels = idx(magic: 2049, dimensions: [3], payload: [7, 0, 9])

    /// The four files in `directory`; those in `gzip` (plain names) gzipped
    /// under their `.gz` names.
    private func writeSet(_ directory: TemporaryDirectory, gzip: Set<String>) throws {
        let contents = [
            MNISTIDX.trainImages: images(), MNISTIDX.trainLabels: labels,
            MNISTIDX.testImages: images(first: 5), MNISTIDX.testLabels: labels,
        ]
        for (name, bytes) in contents {
            if gzip.contains(name) {
                try directory.write(name + ".gz", try gzipped(bytes))
            } else {
                try directory.write(name, bytes)
            }
        }
    }

    private let allNames: Set = [MNISTIDX.trainImages, MNISTIDX.trainLabels, MNISTIDX.testImages, MNISTIDX.testLabels]

    func testGzippedAndPlainFilesGiveIdenticalData() throws {
        var loaded = [(train: Dataset, test: Dataset)]()
        for gzip in [allNames, [], [MNISTIDX.trainImages, MNISTIDX.testLabels]] {
            let directory = try TemporaryDirectory()
            try writeSet(directory, gzip: gzip)
            loaded.append(try DatasetFormat.fashionMNIST.load(from: directory.path))
        }
        let (train, test) = loaded[0]
        XCTAssertEqual(train.labels, [7, 0, 9])
        XCTAssertEqual(train.pixels, (0..<18).map { Float($0 * 10) / 255 })
        XCTAssertEqual(test.pixels, (0..<18).map { Float(5 + $0 * 10) / 255 })
        XCTAssertEqual([train.channels, train.height, train.width, train.classes], [1, 2, 3, 10])
        for other in loaded.dropFirst() {
            for (a, b) in [(train, other.train), (test, other.test)] {
                XCTAssertEqual(a.pixels, b.pixels)
                XCTAssertEqual(a.labels, b.labels)
                XCTAssertEqual(a.mean, b.mean)
                XCTAssertEqual(a.std, b.std)
            }
        }
    }

    /// Reads `images` and `labels` written under the given names; returns the
    /// error, which must name one file in a single line.
    private func readError(
        images imagesBytes: [UInt8], _ imagesName: String = FashionMNIST.testImages,
        labels labelsBytes: [UInt8]? = nil, _ labelsName: String = MNISTIDX.testLabels
    ) throws -> (DataError?, images: String, labels: String) {
        let directory = try TemporaryDirectory()
        let imagesFile = try directory.write(imagesName, imagesBytes)
        let labelsFile = try directory.write(labelsName, labelsBytes ?? labels)
        let error = expectError(DataError.self) {
            _ = try FashionMNIST.read(images: imagesFile, labels: labelsFile)
        }
        if let error {
            XCTAssertTrue([imagesFile, labelsFile].contains(error.file))
            XCTAssertTrue(error.description.hasPrefix(error.file + ": "), error.description)
            XCTAssertFalse(error.description.contains("\n"), error.description)
        }
        return (error, imagesFile, labelsFile)
    }

    func testTruncatedGzipFileIsRefused() throws {
        let packed = try gzipped(images())
        for cut in [2, 8, packed.count / 2, packed.count - 3] {
            let (error, file, _) = try readError(images: Array(packed.prefix(cut)))
            XCTAssertEqual(error?.file, file)
            XCTAssertEqual(error?.problem, .corruptGzip("the compressed data ends early (truncated?)"), "cut at \(cut)")
        }
    }

    func testTruncatedDataInsideValidGzipIsRefused() throws {
        let (error, file, _) = try readError(images: try gzipped(Array(images().dropLast())))
        XCTAssertEqual(error?.file, file)
        XCTAssertEqual(error?.problem, .truncated(expectedBytes: 34, actualBytes: 33))
    }

    func testTruncatedPlainFileIsRefused() throws {
        let (error, file, _) = try readError(images: Array(images().dropLast()), MNISTIDX.testImages)
        XCTAssertEqual(error?.file, file)
        XCTAssertEqual(error?.problem, .truncated(expectedBytes: 34, actualBytes: 33))
    }

    func testWrongMagicIsRefusedGzippedOrPlain() throws {
        // Images and labels swapped.
        let (gzipError, gzipFile, _) = try readError(images: try gzipped(labels), labels: images(),
                                                     MNISTIDX.testLabels)
        XCTAssertEqual(gzipError?.file, gzipFile)
        XCTAssertEqual(gzipError?.problem, .badMagic(expected: 2051, found: 2049))
        let (plainError, plainFile, _) = try readError(images: labels, MNISTIDX.testImages)
        XCTAssertEqual(plainError?.file, plainFile)
        XCTAssertEqual(plainError?.problem, .badMagic(expected: 2051, found: 2049))
        let (labelsError, _, labelsFile) = try readError(images: try gzipped(images()),
                                                         labels: try gzipped(images()), FashionMNIST.testLabels)
        XCTAssertEqual(labelsError?.file, labelsFile)
        XCTAssertEqual(labelsError?.problem, .badMagic(expected: 2049, found: 2051))
    }

    func testDamagedGzipIsRefused() throws {
        var packed = try gzipped(images())
        packed[packed.count - 6] ^= 0xFF  // the CRC-32 of the contents
        let (error, file, _) = try readError(images: packed)
        XCTAssertEqual(error?.file, file)
        XCTAssertEqual(error?.problem, .corruptGzip("incorrect data check"))
        XCTAssertTrue(error?.description.contains("is not valid gzip data: incorrect data check") ?? false)
    }

    func testDataAfterTheGzipStreamIsRefused() throws {
        let (error, _, _) = try readError(images: try gzipped(images()) + [0, 0, 0])
        XCTAssertEqual(error?.problem, .corruptGzip("3 bytes of other data after the compressed data"))
    }

    func testGzNameWithoutGzipContentIsRefused() throws {
        let (error, file, _) = try readError(images: images())
        XCTAssertEqual(error?.file, file)
        XCTAssertEqual(error?.problem, .corruptGzip("no gzip header"))
    }

    /// `cat a.gz b.gz` decompresses to the two contents, as with gunzip.
    func testConcatenatedGzipMembersAreRead() throws {
        let whole = images()
        let directory = try TemporaryDirectory()
        let file = try directory.write(FashionMNIST.testImages,
                                       try gzipped(Array(whole.prefix(10))) + gzipped(Array(whole.dropFirst(10))))
        let labelsFile = try directory.write(FashionMNIST.testLabels, try gzipped(labels))
        let set = try FashionMNIST.read(images: file, labels: labelsFile)
        XCTAssertEqual(set.pixels, (0..<18).map { Float($0 * 10) / 255 })
    }

    func testMissingFileIsNamedWithTheSetupCommand() throws {
        let directory = try TemporaryDirectory()
        try writeSet(directory, gzip: [MNISTIDX.trainImages])
        try FileManager.default.removeItem(atPath: directory.path + "/" + MNISTIDX.testLabels)
        let error = expectError(DataError.self) { _ = try DatasetFormat.fashionMNIST.load(from: directory.path) }
        XCTAssertEqual(error?.file, directory.path + "/" + FashionMNIST.testLabels)
        XCTAssertEqual(error?.problem, .missing)
        XCTAssertTrue(error?.description.contains("launch/setup-data.sh fashion-mnist") ?? false)
    }

    func testFormatNameShapeAndCacheFolder() {
        XCTAssertEqual(DatasetFormat(rawValue: "fashion-mnist"), .fashionMNIST)
        XCTAssertTrue(DatasetFormat.allCases.contains(.fashionMNIST))
        XCTAssertEqual(DatasetFormat.fashionMNIST.imageSize.height, 28)
        XCTAssertEqual(DatasetFormat.fashionMNIST.imageSize.width, 28)
        XCTAssertEqual(DatasetFormat.fashionMNIST.cacheFolder, "fashion-mnist")
        XCTAssertEqual(FashionMNIST.trainImages, "train-images-idx3-ubyte.gz")
        XCTAssertEqual(FashionMNIST.testLabels, "t10k-labels-idx1-ubyte.gz")
    }
}
