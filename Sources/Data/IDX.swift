/// A pair of IDX files, images and labels, in the layout of the MNIST files
/// (shared by the MNIST and Fashion-MNIST readers).
///
/// An IDX file is a big-endian header (magic number, then one UInt32 per
/// dimension) followed by the raw bytes: images are count × rows × columns
/// pixels, labels one byte per image.
enum IDXPair {
    /// Magic numbers: unsigned bytes (0x08) with 3 or 1 dimensions.
    static let imagesMagic: UInt32 = 2051
    static let labelsMagic: UInt32 = 2049

    /// Reads the training and test pairs, the files named
    /// `MNISTIDX.trainImages` … `MNISTIDX.testLabels`, each name turned into
    /// a path by `locate`.
    static func load(
        gzip: GzipPolicy, mean: [Float], std: [Float], locate: (String) -> String
    ) throws -> (train: Dataset, test: Dataset) {
        let train = try read(images: locate(MNISTIDX.trainImages), labels: locate(MNISTIDX.trainLabels),
                             gzip: gzip, mean: mean, std: std)
        let test = try read(images: locate(MNISTIDX.testImages), labels: locate(MNISTIDX.testLabels),
                            gzip: gzip, mean: mean, std: std)
        return (train, test)
    }

    /// Reads one pair of image and label files, which must agree in count,
    /// with labels in 0..<10; `mean` and `std` normalise the pixels.
    static func read(
        images imagesFile: String, labels labelsFile: String, gzip: GzipPolicy, mean: [Float], std: [Float]
    ) throws -> Dataset {
        let images = try IDXFile(imagesFile, gzip: gzip, magic: imagesMagic, rank: 3)
        let labels = try IDXFile(labelsFile, gzip: gzip, magic: labelsMagic, rank: 1)
        let count = images.dimensions[0], height = images.dimensions[1], width = images.dimensions[2]
        guard labels.dimensions[0] == count else {
            throw DataError(file: labelsFile, problem: .labelCountMismatch(
                labels: labels.dimensions[0], images: count, imagesFile: imagesFile))
        }

        let pixels = images.bytes.withUnsafeBufferPointer { bytes in
            [Float](unsafeUninitializedCapacity: count * height * width) { output, initialized in
                scalePixels(UnsafeBufferPointer(rebasing: bytes[images.payloadStart...]),
                            into: output.baseAddress!)
                initialized = count * height * width
            }
        }
        var labelValues = [Int32](repeating: 0, count: count)
        for sample in 0..<count {
            let label = labels.bytes[labels.payloadStart + sample]
            guard Int(label) < MNISTImage.classes else {
                throw DataError(file: labelsFile, problem: .labelOutOfRange(
                    label: Int(label), sample: sample, classes: MNISTImage.classes))
            }
            labelValues[sample] = Int32(label)
        }
        return Dataset(
            channels: 1, height: height, width: width, classes: MNISTImage.classes,
            pixels: pixels, labels: labelValues, mean: mean, std: std)
    }
}

/// The checked header of an IDX file: its dimensions, and where the data
/// starts. The (decompressed) length must match the header exactly.
private struct IDXFile {
    let bytes: [UInt8]
    let dimensions: [Int]
    var payloadStart: Int { 4 + 4 * dimensions.count }

    init(_ file: String, gzip: GzipPolicy, magic: UInt32, rank: Int) throws {
        let bytes = try readFile(file, gzip: gzip)
        let headerBytes = 4 + 4 * rank
        guard bytes.count >= 4 else {
            throw DataError(file: file, problem: .truncated(expectedBytes: headerBytes, actualBytes: bytes.count))
        }
        let found = IDXFile.bigEndianUInt32(bytes, at: 0)
        guard found == magic else {
            throw DataError(file: file, problem: .badMagic(expected: magic, found: found))
        }
        guard bytes.count >= headerBytes else {
            throw DataError(file: file, problem: .truncated(expectedBytes: headerBytes, actualBytes: bytes.count))
        }
        let dimensions = (0..<rank).map { Int(IDXFile.bigEndianUInt32(bytes, at: 4 + 4 * $0)) }
        let shape = dimensions.map(String.init).joined(separator: " × ")
        guard !dimensions.contains(0) else {
            throw DataError(file: file, problem: .wrongDimensions("\(shape) holds no data"))
        }
        var payloadBytes = 1
        for dimension in dimensions {
            let (product, overflow) = payloadBytes.multipliedReportingOverflow(by: dimension)
            guard !overflow else {
                throw DataError(file: file, problem: .wrongDimensions("\(shape) is impossibly large"))
            }
            payloadBytes = product
        }
        let expected = headerBytes + payloadBytes
        guard bytes.count >= expected else {
            throw DataError(file: file, problem: .truncated(expectedBytes: expected, actualBytes: bytes.count))
        }
        guard bytes.count == expected else {
            throw DataError(file: file, problem: .trailingBytes(expectedBytes: expected, actualBytes: bytes.count))
        }
        self.bytes = bytes
        self.dimensions = dimensions
    }

    private static func bigEndianUInt32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        bytes[offset ..< offset + 4].reduce(0) { $0 << 8 | UInt32($1) }
    }
}
