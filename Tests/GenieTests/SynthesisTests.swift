import Checkpoint
import Distributed
import Foundation
import Genie
import Kernels
import Layers
import XCTest

final class SynthesisTests: XCTestCase {
    var folder = ""

    override func setUpWithError() throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("genie-tests-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: folder)
    }

    func tinyOptions(images: Int, batchSize: Int = 8, iterations: Int = 3, seed: UInt64 = 11) -> SynthesisOptions {
        SynthesisOptions(images: images, batchSize: batchSize, iterations: iterations, seed: seed)
    }

    /// A few dozen iterations cut the loss on a small model by more than
    /// 8x (ResNet-8 at width 1/4; its last stage sees 2x2 maps, whose
    /// statistics 40 iterations match less closely than the others'). The model's running statistics are those of digit-like images
    /// (two bright strokes on a dark background, normalised), as after
    /// training, so that a low loss is reachable.
    func testSynthesisLowersTheLossByALargeFactor() {
        let teacher = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.25))
        teacher.initialize(seed: 3)
        var strokes = [Float](repeating: 0, count: 64 * 64)
        var rng = SplitMix64(seed: 3)
        for n in 0..<64 {
            for _ in 0..<2 {
                let top = rng.nextIndex(below: 5), left = rng.nextIndex(below: 5)
                let height = 1 + rng.nextIndex(below: 7 - top), width = 1 + rng.nextIndex(below: 3)
                for y in top..<(top + height) {
                    for x in left..<(left + width) { strokes[n * 64 + y * 8 + x] = 1 }
                }
            }
        }
        let mean = strokes.reduce(0, +) / Float(strokes.count)
        let std = (strokes.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(strokes.count)).squareRoot()
        var data = strokes.map { ($0 - mean) / std }
        data.withUnsafeMutableBufferPointer {
            _ = teacher.forward(FeatureMap(data: $0.baseAddress!, channels: 1, batch: 64, height: 8, width: 8),
                                training: true)
        }
        for norm in teacher.batchNorms {
            var sums = [Float](repeating: 0, count: norm.pendingStatisticsCount)
            norm.exportPendingStatistics(into: &sums)
            norm.setRunningStatistics(sums: sums, microBatches: 1)
        }
        let synthesizer = BatchSynthesizer(teacher: teacher, height: 8, width: 8,
                                           options: tinyOptions(images: 16, batchSize: 16, iterations: 40))
        var losses: [Double] = []
        let batch = synthesizer.synthesize(batch: 0) { _, loss in losses.append(loss.total) }
        XCTAssertEqual(losses.count, 40)
        XCTAssertEqual(batch.initialLoss.total, losses.first)
        XCTAssertEqual(batch.finalLoss.total, losses.last)
        XCTAssertLessThan(batch.finalLoss.total * 8, batch.initialLoss.total,
                          "loss \(batch.initialLoss.total) -> \(batch.finalLoss.total)")
        XCTAssertEqual(batch.images.count, 16 * 64)
        XCTAssert(batch.images.allSatisfy(\.isFinite))
    }

    /// World sizes 1, 2 and 4 emulated: each rank is a synthesizer of its
    /// own running batches r, r + W, ...; concatenated in batch order they
    /// give the very same images.
    func testSameImagesForAnyWorldSize() {
        let teacher = smallTeacher(seed: 4)
        let options = tinyOptions(images: 32, iterations: 4)
        func images(worldSize: Int) -> [Float] {
            var batches = [[Float]](repeating: [], count: options.batches)
            for rank in 0..<worldSize {
                let synthesizer = BatchSynthesizer(teacher: teacher, height: 8, width: 8, options: options)
                for b in stride(from: rank, to: options.batches, by: worldSize) {
                    batches[b] = synthesizer.synthesize(batch: b).images
                }
            }
            return batches.flatMap { $0 }
        }
        let one = images(worldSize: 1)
        XCTAssertEqual(one.count, 32 * 64)
        XCTAssertEqual(images(worldSize: 2), one)
        XCTAssertEqual(images(worldSize: 4), one)
        // Batches differ from each other: their seeds do.
        XCTAssertNotEqual(Array(one[0..<512]), Array(one[512..<1024]))
    }

    func testSwingOffsetsStayInRangeAndVary() {
        let seed = BatchSynthesizer.seed(run: 1, batch: 2)
        XCTAssertNotEqual(seed, BatchSynthesizer.seed(run: 1, batch: 3))
        XCTAssertNotEqual(seed, BatchSynthesizer.seed(run: 2, batch: 2))
        var seen = Set<Int>()
        for iteration in 0..<200 {
            for offset in BatchSynthesizer.swingOffsets(batchSeed: seed, iteration: iteration, layers: 3) {
                XCTAssert((0...2).contains(offset.y) && (0...2).contains(offset.x), "\(offset)")
                seen.insert(offset.y * 3 + offset.x)
            }
        }
        XCTAssertEqual(seen.count, 9, "every crop position occurs")
        let a = BatchSynthesizer.swingOffsets(batchSeed: seed, iteration: 0, layers: 8)
        let b = BatchSynthesizer.swingOffsets(batchSeed: seed, iteration: 1, layers: 8)
        XCTAssertNotEqual(a.map { [$0.y, $0.x] }, b.map { [$0.y, $0.x] })
    }

    /// The file holds the finished batches with their metadata; a rerun
    /// with more images keeps them and adds the rest, giving the same file
    /// as one run; other settings are refused.
    func testDataSetFileResumesPerBatch() throws {
        let teacher = smallTeacher(seed: 5)
        let communicator = SingleProcessCommunicator()
        let resumedPath = folder + "/resumed.safetensors", wholePath = folder + "/whole.safetensors"

        var events: [String] = []
        let first = try synthesizeDataset(teacher: teacher, height: 8, width: 8, options: tinyOptions(images: 16),
                                          communicator: communicator, path: resumedPath) { event in
            if case .finished(let index, _, _, _, let done, let total) = event { events.append("\(index) \(done)/\(total)") }
        }
        XCTAssertEqual(events, ["0 1/2", "1 2/2"])
        XCTAssertEqual(first.synthesizedBatches, 2)
        var file = try SafeTensorsFile.read(from: resumedPath)
        XCTAssertEqual(file["images"]?.shape, [16, 1, 8, 8])
        XCTAssertEqual(file.metadata["genie.finished_batches"], "2")
        XCTAssertEqual(file.metadata["genie.seed"], "11")
        XCTAssertEqual(file.metadata["genie.batch_size"], "8")
        XCTAssertEqual(file.metadata["genie.iterations"], "3")
        XCTAssertEqual(file.metadata["genie.batch_losses"], "[\(first.batchLosses[0]), \(first.batchLosses[1])]")

        let resumed = try synthesizeDataset(teacher: teacher, height: 8, width: 8, options: tinyOptions(images: 32),
                                            communicator: communicator, path: resumedPath)
        XCTAssertEqual(resumed.resumedBatches, 2)
        XCTAssertEqual(resumed.synthesizedBatches, 2)
        XCTAssertEqual(Array(resumed.images.prefix(16 * 64)), first.images)

        let whole = try synthesizeDataset(teacher: teacher, height: 8, width: 8, options: tinyOptions(images: 32),
                                          communicator: communicator, path: wholePath)
        XCTAssertEqual(whole.images, resumed.images)
        file = try SafeTensorsFile.read(from: resumedPath)
        XCTAssertEqual(file, try SafeTensorsFile.read(from: wholePath))
        XCTAssertEqual(try file["images"]?.values(as: Float.self), whole.images)

        // A finished file: nothing left to do.
        let again = try synthesizeDataset(teacher: teacher, height: 8, width: 8, options: tinyOptions(images: 32),
                                          communicator: communicator, path: wholePath)
        XCTAssertEqual(again.synthesizedBatches, 0)
        XCTAssertEqual(again.images, whole.images)

        XCTAssertThrowsError(try synthesizeDataset(teacher: teacher, height: 8, width: 8,
                                                   options: tinyOptions(images: 32, seed: 12),
                                                   communicator: communicator, path: wholePath)) { error in
            XCTAssert("\(error)".contains("other settings"), "\(error)")
        }
        XCTAssertThrowsError(try synthesizeDataset(teacher: smallTeacher(seed: 6), height: 8, width: 8,
                                                   options: tinyOptions(images: 32),
                                                   communicator: communicator, path: wholePath)) { error in
            XCTAssert("\(error)".contains("genie.teacher_crc32"), "\(error)")
        }
    }

    func testInvalidSettingsAreRejected() {
        var options = tinyOptions(images: 20)
        XCTAssertNotNil(options.problem, "20 images are not a multiple of batch 8")
        options.images = 16
        XCTAssertNil(options.problem)
        options.batchSize = 1
        XCTAssertNotNil(options.problem)
        XCTAssertThrowsError(try synthesizeDataset(teacher: smallTeacher(seed: 1), height: 10, width: 8,
                                                   options: tinyOptions(images: 16),
                                                   communicator: SingleProcessCommunicator(),
                                                   path: folder + "/x.safetensors"))
    }

    func testSchedules() {
        var plateau = PlateauSchedule(learningRate: 0.1, factor: 0.1, minimum: 1e-4, patience: 2)
        var rates: [Float] = []
        // 3.9999 is not better than 4 (relative threshold 1e-4).
        for loss in [5, 4, 3.9999, 4, 4, 4, 4, 4, 3, 3, 3, 3] as [Double] {
            plateau.step(loss: loss)
            rates.append(plateau.learningRate)
        }
        let expected: [Float] = [0.1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 1e-4]
        XCTAssertEqual(rates.count, expected.count)
        for (i, (rate, want)) in zip(rates, expected).enumerated() {
            XCTAssertEqual(rate, want, accuracy: want * 1e-5, "step \(i)")
        }
        for _ in 0..<10 { plateau.step(loss: 3) }
        XCTAssertEqual(plateau.learningRate, 1e-4, accuracy: 1e-9, "never below the minimum")

        let options = SynthesisOptions()
        XCTAssertEqual(options.generatorRate(at: 0), 0.01)
        XCTAssertEqual(options.generatorRate(at: 99), 0.01)
        XCTAssertEqual(options.generatorRate(at: 100), 0.01 * 0.95, accuracy: 1e-9)
        XCTAssertEqual(options.generatorRate(at: 250), 0.01 * 0.95 * 0.95, accuracy: 1e-9)
    }
}
