import Checkpoint
import Data
import Distributed
import EfQAT
import Foundation
import Kernels
import Layers
import Training
import XCTest

/// EfQAT: which channels each mode selects, that a step trains exactly
/// them (plus the always-trained tensors), that frozen parameters and their
/// optimizer state stay bit for bit, and that a resumed run keeps the
/// selection.
final class EfqatTests: XCTestCase {
    let communicator = SingleProcessCommunicator()
    static let fractions = [0, 0.05, 0.1, 0.25, 0.6, 1]

    /// ResNet-20 at its initialisation: 22 layers with rows of 9 to 576
    /// weights, so budgets in weights and in channels differ.
    func resnet20() -> Network {
        let model = Network(ModelSpec(architecture: .resnet20, inputChannels: 1, classes: 10))
        model.initialize(seed: 9)
        return model
    }

    func scores(_ model: Network) -> [[Double]] {
        model.layers.map { layer in
            let w = model.store.parameters[layer.weight], n = layer.weight.rowLength
            return (0..<layer.outChannels).map { r in w[(r * n)..<((r + 1) * n)].reduce(0) { $0 + Double(abs($1)) } / Double(n) }
        }
    }

    func selected(_ selection: ChannelSelection, layer l: Int) -> Set<Int> {
        Set(selection.rows[l].flatMap { Array($0) })
    }

    func testPerLayerModeTakesTheTopFractionOfEveryLayer() {
        let model = resnet20(), importance = scores(model)
        for p in Self.fractions {
            let selection = ChannelSelection.select(model.layers, store: model.store, mode: .cwpl, fraction: p)
            for (l, layer) in model.layers.enumerated() {
                let rows = selected(selection, layer: l)
                let expected = p == 0 ? 0 : min(layer.outChannels, max(1, Int((p * Double(layer.outChannels)).rounded())))
                XCTAssertEqual(rows.count, expected, "p \(p), \(layer.name)")
                let out = Set(0..<layer.outChannels).subtracting(rows)
                if let low = rows.map({ importance[l][$0] }).min(), let high = out.map({ importance[l][$0] }).max() {
                    XCTAssertGreaterThanOrEqual(low, high, "p \(p), \(layer.name): a less important channel was chosen")
                }
            }
        }
    }

    func testPerNetworkModeTakesTheTopChannelsUpToTheWeightBudget() {
        let model = resnet20(), importance = scores(model), layers = model.layers
        let total = layers.reduce(0) { $0 + $1.weight.count }
        for p in Self.fractions {
            let selection = ChannelSelection.select(layers, store: model.store, mode: .cwpn, fraction: p)
            var inScores: [Double] = [], outScores: [Double] = [], lightest = Int.max, weights = 0
            for (l, layer) in layers.enumerated() {
                let rows = selected(selection, layer: l)
                for r in 0..<layer.outChannels {
                    if rows.contains(r) { inScores.append(importance[l][r]) } else { outScores.append(importance[l][r]) }
                }
                weights += rows.count * layer.weight.rowLength
                if !rows.isEmpty { lightest = min(lightest, layer.weight.rowLength) }
            }
            XCTAssertEqual(weights, selection.selectedWeights(layers))
            // Enough weights, and not one more channel than needed.
            XCTAssertGreaterThanOrEqual(Double(weights), p * Double(total), "p \(p)")
            if weights > 0 { XCTAssertLessThan(Double(weights - lightest), p * Double(total) + 576, "p \(p)") }
            if let low = inScores.min(), let high = outScores.max() {
                XCTAssertGreaterThanOrEqual(low, high, "p \(p): a less important channel was chosen")
            }
            if p == 0 { XCTAssertEqual(weights, 0) }
            if p == 1 { XCTAssertEqual(weights, total) }
        }
    }

    func testLayerModeTakesWholeLayersByMeanMagnitude() {
        let model = resnet20(), importance = scores(model), layers = model.layers
        let total = layers.reduce(0) { $0 + $1.weight.count }
        let layerScore = importance.map { $0.reduce(0, +) / Double($0.count) }
        for p in Self.fractions {
            let selection = ChannelSelection.select(layers, store: model.store, mode: .lwpn, fraction: p)
            let chosen = layers.indices.filter { !selection.rows[$0].isEmpty }
            for l in chosen { XCTAssertEqual(selection.rows[l], [0..<layers[l].outChannels], "p \(p): partial layer") }
            let weights = chosen.reduce(0) { $0 + layers[$1].weight.count }
            XCTAssertGreaterThanOrEqual(Double(weights), p * Double(total))
            if let last = chosen.min(by: { layerScore[$0] < layerScore[$1] }) {
                XCTAssertLessThan(Double(weights - layers[last].weight.count), p * Double(total), "p \(p): one layer too many")
                for l in layers.indices where !chosen.contains(l) {
                    XCTAssertLessThanOrEqual(layerScore[l], layerScore[last], "p \(p): \(layers[l].name) outranks a chosen layer")
                }
            }
        }
    }

    func testFractionIsPrintedAsWritten() {
        XCTAssertEqual(EfqatOptions(mode: .cwpl, fraction: 0, refresh: .epoch).fractionLabel, "0")
        XCTAssertEqual(EfqatOptions(mode: .cwpl, fraction: 0.1, refresh: .epoch).fractionLabel, "0.1")
        XCTAssertEqual(EfqatOptions(mode: .cwpl, fraction: 1, refresh: .epoch).fractionLabel, "1")
        XCTAssert(EfqatOptions(mode: .cwpn, fraction: 0.05, refresh: .never).description.hasPrefix("cwpn p=0.05 "))
    }

    func testMasksRoundTrip() {
        let model = resnet20()
        let selection = ChannelSelection.select(model.layers, store: model.store, mode: .cwpn, fraction: 0.1)
        XCTAssertEqual(ChannelSelection(masks: selection.masks(model.layers)), selection)
    }

    /// The spans are the selected weight rows and their steps, the enabled
    /// activation steps, biases and batch-norm parameters, and nothing else.
    func testSpansCoverExactlyWhatEfqatTrains() {
        let data = syntheticDataset(), model = tinyModel()
        quantize(model, data: data)
        let layers = model.layers, store = model.store
        let selection = ChannelSelection.select(layers, store: store, mode: .cwpl, fraction: 0.3)
        var expected = Set<Int>()
        for (l, layer) in layers.enumerated() {
            for r in selected(selection, layer: l) {
                let n = layer.weight.rowLength
                expected.formUnion((layer.weight.offset + r * n)..<(layer.weight.offset + (r + 1) * n))
                expected.insert(layer.weightQuantizer.step.offset + r)
            }
            if layer.inputQuantizer.enabled { expected.insert(layer.inputQuantizer.step.offset) }
        }
        for slot in store.parameterLayout.slots where [.bias, .normScale, .normShift].contains(slot.role) {
            expected.formUnion(slot.range)
        }
        let spans = selection.spans(layers, store: store)
        var covered: [Int] = []
        for span in spans { covered += Array(span.range) }
        XCTAssertEqual(covered.count, Set(covered).count, "spans overlap")
        XCTAssertEqual(Set(covered), expected)
        XCTAssertEqual(spans.map(\.range.lowerBound), spans.map(\.range.lowerBound).sorted(), "spans not in arena order")
        XCTAssertFalse(layers[0].inputQuantizer.enabled, "the image stays in float: its step must not train")
    }

    /// Through the whole network: dW of the selected rows equals the full
    /// backward's; frozen rows get nothing; everything upstream of dW (so
    /// biases, batch norm and activation steps) is unchanged.
    func testSelectedRowsGetTheFullBackwardsGradient() {
        let data = syntheticDataset()
        let model = Network(ModelSpec(architecture: .resnet8, inputChannels: 1, classes: 3, widthMultiplier: 0.5))
        model.initialize(seed: 2)
        quantize(model, data: data)
        func gradients() -> [Float] {
            let images = FloatBuffer(capacity: 16 * 64)
            var labels = [Int32](repeating: 0, count: 16)
            labels.withUnsafeMutableBufferPointer { data.gatherBatch(0..<16, pixels: images.pointer, labels: $0.baseAddress!) }
            let logits = model.forward(FeatureMap(data: images.pointer, channels: 1, batch: 16, height: 8, width: 8), training: true)
            let dLogits = FloatBuffer(capacity: logits.count)
            _ = labels.withUnsafeBufferPointer {
                softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, gradient: dLogits.pointer, gradientScale: 1 / 16)
            }
            model.store.gradients.zero()
            model.backward(FeatureMap(data: dLogits.pointer, channels: 3, batch: 16, height: 1, width: 1))
            for norm in model.batchNorms { norm.discardPendingStatistics() }
            return Array(model.store.gradients.all)
        }
        let full = gradients()
        // Scattered rows, so layers gather dY from several runs.
        let selection = ChannelSelection.select(model.layers, store: model.store, mode: .cwpn, fraction: 0.4)
        XCTAssert(selection.rows.contains { $0.count > 1 }, "want a layer with several runs of rows")
        let partial = selection.withRows(of: model.layers, gradients)
        XCTAssertEqual(model.layers.map(\.gradientRows), model.layers.map { [0..<$0.outChannels] },
                       "the rows are put back after the scope")
        let trained = Set(selection.spans(model.layers, store: model.store).flatMap { Array($0.range) })
        var frozen = 0
        for slot in model.store.parameterLayout.slots {
            for i in slot.range {
                if trained.contains(i) {
                    XCTAssertEqual(partial[i], full[i], accuracy: 1e-6 + 1e-5 * abs(full[i]), "\(slot.name) [\(i - slot.offset)]")
                } else if slot.role == .weight || slot.role == .weightStep {
                    XCTAssertEqual(partial[i], 0, "\(slot.name) [\(i - slot.offset)] is frozen but got a gradient")
                    frozen += 1
                }
            }
        }
        XCTAssertGreaterThan(frozen, 0)
    }

    /// Frozen rows, their steps and their momentum do not change, bit for
    /// bit, however many steps run; the selected ones do.
    func testFrozenParametersAndTheirOptimizerStateStayUnchanged() throws {
        let data = syntheticDataset(), model = tinyModel()
        quantize(model, data: data)
        let channels = CriticalChannels(layers: model.layers, store: model.store,
                                        options: EfqatOptions(mode: .cwpn, fraction: 0.3, refresh: .never))
        let trainer = try Trainer(model: model, data: data, options: phase(epochs: 2), communicator: communicator,
                                  log: RunLog(active: false, metricsPath: nil), channels: channels)
        // Momentum from "earlier training", so unchanged momentum means something.
        var rng = SplitMix64(seed: 4)
        for i in trainer.optimizer.velocity.all.indices { trainer.optimizer.velocity.all[i] = rng.nextNormal() * 0.01 }
        let weightsBefore = Array(model.store.parameters.all), velocityBefore = Array(trainer.optimizer.velocity.all)
        _ = try trainer.run { _ in }
        XCTAssertEqual(channels.selectedAtStep, 0)
        let trained = Set(channels.spans.flatMap { Array($0.range) })
        var frozen = 0, changed = 0
        for slot in model.store.parameterLayout.slots where slot.role == .weight || slot.role == .weightStep {
            for i in slot.range {
                if trained.contains(i) {
                    if model.store.parameters.all[i] != weightsBefore[i] { changed += 1 }
                } else {
                    frozen += 1
                    XCTAssertEqual(model.store.parameters.all[i].bitPattern, weightsBefore[i].bitPattern, "\(slot.name) changed")
                    XCTAssertEqual(trainer.optimizer.velocity.all[i].bitPattern, velocityBefore[i].bitPattern,
                                   "momentum of \(slot.name) changed")
                }
            }
        }
        XCTAssertGreaterThan(frozen, 0)
        XCTAssertGreaterThan(changed, trained.count / 2, "the selected rows should train")
    }

    func testRefreshIntervals() {
        XCTAssertEqual(RefreshInterval(parsing: "epoch"), .epoch)
        XCTAssertEqual(RefreshInterval(parsing: "never"), .never)
        XCTAssertEqual(RefreshInterval(parsing: "25"), .steps(25))
        XCTAssertNil(RefreshInterval(parsing: "0"))
        XCTAssertNil(RefreshInterval(parsing: "often"))
        let due = (0..<12).filter { RefreshInterval.steps(5).isDue(step: $0, stepInEpoch: $0 % 4) }
        XCTAssertEqual(due, [0, 5, 10])
        XCTAssertEqual((0..<12).filter { RefreshInterval.epoch.isDue(step: $0, stepInEpoch: $0 % 4) }, [0, 4, 8])
        XCTAssertEqual((0..<12).filter { RefreshInterval.never.isDue(step: $0, stepInEpoch: $0 % 4) }, [0])
    }

    /// A run stopped mid-epoch (between two re-rankings) and resumed from
    /// its checkpoint ends bit for bit like the uninterrupted run: the
    /// checkpoint carries the selection, which the weights at the stop
    /// would no longer reproduce.
    func testResumeMidEpochRestoresTheSelection() throws {
        let data = syntheticDataset()
        let efqat = EfqatOptions(mode: .cwpn, fraction: 0.3, refresh: .steps(4))
        let log = RunLog(active: false, metricsPath: nil)
        func run(_ model: Network, stopAt stop: Int?, from checkpoint: String?) throws -> (Trainer, CriticalChannels) {
            let channels = CriticalChannels(layers: model.layers, store: model.store, options: efqat)
            let trainer = try Trainer(model: model, data: data, options: phase(epochs: 2), communicator: communicator,
                                      log: log, channels: channels)
            if let checkpoint {
                let file = try SafeTensorsFile.read(from: checkpoint)
                try ModelCheckpoint.restore(file, path: checkpoint, into: model, requireQuantizers: true,
                                            optimizer: trainer.optimizer)
                try EfqatCheckpoint.restore(file, metadata: RunMetadata.required(file, path: checkpoint), path: checkpoint,
                                            into: channels)
                trainer.resume(at: TrainingPosition(epoch: 0, step: stop!))
            }
            struct Stop: Error {}
            do {
                _ = try trainer.run(checkpointEvery: 1) { t in
                    guard checkpoint == nil, t.completedSteps == stop else { return }
                    let tensors = ModelCheckpoint.tensors(of: model, includeQuantizers: true, optimizer: t.optimizer)
                        + EfqatCheckpoint.tensors(of: channels)
                    try SafeTensorsFile(tensors: tensors, metadata: self.record(of: channels, model: model).entry)
                        .write(to: self.path)
                    throw Stop()
                }
            } catch is Stop {}
            return (trainer, channels)
        }
        let straight = tinyModel()
        quantize(straight, data: data)
        let (_, straightChannels) = try run(straight, stopAt: nil, from: nil)
        XCTAssertEqual(straightChannels.selectedAtStep, 8, "12 steps re-rank at 0, 4 and 8")

        let first = tinyModel()
        quantize(first, data: data)
        let (stopped, _) = try run(first, stopAt: 3, from: nil)
        XCTAssertEqual(stopped.completedSteps, 3)

        let resumed = tinyModel(seed: 42)
        quantize(resumed, data: data)
        _ = try run(resumed, stopAt: 3, from: path)
        XCTAssertTrue(snapshot(resumed) == snapshot(straight), "resumed EfQAT run differs from the uninterrupted one")
    }

    func testCheckpointWithOtherSettingsIsRefused() throws {
        let model = tinyModel()
        let a = CriticalChannels(layers: model.layers, store: model.store, options: EfqatOptions(fraction: 0.1))
        a.prepare(step: 0, stepInEpoch: 0, communicator: communicator)
        try SafeTensorsFile(tensors: EfqatCheckpoint.tensors(of: a), metadata: record(of: a, model: model).entry).write(to: path)
        let b = CriticalChannels(layers: model.layers, store: model.store, options: EfqatOptions(fraction: 0.25))
        let file = try SafeTensorsFile.read(from: path)
        XCTAssertThrowsError(try EfqatCheckpoint.restore(file, metadata: RunMetadata.required(file, path: path), path: path,
                                                         into: b)) { error in
            XCTAssertTrue("\(error)".contains("p=0.1"), "\(error)")
        }
    }

    /// A QAT checkpoint's record holding the EfQAT selection of `channels`.
    func record(of channels: CriticalChannels, model: Network) -> RunMetadata {
        var record = RunMetadata(content: .qatCheckpoint, model: model.spec, dataset: .mnist5k)
        record.efqat = EfqatCheckpoint.metadata(of: channels)
        return record
    }

    lazy var path: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("efqat-efqat-\(UUID().uuidString)")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir.appendingPathComponent("checkpoint.safetensors").path
    }()
}
