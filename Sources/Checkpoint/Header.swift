/// Where one tensor lives, as written in the JSON header.
struct HeaderEntry: Codable {
    var dtype: String
    var shape: [Int]
    /// `[begin, end)` relative to the start of the data buffer.
    var dataOffsets: [Int]

    private enum CodingKeys: String, CodingKey {
        case dtype, shape
        case dataOffsets = "data_offsets"
    }
}

/// The JSON header of a safetensors file: one object whose keys are tensor
/// names, plus the optional string-to-string map under `__metadata__`.
struct Header: Codable {
    static let metadataKey = "__metadata__"

    var metadata: [String: String]
    var entries: [String: HeaderEntry]

    init(metadata: [String: String], entries: [String: HeaderEntry]) {
        self.metadata = metadata
        self.entries = entries
    }

    init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: NameKey.self)
        metadata = [:]
        entries = [:]
        for key in container.allKeys {
            if key.stringValue == Header.metadataKey {
                metadata = try container.decode([String: String].self, forKey: key)
            } else {
                entries[key.stringValue] = try container.decode(HeaderEntry.self, forKey: key)
            }
        }
    }

    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: NameKey.self)
        try container.encode(metadata, forKey: NameKey(Header.metadataKey))
        for (name, entry) in entries {
            try container.encode(entry, forKey: NameKey(name))
        }
    }

    /// A JSON object key chosen at run time (tensor names are data).
    private struct NameKey: CodingKey {
        let stringValue: String
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.init(stringValue) }
        var intValue: Int? { nil }
        init?(intValue: Int) { nil }
    }
}
