//! The packed GEMM against a naive product at every level the CPU has.

use super::*;
use crate::cpu::{detected_simd_level as detected, force_simd_level as force_level};

fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] += (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum::<f64>();
        }
    }
}

/// C0 + A B through `gemm_packed_a` in T, with B given row-major and column-major, against
/// the f64 result `want` to within `tol`.
#[allow(clippy::too_many_arguments)]
fn run<T: Float>(
    lv: Level,
    mr: Option<usize>,
    (m, n, k): (usize, usize, usize),
    a: &[f64],
    b: &[f64],
    c0: &[f64],
    want: &[f64],
    tol: f64,
) {
    let t = |v: &[f64]| -> Vec<T> { v.iter().map(|&x| T::from_f(x)).collect() };
    let (a, b) = (t(a), t(b));
    let bt: Vec<T> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
    let s = shape::<T>();
    assert_eq!(s.level(), lv);
    let s = Shape {
        mr: mr.unwrap_or(s.mr),
        ..s
    };
    let mut ap = vec![T::nan(); packed_a_len(s, m, k)];
    pack_a(s, m, k, &a, k, 1, &mut ap);
    let mut bb = vec![T::nan(); packed_b_len(s, k, n)];
    // C0 + AB with B in either layout, then AB alone written over a NaN-filled C (overwrite
    // must never read C).
    let ab: Vec<f64> = want.iter().zip(c0).map(|(w, c)| w - c).collect();
    for (what, src, overwrite) in [
        ("rows", BSrc::Rows { data: &b, ld: n }, false),
        ("cols", BSrc::Cols { data: &bt, ld: k }, false),
        ("overwrite", BSrc::Rows { data: &b, ld: n }, true),
    ] {
        let (mut c, expect) = if overwrite {
            (vec![T::nan(); m * n], &ab)
        } else {
            (t(c0), &want.to_vec())
        };
        gemm_packed_a(s, m, n, k, &ap, src, &mut c, n, &mut bb, overwrite);
        for (x, y) in c.iter().zip(expect) {
            assert!(
                (x.to_f() - y).abs() <= tol,
                "{} {lv:?} {what} {m}x{n}x{k}: {x} vs {y}",
                T::NAME
            );
        }
    }
    // Both operands packed just in time, accumulating and overwriting (over NaN).
    let mut abuf = vec![T::nan(); b_panels_abuf_len(s, m)];
    let mut bbuf = vec![T::nan(); b_panels_bbuf_len(s)];
    for overwrite in [false, true] {
        let (mut c, expect) = if overwrite {
            (vec![T::nan(); m * n], &ab)
        } else {
            (t(c0), &want.to_vec())
        };
        gemm_b_panels(
            s,
            m,
            n,
            k,
            &mut c,
            n,
            &mut abuf,
            &mut bbuf,
            overwrite,
            |k0, kc, out| pack_a(s, m, kc, &a[k0..], k, 1, out),
            |k0, kc, j0, out| {
                for kk in 0..kc {
                    for jj in 0..s.nr {
                        let j = j0 + jj;
                        out[kk * s.nr + jj] = if j < n {
                            b[(k0 + kk) * n + j]
                        } else {
                            T::zero()
                        };
                    }
                }
            },
        );
        for (x, y) in c.iter().zip(expect) {
            assert!(
                (x.to_f() - y).abs() <= tol,
                "{} {lv:?} b-panels {overwrite} {m}x{n}x{k}: {x} vs {y}",
                T::NAME
            );
        }
        // The same with A read in place (where a kernel for it exists): bitwise the packed
        // result, since each C element sums the same products in the same order. A's rows
        // are sliced to exactly m * k elements, so a read past its last row would panic in
        // the bounds assertion rather than pass unseen.
        if direct_available(s) {
            let mut c2 = if overwrite {
                vec![T::nan(); m * n]
            } else {
                t(c0)
            };
            gemm_b_panels_a_rows(
                s,
                m,
                n,
                k,
                (&a[..m * k], k),
                &mut c2,
                n,
                &mut bbuf,
                overwrite,
                |k0, kc, j0, out| {
                    for kk in 0..kc {
                        for jj in 0..s.nr {
                            let j = j0 + jj;
                            out[kk * s.nr + jj] = if j < n {
                                b[(k0 + kk) * n + j]
                            } else {
                                T::zero()
                            };
                        }
                    }
                },
            );
            let bits = |v: &[T]| v.iter().map(|x| x.to_f().to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&c2),
                bits(&c),
                "{} {lv:?} a-rows {overwrite} {m}x{n}x{k}",
                T::NAME
            );
        }
    }
}

/// Held by the tests that force SIMD levels (the level is process-wide and tests run in
/// parallel).
static LEVELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn matches_naive_at_every_level_and_edge() {
    let _levels = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
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
            (13, 17, 513),
            (25, 256, 28),
            (5, 9, 3),
        ] {
            let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
            let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
            let c0: Vec<f64> = (0..m * n).map(|_| rng.normal()).collect();
            let mut want = c0.clone();
            naive(m, n, k, &a, &b, &mut want);
            // Error bound scale: k * max|a| * max|b| (a dot product of length k).
            let scale: f64 = a.iter().map(|v| v.abs()).fold(0.0, f64::max)
                * b.iter().map(|v| v.abs()).fold(0.0, f64::max)
                * k as f64;
            let mnk = (m, n, k);
            run::<f64>(lv, None, mnk, &a, &b, &c0, &want, 1e-13 * (scale + 1.0));
            // f32: the inputs themselves are rounded to f32, hence the wider bound.
            run::<f32>(lv, None, mnk, &a, &b, &c0, &want, 1e-5 * (scale + 1.0));
            // The alternative panel height `shape_for_rows` picks at each explicit level.
            if let Some((_, alt)) = explicit_mrs(lv) {
                run::<f64>(
                    lv,
                    Some(alt),
                    mnk,
                    &a,
                    &b,
                    &c0,
                    &want,
                    1e-13 * (scale + 1.0),
                );
                run::<f32>(lv, Some(alt), mnk, &a, &b, &c0, &want, 1e-5 * (scale + 1.0));
            }
        }
    }
    force_level(detected());
}

/// The tap-panel transpose at every level, f32 and f64: full and partial panels (fewer runs
/// than NR, zero-filled), run lengths with and without a tail past the 8 x 8 / 4 x 4 blocks,
/// against the definition.
#[test]
fn transpose_runs_matches_definition() {
    fn check<T: Float>(lv: Level, rng: &mut crate::Rng) {
        let s = shape::<T>();
        assert_eq!(s.level(), lv);
        let src: Vec<T> = (0..500).map(|_| T::from_f(rng.normal())).collect();
        for (runs, len) in [
            (s.nr, 16),
            (s.nr, 13),
            (3, 16),
            (s.nr - 1, 7),
            (1, 1),
            (0, 5),
        ] {
            let bases: Vec<usize> = (0..runs).map(|_| rng.below(500 - len)).collect();
            let mut out = vec![T::nan(); len * s.nr];
            transpose_runs(s, &src, &bases, len, &mut out);
            for kk in 0..len {
                for jj in 0..s.nr {
                    let want = bases.get(jj).map_or(T::zero(), |&b| src[b + kk]);
                    let got = out[kk * s.nr + jj];
                    assert!(
                        got.to_f() == want.to_f(),
                        "{lv:?} {runs}x{len} ({kk}, {jj})"
                    );
                }
            }
        }
    }
    let _levels = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = crate::Rng::new(11);
    for lv in [Level::Portable, Level::Avx2, Level::Avx512] {
        if lv > detected() {
            continue;
        }
        force_level(lv);
        check::<f32>(lv, &mut rng);
        check::<f64>(lv, &mut rng);
    }
    force_level(detected());
}

/// `pack_a_cols` with an affine column map packs exactly what `pack_a` does.
#[test]
fn pack_a_cols_matches_pack_a() {
    let s = shape::<f64>();
    let (m, k) = (13, 300);
    let a: Vec<f64> = (0..m * k).map(|v| v as f64).collect();
    let mut want = vec![f64::NAN; packed_a_len(s, m, k)];
    pack_a(s, m, k, &a, k, 1, &mut want);
    let mut got = vec![f64::NAN; packed_a_len(s, m, k)];
    pack_a_cols(s, m, k, &a, k, |kk| kk, &mut got);
    assert_eq!(want, got);
}
