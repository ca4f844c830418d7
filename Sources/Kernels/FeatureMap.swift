/// A view of a batch of feature maps in channel-major CNHW layout: element
/// (c, n, y, x) lives at ((c * batch + n) * height + y) * width + x.
///
/// Channel-major is what makes every convolution one large GEMM over the
/// whole batch (Y[C_out, N*H*W] = W[C_out, K] * col[K, N*H*W]), lets batch
/// norm read each channel as one contiguous run, and lets EfQAT compute dW
/// for selected output channels from contiguous rows of dY.
/// A view does not own memory: the layer that produced it does.
public struct FeatureMap {
    public var data: UnsafeMutablePointer<Float>
    public var channels: Int
    public var batch: Int
    public var height: Int
    public var width: Int

    public init(data: UnsafeMutablePointer<Float>, channels: Int, batch: Int, height: Int, width: Int) {
        self.data = data
        self.channels = channels
        self.batch = batch
        self.height = height
        self.width = width
    }

    /// Elements of one channel: batch * height * width, contiguous.
    public var plane: Int { batch * height * width }
    public var count: Int { channels * plane }
    public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: data, count: count)
    }

    /// A map of the same shape stored in `buffer` (grown if needed).
    public func like(_ buffer: FloatBuffer) -> FeatureMap {
        FeatureMap(data: buffer.reserve(count), channels: channels, batch: batch, height: height, width: width)
    }
}
