import ArgumentParser
import Checkpoint
import Distributed
import Foundation
import Kernels
import Layers
import Training

/// The `efqat-train` tool: its subcommands run on every rank of an MPI job
/// (or in one process); `train` is the default.
struct EfqatTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "efqat-train",
        abstract: "Turn a pretrained FP32 Network into an accurate low-bit one, data-parallel over MPI.",
        subcommands: [TrainCommand.self, SearchBitsCommand.self, SynthesizeCommand.self],
        defaultSubcommand: TrainCommand.self)
}

/// A subcommand that runs on every rank with a communicator.
protocol RankCommand: ParsableCommand {
    var runtime: RuntimeOptions { get }
    /// OpenBLAS threads per rank when --threads is not given.
    func defaultThreads(cores: Int, ranksOnNode: Int) -> Int
    func run(communicator: Communicator) throws
}

extension RankCommand {
    /// Only `main` runs rank commands, once it has a communicator.
    func run() throws {
        preconditionFailure("\(Self.self) runs through main.swift")
    }

    /// The node's cores shared by its ranks.
    func defaultThreads(cores: Int, ranksOnNode: Int) -> Int { max(1, cores / ranksOnNode) }

    /// The model in a file written by the train job (its FP32 weights and
    /// running statistics), and what the file records.
    func loadModel(_ path: String) throws -> (model: Network, record: RunMetadata) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw RunError.invalid("no model at \(path): run the train job first (efqat-train --output DIR writes "
                                   + "DIR/fp32.safetensors), or pass --model PATH")
        }
        let file = try SafeTensorsFile.read(from: path)
        let record = try RunMetadata.required(file, path: path)
        guard record.content != .syntheticImages else {
            throw RunError.invalid("\(path): holds synthetic images, not a model")
        }
        if let problem = record.model.problem { throw RunError.invalid("\(path): \(problem)") }
        let model = Network(record.model)
        try ModelCheckpoint.restore(file, path: path, into: model, requireQuantizers: false, optimizer: nil)
        return (model, record)
    }
}
