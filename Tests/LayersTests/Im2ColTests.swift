import Kernels
import XCTest

/// im2col against its definition, and col2im as its adjoint:
/// <im2col(x), c> = <x, col2im(c)> for every x and c.
final class Im2ColTests: XCTestCase {
    /// Same-size stride-1 geometries take the shifted-copy path, the others
    /// the row-by-row one.
    static let geometries: [ConvGeometry] = [
        ConvGeometry(inChannels: 2, outChannels: 1, kernel: 3, stride: 1, padding: 1, height: 5, width: 4),
        ConvGeometry(inChannels: 2, outChannels: 1, kernel: 5, stride: 1, padding: 2, height: 3, width: 6),
        ConvGeometry(inChannels: 1, outChannels: 1, kernel: 5, stride: 1, padding: 2, height: 1, width: 1),
        ConvGeometry(inChannels: 2, outChannels: 1, kernel: 3, stride: 1, padding: 0, height: 5, width: 4),
        ConvGeometry(inChannels: 2, outChannels: 1, kernel: 3, stride: 2, padding: 1, height: 5, width: 7),
        ConvGeometry(inChannels: 3, outChannels: 1, kernel: 1, stride: 2, padding: 0, height: 4, width: 4),
    ]

    func testIm2colCopiesEachTapOrZero() {
        let batch = 3
        for (i, g) in Self.geometries.enumerated() {
            var rng = SplitMix64(seed: UInt64(i))
            let x = OwnedMap(channels: g.inChannels, batch: batch, height: g.height, width: g.width, random: &rng)
            for images in [0..<batch, 1..<3] {
                let columns = images.count * g.outPixels
                var col = [Float](repeating: .nan, count: g.patchSize * columns)
                col.withUnsafeMutableBufferPointer {
                    im2col(g, input: x.map.data, batch: batch, images: images, col: $0.baseAddress!)
                }
                for c in 0..<g.inChannels {
                    for ky in 0..<g.kernel {
                        for kx in 0..<g.kernel {
                            for (j, n) in images.enumerated() {
                                for oy in 0..<g.outHeight {
                                    for ox in 0..<g.outWidth {
                                        let iy = oy * g.stride - g.padding + ky, ix = ox * g.stride - g.padding + kx
                                        let inside = (0..<g.height).contains(iy) && (0..<g.width).contains(ix)
                                        let expected = inside ? element(x.map, c, n, iy, ix) : 0
                                        let row = (c * g.kernel + ky) * g.kernel + kx
                                        let column = (j * g.outHeight + oy) * g.outWidth + ox
                                        XCTAssertEqual(col[row * columns + column], expected,
                                                       "\(g) images \(images) (\(c), \(ky), \(kx), \(n), \(oy), \(ox))")
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// col2im writes (not adds) dx of the chunk's images: the buffer starts
    /// as NaN, and images outside the chunk keep it.
    func testCol2imIsTheAdjointAndWritesItsImages() {
        let batch = 3
        for (i, g) in Self.geometries.enumerated() {
            var rng = SplitMix64(seed: UInt64(100 + i))
            let x = OwnedMap(channels: g.inChannels, batch: batch, height: g.height, width: g.width, random: &rng)
            for images in [0..<batch, 1..<3] {
                let columns = images.count * g.outPixels
                var c = [Float](repeating: 0, count: g.patchSize * columns)
                c.withUnsafeMutableBufferPointer { fillUniform($0, &rng) }
                var col = [Float](repeating: 0, count: c.count)
                col.withUnsafeMutableBufferPointer {
                    im2col(g, input: x.map.data, batch: batch, images: images, col: $0.baseAddress!)
                }
                let left = zip(col, c).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }

                var dx = [Float](repeating: .nan, count: x.map.count)
                var scratch = c
                scratch.withUnsafeMutableBufferPointer { cp in
                    dx.withUnsafeMutableBufferPointer {
                        col2im(g, col: cp.baseAddress!, batch: batch, images: images, inputGradient: $0.baseAddress!)
                    }
                }
                var right = 0.0
                let plane = g.height * g.width
                for ch in 0..<g.inChannels {
                    for n in 0..<batch {
                        for p in 0..<plane {
                            let index = (ch * batch + n) * plane + p
                            if images.contains(n) {
                                right += Double(x.map.data[index]) * Double(dx[index])
                            } else {
                                XCTAssert(dx[index].isNaN, "\(g): image \(n) outside the chunk was written")
                            }
                        }
                    }
                }
                XCTAssertEqual(left, right, accuracy: 1e-9 + 1e-5 * abs(left), "\(g) images \(images)")
            }
        }
    }
}
