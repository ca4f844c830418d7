/// What a tensor is for. The optimizer, weight decay, EfQAT's selection and
/// the checkpoint writer all decide by role rather than by name.
public enum TensorRole: String, Sendable, CaseIterable {
    /// Conv/linear weight; rows (dimension 0) are output channels.
    case weight
    case bias
    /// Batch-norm affine scale and shift.
    case normScale, normShift
    /// Learned quantizer step sizes: one per weight row, one per activation.
    case weightStep, activationStep
    /// State that is saved but not trained: batch-norm running statistics
    /// and activation zero points.
    case runningMean, runningVar, zeroPoint

    /// Roles a gradient step updates.
    public var isTrainable: Bool {
        switch self {
        case .runningMean, .runningVar, .zeroPoint: return false
        default: return true
        }
    }
}

/// A named view into an arena: where a tensor lives and its shape.
public struct ParameterSlot: Sendable, Hashable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public let count: Int
    public let role: TensorRole

    /// Output channels for a weight, else 1 row of `count`.
    public var rows: Int { role == .weight ? shape[0] : 1 }
    public var rowLength: Int { count / rows }
    public var range: Range<Int> { offset..<(offset + count) }
}

/// The layout of a flat arena: every tensor's name, shape and offset, in the
/// order the model registered them. Parameters, gradients and optimizer
/// state share one layout, so "the gradient of slot s" is the same offsets
/// in another arena, and all-reduce or checkpointing is one loop over slots.
public struct ArenaLayout: Sendable {
    public private(set) var slots: [ParameterSlot] = []
    public private(set) var count = 0
    private var index: [String: Int] = [:]

    public init() {}

    /// Appends a tensor. Offsets are rounded up to 16 floats (64 bytes) so
    /// every view starts on a cache line.
    public mutating func add(_ name: String, shape: [Int], role: TensorRole) -> ParameterSlot {
        precondition(index[name] == nil, "duplicate parameter \(name)")
        let n = shape.reduce(1, *)
        let slot = ParameterSlot(name: name, shape: shape, offset: count, count: n, role: role)
        index[name] = slots.count
        slots.append(slot)
        count += (n + 15) / 16 * 16
        return slot
    }

    public func slot(named name: String) -> ParameterSlot? {
        index[name].map { slots[$0] }
    }
}

/// One flat, aligned Float buffer laid out by an `ArenaLayout`.
public final class Arena {
    public let layout: ArenaLayout
    public let storage: FloatBuffer

    public init(layout: ArenaLayout) {
        self.layout = layout
        storage = FloatBuffer(capacity: layout.count)
    }

    /// The whole arena, padding included.
    public var all: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: storage.pointer, count: layout.count)
    }

    public subscript(slot: ParameterSlot) -> UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: storage.pointer + slot.offset, count: slot.count)
    }

    public func pointer(_ slot: ParameterSlot) -> UnsafeMutablePointer<Float> {
        storage.pointer + slot.offset
    }

    public func zero() { all.update(repeating: 0) }

    /// Copies every value from an arena of the same layout.
    public func copy(from other: Arena) {
        precondition(other.layout.count == layout.count, "arena layouts differ")
        _ = all.update(from: UnsafeBufferPointer(other.all))
    }
}
