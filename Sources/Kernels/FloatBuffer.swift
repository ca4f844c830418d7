/// An owned, 64-byte aligned, zero-initialised block of Floats.
///
/// Layers keep their outputs and gradients in these, sized for the largest
/// batch seen so far, so steady-state training allocates nothing.
public final class FloatBuffer {
    public private(set) var pointer: UnsafeMutablePointer<Float>
    public private(set) var capacity: Int

    public init(capacity: Int = 0) {
        self.capacity = capacity
        pointer = FloatBuffer.allocate(capacity)
    }

    deinit { free(pointer) }

    /// Grows the buffer to hold at least `count` Floats. Contents are not
    /// kept when it grows.
    @discardableResult
    public func reserve(_ count: Int) -> UnsafeMutablePointer<Float> {
        if count > capacity {
            free(pointer)
            pointer = FloatBuffer.allocate(count)
            capacity = count
        }
        return pointer
    }

    public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: pointer, count: capacity)
    }

    private static func allocate(_ count: Int) -> UnsafeMutablePointer<Float> {
        var raw: UnsafeMutableRawPointer?
        let bytes = max(count, 16) * MemoryLayout<Float>.stride
        guard posix_memalign(&raw, 64, bytes) == 0, let raw else {
            fatalError("out of memory allocating \(bytes) bytes")
        }
        memset(raw, 0, bytes)
        return raw.bindMemory(to: Float.self, capacity: max(count, 16))
    }
}

#if canImport(Glibc)
import Glibc
#endif
