/// The element types a checkpoint tensor can hold, spelled as in the
/// safetensors header.
public enum DType: String, CaseIterable, Sendable {
    case f32 = "F32"
    case f64 = "F64"
    case i64 = "I64"
    case i32 = "I32"
    case u8 = "U8"

    /// Bytes per element.
    public var byteWidth: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .u8: return 1
        }
    }

    /// Bytes a tensor of this dtype and `shape` takes, or nil when a
    /// dimension is negative or the size does not fit in an Int (both mean
    /// a corrupt header). The empty shape is a scalar: one element.
    public func byteCount(shape: [Int]) -> Int? {
        var count = byteWidth
        for dimension in shape {
            guard dimension >= 0 else { return nil }
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow else { return nil }
            count = product
        }
        return count
    }
}

/// A Swift type whose values a checkpoint stores bit for bit, in the
/// little-endian order safetensors uses.
public protocol TensorElement: BitwiseCopyable {
    static var dtype: DType { get }
}

#if _endian(big)
#error("Checkpoint copies tensors as raw bytes and assumes a little-endian machine")
#endif

extension Float: TensorElement { public static var dtype: DType { .f32 } }
extension Double: TensorElement { public static var dtype: DType { .f64 } }
extension Int64: TensorElement { public static var dtype: DType { .i64 } }
extension Int32: TensorElement { public static var dtype: DType { .i32 } }
extension UInt8: TensorElement { public static var dtype: DType { .u8 } }
