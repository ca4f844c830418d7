/// A contiguous run of the parameter arena that a step trains. Full
/// training trains every trainable slot; EfQAT trains selected weight rows
/// plus the cheap always-trained tensors. The optimizer and the gradient
/// all-reduce both work from the same list, so nothing outside it changes.
public struct TrainedSpan: Sendable, Equatable {
    public var range: Range<Int>
    public var role: TensorRole

    public init(range: Range<Int>, role: TensorRole) {
        self.range = range
        self.role = role
    }
}

extension ParameterStore {
    /// Every trainable tensor in full: what plain (full) training updates.
    public var allTrainedSpans: [TrainedSpan] {
        parameterLayout.slots.map { TrainedSpan(range: $0.range, role: $0.role) }
    }
}
