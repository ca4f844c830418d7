extension Dataset {
    /// Copies the samples at `indices` into a caller-owned batch in CNHW
    /// layout, normalising each pixel to (pixel − mean[c]) / std[c], and
    /// their labels into `labels`.
    ///
    /// Element (c, n, y, x) lands at ((c · batch + n) · H + y) · W + x, where
    /// batch = `indices.count`: channel-major, so each channel is one
    /// contiguous N × H × W block. `pixels` must hold batch × C × H × W
    /// Floats and `labels` batch Int32s.
    public func gatherBatch(
        _ indices: some Collection<Int>,
        pixels destination: UnsafeMutablePointer<Float>,
        labels labelDestination: UnsafeMutablePointer<Int32>
    ) {
        let batch = indices.count
        let plane = height * width
        // Multiplying by the reciprocal is cheaper than dividing per pixel.
        let scale = std.map { 1 / $0 }
        pixels.withUnsafeBufferPointer { source in
            for (n, index) in indices.enumerated() {
                precondition(index >= 0 && index < count, "sample index \(index) out of range")
                labelDestination[n] = labels[index]
                let sample = source.baseAddress! + index * sampleSize
                for c in 0..<channels {
                    let from = sample + c * plane
                    let to = destination + (c * batch + n) * plane
                    let shift = mean[c], factor = scale[c]
                    for i in 0..<plane {
                        to[i] = (from[i] - shift) * factor
                    }
                }
            }
        }
    }
}
