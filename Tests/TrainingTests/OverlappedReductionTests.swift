import Data
import Distributed
import EfQAT
import Foundation
import Kernels
import Layers
import Training
import XCTest

/// The overlapped all-reduce (buckets started during the backward pass)
/// must average exactly what the blocking one does: the same gradients,
/// batch-norm statistics and scalars, for full training and for EfQAT's
/// spans, also across a selection refresh.
final class OverlappedReductionTests: XCTestCase {
    /// ResNet-20 at width 1/4 on 8x8 images: 21 parts for the backward
    /// pass to report, small enough to run in milliseconds.
    func model() -> Network {
        let model = Network(ModelSpec(architecture: .resnet20, inputChannels: 1, classes: 3, widthMultiplier: 0.25))
        model.initialize(seed: 6)
        quantize(model, data: syntheticDataset())
        return model
    }

    /// One training forward pass on 8 samples; leaves dL/dlogits in
    /// `dLogits`. `images` must live until the backward pass (layers keep
    /// their input).
    func forward(_ model: Network, offset: Int, images: FloatBuffer, dLogits: FloatBuffer) -> Float {
        let data = syntheticDataset()
        var labels = [Int32](repeating: 0, count: 8)
        labels.withUnsafeMutableBufferPointer { data.gatherBatch(offset..<(offset + 8), pixels: images.pointer, labels: $0.baseAddress!) }
        let logits = model.forward(FeatureMap(data: images.pointer, channels: 1, batch: 8, height: 8, width: 8), training: true)
        return labels.withUnsafeBufferPointer {
            softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: dLogits.reserve(logits.count),
                                gradientScale: 1 / 8).loss
        }
    }

    /// Two micro-batches into the gradient arena, then one reduction,
    /// blocking or overlapped with the second backward pass. Returns the
    /// gradients and running statistics afterwards, the summed scalars, and
    /// the reductions the communicator saw.
    func reduceTwoMicroBatches(overlapped: Bool, efqat: Bool, bucketFloats: Int)
        -> (values: [Float], scalars: [Float], log: DeferredSumCommunicator.Log, reducer: GradientReducer) {
        let model = model()
        let communicator = DeferredSumCommunicator(size: 2)
        var spans = model.store.allTrainedSpans
        var selection = ChannelSelection(rows: model.layers.map { [0..<$0.outChannels] })
        if efqat {
            selection = ChannelSelection.select(model.layers, store: model.store, mode: .cwpn, fraction: 0.1)
            spans = selection.spans(model.layers, store: model.store)
        }
        let reducer = GradientReducer(spans: spans, norms: model.batchNorms, extras: 1, bucketFloats: bucketFloats)
        let images = FloatBuffer(capacity: 8 * 64), dLogits = FloatBuffer()
        model.store.gradients.zero()
        var scalars: [Float] = [0]
        for part in 0..<2 {
            scalars[0] += forward(model, offset: 8 * part, images: images, dLogits: dLogits)
            let last = overlapped && part == 1
            if last { reducer.begin(gradients: model.store.gradients, scalars: scalars, communicator: communicator) }
            selection.withRows(of: model.layers) {
                model.backward(FeatureMap(data: dLogits.pointer, channels: 3, batch: 8, height: 1, width: 1),
                               finished: last ? reducer.finished : nil)
            }
        }
        communicator.log.startsBeforeEnd = communicator.log.starts.count
        if overlapped {
            reducer.end(scalars: &scalars, microBatches: 4)
        } else {
            reducer.reduce(gradients: model.store.gradients, scalars: &scalars, microBatches: 4, communicator: communicator)
        }
        let trained = spans.flatMap { Array(model.store.gradients.all[$0.range]) }
        return (trained + Array(model.store.state.all), scalars, communicator.log, reducer)
    }

    func testOverlappedReductionAveragesLikeTheBlockingOne() {
        for efqat in [false, true] {
            let blocking = reduceTwoMicroBatches(overlapped: false, efqat: efqat, bucketFloats: 256)
            let overlapped = reduceTwoMicroBatches(overlapped: true, efqat: efqat, bucketFloats: 256)
            let what = efqat ? "EfQAT p = 0.1" : "full training"
            // The fake's sums are exact, so the forms must agree bit for bit.
            XCTAssertEqual(overlapped.values.count, blocking.values.count, what)
            if let i = blocking.values.indices.first(where: { overlapped.values[$0].bitPattern != blocking.values[$0].bitPattern }) {
                XCTFail("\(what): value \(i) of \(blocking.values.count): \(overlapped.values[i]) against \(blocking.values[i])")
            }
            XCTAssertEqual(overlapped.scalars, blocking.scalars, what)
            XCTAssertEqual(blocking.log.starts.count, 0, "\(what): the blocking form starts nothing")

            let reducer = overlapped.reducer, starts = overlapped.log.starts
            XCTAssertGreaterThan(reducer.bucketCount, 3, what)
            XCTAssertEqual(starts.count, reducer.bucketCount + 1, "\(what): statistics, then every bucket once")
            XCTAssertEqual(overlapped.log.startsBeforeEnd, starts.count, "\(what): every bucket starts during the pass")
            XCTAssertEqual(reducer.bucketsStartedEarly, reducer.bucketCount, what)
            // Together the reductions cover the packed buffer once: the
            // statistics and scalars at its end first, then the gradient
            // buckets from the end backwards.
            XCTAssertEqual(starts.map(\.count).reduce(0, +), reducer.packedCount, what)
            XCTAssertEqual(starts[0].lowerBound + starts[0].count, reducer.packedCount, what)
            for (later, earlier) in zip(starts.dropFirst(), starts) {
                XCTAssertEqual(later.lowerBound + later.count, earlier.lowerBound, "\(what): buckets in reverse order")
            }
            XCTAssertGreaterThan(overlapped.log.completedByPolling, 0, "\(what): polls let reductions finish during the pass")
        }
    }

    func testNewSpansMakeNewBuckets() {
        let model = model()
        let reducer = GradientReducer(spans: model.store.allTrainedSpans, norms: model.batchNorms, extras: 2,
                                      bucketFloats: 512)
        let full = reducer.bucketCount
        let selection = ChannelSelection.select(model.layers, store: model.store, mode: .cwpn, fraction: 0.1)
        reducer.spans = selection.spans(model.layers, store: model.store)
        XCTAssertLessThan(reducer.bucketCount, full)
        XCTAssertGreaterThan(reducer.bucketCount, 0)
    }

    /// Whole EfQAT training runs, 2 "ranks" of 2 micro-batches each, with
    /// a selection refresh every 3 steps: overlap on and off end bit for
    /// bit alike.
    func testOverlappedTrainingMatchesBlockingAcrossSelectionRefreshes() throws {
        func train(_ overlap: ReductionOverlap) throws -> ([UInt32], PhaseReport, [Int]) {
            let model = model()
            var options = phase(epochs: 2)
            options.accumulation = 2
            options.overlapReduction = overlap
            let channels = CriticalChannels(layers: model.layers, store: model.store,
                                            options: EfqatOptions(mode: .cwpn, fraction: 0.1, refresh: .steps(3)))
            let communicator = DeferredSumCommunicator(size: 2)
            let trainer = try Trainer(model: model, data: syntheticDataset(), options: options,
                                      communicator: communicator, log: RunLog(active: false, metricsPath: nil),
                                      channels: channels)
            XCTAssertEqual(trainer.overlapsReduction, overlap == .on)
            var generations: [Int] = []
            trainer.afterStep = { _ in generations.append(channels.generation) }
            let report = try trainer.run { _ in }
            return (snapshot(model), report, generations)
        }
        let (blocking, blockingReport, generations) = try train(.off)
        let (overlapped, overlappedReport, _) = try train(.on)
        XCTAssertGreaterThan(Set(generations).count, 2, "the selection was refreshed")
        XCTAssertEqual(overlapped, blocking)
        XCTAssertEqual(overlappedReport.bytesReduced, blockingReport.bytesReduced)
        XCTAssertEqual(blockingReport.bucketsStartedEarly, 0)
        XCTAssertGreaterThan(overlappedReport.bucketsStartedEarly, 0)
    }

    func testOneProcessNeverOverlaps() {
        for mode in ReductionOverlap.allCases { XCTAssertFalse(mode.isOn(worldSize: 1), "\(mode)") }
        XCTAssertTrue(ReductionOverlap.on.isOn(worldSize: 2))
        XCTAssertFalse(ReductionOverlap.off.isOn(worldSize: 2))
    }
}

/// A world of `size` ranks that all hold this rank's values, so a sum is
/// `size` times the value, exactly. A non-blocking sum happens only when it
/// completes, after two polls or at its wait, so a reducer that read its
/// buffer too early, or packed a bucket before its gradients were final,
/// gives another result than the blocking form.
final class DeferredSumCommunicator: Communicator {
    /// The non-blocking reductions started, as float ranges relative to
    /// the lowest address any of them reduced.
    final class Log {
        fileprivate var addresses: [(first: Int, count: Int)] = []
        var startsBeforeEnd = 0
        var completedByPolling = 0
        var starts: [(lowerBound: Int, count: Int)] {
            let origin = addresses.map(\.first).min() ?? 0
            return addresses.map { ($0.first - origin, $0.count) }
        }
    }

    let size: Int
    let log = Log()
    init(size: Int) { self.size = size }
    var rank: Int { 0 }
    var localRank: Int { 0 }
    var localSize: Int { size }

    private func scale(_ buffer: UnsafeMutableBufferPointer<Float>) {
        for i in buffer.indices { buffer[i] *= Float(size) }
    }
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, _ op: ReduceOp) {
        if op == .sum { scale(buffer) }
    }
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, _ op: ReduceOp) {
        if op == .sum { for i in buffer.indices { buffer[i] *= Double(size) } }
    }
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Int64>, _ op: ReduceOp) {
        if op == .sum { for i in buffer.indices { buffer[i] *= Int64(size) } }
    }
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        log.addresses.append((Int(bitPattern: buffer.baseAddress!) / MemoryLayout<Float>.stride, buffer.count))
        var polls = 0
        return PendingReduction(test: { [self] in
            polls += 1
            guard polls >= 2 else { return false }
            scale(buffer)
            log.completedByPolling += 1
            return true
        }, wait: { [self] in scale(buffer) })
    }
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {}
    func allGather(_ send: [Float]) -> [[Float]] { Array(repeating: send, count: size) }
    func barrier() {}
    func abort(_ message: String, code: Int32) -> Never { fatalError(message) }
}
