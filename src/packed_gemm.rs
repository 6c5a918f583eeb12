//! Our GEMM for the convolution: `C (m x n) += A (m x k) * B (k x n)` with A packed once per
//! call (the weights, reused by every image and tile) and B packed per column tile.
//!
//! BLIS-style loops: LOOP 3 splits k into KC blocks; LOOP 2 walks NR-wide panels of B (kept in
//! L1); LOOP 1 walks MR-tall panels of A (from L2); the micro-kernel keeps an MR x NR block of C
//! in registers for the whole KC block. The micro-kernel is plain safe Rust over fixed-size arrays,
//! instantiated per SIMD level with a register block that level holds: AVX-512 4 x 64 (f32) /
//! 4 x 32 (f64) = 16 zmm accumulators; AVX2 6 x 16 / 6 x 8 = 12 ymm; portable 4 x 8 / 4 x 4.
//! The blocks were chosen by measurement (examples/gemmbench.rs): LLVM keeps these in registers;
//! some others (14 x 32, 8 x 32, 5 x 64 on AVX-512) spill and run 3-40x slower, which is the risk
//! of compiler-vectorised micro-kernels and why the choice is pinned here.
//!
//! Packed layouts (zero-padded to whole panels):
//! - A: for each KC block, for each MR panel: `kc x MR`, element (i, kk) at `kk * MR + i`;
//! - B: for each NR panel: `kc x NR`, element (kk, j) at `kk * NR + j`.

use crate::scalar::Float;
use crate::simd::{Level, level};

/// Shape of a packed GEMM for `level` (which must be one the CPU has).
pub fn shape_for<T: Float>(level: Level) -> Shape {
    let s = shape::<T>();
    if s.level == level {
        s
    } else {
        shape_at::<T>(level)
    }
}

/// Register block and KC for one level and element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub mr: usize,
    pub nr: usize,
    pub kc: usize,
    /// The level whose kernel this shape belongs to (only ever one the CPU has).
    pub level: Level,
}

/// The block shape the current SIMD level uses for T.
pub fn shape<T: Float>() -> Shape {
    shape_at::<T>(level())
}

fn shape_at<T: Float>(level: Level) -> Shape {
    let f32 = std::mem::size_of::<T>() == 4;
    let (mr, nr, kc) = match (level, f32) {
        (Level::Avx512, true) => (4, 64, 192),
        (Level::Avx512, false) => (4, 32, 192),
        (Level::Avx2, true) => (6, 16, 256),
        (Level::Avx2, false) => (6, 8, 256),
        (Level::Portable, true) => (4, 8, 256),
        (Level::Portable, false) => (4, 4, 256),
    };
    Shape { mr, nr, kc, level }
}

/// Elements of A (m x k) packed.
pub fn packed_a_len(s: Shape, m: usize, k: usize) -> usize {
    m.next_multiple_of(s.mr) * k
}

/// Elements of one packed B block (kc x n) for `n` columns.
pub fn packed_b_len(s: Shape, n: usize) -> usize {
    s.kc * n.next_multiple_of(s.nr)
}

/// Packs A (m x k, element (i, kk) at `a[i * rsa + kk * csa]`).
#[allow(clippy::too_many_arguments)]
pub fn pack_a<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    out: &mut [T],
) {
    let panels = m.div_ceil(s.mr);
    let mut o = 0;
    for k0 in (0..k).step_by(s.kc) {
        let kc = s.kc.min(k - k0);
        for p in 0..panels {
            for kk in 0..kc {
                for i in 0..s.mr {
                    let r = p * s.mr + i;
                    out[o] = if r < m {
                        a[r * rsa + (k0 + kk) * csa]
                    } else {
                        T::zero()
                    };
                    o += 1;
                }
            }
        }
    }
}

/// Packs rows k0..k0+kc of B (k x n row-major, leading dimension ldb) into NR panels.
pub fn pack_b<T: Float>(s: Shape, kc: usize, n: usize, b: &[T], ldb: usize, out: &mut [T]) {
    let panels = n.div_ceil(s.nr);
    for p in 0..panels {
        let (j0, j1) = (p * s.nr, ((p + 1) * s.nr).min(n));
        let dst = &mut out[p * kc * s.nr..(p + 1) * kc * s.nr];
        for kk in 0..kc {
            let d = &mut dst[kk * s.nr..(kk + 1) * s.nr];
            d[..j1 - j0].copy_from_slice(&b[kk * ldb + j0..kk * ldb + j1]);
            d[j1 - j0..].fill(T::zero());
        }
    }
}

/// C[rows x cols] (leading dimension ldc) += A panel (kc x MR) * B panel (kc x NR).
#[inline(always)]
fn micro<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[T::zero(); NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        let ak: &[T; MR] = ak.try_into().expect("MR chunk");
        let bk: &[T; NR] = bk.try_into().expect("NR chunk");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = if FMA {
                    ak[i].mul_add(bk[j], acc[i][j])
                } else {
                    ak[i] * bk[j] + acc[i][j]
                };
            }
        }
    }
    for i in 0..rows {
        let crow = &mut c[i * ldc..i * ldc + cols];
        for (cv, av) in crow.iter_mut().zip(&acc[i][..cols]) {
            *cv += *av;
        }
    }
}

/// LOOP 2 and LOOP 1 for one KC block: all panels of packed B against all panels of packed A.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<T: Float, const MR: usize, const NR: usize, const FMA: bool>(
    m: usize,
    n: usize,
    kc: usize,
    ap: &[T],
    bp: &[T],
    c: &mut [T],
    ldc: usize,
) {
    for jp in 0..n.div_ceil(NR) {
        let (j0, cols) = (jp * NR, NR.min(n - jp * NR));
        let bpanel = &bp[jp * kc * NR..(jp + 1) * kc * NR];
        for ip in 0..m.div_ceil(MR) {
            let (i0, rows) = (ip * MR, MR.min(m - ip * MR));
            let apanel = &ap[ip * kc * MR..(ip + 1) * kc * MR];
            micro::<T, MR, NR, FMA>(kc, apanel, bpanel, &mut c[i0 * ldc + j0..], ldc, rows, cols);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn block_avx512<T: Float>(
    m: usize,
    n: usize,
    kc: usize,
    ap: &[T],
    bp: &[T],
    c: &mut [T],
    ldc: usize,
) {
    if std::mem::size_of::<T>() == 4 {
        block::<T, 4, 64, true>(m, n, kc, ap, bp, c, ldc)
    } else {
        block::<T, 4, 32, true>(m, n, kc, ap, bp, c, ldc)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn block_avx2<T: Float>(
    m: usize,
    n: usize,
    kc: usize,
    ap: &[T],
    bp: &[T],
    c: &mut [T],
    ldc: usize,
) {
    if std::mem::size_of::<T>() == 4 {
        block::<T, 6, 16, true>(m, n, kc, ap, bp, c, ldc)
    } else {
        block::<T, 6, 8, true>(m, n, kc, ap, bp, c, ldc)
    }
}

fn block_portable<T: Float>(
    m: usize,
    n: usize,
    kc: usize,
    ap: &[T],
    bp: &[T],
    c: &mut [T],
    ldc: usize,
) {
    if std::mem::size_of::<T>() == 4 {
        block::<T, 4, 8, false>(m, n, kc, ap, bp, c, ldc)
    } else {
        block::<T, 4, 4, false>(m, n, kc, ap, bp, c, ldc)
    }
}

/// C (m x n, leading dimension ldc) += A (packed by `pack_a` with shape `s`) * B (k x n
/// row-major, leading dimension ldb). `bbuf` holds at least `packed_b_len(s, n)` elements.
/// `s` must be `shape::<T>()` of the level in force (it is read once by the caller so a whole
/// call uses one shape).
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_a<T: Float>(
    s: Shape,
    m: usize,
    n: usize,
    k: usize,
    ap: &[T],
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    bbuf: &mut [T],
) {
    debug_assert!(ap.len() >= packed_a_len(s, m, k));
    debug_assert!(bbuf.len() >= packed_b_len(s, n));
    debug_assert!(c.len() >= (m.max(1) - 1) * ldc + n);
    let mpad = m.next_multiple_of(s.mr);
    // LOOP 3: KC blocks of k.
    for k0 in (0..k).step_by(s.kc) {
        let kc = s.kc.min(k - k0);
        pack_b(s, kc, n, &b[k0 * ldb..], ldb, bbuf);
        let ablk = &ap[k0 * mpad..k0 * mpad + kc * mpad];
        let bblk = &bbuf[..kc * n.next_multiple_of(s.nr)];
        match s.level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a Shape's level comes from level(), which reports Avx512 only when the
            // CPU has AVX-512F/VL, AVX2 and FMA.
            Level::Avx512 => unsafe { block_avx512(m, n, kc, ablk, bblk, c, ldc) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, Avx2 only when the CPU has AVX2 and FMA.
            Level::Avx2 => unsafe { block_avx2(m, n, kc, ablk, bblk, c, ldc) },
            _ => block_portable(m, n, kc, ablk, bblk, c, ldc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::{detected, force_level};

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] += (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum::<f64>();
            }
        }
    }

    #[test]
    fn matches_naive_at_every_level_and_edge() {
        let mut rng = crate::Rng::new(5);
        for lv in [Level::Portable, Level::Avx2, Level::Avx512] {
            if lv > detected() {
                continue;
            }
            force_level(lv);
            for (m, n, k) in [
                (1, 1, 1),
                (25, 256, 27),
                (64, 70, 600),
                (15, 33, 193),
                (14, 32, 192),
                (3, 5, 400),
            ] {
                let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
                let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
                let c0: Vec<f64> = (0..m * n).map(|_| rng.normal()).collect();
                let mut want = c0.clone();
                naive(m, n, k, &a, &b, &mut want);
                let s = shape::<f64>();
                assert_eq!(s.level, lv);
                let mut ap = vec![f64::NAN; packed_a_len(s, m, k)];
                pack_a(s, m, k, &a, k, 1, &mut ap);
                let mut bb = vec![f64::NAN; packed_b_len(s, n)];
                let mut c = c0.clone();
                gemm_packed_a(s, m, n, k, &ap, &b, n, &mut c, n, &mut bb);
                let scale: f64 = a.iter().map(|v| v.abs()).fold(0.0, f64::max)
                    * b.iter().map(|v| v.abs()).fold(0.0, f64::max)
                    * k as f64;
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (x - y).abs() <= 1e-13 * (scale + 1.0),
                        "{lv:?} {m}x{n}x{k}: {x} vs {y}"
                    );
                }
                // f32 too.
                let a32: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
                let s = shape::<f32>();
                let mut ap = vec![f32::NAN; packed_a_len(s, m, k)];
                pack_a(s, m, k, &a32, k, 1, &mut ap);
                let mut bb = vec![f32::NAN; packed_b_len(s, n)];
                let mut c: Vec<f32> = c0.iter().map(|&v| v as f32).collect();
                gemm_packed_a(s, m, n, k, &ap, &b32, n, &mut c, n, &mut bb);
                for (x, y) in c.iter().zip(&want) {
                    assert!(
                        (*x as f64 - y).abs() <= 1e-5 * (scale + 1.0),
                        "f32 {lv:?} {m}x{n}x{k}"
                    );
                }
            }
        }
        force_level(detected());
    }
}
