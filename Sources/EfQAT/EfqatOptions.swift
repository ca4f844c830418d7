import Foundation

/// How EfQAT ranks weights to decide which to train (docs/efqat.md).
/// Importance is the mean |w| of a block of weights.
public enum SelectionMode: String, Sendable, CaseIterable, Codable {
    /// Channel-wise, per layer: in every layer, the top fraction p of its
    /// output channels (at least one when p > 0).
    case cwpl
    /// Channel-wise, per network: one ranking of every output channel of
    /// the network; the top channels until they hold fraction p of all
    /// weights.
    case cwpn
    /// Layer-wise, per network: whole layers ranked by mean |W|; the top
    /// layers until they hold fraction p of all weights.
    case lwpn
}

/// When the selection is recomputed from the current weights.
public enum RefreshInterval: Sendable, Equatable, CustomStringConvertible {
    /// Once, at the start of training.
    case never
    /// At the start of every epoch.
    case epoch
    /// Every this many optimizer steps (counted from the phase's start).
    case steps(Int)

    /// Reads `never`, `epoch` or a positive step count.
    public init?(parsing text: String) {
        switch text {
        case "never": self = .never
        case "epoch": self = .epoch
        default:
            guard let n = Int(text), n > 0 else { return nil }
            self = .steps(n)
        }
    }

    public var description: String {
        switch self {
        case .never: return "never"
        case .epoch: return "epoch"
        case .steps(let n): return String(n)
        }
    }

    /// Whether the step about to run (its index in the phase and in its
    /// epoch) starts with a fresh selection. Step 0 always does.
    public func isDue(step: Int, stepInEpoch: Int) -> Bool {
        if step == 0 { return true }
        switch self {
        case .never: return false
        case .epoch: return stepInEpoch == 0
        case .steps(let n): return step % n == 0
        }
    }
}

/// What EfQAT trains and how often it re-ranks.
public struct EfqatOptions: Sendable, Equatable, CustomStringConvertible {
    public var mode: SelectionMode = .cwpn
    /// Fraction p in [0, 1]: 0 trains only the always-trained tensors, 1 is
    /// full QAT.
    public var fraction = 0.1
    public var refresh: RefreshInterval = .epoch

    public init(mode: SelectionMode = .cwpn, fraction: Double = 0.1, refresh: RefreshInterval = .epoch) {
        self.mode = mode
        self.fraction = fraction
        self.refresh = refresh
    }

    /// "cwpn p=0.1 refresh=epoch": also how checkpoints record the setting.
    public var description: String { "\(mode.rawValue) p=\(fractionLabel) refresh=\(refresh)" }
    /// p as people write it: 0, 0.1, 1 (not 0.0, 1.0).
    public var fractionLabel: String { String(format: "%g", fraction) }
}
