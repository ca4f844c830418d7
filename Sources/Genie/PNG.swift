import Checkpoint

/// A minimal PNG encoder: 8-bit grayscale or RGB, one IDAT chunk whose zlib
/// stream uses stored (uncompressed) deflate blocks, so it needs no zlib.
/// Sample grids are small, so the missing compression costs little.
public enum PNG {
    /// `pixels`: rows top to bottom, each `width * channels` bytes
    /// (channels 1: gray, 3: RGB interleaved).
    public static func encode(width: Int, height: Int, channels: Int, pixels: [UInt8]) -> [UInt8] {
        precondition(channels == 1 || channels == 3, "PNG: 1 or 3 channels")
        precondition(pixels.count == width * height * channels, "PNG: pixel count does not match the size")
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var header = bigEndian(UInt32(width)) + bigEndian(UInt32(height))
        header += [8, channels == 1 ? 0 : 2, 0, 0, 0]  // bit depth, colour type, deflate, no filter, no interlace
        chunk("IHDR", header, into: &out)

        // Every row starts with filter byte 0 (none).
        let stride = width * channels
        var raw: [UInt8] = []
        raw.reserveCapacity(height * (stride + 1))
        for row in 0..<height {
            raw.append(0)
            raw += pixels[(row * stride)..<((row + 1) * stride)]
        }
        chunk("IDAT", zlibStored(raw), into: &out)
        chunk("IEND", [], into: &out)
        return out
    }

    /// A zlib stream of stored deflate blocks (at most 65535 bytes each)
    /// with the Adler-32 of the data.
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let length = min(65535, data.count - offset)
            let last: UInt8 = offset + length == data.count ? 1 : 0
            out.append(last)  // BFINAL, BTYPE = 00 (stored)
            out += [UInt8(length & 0xFF), UInt8(length >> 8), UInt8(~length & 0xFF), UInt8((~length >> 8) & 0xFF)]
            out += data[offset..<(offset + length)]
            offset += length
        } while offset < data.count
        return out + bigEndian(adler32(data))
    }

    static func adler32(_ data: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        // 5552 bytes is the longest run whose sums cannot overflow before the modulo.
        var offset = 0
        while offset < data.count {
            let end = min(offset + 5552, data.count)
            for i in offset..<end {
                a += UInt32(data[i])
                b += a
            }
            a %= 65521
            b %= 65521
            offset = end
        }
        return b << 16 | a
    }

    private static func chunk(_ type: String, _ data: [UInt8], into out: inout [UInt8]) {
        let typeBytes = Array(type.utf8)
        var crc = CRC32()
        crc.update(typeBytes)
        crc.update(data)
        out += bigEndian(UInt32(data.count)) + typeBytes + data + bigEndian(crc.value)
    }

    private static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}

/// Up to `columns * columns` images of an [N, C, H, W] batch as one PNG
/// grid with 1-pixel gaps, each image stretched from its own minimum and
/// maximum to 0...255 (synthetic images have no fixed range).
public func sampleGridPNG(images: [Float], channels: Int, height: Int, width: Int, columns: Int = 8) -> [UInt8] {
    precondition(channels == 1 || channels == 3, "a sample grid needs 1 or 3 channels")
    let size = channels * height * width
    let count = min(images.count / size, columns * columns)
    let across = min(count, columns), down = (count + columns - 1) / columns
    let gridWidth = across * (width + 1) + 1, gridHeight = down * (height + 1) + 1
    var pixels = [UInt8](repeating: 0, count: gridWidth * gridHeight * channels)
    for k in 0..<count {
        let image = images[(k * size)..<((k + 1) * size)]
        let lo = image.min() ?? 0, hi = image.max() ?? 0
        let scale = hi > lo ? 255 / (hi - lo) : 0
        let top = 1 + (k / columns) * (height + 1), left = 1 + (k % columns) * (width + 1)
        for c in 0..<channels {
            for y in 0..<height {
                for x in 0..<width {
                    let v = (images[k * size + (c * height + y) * width + x] - lo) * scale
                    pixels[((top + y) * gridWidth + left + x) * channels + c] = UInt8(min(max(v.rounded(), 0), 255))
                }
            }
        }
    }
    return PNG.encode(width: gridWidth, height: gridHeight, channels: channels, pixels: pixels)
}
