//! Register transposes of runs of columns into B panels (dw's tap panels).

#[cfg(target_arch = "x86_64")]
use super::kernels::{avx2, cast, cast_mut};
use super::*;
use crate::scalar::Float;

/// `out[kk * s.nr + jj] = src[bases[jj] + kk]` for kk < len, jj < bases.len() (at most s.nr),
/// and 0 for the panel's columns past bases.len(): a transpose of up to NR runs of `src` into
/// `len` rows of one packed B panel (the weight gradient packs kernel taps this way). At the
/// explicit levels it goes through 8 x 8 (f32) / 4 x 4 (f64) register transposes, 16 (f32) / 8
/// (f64) columns at a time.
pub(crate) fn transpose_runs<T: Float>(
    s: Shape,
    src: &[T],
    bases: &[usize],
    len: usize,
    out: &mut [T],
) {
    let nr = s.nr;
    assert!(bases.len() <= nr && out.len() >= len * nr);
    assert!(bases.iter().all(|&b| b + len <= src.len()));
    #[cfg(target_arch = "x86_64")]
    if s.level() >= Level::Avx2 {
        use std::any::TypeId;
        let f32 = TypeId::of::<T>() == TypeId::of::<f32>();
        let w = if f32 { 16 } else { 8 };
        if nr.is_multiple_of(w) {
            for (h, o) in (0..nr).step_by(w).enumerate() {
                let b = &bases[(h * w).min(bases.len())..((h + 1) * w).min(bases.len())];
                let out = &mut out[o..];
                if f32 {
                    // SAFETY: T is f32 (same TypeId); the level is Avx2 or above, which level()
                    // reports only when the CPU has AVX2 and FMA; b has at most 16 runs, each
                    // inside src, and out (from column o) holds (len - 1) * nr + 16 elements
                    // (asserted above: len * nr from column 0, o + 16 <= nr).
                    unsafe { avx2::transpose_f32(cast(src), b, len, cast_mut(out), nr) };
                } else {
                    debug_assert!(TypeId::of::<T>() == TypeId::of::<f64>());
                    // SAFETY: as above, with T = f64 (Float is f32 or f64) and 8 columns.
                    unsafe { avx2::transpose_f64(cast(src), b, len, cast_mut(out), nr) };
                }
            }
            return;
        }
    }
    transpose_scalar((nr, nr), src, bases, 0, len, out);
}

/// `transpose_runs` for kk in from..len, element by element: `width` columns of rows `ld`
/// apart.
pub(super) fn transpose_scalar<T: Float>(
    (width, ld): (usize, usize),
    src: &[T],
    bases: &[usize],
    from: usize,
    len: usize,
    out: &mut [T],
) {
    for kk in from..len {
        let row = &mut out[kk * ld..kk * ld + width];
        for (jj, d) in row.iter_mut().enumerate() {
            *d = bases.get(jj).map_or(T::zero(), |&b| src[b + kk]);
        }
    }
}
