/// The arenas of one model: trained parameters with their gradients, and
/// saved-but-untrained state (running statistics, zero points).
///
/// Layers register their tensors while the model is built; `allocate()`
/// then creates the arenas once, and layers reach their values through the
/// slots they were given.
public final class ParameterStore {
    public private(set) var parameterLayout = ArenaLayout()
    public private(set) var stateLayout = ArenaLayout()
    private var arenas: (parameters: Arena, gradients: Arena, state: Arena)?

    public init() {}

    public func register(_ name: String, shape: [Int], role: TensorRole) -> ParameterSlot {
        precondition(arenas == nil, "register \(name) before allocate()")
        if role.isTrainable {
            return parameterLayout.add(name, shape: shape, role: role)
        }
        return stateLayout.add(name, shape: shape, role: role)
    }

    public func allocate() {
        precondition(arenas == nil, "allocate() called twice")
        arenas = (Arena(layout: parameterLayout), Arena(layout: parameterLayout), Arena(layout: stateLayout))
    }

    public var parameters: Arena { arenas!.parameters }
    public var gradients: Arena { arenas!.gradients }
    public var state: Arena { arenas!.state }

    /// The values of a slot, whichever arena holds it.
    public subscript(slot: ParameterSlot) -> UnsafeMutableBufferPointer<Float> {
        slot.role.isTrainable ? parameters[slot] : state[slot]
    }

    public func gradient(_ slot: ParameterSlot) -> UnsafeMutableBufferPointer<Float> {
        gradients[slot]
    }

    /// Every slot, trained ones first, in registration order.
    public var allSlots: [ParameterSlot] { parameterLayout.slots + stateLayout.slots }
}
