/// One named tensor as it sits in a checkpoint: dtype, shape and the raw
/// little-endian bytes of its elements in row-major order.
///
/// Values move in and out with a single memory copy, so a tensor of tens of
/// megabytes costs no per-element work.
public struct TensorRecord: Equatable, Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let bytes: [UInt8]

    /// Wraps bytes already in checkpoint layout. `bytes.count` must equal
    /// `dtype.byteWidth` times the product of `shape`.
    public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
        precondition(name != Header.metadataKey, "'\(Header.metadataKey)' is reserved, not a tensor name")
        precondition(dtype.byteCount(shape: shape) == bytes.count,
                     "tensor '\(name)': \(bytes.count) bytes do not fit \(dtype.rawValue) \(shape)")
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    /// Stores `values` (row-major, `values.count` equal to the product of
    /// `shape`) under `name`; the dtype follows from the element type.
    public init<Element: TensorElement>(name: String, shape: [Int], values: [Element]) {
        self.init(name: name, dtype: Element.dtype, shape: shape,
                  bytes: values.withUnsafeBytes { Array($0) })
    }

    /// Number of elements: the product of `shape`.
    public var elementCount: Int { bytes.count / dtype.byteWidth }

    /// The elements as `Element`, which must match the stored dtype.
    public func values<Element: TensorElement>(as type: Element.Type = Element.self) throws -> [Element] {
        guard Element.dtype == dtype else {
            throw CheckpointError(path: nil, reason: .dtypeMismatch(tensor: name, stored: dtype,
                                                                    requested: Element.dtype))
        }
        return [Element](unsafeUninitializedCapacity: elementCount) { elements, initialized in
            bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(elements).copyMemory(from: $0) }
            initialized = elementCount
        }
    }
}
