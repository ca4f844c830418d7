import Distributed
import Kernels
import Layers

/// Averages what a data-parallel step trained across ranks by summing one
/// packed buffer: the gradient spans being trained (in arena order), the
/// batch-norm statistics of every micro-batch, and a few scalars (loss,
/// correct count) for the log. Frozen parameters are not sent at all.
///
/// `reduce` sums the whole buffer with one blocking all-reduce after the
/// backward pass. The overlapped form (`begin`, `finished`, `end`) cuts the
/// gradient part into buckets from the end of the arena backwards, the
/// order in which the backward pass finishes them, and starts a
/// non-blocking all-reduce of each bucket as soon as the pass is done with
/// all of its spans, so the transfer runs while the pass goes on. Both
/// forms lay the buffer out alike and unpack it with the same code.
public final class GradientReducer {
    /// What is trained; EfQAT changes it when it re-ranks channels.
    public var spans: [TrainedSpan] {
        didSet { layOut() }
    }
    private let norms: [BatchNorm2d]
    private let extras: Int
    /// Gradient floats a bucket gathers before it is closed (it ends at a
    /// span boundary, so it may be larger).
    public let bucketFloats: Int
    private let packed = FloatBuffer()
    private var gradientCount = 0
    private let statisticsCount: Int
    /// Where each span starts in the packed buffer.
    private var spanOffsets: [Int] = []
    /// The buckets, last spans first, and the bucket of every span.
    private var buckets: [Bucket] = []
    private var bucketOfSpan: [Int] = []
    /// Buckets start in order, so every rank issues the same all-reduces in
    /// the same order; this is the next one.
    private var nextBucket = 0
    /// The overlapped reduction under way: the arena it reads, the
    /// communicator, and the reductions started, in start order.
    private var active: (gradients: Arena, communicator: Communicator)?
    private var started: [PendingReduction] = []
    /// Bytes this rank contributed to all-reduces so far.
    public private(set) var bytesReduced: Int = 0
    /// Gradient buckets the overlapped form started before `end`, summed
    /// over steps: how much of the reduction could overlap the pass.
    public private(set) var bucketsStartedEarly = 0

    /// A run of whole spans, contiguous in the packed buffer.
    private struct Bucket {
        var spans: Range<Int>
        var packed: Range<Int>
        /// Spans the backward pass has not finished yet (this step).
        var unfinished = 0
    }

    public init(spans: [TrainedSpan], norms: [BatchNorm2d], extras: Int, bucketFloats: Int = 1 << 14) {
        precondition(bucketFloats > 0)
        self.spans = spans
        self.norms = norms
        self.extras = extras
        self.bucketFloats = bucketFloats
        statisticsCount = norms.reduce(0) { $0 + $1.pendingStatisticsCount }
        layOut()
    }

    /// Floats in one reduction.
    public var packedCount: Int { gradientCount + statisticsCount + extras }
    /// Gradient buckets of the overlapped form.
    public var bucketCount: Int { buckets.count }

    /// Places the spans in the packed buffer and cuts them into buckets.
    private func layOut() {
        precondition(zip(spans, spans.dropFirst()).allSatisfy { $0.range.upperBound <= $1.range.lowerBound },
                     "trained spans must be in arena order and disjoint")
        precondition(active == nil, "spans changed during a reduction")
        spanOffsets = []
        var offset = 0
        for span in spans {
            spanOffsets.append(offset)
            offset += span.range.count
        }
        gradientCount = offset
        buckets = []
        bucketOfSpan = Array(repeating: 0, count: spans.count)
        var end = spans.count
        while end > 0 {
            var start = end - 1
            while start > 0, packedEnd(of: end) - spanOffsets[start] < bucketFloats { start -= 1 }
            for s in start..<end { bucketOfSpan[s] = buckets.count }
            buckets.append(Bucket(spans: start..<end, packed: spanOffsets[start]..<packedEnd(of: end)))
            end = start
        }
    }

    /// The packed offset just past span `end - 1`.
    private func packedEnd(of end: Int) -> Int {
        end == spans.count ? gradientCount : spanOffsets[end]
    }

    /// Sums over ranks, then divides the gradients by `microBatches` (the
    /// global count) so they are the gradient of the global-batch mean loss,
    /// and commits the running statistics. `scalars` come back summed.
    public func reduce(gradients: Arena, scalars: inout [Float], microBatches: Int,
                       communicator: Communicator) {
        precondition(scalars.count == extras)
        let buffer = packed.reserve(packedCount)
        pack(spans.indices, from: gradients, into: buffer)
        packStatistics(scalars, into: buffer)
        communicator.allReduce(UnsafeMutableBufferPointer(start: buffer, count: packedCount), .sum)
        if communicator.size > 1 { bytesReduced += packedCount * MemoryLayout<Float>.stride }
        unpack(buffer, into: gradients, scalars: &scalars, microBatches: microBatches)
    }

    // MARK: Overlapped with the backward pass

    /// Starts an overlapped reduction once this step's last forward pass has
    /// run: the statistics and `scalars` are final, so they go first.
    public func begin(gradients: Arena, scalars: [Float], communicator: Communicator) {
        precondition(active == nil, "begin called twice")
        precondition(scalars.count == extras)
        active = (gradients, communicator)
        let buffer = packed.reserve(packedCount)
        packStatistics(scalars, into: buffer)
        start(gradientCount..<packedCount)
        for b in buckets.indices { buckets[b].unfinished = buckets[b].spans.count }
        nextBucket = 0
    }

    /// The backward pass is done with `slots`: starts the buckets whose
    /// spans are now all final, then lets the started ones progress.
    public func finished(_ slots: [ParameterSlot]) {
        precondition(active != nil, "finished called outside begin/end")
        for slot in slots {
            var s = firstSpan(atOrAfter: slot.range.lowerBound)
            while s < spans.count, spans[s].range.lowerBound < slot.range.upperBound {
                buckets[bucketOfSpan[s]].unfinished -= 1
                s += 1
            }
        }
        while nextBucket < buckets.count, buckets[nextBucket].unfinished == 0 {
            startNextBucket()
            bucketsStartedEarly += 1
        }
        for reduction in started { reduction.poll() }
    }

    /// Starts what has not started (spans no `finished` call named), waits
    /// for every reduction, and unpacks as `reduce` does.
    public func end(scalars: inout [Float], microBatches: Int) {
        guard let (gradients, communicator) = active else { preconditionFailure("end called without begin") }
        while nextBucket < buckets.count { startNextBucket() }
        for reduction in started { reduction.complete() }
        started = []
        active = nil
        if communicator.size > 1 { bytesReduced += packedCount * MemoryLayout<Float>.stride }
        unpack(packed.pointer, into: gradients, scalars: &scalars, microBatches: microBatches)
    }

    private func startNextBucket() {
        pack(buckets[nextBucket].spans, from: active!.gradients, into: packed.pointer)
        start(buckets[nextBucket].packed)
        nextBucket += 1
    }

    private func start(_ range: Range<Int>) {
        guard !range.isEmpty else { return }
        started.append(active!.communicator.startAllReduceSum(
            UnsafeMutableBufferPointer(start: packed.pointer + range.lowerBound, count: range.count)))
    }

    /// The first span starting at or after arena offset `offset` (spans are sorted).
    private func firstSpan(atOrAfter offset: Int) -> Int {
        var low = 0, high = spans.count
        while low < high {
            let mid = (low + high) / 2
            if spans[mid].range.lowerBound < offset { low = mid + 1 } else { high = mid }
        }
        return low
    }

    // MARK: The packed buffer

    private func pack(_ indices: Range<Int>, from gradients: Arena, into buffer: UnsafeMutablePointer<Float>) {
        let g = gradients.storage.pointer
        for s in indices {
            (buffer + spanOffsets[s]).update(from: g + spans[s].range.lowerBound, count: spans[s].range.count)
        }
    }

    private func packStatistics(_ scalars: [Float], into buffer: UnsafeMutablePointer<Float>) {
        var offset = gradientCount
        for norm in norms {
            norm.exportPendingStatistics(into: buffer + offset)
            offset += norm.pendingStatisticsCount
        }
        for s in scalars { buffer[offset] = s; offset += 1 }
    }

    /// Scales the summed gradients back into the arena, commits the
    /// statistics and returns the summed scalars.
    private func unpack(_ buffer: UnsafeMutablePointer<Float>, into gradients: Arena, scalars: inout [Float],
                        microBatches: Int) {
        let g = gradients.storage.pointer
        let scale = 1 / Float(microBatches)
        for (span, offset) in zip(spans, spanOffsets) {
            let dst = g + span.range.lowerBound, src = buffer + offset
            for i in 0..<span.range.count { dst[i] = src[i] * scale }
        }
        var offset = gradientCount
        for norm in norms {
            norm.commitRunningStatistics(sums: buffer + offset, microBatches: microBatches)
            offset += norm.pendingStatisticsCount
        }
        for i in scalars.indices { scalars[i] = buffer[offset + i] }
    }
}
