import ArgumentParser
import Distributed
import Foundation
import Kernels
import Training

/// The `efqat-train` tool: its subcommands run on every rank of an MPI job
/// (or in one process); `train` is the default.
struct EfqatTrain: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "efqat-train",
        abstract: "Turn a pretrained FP32 ResNet into an accurate low-bit one, data-parallel over MPI.",
        subcommands: [TrainCommand.self, SearchBitsCommand.self],
        defaultSubcommand: TrainCommand.self)
}

/// A subcommand that runs on every rank with a communicator.
protocol RankCommand: ParsableCommand {
    var runtime: RuntimeOptions { get }
    func run(communicator: Communicator) throws
}

extension RankCommand {
    /// Only `main` runs rank commands, once it has a communicator.
    func run() throws {
        preconditionFailure("\(Self.self) runs through main.swift")
    }

    /// The repository's data cache, where launch/setup-data.sh puts MNIST.
    func defaultDataDirectory() -> String {
        if let cache = ProcessInfo.processInfo.environment["EFQAT_CACHE"] { return cache + "/mnist" }
        return FileManager.default.currentDirectoryPath + "/cache/mnist"
    }
}

/// Options every rank command shares.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "OpenBLAS threads per rank (default: 1 under MPI, all cores alone).")
    var threads: Int?

    func validate() throws {
        if let threads, threads <= 0 { throw ValidationError("--threads must be positive, got \(threads)") }
    }
}
