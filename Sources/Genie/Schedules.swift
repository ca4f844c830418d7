/// PyTorch's `ReduceLROnPlateau` in "min" mode with its defaults besides
/// the ones given (relative threshold 1e-4, no cooldown): after more than
/// `patience` steps without a new best loss (one below best * (1 - 1e-4)),
/// the rate is multiplied by `factor`, but not below `minimum`.
public struct PlateauSchedule: Sendable {
    public private(set) var learningRate: Float
    public let factor: Float
    public let minimum: Float
    public let patience: Int
    public let threshold: Double = 1e-4
    private var best = Double.infinity
    private var badSteps = 0

    public init(learningRate: Float, factor: Float, minimum: Float, patience: Int) {
        self.learningRate = learningRate
        self.factor = factor
        self.minimum = minimum
        self.patience = patience
    }

    /// Takes the loss of one step.
    public mutating func step(loss: Double) {
        if loss < best * (1 - threshold) {
            best = loss
            badSteps = 0
        } else {
            badSteps += 1
        }
        if badSteps > patience {
            let reduced = max(learningRate * factor, minimum)
            // PyTorch skips changes smaller than 1e-8.
            if learningRate - reduced > 1e-8 { learningRate = reduced }
            badSteps = 0
        }
    }
}
