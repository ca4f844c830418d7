import COpenBLAS

/// Row-major single-precision GEMM through OpenBLAS:
/// C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C.
@inline(__always)
public func sgemm(
    transposeA: Bool = false, transposeB: Bool = false,
    m: Int, n: Int, k: Int,
    alpha: Float = 1,
    _ a: UnsafePointer<Float>, lda: Int,
    _ b: UnsafePointer<Float>, ldb: Int,
    beta: Float = 0,
    _ c: UnsafeMutablePointer<Float>, ldc: Int
) {
    guard m > 0, n > 0 else { return }
    cblas_sgemm(CblasRowMajor,
                transposeA ? CblasTrans : CblasNoTrans,
                transposeB ? CblasTrans : CblasNoTrans,
                blasint(m), blasint(n), blasint(k), alpha,
                a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
}

/// Threads OpenBLAS may use. With one rank per core (or more ranks than
/// cores) this must be 1, or BLAS threads fight the other ranks.
public func setBLASThreads(_ count: Int) {
    openblas_set_num_threads(Int32(count))
}
