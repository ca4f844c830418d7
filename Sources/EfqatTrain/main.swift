import ArgumentParser
import Distributed
import Foundation
import Kernels
import Training

/// The rank as the launcher tells it, known before MPI starts, so that a
/// bad command line is reported once (by rank 0) rather than by every rank.
let launcherRank = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"]
    .compactMap { ProcessInfo.processInfo.environment[$0].flatMap(Int.init) }.first ?? 0

let parsed: ParsableCommand
do {
    parsed = try EfqatTrain.parseAsRoot(Array(CommandLine.arguments.dropFirst()))
} catch {
    if launcherRank == 0 { EfqatTrain.exit(withError: error) }
    exit(EfqatTrain.exitCode(for: error).rawValue)
}
guard let command = parsed as? RankCommand else {
    // --help, --version and the like.
    do { var other = parsed; try other.run() } catch { EfqatTrain.exit(withError: error) }
    exit(0)
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
setBLASThreads(command.runtime.threads ?? command.defaultThreads(cores: cores, ranksOnNode: communicator.localSize))

do {
    try command.run(communicator: communicator)
} catch {
    // Every rank usually meets the same error (bad data, bad checkpoint):
    // rank 0 reports it and ends the job. A rank that fails alone waits a
    // moment, so that a shared error is reported once, then ends the job.
    if !communicator.isRoot { Thread.sleep(forTimeInterval: 1) }
    communicator.abort("\(error)", code: 1)
}
(communicator as? MPICommunicator)?.finalize()
