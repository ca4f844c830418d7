#if canImport(Glibc)
import Glibc
#endif

/// What a rank needs from its peers: the collectives of data-parallel
/// training. `MPICommunicator` runs them over Open MPI;
/// `SingleProcessCommunicator` is the world of one, so most code and tests
/// run without mpirun.
///
/// Every rank must call the same collectives in the same order. A failure
/// inside a collective is fatal: the implementation ends the whole job.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Rank and size among the processes of this machine.
    var localRank: Int { get }
    var localSize: Int { get }

    func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, _ op: ReduceOp)
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, _ op: ReduceOp)
    func allReduce(_ buffer: UnsafeMutableBufferPointer<Int64>, _ op: ReduceOp)
    /// Starts an in-place sum that completes at `wait`; the buffer must stay
    /// untouched until then.
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) -> PendingReduction
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int)
    /// Each rank contributes `send`; the result is every rank's part in rank
    /// order. Parts may differ in length.
    func allGather(_ send: [Float]) -> [[Float]]
    func barrier()
    /// Ends every process of the job. `message` is printed by this rank.
    func abort(_ message: String, code: Int32) -> Never
}

public enum ReduceOp: Sendable { case sum, min, max }

/// A reduction started by `startAllReduceSum`. Its buffer holds the sum once
/// `poll` has returned true or `complete` has returned.
public final class PendingReduction {
    private let test: () -> Bool
    private let wait: () -> Void
    public private(set) var isComplete: Bool

    /// `test` advances the reduction without blocking and tells whether it
    /// has finished; `wait` blocks until it has. Neither is called once the
    /// reduction is known to be complete.
    public init(test: @escaping () -> Bool, wait: @escaping () -> Void) {
        self.test = test
        self.wait = wait
        isComplete = false
    }

    private init() {
        test = { true }
        wait = {}
        isComplete = true
    }

    /// A reduction that was complete when it started (a world of one, or a
    /// communicator that reduces at once).
    public static func completed() -> PendingReduction { PendingReduction() }

    /// Lets the reduction progress (MPI advances non-blocking collectives
    /// only inside MPI calls) and returns whether it has finished.
    @discardableResult
    public func poll() -> Bool {
        if !isComplete { isComplete = test() }
        return isComplete
    }

    /// Blocks until the reduction has finished.
    public func complete() {
        if !isComplete { wait() }
        isComplete = true
    }
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }

    public func allReduce(_ array: inout [Float], _ op: ReduceOp) {
        array.withUnsafeMutableBufferPointer { allReduce($0, op) }
    }
    public func allReduce(_ array: inout [Double], _ op: ReduceOp) {
        array.withUnsafeMutableBufferPointer { allReduce($0, op) }
    }
    public func allReduce(_ array: inout [Int64], _ op: ReduceOp) {
        array.withUnsafeMutableBufferPointer { allReduce($0, op) }
    }
    public func allReduce(_ value: Double, _ op: ReduceOp) -> Double {
        var a = [value]
        allReduce(&a, op)
        return a[0]
    }
    public func allReduce(_ value: Int, _ op: ReduceOp) -> Int {
        var a = [Int64(value)]
        allReduce(&a, op)
        return Int(a[0])
    }
    public func broadcast(_ array: inout [Float], root: Int = 0) {
        array.withUnsafeMutableBytes { broadcast($0, root: root) }
    }
    public func broadcast(_ array: inout [Int64], root: Int = 0) {
        array.withUnsafeMutableBytes { broadcast($0, root: root) }
    }
    /// Broadcasts a string from `root`.
    public func broadcast(_ text: String, root: Int = 0) -> String {
        String(decoding: broadcast(Array(text.utf8), root: root) ?? [], as: UTF8.self)
    }
    /// Broadcasts bytes, or their absence (nil), from `root`: the length
    /// first (-1 for nil), then the bytes. Other ranks' `bytes` are ignored;
    /// every rank returns root's.
    public func broadcast(_ bytes: [UInt8]?, root: Int = 0) -> [UInt8]? {
        var length = [Int64(bytes?.count ?? -1)]
        broadcast(&length, root: root)
        guard length[0] >= 0 else { return nil }
        var received = rank == root ? bytes ?? [] : [UInt8](repeating: 0, count: Int(length[0]))
        received.withUnsafeMutableBytes { broadcast($0, root: root) }
        return received
    }
}

/// A world of one rank: every collective is the identity.
public final class SingleProcessCommunicator: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var localRank: Int { 0 }
    public var localSize: Int { 1 }
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Float>, _ op: ReduceOp) {}
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Double>, _ op: ReduceOp) {}
    public func allReduce(_ buffer: UnsafeMutableBufferPointer<Int64>, _ op: ReduceOp) {}
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) -> PendingReduction {
        .completed()
    }
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {}
    public func allGather(_ send: [Float]) -> [[Float]] { [send] }
    public func barrier() {}
    public func abort(_ message: String, code: Int32) -> Never {
        FileHandleOutput.standardError.write("error: \(message)\n")
        exit(code)
    }
}
