import Checkpoint
import Data
import Foundation
import Layers

/// What efqat-train records about a file it writes: one typed value per
/// file, stored as JSON under the header metadata key `efqat.run`, so that
/// every check on a file it reads (same network? same data? where did
/// training stand?) reads fields, not strings spread over the code.
public struct RunMetadata: Codable, Equatable, Sendable {
    public static let key = "efqat.run"

    /// What the file holds.
    public enum Content: String, Codable, Sendable {
        /// A resumable checkpoint of FP32 training.
        case fp32Checkpoint = "fp32"
        /// A resumable checkpoint of QAT.
        case qatCheckpoint = "qat"
        /// The trained FP32 model (`fp32.safetensors`).
        case fp32Model = "fp32-final"
        /// The quantized model with its quantizer steps (`final.safetensors`).
        case quantizedModel = "qat-final"
        /// Images synthesised from an FP32 model (`genie.safetensors`).
        case syntheticImages = "genie-images"

        /// The training phase a checkpoint resumes, nil for other files.
        public var resumablePhase: CheckpointPosition.Phase? {
            switch self {
            case .fp32Checkpoint: .fp32
            case .qatCheckpoint: .qat
            case .fp32Model, .quantizedModel, .syntheticImages: nil
            }
        }
    }

    /// Everything besides the network, data set and seed that shapes an FP32
    /// model: a saved one is reused only when this matches.
    public struct FP32Recipe: Codable, Equatable, Sendable {
        public var epochs: Int
        public var globalBatch: Int
        public var learningRate: Float
        public var momentum: Float
        public var weightDecay: Float
        public var schedule: LearningRateSchedule
        public var augmentShift: Int
        public var augmentFlip: Bool
        /// The size of the seeded training subset, nil for the whole set.
        public var trainSamples: Int?
        public var zeroInitResidual: Bool

        public init(phase: PhaseOptions, trainSamples: Int?, zeroInitResidual: Bool) {
            epochs = phase.epochs
            globalBatch = phase.globalBatch
            learningRate = phase.learningRate
            momentum = phase.momentum
            weightDecay = phase.weightDecay
            schedule = phase.schedule
            augmentShift = phase.augmentation.maxShift
            augmentFlip = phase.augmentation.flip
            self.trainSamples = trainSamples
            self.zeroInitResidual = zeroInitResidual
        }
    }

    /// Where a resumable checkpoint stands, and what makes its data order.
    public struct TrainingState: Codable, Equatable, Sendable {
        public var position: TrainingPosition
        /// Micro-batches per step (ranks x accumulation): batch norm saw batches of this size.
        public var microBatches: Int
        /// Training samples the phase draws from.
        public var trainSamples: Int

        public init(position: TrainingPosition, microBatches: Int, trainSamples: Int) {
            self.position = position
            self.microBatches = microBatches
            self.trainSamples = trainSamples
        }
    }

    /// EfQAT's selection in a QAT checkpoint (the rows themselves are tensors).
    public struct EfqatSelection: Codable, Equatable, Sendable {
        /// `EfqatOptions.description`: mode, p and refresh.
        public var settings: String
        /// The phase step at which the selection was made.
        public var selectedAtStep: Int

        public init(settings: String, selectedAtStep: Int) {
            self.settings = settings
            self.selectedAtStep = selectedAtStep
        }
    }

    public var content: Content
    public var model: ModelSpec
    public var dataset: DatasetFormat
    /// The run's seed (initialisation, data order, subsets); nil for synthetic images.
    public var seed: UInt64?
    public var globalBatch: Int?
    public var worldSize: Int?
    /// FP32 models: how they were trained.
    public var fp32Recipe: FP32Recipe?
    public var fp32Accuracy: Double?
    public var ptqAccuracy: Double?
    /// Zero-shot runs: the images every stage after the FP32 model saw.
    public var zeroShot: String?
    /// Quantized files: each quantized layer's bits, e.g. "W4A4" or "W8A-".
    public var layerBits: [String: String]?
    public var training: TrainingState?
    public var efqat: EfqatSelection?
    /// Synthetic images: the FP32 model file they were made from.
    public var teacherPath: String?

    public init(content: Content, model: ModelSpec, dataset: DatasetFormat) {
        self.content = content
        self.model = model
        self.dataset = dataset
    }

    /// The record of images synthesised from the FP32 model at `teacherPath`.
    public static func syntheticImages(teacher: ModelSpec, dataset: DatasetFormat, teacherPath: String) -> RunMetadata {
        var record = RunMetadata(content: .syntheticImages, model: teacher, dataset: dataset)
        record.teacherPath = teacherPath
        return record
    }

    /// The header metadata entry that stores it.
    public var entry: [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf",
                                                                      nan: "nan")
        // Numbers, strings and nested values of them: nothing that fails to encode.
        let data = try! encoder.encode(self)
        return [Self.key: String(decoding: data, as: UTF8.self)]
    }

    /// The record of a file efqat-train wrote; nil when the file has none
    /// (a state_dict from PyTorch, say). A record that does not decode is
    /// refused in one line naming the file.
    public static func of(_ file: SafeTensorsFile, path: String) throws -> RunMetadata? {
        guard let text = file.metadata[key] else { return nil }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf",
                                                                        nan: "nan")
        do {
            return try decoder.decode(RunMetadata.self, from: Data(text.utf8))
        } catch {
            throw RunError.invalid("\(path): its \(key) metadata does not describe an efqat-train file (\(error))")
        }
    }

    /// The record of a file that must come from efqat-train.
    public static func required(_ file: SafeTensorsFile, path: String) throws -> RunMetadata {
        guard let metadata = try of(file, path: path) else {
            throw RunError.invalid("\(path): no \(key) metadata; expected a file written by efqat-train")
        }
        return metadata
    }

    /// Refuses a file whose network is not `spec`, in one line naming both.
    public func check(model spec: ModelSpec, in path: String) throws {
        guard model != spec else { return }
        throw RunError.invalid("\(path): holds a \(model.details) model; this run builds a \(spec.details) model "
            + "(--arch and --width choose the network, the data set its channels and classes)")
    }

    /// Each quantized layer's bits as recorded in `layerBits`.
    public static func layerBits(of model: Network) -> [String: String] {
        Dictionary(uniqueKeysWithValues: model.layers.map { layer in
            (layer.name, "W\(layer.weightQuantizer.grid.bits)A"
                + (layer.inputQuantizer.enabled ? "\(layer.inputQuantizer.grid.bits)" : "-"))
        })
    }
}
