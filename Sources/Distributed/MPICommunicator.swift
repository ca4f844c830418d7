import CMPI
#if canImport(Glibc)
import Glibc
#endif

/// Data-parallel collectives over Open MPI's MPI_COMM_WORLD.
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localRank: Int
    public let localSize: Int

    /// Initialises MPI. Call once per process, before any other MPI use.
    public init() throws {
        let rc = cmpi_init()
        guard rc == 0 else { throw MPIError(code: rc, operation: "MPI_Init") }
        rank = Int(cmpi_rank())
        size = Int(cmpi_size())
        localRank = Int(cmpi_local_rank())
        localSize = Int(cmpi_local_size())
    }

    /// True when this process was started by mpirun/srun (an MPI launcher set
    /// its environment), so single-process runs never touch MPI.
    public static var launchedByMPI: Bool {
        let keys = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_ID"]
        return keys.contains { getenv($0) != nil }
    }

    public func finalize() { _ = cmpi_finalize() }

    private func check(_ rc: Int32, _ operation: String) {
        if rc != 0 { abort(MPIError(code: rc, operation: operation).description, code: 3) }
    }

    private static func op(_ op: ReduceOp) -> cmpi_op {
        switch op {
        case .sum: return CMPI_SUM
        case .min: return CMPI_MIN
        case .max: return CMPI_MAX
        }
    }

    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, _ op: ReduceOp) {
        guard let base = buffer.baseAddress, size > 1 else { return }
        check(cmpi_allreduce(base, buffer.count, CMPI_FLOAT, Self.op(op)), "MPI_Allreduce")
    }
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, _ op: ReduceOp) {
        guard let base = buffer.baseAddress, size > 1 else { return }
        check(cmpi_allreduce(base, buffer.count, CMPI_DOUBLE, Self.op(op)), "MPI_Allreduce")
    }
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Int64>, _ op: ReduceOp) {
        guard let base = buffer.baseAddress, size > 1 else { return }
        check(cmpi_allreduce(base, buffer.count, CMPI_INT64, Self.op(op)), "MPI_Allreduce")
    }

    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        guard let base = buffer.baseAddress, size > 1 else { return .completed() }
        var request: Int32 = -1
        check(cmpi_iallreduce(base, buffer.count, CMPI_FLOAT, CMPI_SUM, &request), "MPI_Iallreduce")
        return PendingReduction(test: { [self] in
            var done: Int32 = 0
            check(cmpi_test(request, &done), "MPI_Test")
            return done != 0
        }, wait: { [self] in check(cmpi_wait(request), "MPI_Wait") })
    }

    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
        guard let base = buffer.baseAddress, size > 1 else { return }
        check(cmpi_broadcast(base, buffer.count, CMPI_UINT8, Int32(root)), "MPI_Bcast")
    }

    public func allGather(_ send: [Float]) -> [[Float]] {
        var count = [Int64(send.count)]
        var counts = [Int64](repeating: 0, count: size)
        counts.withUnsafeMutableBufferPointer { all in
            count.withUnsafeMutableBufferPointer { mine in
                check(cmpi_allgather(mine.baseAddress, 1, all.baseAddress, CMPI_INT64), "MPI_Allgather")
            }
        }
        let counts32 = counts.map { Int32($0) }
        var displs = [Int32](repeating: 0, count: size)
        for r in 1..<max(size, 1) { displs[r] = displs[r - 1] + counts32[r - 1] }
        var all = [Float](repeating: 0, count: Int(counts.reduce(0, +)))
        send.withUnsafeBufferPointer { mine in
            all.withUnsafeMutableBufferPointer { out in
                check(cmpi_allgatherv(mine.baseAddress, send.count, out.baseAddress,
                                      counts32, displs, CMPI_FLOAT), "MPI_Allgatherv")
            }
        }
        return (0..<size).map { r in
            Array(all[Int(displs[r])..<Int(displs[r] + counts32[r])])
        }
    }

    public func barrier() { check(cmpi_barrier(), "MPI_Barrier") }

    public func abort(_ message: String, code: Int32) -> Never {
        FileHandleOutput.standardError.write("error (rank \(rank)): \(message)\n")
        cmpi_abort(code)
        exit(code)  // MPI_Abort does not return; this satisfies the type checker.
    }
}

public struct MPIError: Error, CustomStringConvertible {
    public let code: Int32
    public let operation: String
    public var description: String {
        var text = [CChar](repeating: 0, count: 512)
        cmpi_error_string(code, &text, Int32(text.count))
        let bytes = text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return "\(operation) failed: \(String(decoding: bytes, as: UTF8.self)) (code \(code))"
    }
}
