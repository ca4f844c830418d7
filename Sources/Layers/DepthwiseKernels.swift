import Kernels

// Direct kernels of a depthwise convolution, in which every output channel
// reads exactly one input channel: one k x k filter slides over one
// channel plane of one image. im2col + GEMM would multiply a 1 x k² row by
// a k² x P patch matrix per channel, which costs a copy of k² times the
// plane and a GEMM too thin to run fast; these loops copy each plane once,
// into a small zero-padded buffer that stays in cache, so that their inner
// loops need no bounds tests.
//
// At stride 1 (`padPlane`), a row pitch of W + 2p lets one flat index
// t = oy * pitch + ox address the output and every tap (t + ky * pitch +
// kx): a tap over the whole plane is one long loop, whatever the width.
// The pitch - OW columns at the end of each row are junk in the output
// (dropped by the caller) and meet zeros of dy in the weight gradient.
// Stacking a few images' padded planes (`padPlanes`) makes the loop run
// over all of them at once, which matters for small maps (4x4, 7x7).
//
// At stride s > 1 (`splitPlane`), each padded row is stored as s phases,
// phase b holding columns b, b + s, b + 2s, ...: tap kx of output column
// ox reads element ox + kx / s of phase kx % s, so the loops over ox read
// and write contiguous memory (strided loads and stores do not vectorize).
// These loops run row by row.

/// Copies a `height` x `width` plane into `padded` surrounded by `pad`
/// zeros (row pitch width + 2 pad, height + 2 pad rows) and returns it; with
/// `pad` 0 returns the plane itself.
@inline(__always)
func padPlane(_ source: UnsafePointer<Float>, height: Int, width: Int, pad: Int,
              into padded: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
    guard pad > 0 else { return source }
    let pitch = width + 2 * pad
    // The top rows and the first row's left padding.
    zeroShort(padded, count: pad * pitch + pad)
    for y in 0..<height {
        let row = padded + (y + pad) * pitch + pad
        copyShort(source + y * width, into: row, count: width)
        // This row's right padding and the next row's left padding.
        zeroShort(row + width, count: 2 * pad)
    }
    // The bottom rows, less the left padding written above.
    zeroShort(padded + (height + pad) * pitch + pad, count: pad * pitch - pad)
    return UnsafePointer(padded)
}

/// `count` consecutive dense planes padded by `pad` (`padPlane`) and
/// stacked one after another in `stack`, each taking (height + 2 pad) *
/// (width + 2 pad) values; with `pad` 0 the planes themselves, which are
/// stacked already. At stride 1 the flat index then runs over the whole
/// stack: the output rows between two images are junk, like the columns
/// past OW.
@inline(__always)
func padPlanes(_ source: UnsafePointer<Float>, count: Int, height: Int, width: Int, pad: Int,
               into stack: UnsafeMutablePointer<Float>) -> UnsafePointer<Float> {
    guard pad > 0 else { return source }
    let block = (height + 2 * pad) * (width + 2 * pad)
    for i in 0..<count {
        _ = padPlane(source + i * height * width, height: height, width: width, pad: pad, into: stack + i * block)
    }
    return UnsafePointer(stack)
}

/// Stride-1 correlation of a padded plane with one k x k filter, over the
/// flat index: out[t] (+)= sum over taps of w[ky*k + kx] *
/// source[t + ky*pitch + kx], for t in 0..<count. With count =
/// (OH - 1) * pitch + OW, output pixel (oy, ox) lands at oy*pitch + ox.
@inline(__always)
func correlateStride1(_ source: UnsafePointer<Float>, pitch: Int, weights w: UnsafePointer<Float>, kernel k: Int,
                      into out: UnsafeMutablePointer<Float>, count: Int, accumulate: Bool) {
    if k == 3 {
        let (w0, w1, w2, w3, w4, w5, w6, w7, w8) = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8])
        let r0 = source, r1 = source + pitch, r2 = source + 2 * pitch
        if accumulate {
            for t in 0..<count {
                let top = w0 * r0[t] + w1 * r0[t + 1] + w2 * r0[t + 2]
                let middle = w3 * r1[t] + w4 * r1[t + 1] + w5 * r1[t + 2]
                let bottom = w6 * r2[t] + w7 * r2[t + 1] + w8 * r2[t + 2]
                out[t] += top + middle + bottom
            }
        } else {
            for t in 0..<count {
                let top = w0 * r0[t] + w1 * r0[t + 1] + w2 * r0[t + 2]
                let middle = w3 * r1[t] + w4 * r1[t + 1] + w5 * r1[t + 2]
                let bottom = w6 * r2[t] + w7 * r2[t + 1] + w8 * r2[t + 2]
                out[t] = top + middle + bottom
            }
        }
        return
    }
    if !accumulate { out.update(repeating: 0, count: count) }
    for ky in 0..<k {
        for kx in 0..<k {
            let weight = w[ky * k + kx], tap = source + ky * pitch + kx
            for t in 0..<count { out[t] += weight * tap[t] }
        }
    }
}

/// The filter's gradient at stride 1: adds sum_t dyPitched[t] *
/// source[t + ky*pitch + kx] to dw[ky*k + kx], where `dyPitched` holds dy
/// at pitch `pitch` with zeros in the junk columns. For 3x3 filters one
/// pass keeps the nine sums in vector registers.
@inline(__always)
func filterGradientStride1(_ source: UnsafePointer<Float>, pitch: Int, dyPitched d: UnsafePointer<Float>, count: Int,
                           kernel k: Int, into dw: UnsafeMutablePointer<Float>) {
    guard k == 3 else {
        for ky in 0..<k {
            for kx in 0..<k { dw[ky * k + kx] += dot(d, source + ky * pitch + kx, count: count) }
        }
        return
    }
    @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
    }
    let r0 = source, r1 = source + pitch, r2 = source + 2 * pitch
    var (a0, a1, a2) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
    var (a3, a4, a5) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
    var (a6, a7, a8) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
    var t = 0
    while t + 4 <= count {
        let g = load(d + t)
        a0 += g * load(r0 + t)
        a1 += g * load(r0 + t + 1)
        a2 += g * load(r0 + t + 2)
        a3 += g * load(r1 + t)
        a4 += g * load(r1 + t + 1)
        a5 += g * load(r1 + t + 2)
        a6 += g * load(r2 + t)
        a7 += g * load(r2 + t + 1)
        a8 += g * load(r2 + t + 2)
        t += 4
    }
    var tail = (a0.sum(), a1.sum(), a2.sum(), a3.sum(), a4.sum(), a5.sum(), a6.sum(), a7.sum(), a8.sum())
    while t < count {
        let g = d[t]
        tail.0 += g * r0[t]; tail.1 += g * r0[t + 1]; tail.2 += g * r0[t + 2]
        tail.3 += g * r1[t]; tail.4 += g * r1[t + 1]; tail.5 += g * r1[t + 2]
        tail.6 += g * r2[t]; tail.7 += g * r2[t + 1]; tail.8 += g * r2[t + 2]
        t += 1
    }
    dw[0] += tail.0; dw[1] += tail.1; dw[2] += tail.2
    dw[3] += tail.3; dw[4] += tail.4; dw[5] += tail.5
    dw[6] += tail.6; dw[7] += tail.7; dw[8] += tail.8
}

/// Copies a `height` x `width` plane into `split` as its zero-padded
/// (`pad`) rows, each stored as `stride` phases of `phaseLength` values:
/// padded column c of row r sits at (r * stride + c % stride) *
/// phaseLength + c / stride. `phaseLength` must be at least
/// ceil((width + 2 pad) / stride).
@inline(__always)
func splitPlane(_ source: UnsafePointer<Float>, height: Int, width: Int, pad: Int, stride s: Int, phaseLength: Int,
                into split: UnsafeMutablePointer<Float>) {
    let rowLength = s * phaseLength
    guard s == 2 else {
        split.update(repeating: 0, count: (height + 2 * pad) * rowLength)
        for y in 0..<height {
            let row = split + (y + pad) * rowLength, src = source + y * width
            for b in 0..<s {
                // The first input column whose padded column is in phase b.
                let first = ((b - pad) % s + s) % s
                guard first < width else { continue }
                let phase = row + b * phaseLength + (first + pad) / s, column = src + first
                for m in 0..<((width - 1 - first) / s + 1) { phase[m] = column[m * s] }
            }
        }
        return
    }
    // Stride 2: input columns 2m and 2m + 1 go to phases a and b, from
    // element m on; 8 columns at a time split into their even and odd
    // halves in vector registers. Only the padding is zeroed.
    zeroShort(split, count: pad * rowLength)
    zeroShort(split + (height + pad) * rowLength, count: pad * rowLength)
    let (aStart, aCount) = (pad / 2, (width + 1) / 2), (bStart, bCount) = ((pad + 1) / 2, width / 2)
    let aPhase = (pad % 2) * phaseLength + aStart, bPhase = ((pad + 1) % 2) * phaseLength + bStart
    for y in 0..<height {
        let row = split + (y + pad) * rowLength, src = source + y * width
        let a = row + aPhase, b = row + bPhase
        zeroShort(a - aStart, count: aStart)
        zeroShort(a + aCount, count: phaseLength - aStart - aCount)
        zeroShort(b - bStart, count: bStart)
        zeroShort(b + bCount, count: phaseLength - bStart - bCount)
        var m = 0
        while 2 * m + 8 <= width {
            let v = UnsafeRawPointer(src + 2 * m).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(a + m).storeBytes(of: v.evenHalf, as: SIMD4<Float>.self)
            UnsafeMutableRawPointer(b + m).storeBytes(of: v.oddHalf, as: SIMD4<Float>.self)
            m += 4
        }
        while m < bCount {
            a[m] = src[2 * m]
            b[m] = src[2 * m + 1]
            m += 1
        }
        if aCount > bCount { a[bCount] = src[width - 1] }
    }
}

/// The inverse of `splitPlane` on the inside of the plane: writes the
/// `height` x `width` values the padding surrounds into a dense plane.
@inline(__always)
func mergePlane(_ split: UnsafePointer<Float>, height: Int, width: Int, pad: Int, stride s: Int, phaseLength: Int,
                into out: UnsafeMutablePointer<Float>) {
    let rowLength = s * phaseLength
    for y in 0..<height {
        let row = split + (y + pad) * rowLength, dst = out + y * width
        if s == 2 {
            let a = row + (pad % 2) * phaseLength + pad / 2, b = row + ((pad + 1) % 2) * phaseLength + (pad + 1) / 2
            for m in 0..<(width / 2) {
                dst[2 * m] = a[m]
                dst[2 * m + 1] = b[m]
            }
            if width % 2 == 1 { dst[width - 1] = a[width / 2] }
            continue
        }
        for b in 0..<s {
            let first = ((b - pad) % s + s) % s
            guard first < width else { continue }
            let phase = row + b * phaseLength + (first + pad) / s, column = dst + first
            for m in 0..<((width - 1 - first) / s + 1) { column[m * s] = phase[m] }
        }
    }
}

/// Strided correlation of a split plane with one k x k filter, row by row:
/// out[oy*OW + ox] = sum over taps of w[ky*k + kx] * (padded row oy*s + ky,
/// column ox*s + kx).
@inline(__always)
func correlateSplit(_ split: UnsafePointer<Float>, phaseLength: Int, stride s: Int, weights w: UnsafePointer<Float>,
                    kernel k: Int, into out: UnsafeMutablePointer<Float>, outHeight: Int, outWidth: Int) {
    let rowLength = s * phaseLength
    if k == 3 && s == 2 {
        let (w0, w1, w2, w3, w4, w5, w6, w7, w8) = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8])
        for oy in 0..<outHeight {
            // Even (e) and odd (o) phases of the three rows.
            let e0 = split + 2 * oy * rowLength, o0 = e0 + phaseLength
            let e1 = e0 + rowLength, o1 = e1 + phaseLength
            let e2 = e1 + rowLength, o2 = e2 + phaseLength
            let row = out + oy * outWidth
            for ox in 0..<outWidth {
                let top = w0 * e0[ox] + w1 * o0[ox] + w2 * e0[ox + 1]
                let middle = w3 * e1[ox] + w4 * o1[ox] + w5 * e1[ox + 1]
                let bottom = w6 * e2[ox] + w7 * o2[ox] + w8 * e2[ox + 1]
                row[ox] = top + middle + bottom
            }
        }
        return
    }
    for oy in 0..<outHeight {
        let row = out + oy * outWidth
        row.update(repeating: 0, count: outWidth)
        for ky in 0..<k {
            let source = split + (oy * s + ky) * rowLength
            for kx in 0..<k {
                let weight = w[ky * k + kx], tap = source + (kx % s) * phaseLength + kx / s
                for ox in 0..<outWidth { row[ox] += weight * tap[ox] }
            }
        }
    }
}

/// The adjoint of `correlateSplit`: adds w[ky*k + kx] * dy[oy*OW + ox] into
/// the split plane at (padded row oy*s + ky, column ox*s + kx).
@inline(__always)
func scatterSplit(_ dy: UnsafePointer<Float>, outHeight: Int, outWidth: Int, weights w: UnsafePointer<Float>,
                  kernel k: Int, stride s: Int, into split: UnsafeMutablePointer<Float>, phaseLength: Int) {
    let rowLength = s * phaseLength
    for oy in 0..<outHeight {
        let d = dy + oy * outWidth
        for ky in 0..<k {
            let target = split + (oy * s + ky) * rowLength
            for kx in 0..<k {
                let weight = w[ky * k + kx], tap = target + (kx % s) * phaseLength + kx / s
                for ox in 0..<outWidth { tap[ox] += weight * d[ox] }
            }
        }
    }
}

/// The filter's gradient from a split plane, per row: adds dy[oy*OW + ox] *
/// (padded row oy*s + ky, column ox*s + kx) to partial[(ky*k + kx)*OW + ox]
/// (element-wise, so the loops vectorize); the caller sums each tap's OW
/// partial sums at the end. For 3x3 filters at stride 2 the nine sums stay
/// in vector registers over the whole plane instead, and go straight into
/// partial[tap * OW] (the first partial sum of each tap).
@inline(__always)
func filterGradientSplit(_ split: UnsafePointer<Float>, phaseLength: Int, stride s: Int, dy: UnsafePointer<Float>,
                         outHeight: Int, outWidth: Int, kernel k: Int, into partial: UnsafeMutablePointer<Float>) {
    let rowLength = s * phaseLength
    if k == 3 && s == 2 {
        @inline(__always) func load(_ p: UnsafePointer<Float>) -> SIMD4<Float> {
            UnsafeRawPointer(p).loadUnaligned(as: SIMD4<Float>.self)
        }
        var (a0, a1, a2) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
        var (a3, a4, a5) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
        var (a6, a7, a8) = (SIMD4<Float>.zero, SIMD4<Float>.zero, SIMD4<Float>.zero)
        var tail: (Float, Float, Float, Float, Float, Float, Float, Float, Float) = (0, 0, 0, 0, 0, 0, 0, 0, 0)
        for oy in 0..<outHeight {
            let d = dy + oy * outWidth
            let e0 = split + 2 * oy * rowLength, o0 = e0 + phaseLength
            let e1 = e0 + rowLength, o1 = e1 + phaseLength
            let e2 = e1 + rowLength, o2 = e2 + phaseLength
            var ox = 0
            while ox + 4 <= outWidth {
                let g = load(d + ox)
                a0 += g * load(e0 + ox)
                a1 += g * load(o0 + ox)
                a2 += g * load(e0 + ox + 1)
                a3 += g * load(e1 + ox)
                a4 += g * load(o1 + ox)
                a5 += g * load(e1 + ox + 1)
                a6 += g * load(e2 + ox)
                a7 += g * load(o2 + ox)
                a8 += g * load(e2 + ox + 1)
                ox += 4
            }
            while ox < outWidth {
                let g = d[ox]
                tail.0 += g * e0[ox]; tail.1 += g * o0[ox]; tail.2 += g * e0[ox + 1]
                tail.3 += g * e1[ox]; tail.4 += g * o1[ox]; tail.5 += g * e1[ox + 1]
                tail.6 += g * e2[ox]; tail.7 += g * o2[ox]; tail.8 += g * e2[ox + 1]
                ox += 1
            }
        }
        let w = outWidth
        partial[0] += a0.sum() + tail.0; partial[w] += a1.sum() + tail.1; partial[2 * w] += a2.sum() + tail.2
        partial[3 * w] += a3.sum() + tail.3; partial[4 * w] += a4.sum() + tail.4; partial[5 * w] += a5.sum() + tail.5
        partial[6 * w] += a6.sum() + tail.6; partial[7 * w] += a7.sum() + tail.7; partial[8 * w] += a8.sum() + tail.8
        return
    }
    for oy in 0..<outHeight {
        let d = dy + oy * outWidth
        for ky in 0..<k {
            let source = split + (oy * s + ky) * rowLength
            for kx in 0..<k {
                let p = partial + (ky * k + kx) * outWidth, tap = source + (kx % s) * phaseLength + kx / s
                for ox in 0..<outWidth { p[ox] += d[ox] * tap[ox] }
            }
        }
    }
}

/// dx of one plane of a 3x3, stride-2, padding-1 depthwise convolution, as
/// a gather: each input pixel (y, x) collects the taps that read it,
/// by the parities of y and x,
///
///     dx[2i][2j]     = w11 dy[i][j]
///     dx[2i][2j+1]   = w10 dy[i][j+1] + w12 dy[i][j]
///     dx[2i+1][2j]   = w01 dy[i+1][j] + w21 dy[i][j]
///     dx[2i+1][2j+1] = w00 dy[i+1][j+1] + w02 dy[i+1][j] + w20 dy[i][j+1] + w22 dy[i][j]
///
/// with dy read from `dyPadded`, dy with a zero row below and a zero
/// column on the right (pitch OW + 1). Every dx is written once.
@inline(__always)
func inputGradient3x3Stride2(_ dyPadded: UnsafePointer<Float>, outHeight: Int, outWidth: Int,
                             weights w: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>,
                             height: Int, width: Int) {
    let (w0, w1, w2, w3, w4, w5, w6, w7, w8) = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8])
    let pitch = outWidth + 1, pairs = width / 2, odd = width % 2 == 1
    for i in 0..<outHeight {
        let d0 = dyPadded + i * pitch, d1 = d0 + pitch
        let even = dx + 2 * i * width
        for j in 0..<pairs {
            even[2 * j] = w4 * d0[j]
            even[2 * j + 1] = w3 * d0[j + 1] + w5 * d0[j]
        }
        if odd { even[2 * pairs] = w4 * d0[pairs] }
        guard 2 * i + 1 < height else { continue }
        let next = even + width
        for j in 0..<pairs {
            next[2 * j] = w1 * d1[j] + w7 * d0[j]
            next[2 * j + 1] = (w0 * d1[j + 1] + w2 * d1[j]) + (w6 * d0[j + 1] + w8 * d0[j])
        }
        if odd { next[2 * pairs] = w1 * d1[pairs] + w7 * d0[pairs] }
    }
}

/// Copies `rows` rows of `width` values from a plane of pitch `pitch`
/// into a dense plane.
@inline(__always)
func copyRows(_ source: UnsafePointer<Float>, pitch: Int, rows: Int, width: Int, into out: UnsafeMutablePointer<Float>) {
    if pitch == width {
        out.update(from: source, count: rows * width)
        return
    }
    for y in 0..<rows { copyShort(source + y * pitch, into: out + y * width, count: width) }
}

/// Copies a dense `rows` x `width` plane into a plane of pitch `pitch`,
/// zeroing the pitch - width columns after each row (the last row's too).
@inline(__always)
func copyRowsPitched(_ source: UnsafePointer<Float>, rows: Int, width: Int, into out: UnsafeMutablePointer<Float>,
                     pitch: Int) {
    for y in 0..<rows {
        let row = out + y * pitch
        copyShort(source + y * width, into: row, count: width)
        zeroShort(row + width, count: pitch - width)
    }
}

// Rows here are short (a feature map's width, often 4 to 32 values) and
// there are many of them: a memcpy or memset call per row costs more than
// the copy. These stay inline: SIMD4 moves, then at most three single
// ones (a tail loop would be turned back into a library call).

/// Copies `count` values.
@inline(__always)
func copyShort(_ source: UnsafePointer<Float>, into target: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 4 <= count {
        UnsafeMutableRawPointer(target + i).storeBytes(
            of: UnsafeRawPointer(source + i).loadUnaligned(as: SIMD4<Float>.self), as: SIMD4<Float>.self)
        i += 4
    }
    switch count - i {
    case 3: target[i + 2] = source[i + 2]; fallthrough
    case 2: target[i + 1] = source[i + 1]; fallthrough
    case 1: target[i] = source[i]
    default: break
    }
}

/// Writes `count` zeros.
@inline(__always)
func zeroShort(_ target: UnsafeMutablePointer<Float>, count: Int) {
    var i = 0
    while i + 4 <= count {
        UnsafeMutableRawPointer(target + i).storeBytes(of: SIMD4<Float>.zero, as: SIMD4<Float>.self)
        i += 4
    }
    switch count - i {
    case 3: target[i + 2] = 0; fallthrough
    case 2: target[i + 1] = 0; fallthrough
    case 1: target[i] = 0
    default: break
    }
}
