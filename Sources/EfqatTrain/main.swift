import ArgumentParser
import Distributed
import Foundation
import Kernels
import Training

/// The rank as the launcher tells it, known before MPI starts, so that a
/// bad command line is reported once (by rank 0) rather than by every rank.
let launcherRank = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"]
    .compactMap { ProcessInfo.processInfo.environment[$0].flatMap(Int.init) }.first ?? 0

let command: TrainCommand
do {
    command = try TrainCommand.parse(Array(CommandLine.arguments.dropFirst()))
} catch {
    if launcherRank == 0 { TrainCommand.exit(withError: error) }
    exit(TrainCommand.exitCode(for: error).rawValue)
}

// Ranks waiting in a collective must give the core to ranks that compute
// when there are more ranks than cores; Open MPI reads this at MPI_Init.
setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0)
let communicator: Communicator
if MPICommunicator.launchedByMPI {
    do {
        communicator = try MPICommunicator()
    } catch {
        FileHandleOutput.standardError.write("error: \(error)\n")
        exit(3)
    }
} else {
    communicator = SingleProcessCommunicator()
}
let cores = ProcessInfo.processInfo.activeProcessorCount
setBLASThreads(command.threads ?? max(1, cores / communicator.localSize))

/// The repository's data cache, where launch/setup-data.sh puts MNIST.
func defaultDataDirectory() -> String {
    if let cache = ProcessInfo.processInfo.environment["EFQAT_CACHE"] { return cache + "/mnist" }
    return FileManager.default.currentDirectoryPath + "/cache/mnist"
}

do {
    let pipeline = try Pipeline(options: try command.pipelineOptions(repositoryCache: defaultDataDirectory()),
                                communicator: communicator)
    try pipeline.run()
} catch {
    // Every rank usually meets the same error (bad data, bad checkpoint):
    // rank 0 reports it and ends the job. A rank that fails alone waits a
    // moment, so that a shared error is reported once, then ends the job.
    if !communicator.isRoot { Thread.sleep(forTimeInterval: 1) }
    communicator.abort("\(error)", code: 1)
}
(communicator as? MPICommunicator)?.finalize()
