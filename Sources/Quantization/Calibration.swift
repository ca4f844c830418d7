import Distributed
import Foundation
import Kernels
import Layers

/// How a quantizer's clipping range is chosen from observed values.
public enum RangeEstimator: String, Sendable, CaseIterable, Codable {
    /// The full observed range.
    case minMax = "minmax"
    /// Clip at the `percentile`-th percentile (and its mirror below).
    case percentile
    /// Search clip ratios r = 1.0 ... 0.01 of the min-max range and keep the
    /// one with the least mean |x - q(x)|^p (BRECQ, Genie; p = 2.4).
    case lp
}

/// Settings of the PTQ initialisation of step sizes and zero points.
public struct CalibrationOptions: Sendable, Equatable {
    public var weights: RangeEstimator = .minMax
    public var activations: RangeEstimator = .minMax
    public var percentile: Double = 99.99
    public var lpNorm: Float = 2.4
    /// Clip ratios tried by the L_p search, evenly from 1.0 down to 0.01.
    public var clipCandidates = 100
    /// Histogram bins over each activation's min-max range; the histograms
    /// are summed over ranks, so percentiles and the L_p search see every
    /// rank's values and give the same answer on all of them.
    public var histogramBins = 2048

    public init() {}

    public init(weights: RangeEstimator, activations: RangeEstimator) {
        self.weights = weights
        self.activations = activations
    }

    /// Clip ratios of the L_p search, largest first.
    var clipRatios: [Float] {
        (0..<clipCandidates).map { 1 - 0.99 * Float($0) / Float(max(clipCandidates - 1, 1)) }
    }
}

/// Calibrates every quantizer that a policy turned on.
///
/// `runBatches` runs forward passes over this rank's calibration samples;
/// it is called once per pass (one pass for min-max activations, two for
/// histogram-based estimators), with quantization off, so quantizers see
/// floating-point inputs. Observed ranges and histograms are reduced over
/// all ranks, so every rank ends with identical steps and zero points, and
/// the result depends only on the union of the ranks' samples.
///
/// Weights per output channel, activations per tensor, each by its
/// quantizer's scheme (`QuantScheme`, read from the grid) on the clipping
/// range [lo, hi] widened to include 0:
/// symmetric (signed grid): s = max(|lo|, |hi|) / qmax, z = 0;
/// asymmetric (unsigned grid): s = (hi - lo) / (2^b - 1), z = round(-lo / s).
public func calibrate(_ model: Network, options: CalibrationOptions = CalibrationOptions(),
                      communicator: Communicator, runBatches: () -> Void) {
    let layers = model.layers
    let store = model.store
    for layer in layers { calibrateWeights(of: layer, store: store, options: options) }

    let active = layers.filter { $0.inputQuantizer.enabled }
    guard !active.isEmpty else { return }
    let observers = active.map { _ in RangeObserver() }
    func pass(_ observe: @escaping (RangeObserver, FeatureMap) -> Void) {
        active.withInputObservers({ observe(observers[$0], $1) }) { model.withQuantizationDisabled(runBatches) }
    }

    pass { $0.observeRange($1) }
    var low = observers.map(\.low), high = observers.map(\.high)
    communicator.allReduce(&low, .min)
    communicator.allReduce(&high, .max)
    for i in active.indices {
        precondition(low[i] <= high[i], "\(active[i].name): no calibration data was observed")
        observers[i].fixRange(low: min(low[i], 0), high: max(high[i], 0), bins: options.histogramBins)
    }

    if options.activations != .minMax {
        pass { $0.observeHistogram($1) }
        var counts = observers.flatMap(\.counts)
        communicator.allReduce(&counts, .sum)
        for (i, observer) in observers.enumerated() {
            observer.counts = Array(counts[(i * options.histogramBins)..<((i + 1) * options.histogramBins)])
        }
    }

    for (layer, observer) in zip(active, observers) {
        let q = layer.inputQuantizer
        let (lo, hi) = observer.clipRange(options: options, grid: q.grid)
        let (step, zero) = quantizationParameters(low: lo, high: hi, grid: q.grid)
        store.parameters[q.step][0] = step
        store.state[q.zeroPoint][0] = zero
    }
}

/// Step and integer zero point mapping [low, high] (which contains 0) onto the grid.
func affineParameters(low: Float, high: Float, grid: QuantGrid) -> (step: Float, zeroPoint: Float) {
    let step = max((high - low) / (grid.qmax - grid.qmin), 1e-8)
    let zero = min(max((-low / step).rounded(.toNearestOrEven) + grid.qmin, grid.qmin), grid.qmax)
    return (step, zero)
}

/// Step and zero point of [low, high] (which contains 0) by the grid's
/// scheme: symmetric (signed grid) s = max(|low|, |high|) / qmax, z = 0;
/// asymmetric (unsigned grid) as `affineParameters`.
func quantizationParameters(low: Float, high: Float, grid: QuantGrid) -> (step: Float, zeroPoint: Float) {
    switch QuantScheme(grid: grid) {
    case .symmetric: return (max(max(-low, high) / grid.qmax, 1e-8), 0)
    case .asymmetric: return affineParameters(low: low, high: high, grid: grid)
    }
}

/// Per-channel weight steps and zero points, with the clip of each row
/// chosen by `options.weights`. Symmetric weights (signed grid):
/// s = clip / qmax with clip <= max|W_row|, z = 0. Asymmetric weights
/// (unsigned grid): the row's [min, max] widened to include 0, clipped at
/// both ends like an activation range, then s = (hi - lo) / (2^b - 1),
/// z = round(-lo / s).
public func calibrateWeights(of layer: Conv2d, store: ParameterStore,
                             options: CalibrationOptions = CalibrationOptions()) {
    guard layer.weightQuantizer.enabled else { return }
    let w = store.parameters.pointer(layer.weight)
    let steps = store.parameters[layer.weightQuantizer.step]
    let zeroPoints = store.state[layer.weightQuantizer.zeroPoint]
    let grid = layer.weightQuantizer.grid
    let n = layer.weight.rowLength
    for r in 0..<layer.outChannels {
        let row = w + r * n
        let (lo, hi) = extrema(row, count: n)
        zeroPoints[r] = 0
        if !grid.signed {
            (steps[r], zeroPoints[r]) = asymmetricRowParameters(row, count: n, low: lo, high: hi,
                                                                grid: grid, options: options)
            continue
        }
        let maxAbs = max(-lo, hi)
        var clip = maxAbs
        switch options.weights {
        case .minMax:
            break
        case .percentile:
            let sorted = UnsafeBufferPointer(start: row, count: n).map { abs($0) }.sorted()
            clip = sorted[min(n - 1, Int((options.percentile / 100 * Double(n - 1)).rounded()))]
        case .lp:
            var best = Float.infinity
            withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { scratch in
                for ratio in options.clipRatios {
                    let step = max(ratio * maxAbs / grid.qmax, 1e-8)
                    fakeQuantize(row, scratch.baseAddress!, count: n, step: step, zeroPoint: 0, grid: grid)
                    var error: Float = 0
                    for i in 0..<n { error += powf(abs(row[i] - scratch[i]), options.lpNorm) }
                    if error < best { best = error; clip = ratio * maxAbs }
                }
            }
        }
        steps[r] = max(clip / grid.qmax, 1e-8)
    }
}

/// Step and zero point of one weight row on an unsigned grid.
private func asymmetricRowParameters(_ row: UnsafePointer<Float>, count n: Int, low: Float, high: Float,
                                     grid: QuantGrid, options: CalibrationOptions) -> (Float, Float) {
    var lo = min(low, 0), hi = max(high, 0)
    switch options.weights {
    case .minMax:
        break
    case .percentile:
        let sorted = UnsafeBufferPointer(start: row, count: n).sorted()
        func at(_ fraction: Double) -> Float { sorted[min(n - 1, max(0, Int((fraction * Double(n - 1)).rounded())))] }
        lo = min(at(1 - options.percentile / 100), 0)
        hi = max(at(options.percentile / 100), 0)
    case .lp:
        var best = Float.infinity
        let (fullLow, fullHigh) = (lo, hi)
        withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { scratch in
            for ratio in options.clipRatios {
                let (step, zero) = affineParameters(low: ratio * fullLow, high: ratio * fullHigh, grid: grid)
                fakeQuantize(row, scratch.baseAddress!, count: n, step: step, zeroPoint: zero, grid: grid)
                var error: Float = 0
                for i in 0..<n { error += powf(abs(row[i] - scratch[i]), options.lpNorm) }
                if error < best { best = error; (lo, hi) = (ratio * fullLow, ratio * fullHigh) }
            }
        }
    }
    return affineParameters(low: lo, high: hi, grid: grid)
}

/// The observed range of one activation and, for histogram-based
/// estimators, the histogram of its values over that range.
final class RangeObserver {
    var low = Float.infinity
    var high = -Float.infinity
    var counts: [Double] = []

    func observeRange(_ x: FeatureMap) {
        let (lo, hi) = extrema(x.data, count: x.count)
        low = min(low, lo)
        high = max(high, hi)
    }

    func fixRange(low: Float, high: Float, bins: Int) {
        self.low = low
        self.high = high
        counts = Array(repeating: 0, count: bins)
    }

    var binWidth: Float { max((high - low) / Float(counts.count), 1e-12) }

    func observeHistogram(_ x: FeatureMap) {
        let scale = 1 / binWidth, last = counts.count - 1
        counts.withUnsafeMutableBufferPointer { c in
            for i in 0..<x.count {
                let b = Int((x.data[i] - low) * scale)
                c[min(max(b, 0), last)] += 1
            }
        }
    }

    /// The clipping range [lo, hi] the estimator picks.
    func clipRange(options: CalibrationOptions, grid: QuantGrid) -> (Float, Float) {
        switch options.activations {
        case .minMax:
            return (low, high)
        case .percentile:
            let total = counts.reduce(0, +)
            let upper = value(atFraction: options.percentile / 100, total: total)
            let lower = value(atFraction: 1 - options.percentile / 100, total: total)
            return (min(lower, 0), max(upper, 0))
        case .lp:
            var best = (error: Double.infinity, lo: low, hi: high)
            let width = binWidth
            for ratio in options.clipRatios {
                let lo = low * ratio, hi = high * ratio
                let (step, zero) = quantizationParameters(low: lo, high: hi, grid: grid)
                var error: Double = 0
                for (b, count) in counts.enumerated() where count > 0 {
                    let center = low + (Float(b) + 0.5) * width
                    let q = fakeQuantize(center, inverseStep: 1 / step, step: step, zeroPoint: zero, grid: grid)
                    error += count * Double(powf(abs(center - q), options.lpNorm))
                }
                if error < best.error { best = (error, lo, hi) }
            }
            return (best.lo, best.hi)
        }
    }

    /// The value below which `fraction` of the observations fall (bin resolution).
    private func value(atFraction fraction: Double, total: Double) -> Float {
        var seen = 0.0
        for (b, count) in counts.enumerated() {
            seen += count
            if seen >= fraction * total { return low + Float(b + 1) * binWidth }
        }
        return high
    }
}
