//! Packing: A in MR-row panels per KC block, B in NR-column panels (see the module doc).

use super::*;
use crate::scalar::Float;

/// Packs A (m x k, element (i, kk) at `a[i * rsa + kk * csa]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_a<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    out: &mut [T],
) {
    match s.mr {
        4 => pack_a_mr::<T, 4>(s, m, k, a, rsa, csa, out),
        5 => pack_a_mr::<T, 5>(s, m, k, a, rsa, csa, out),
        6 => pack_a_mr::<T, 6>(s, m, k, a, rsa, csa, out),
        8 => pack_a_mr::<T, 8>(s, m, k, a, rsa, csa, out),
        mr => unreachable!("no packing for MR = {mr}"),
    }
}

/// Packs A (m x k) given element by element: `get(i, kk)`. For small matrices built from parts
/// (the convolution's weights with the bias as an extra column), packed once per call.
pub(crate) fn pack_a_with<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    get: impl Fn(usize, usize) -> T,
    out: &mut [T],
) {
    pack_a_by_cols(s, m, k, |kk| kk, |kk, i| get(i, kk), out)
}

/// Packs A (m x k) whose column kk starts at `a[col(kk)]`, rows `rs` apart: element (i, kk) at
/// `a[col(kk) + i * rs]`. `col` runs once per column (the data gradient's flipped weights need a
/// division to find a column; per element it was 2% of a res2 backward, on one thread).
pub(crate) fn pack_a_cols<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rs: usize,
    col: impl Fn(usize) -> usize,
    out: &mut [T],
) {
    pack_a_by_cols(s, m, k, col, |b, i| a[b + i * rs], out)
}

/// The packing walk of `pack_a_with` and `pack_a_cols`: per KC block, `col(kk)` once per column,
/// then element (i, kk) is `get(col(kk), i)` (0 in the rows past m).
pub(super) fn pack_a_by_cols<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    col: impl Fn(usize) -> usize,
    get: impl Fn(usize, usize) -> T,
    out: &mut [T],
) {
    let mut cb = [0usize; MAX_KC];
    let mut o = 0;
    for (k0, kc) in kc_blocks(s, k) {
        assert!(kc <= MAX_KC);
        for (kk, b) in cb[..kc].iter_mut().enumerate() {
            *b = col(k0 + kk);
        }
        for p in 0..m.div_ceil(s.mr) {
            for &b in &cb[..kc] {
                for i in 0..s.mr {
                    let r = p * s.mr + i;
                    out[o] = if r < m { get(b, r) } else { T::zero() };
                    o += 1;
                }
            }
        }
    }
}

/// `pack_a` with MR a constant, so the inner loop over a panel's rows is unrolled and full
/// panels need no bounds test per element.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a_mr<T: Float, const MR: usize>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    out: &mut [T],
) {
    let panels = m.div_ceil(MR);
    let mut o = 0;
    for (k0, kc) in kc_blocks(s, k) {
        for p in 0..panels {
            let dst = &mut out[o..o + kc * MR];
            o += kc * MR;
            let rows = MR.min(m - p * MR);
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                let base = p * MR * rsa + (k0 + kk) * csa;
                if rows == MR {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = a[base + i * rsa];
                    }
                } else {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = if i < rows {
                            a[base + i * rsa]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// Where B (k x n) comes from.
#[derive(Clone, Copy)]
pub(crate) enum BSrc<'a, T> {
    /// Row-major: element (kk, j) at `data[kk * ld + j]`.
    Rows { data: &'a [T], ld: usize },
    /// Column-major (B transposed in memory): element (kk, j) at `data[j * ld + kk]`.
    // Only the unit tests read B column-major; the kernels always pass rows.
    #[cfg_attr(not(test), allow(dead_code))]
    Cols { data: &'a [T], ld: usize },
}

/// Packs a row-major kc x n block (leading dimension ld) into NR panels: for callers of
/// `gemm_packed_with` that build each block of B in a buffer first.
pub(crate) fn pack_b_rows_into<T: Float>(
    s: Shape,
    kc: usize,
    n: usize,
    b: &[T],
    ld: usize,
    out: &mut [T],
) {
    pack_b(s, 0, kc, n, BSrc::Rows { data: b, ld }, out)
}

/// Packs rows k0..k0+kc of B into NR panels.
pub(super) fn pack_b<T: Float>(
    s: Shape,
    k0: usize,
    kc: usize,
    n: usize,
    b: BSrc<'_, T>,
    out: &mut [T],
) {
    match (s.nr, b) {
        (4, BSrc::Rows { data, ld }) => pack_b_rows::<T, 4>(kc, n, &data[k0 * ld..], ld, out),
        (8, BSrc::Rows { data, ld }) => pack_b_rows::<T, 8>(kc, n, &data[k0 * ld..], ld, out),
        (16, BSrc::Rows { data, ld }) => pack_b_rows::<T, 16>(kc, n, &data[k0 * ld..], ld, out),
        (32, BSrc::Rows { data, ld }) => pack_b_rows::<T, 32>(kc, n, &data[k0 * ld..], ld, out),
        (64, BSrc::Rows { data, ld }) => pack_b_rows::<T, 64>(kc, n, &data[k0 * ld..], ld, out),
        (nr, BSrc::Cols { data, ld }) => pack_b_cols(nr, kc, n, &data[k0..], ld, out),
        (nr, _) => unreachable!("no packing for NR = {nr}"),
    }
}

/// Row-major B: a full panel row is one fixed-size copy (inlined, not a memmove call).
pub(super) fn pack_b_rows<T: Float, const NR: usize>(
    kc: usize,
    n: usize,
    b: &[T],
    ldb: usize,
    out: &mut [T],
) {
    for p in 0..n.div_ceil(NR) {
        let (j0, j1) = (p * NR, ((p + 1) * NR).min(n));
        let dst = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
            let src = &b[kk * ldb + j0..kk * ldb + j1];
            if let (Ok(d), Ok(src)) = (<&mut [T; NR]>::try_from(&mut *d), <&[T; NR]>::try_from(src))
            {
                *d = *src;
            } else {
                d[..j1 - j0].copy_from_slice(src);
                d[j1 - j0..].fill(T::zero());
            }
        }
    }
}

/// Column-major B: each of a panel's NR columns is contiguous in memory and is written with
/// stride NR.
pub(super) fn pack_b_cols<T: Float>(
    nr: usize,
    kc: usize,
    n: usize,
    b: &[T],
    ld: usize,
    out: &mut [T],
) {
    for p in 0..n.div_ceil(nr) {
        let (j0, j1) = (p * nr, ((p + 1) * nr).min(n));
        let dst = &mut out[p * kc * nr..(p + 1) * kc * nr];
        for j in j0..j1 {
            let src = &b[j * ld..j * ld + kc];
            for (d, &v) in dst[j - j0..].iter_mut().step_by(nr).zip(src) {
                *d = v;
            }
        }
        for j in j1 - j0..nr {
            for d in dst[j..].iter_mut().step_by(nr) {
                *d = T::zero();
            }
        }
    }
}
