import Distributed
import Kernels
import Layers

/// Averages what a data-parallel step trained across ranks with one
/// all-reduce of one packed buffer: the gradient spans being trained, the
/// batch-norm statistics of every micro-batch, and a few scalars (loss,
/// correct count) for the log. Frozen parameters are not sent at all.
public final class GradientReducer {
    /// What is trained; EfQAT changes it when it re-ranks channels.
    public var spans: [TrainedSpan] {
        didSet { gradientCount = Self.count(spans) }
    }
    private let norms: [BatchNorm2d]
    private let extras: Int
    private let packed = FloatBuffer()
    private var gradientCount: Int
    private let statisticsCount: Int
    /// Bytes this rank contributed to all-reduces so far.
    public private(set) var bytesReduced: Int = 0

    public init(spans: [TrainedSpan], norms: [BatchNorm2d], extras: Int) {
        self.spans = spans
        self.norms = norms
        self.extras = extras
        gradientCount = Self.count(spans)
        statisticsCount = norms.reduce(0) { $0 + $1.pendingStatisticsCount }
    }

    private static func count(_ spans: [TrainedSpan]) -> Int { spans.reduce(0) { $0 + $1.range.count } }

    /// Floats in one reduction.
    public var packedCount: Int { gradientCount + statisticsCount + extras }

    /// Sums over ranks, then divides the gradients by `microBatches` (the
    /// global count) so they are the gradient of the global-batch mean loss,
    /// and commits the running statistics. `scalars` come back summed.
    public func reduce(gradients: Arena, scalars: inout [Float], microBatches: Int,
                       communicator: Communicator) {
        precondition(scalars.count == extras)
        let buffer = packed.reserve(packedCount)
        let g = gradients.storage.pointer
        var offset = 0
        for span in spans {
            (buffer + offset).update(from: g + span.range.lowerBound, count: span.range.count)
            offset += span.range.count
        }
        for norm in norms {
            norm.exportPendingStatistics(into: buffer + offset)
            offset += norm.pendingStatisticsCount
        }
        for s in scalars { buffer[offset] = s; offset += 1 }

        communicator.allReduce(UnsafeMutableBufferPointer(start: buffer, count: packedCount), .sum)
        if communicator.size > 1 { bytesReduced += packedCount * MemoryLayout<Float>.stride }

        let scale = 1 / Float(microBatches)
        offset = 0
        for span in spans {
            let dst = g + span.range.lowerBound, src = buffer + offset
            for i in 0..<span.range.count { dst[i] = src[i] * scale }
            offset += span.range.count
        }
        for norm in norms {
            norm.commitRunningStatistics(sums: buffer + offset, microBatches: microBatches)
            offset += norm.pendingStatisticsCount
        }
        for i in scalars.indices { scalars[i] = buffer[offset + i] }
    }
}
