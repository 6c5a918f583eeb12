//! Safe GEMM over slices with strides, on matrixmultiply (which dispatches AVX-512/AVX2+FMA
//! micro-kernels at run time).

use crate::scalar::Float;

/// A strided matrix operand: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rs: usize,
    pub cs: usize,
}

/// Largest flat index of a rows x cols matrix with strides (rs, cs), plus one.
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// C (m x n, row-major with row stride `ldc`) = alpha * A (m x k) * B (k x n) + beta * C.
/// With beta == 0, C's previous contents are ignored (may be anything, NaN included).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm<T: Float>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: Mat<'_, T>,
    b: Mat<'_, T>,
    beta: T,
    c: &mut [T],
    ldc: usize,
) {
    assert!(
        a.data.len() >= extent(m, k, a.rs, a.cs),
        "gemm: A too short"
    );
    assert!(
        b.data.len() >= extent(k, n, b.rs, b.cs),
        "gemm: B too short"
    );
    assert!(c.len() >= extent(m, n, ldc, 1), "gemm: C too short");
    assert!(n <= ldc || m <= 1, "gemm: C rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for v in &mut c[i * ldc..i * ldc + n] {
                *v = if beta == T::zero() {
                    T::zero()
                } else {
                    *v * beta
                };
            }
        }
        return;
    }
    let (ars, acs, brs, bcs) = (a.rs as isize, a.cs as isize, b.rs as isize, b.cs as isize);
    let ldc = ldc as isize;
    use std::any::TypeId;
    // SAFETY: the asserts above bound every element matrixmultiply reads (A, B) or writes (C)
    // inside the slices; C's rows are disjoint (ldc >= n) and its column stride is 1, so no two
    // C elements alias. T is exactly f32 or f64 (the trait is sealed), checked by TypeId.
    unsafe {
        if TypeId::of::<T>() == TypeId::of::<f32>() {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                alpha.to_f() as f32,
                a.data.as_ptr() as *const f32,
                ars,
                acs,
                b.data.as_ptr() as *const f32,
                brs,
                bcs,
                beta.to_f() as f32,
                c.as_mut_ptr() as *mut f32,
                ldc,
                1,
            );
        } else {
            debug_assert!(TypeId::of::<T>() == TypeId::of::<f64>());
            matrixmultiply::dgemm(
                m,
                k,
                n,
                alpha.to_f(),
                a.data.as_ptr() as *const f64,
                ars,
                acs,
                b.data.as_ptr() as *const f64,
                brs,
                bcs,
                beta.to_f(),
                c.as_mut_ptr() as *mut f64,
                ldc,
                1,
            );
        }
    }
}

/// Row-major operand helper: an r x c matrix with leading dimension `ld`.
pub(crate) fn rm<T>(data: &[T], ld: usize) -> Mat<'_, T> {
    Mat {
        data,
        rs: ld,
        cs: 1,
    }
}

/// The transpose of a row-major r x c matrix with leading dimension `ld`, as a c x r operand.
pub(crate) fn tr<T>(data: &[T], ld: usize) -> Mat<'_, T> {
    Mat {
        data,
        rs: 1,
        cs: ld,
    }
}
