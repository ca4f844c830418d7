import Foundation

/// How the learning rate moves over a training phase.
public enum LearningRateSchedule: String, Sendable, CaseIterable, Codable {
    /// Linear warm-up over the first 2% of steps, then cosine decay to 0.
    case cosine
    /// PyTorch's OneCycleLR (cosine, pct_start 0.3): from peak/25 up to the
    /// peak, then down to peak/25/1e4.
    case onecycle
    case constant

    public func rate(step: Int, totalSteps: Int, peak: Float) -> Float {
        let total = max(totalSteps, 1)
        let t = Float(step) / Float(total)
        switch self {
        case .constant:
            return peak
        case .cosine:
            let warmup = max(1, total / 50)
            if step < warmup { return peak * Float(step + 1) / Float(warmup) }
            let progress = Float(step - warmup) / Float(max(total - warmup, 1))
            return peak * 0.5 * (1 + cos(Float.pi * progress))
        case .onecycle:
            let start = peak / 25, end = start / 1e4, rise: Float = 0.3
            func anneal(_ a: Float, _ b: Float, _ x: Float) -> Float { b + (a - b) * 0.5 * (1 + cos(Float.pi * x)) }
            return t < rise ? anneal(start, peak, t / rise) : anneal(peak, end, (t - rise) / (1 - rise))
        }
    }
}
