/// CIFAR-10 in its binary form (`cifar-10-batches-bin`): `data_batch_1.bin`
/// … `data_batch_5.bin` for training and `test_batch.bin` for testing.
///
/// Each record is one label byte followed by 3072 pixel bytes: the red,
/// green and blue 32 × 32 planes, row by row, which is already the C × H × W
/// order of `Dataset`. The official files hold 10,000 records each; any
/// whole number of records is accepted.
public enum CIFAR10 {
    public static let trainFiles = (1...5).map { "data_batch_\($0).bin" }
    public static let testFile = "test_batch.bin"

    static let channels = 3, height = 32, width = 32, classes = 10
    static let mean: [Float] = [0.4914, 0.4822, 0.4465]
    static let std: [Float] = [0.2470, 0.2435, 0.2616]
    static let pixelsPerRecord = channels * height * width
    static let recordBytes = 1 + pixelsPerRecord

    /// Reads the training set (the five batches, in order) and the test set
    /// from `directory`.
    public static func load(from directory: String) throws -> (train: Dataset, test: Dataset) {
        let train = try read(trainFiles.map { path($0, in: directory) })
        let test = try read([path(testFile, in: directory)])
        return (train, test)
    }

    /// Reads and concatenates batch files. All files are checked before the
    /// pixels are decoded into one allocation.
    public static func read(_ files: [String]) throws -> Dataset {
        var contents = [[UInt8]]()
        for file in files {
            let bytes = try readFile(file)
            guard !bytes.isEmpty else { throw DataError(file: file, problem: .empty) }
            guard bytes.count % recordBytes == 0 else {
                throw DataError(file: file, problem: .partialRecord(recordBytes: recordBytes, fileBytes: bytes.count))
            }
            for record in 0..<bytes.count / recordBytes {
                let label = bytes[record * recordBytes]
                guard Int(label) < classes else {
                    throw DataError(file: file, problem: .labelOutOfRange(
                        label: Int(label), sample: record, classes: classes))
                }
            }
            contents.append(bytes)
        }

        let count = contents.reduce(0) { $0 + $1.count / recordBytes }
        var labels = [Int32]()
        labels.reserveCapacity(count)
        let pixels = [Float](unsafeUninitializedCapacity: count * pixelsPerRecord) { output, initialized in
            for bytes in contents {
                bytes.withUnsafeBufferPointer { records in
                    for record in 0..<records.count / recordBytes {
                        let start = record * recordBytes
                        labels.append(Int32(records[start]))
                        scalePixels(UnsafeBufferPointer(rebasing: records[start + 1 ..< start + recordBytes]),
                                    into: output.baseAddress! + initialized)
                        initialized += pixelsPerRecord
                    }
                }
            }
        }
        return Dataset(
            channels: channels, height: height, width: width, classes: classes,
            pixels: pixels, labels: labels, mean: mean, std: std)
    }
}
