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
    /// running statistics), and the file with its metadata.
    func loadModel(_ path: String) throws -> (model: Network, file: SafeTensorsFile) {
        guard FileManager.default.fileExists(atPath: path) else {
            throw RunError.invalid("no model at \(path): run the train job first (efqat-train --output DIR writes "
                                   + "DIR/fp32.safetensors), or pass --model PATH")
        }
        let file = try SafeTensorsFile.read(from: path)
        guard let configJSON = file.metadata["efqat.model"] else {
            throw RunError.invalid("\(path): no efqat.model metadata; expected a model file written by efqat-train")
        }
        let spec: ModelSpec
        do {
            spec = try JSONDecoder().decode(ModelSpec.self, from: Data(configJSON.utf8))
        } catch {
            throw RunError.invalid("\(path): cannot read the model description \(configJSON): \(error)")
        }
        if let problem = spec.problem { throw RunError.invalid("\(path): \(problem)") }
        let model = Network(spec)
        try ModelCheckpoint.restore(file, path: path, into: model, requireQuantizers: false, optimizer: nil)
        return (model, file)
    }
}

/// Options every rank command shares.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "OpenBLAS threads per rank (default: the node's cores shared by its ranks; synthesize: 1).")
    var threads: Int?

    func validate() throws {
        if let threads, threads <= 0 { throw ValidationError("--threads must be positive, got \(threads)") }
    }
}
