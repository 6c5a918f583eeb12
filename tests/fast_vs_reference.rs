//! Property tests: every fast kernel against its reference, over random shapes and parameters
//! (edge cases included: extents of 1, windows as large as the padded input, overlapping
//! pooling, groups, dilation, asymmetric strides and padding).
//!
//! Bounds and why:
//! - convolution: each output is a dot product of K terms, computed by the reference in f64 and
//!   by the fast kernel in T with a different order. The classic bound
//!   |fast - exact| <= gamma_K * sum|terms| gives, per element,
//!   |fast - ref| <= 4 (K + 2) u_T * S, with S the same convolution run on |x|, |w|, |b|
//!   (for dx/dw/db: the backward run on |dout| with |x|, |w|). u_T = 2^-24 (f32) or 2^-53 (f64):
//!   about 1e-13 of S in f64, 1e-4 of S in f32 for K ~ 100.
//! - Winograd F(2x2, 3x3) and F(4x4, 3x3) do not meet that bound: their transforms form
//!   products of input and weight values that the direct sum never forms (1-D F(2, 3): y0 =
//!   (d0-d2)g0 + (d1+d2)(g0+g1+g2)/2 + ...), so cancellation inside a tile is not bounded by S.
//!   The classic bound of any sum-of-products evaluation holds instead: |fast - exact| <=
//!   gamma_d * (the same algorithm run on absolute values), d the rounding depth along any path
//!   (the input transform's few additions, the rounding of U, the product, the sum over
//!   channels, the output transform's additions: at most cin + 4 (m + 2) here). So the Winograd
//!   rows use 4 (K + 4 (m + 2) + 2) u with the scale S_W = |A^T| (sum over channels of
//!   (|G| |g| |G^T|) . (|B^T| |d| |B|)) |A| (+ |b|) per tile, d the padded input patch, and for
//!   dw S_W = |G^T| (sum over tiles of (|A| |dY| |A^T|) . (|B^T| |d| |B|)) |G|.
//!   `winograd_scales` computes them from the published matrices (Lavin & Gray, 2015).
//! - max pooling: the same comparisons in the same order, so fast == reference bit for bit.
//! - normalisation: both accumulate in f64 and round once to T at the end, so they differ by at
//!   most a couple of ulps of T: `max|a - b| / max|b| <= 1e-6` (f32), `1e-12` (f64).

#![allow(clippy::needless_range_loop, clippy::identity_op)]

mod common;

use common::*;
use fastlayers::Rng;
use fastlayers::*;
use proptest::prelude::*;

/// A property's case count: `n`, or `FASTLAYERS_PROPTEST_CASES` when set (scripts/memcheck
/// runs a few cases under valgrind, where each costs ~50 times as much).
fn cases(n: u32) -> u32 {
    std::env::var("FASTLAYERS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

fn abs<T: Float>(t: &Tensor<T>) -> Tensor<T> {
    t.map(|v| v.abs())
}

#[track_caller]
fn assert_bounded<T: Float>(
    what: &str,
    fast: &Tensor<T>,
    reference: &Tensor<T>,
    scale: &Tensor<T>,
    k: usize,
) {
    assert_eq!(fast.shape(), reference.shape(), "{what}: shape");
    let tol = 4.0 * (k as f64 + 2.0) * T::UNIT_ROUNDOFF;
    for i in 0..fast.len() {
        let (a, b, s) = (
            fast.data()[i].to_f(),
            reference.data()[i].to_f(),
            scale.data()[i].to_f(),
        );
        assert!(
            (a - b).abs() <= tol * s + 1e-300,
            "{what}[{i}]: fast {a} ref {b} scale {s} tol {tol:e}"
        );
    }
}

#[derive(Debug, Clone)]
struct ConvCase {
    xs: [usize; 4],
    ws: [usize; 4],
    p: ConvParam,
    seed: u64,
}

/// Per-dimension pairs of a convolution's extents and parameters: ((n, groups), (channels per
/// group, filters per group), input (h, w), kernel, stride, pad, dilation), and a seed.
type Dims = (
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
    (usize, usize),
);

/// The case for `dims` when its windows fit.
fn make_case((ng, cf, hw, k, st, pd, dl): Dims, seed: u64) -> Option<ConvCase> {
    let p = ConvParam::new(1, 0)
        .with_stride(st.0, st.1)
        .with_pad(pd.0, pd.1)
        .with_dilation(dl.0, dl.1)
        .with_groups(ng.1);
    let xs = [ng.0, ng.1 * cf.0, hw.0, hw.1];
    let ws = [ng.1 * cf.1, cf.0, k.0, k.1];
    ConvPlan::<f64>::new(&xs, &ws, &p)
        .ok()
        .map(|_| ConvCase { xs, ws, p, seed })
}

fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (
            (1usize..=3, 1usize..=3),
            // Channels per group up to 8 (K = C/G*KH*KW up to 128); filters per group up to 6,
            // so 5 takes the 5-row panels of the packed weights and 6 the default ones.
            (1usize..=8, 1usize..=6),
            (1usize..=9, 1usize..=9),
            (1usize..=4, 1usize..=4),
            (1usize..=3, 1usize..=3),
            (0usize..=2, 0usize..=2),
            (1usize..=2, 1usize..=2),
        ),
        any::<u64>(),
    )
        .prop_filter_map("window must fit", |(d, seed)| make_case(d, seed))
}

/// Rows wide enough for the direct (implicit-GEMM) convolution at the AVX2 level (it takes
/// output rows that fill 16-pixel f32 / 8-pixel f64 tiles), at strides 1-3 and dilations 1-2,
/// with enough channels per group (16+) for its stride-1 data gradient too; padding up to 3 also
/// exceeds the kernel, where dx falls back to im2col.
fn direct_case() -> impl Strategy<Value = ConvCase> {
    (
        (
            (1usize..=2, 1usize..=2),
            (prop_oneof![1usize..=4, 15usize..=20], 1usize..=7),
            (1usize..=7, 1usize..=40),
            (1usize..=4, 1usize..=4),
            prop_oneof![3 => Just((1usize, 1usize)), 1 => (1usize..=3, 1usize..=3)],
            (0usize..=3, 0usize..=3),
            prop_oneof![3 => Just((1usize, 1usize)), 1 => (1usize..=2, 1usize..=2)],
        ),
        any::<u64>(),
    )
        .prop_filter_map("window must fit", |(d, seed)| make_case(d, seed))
}

/// 3 x 3, stride-1 convolutions on images of `rows` x `cols`, small channel counts (the tests
/// force Winograd, which the cost model would choose from 48 channels only), padding up to
/// 3 (dx runs Winograd only up to 2).
fn winograd_shapes(
    rows: std::ops::RangeInclusive<usize>,
    cols: std::ops::RangeInclusive<usize>,
) -> impl Strategy<Value = ConvCase> {
    (
        (
            (
                1usize..=2,
                prop_oneof![3 => Just(1usize), 1 => Just(2usize)],
            ),
            (1usize..=12, 1usize..=12),
            (rows, cols),
            Just((3usize, 3usize)),
            Just((1usize, 1usize)),
            (0usize..=3, 0usize..=3),
            Just((1usize, 1usize)),
        ),
        any::<u64>(),
    )
        .prop_filter_map("window must fit", |(d, seed)| make_case(d, seed))
}

/// Outputs of at least 12 x 12 (36 tiles of 2 x 2, more than a tile panel's 32 at the widest
/// level; odd extents leave partial tiles), for F(2x2, 3x3).
fn winograd_case() -> impl Strategy<Value = ConvCase> {
    winograd_shapes(14..=19, 14..=25)
}

/// Outputs of at least 22 x 22 (36 tiles of 4 x 4, more than a tile panel at the widest level),
/// for F(4x4, 3x3).
fn winograd4_case() -> impl Strategy<Value = ConvCase> {
    winograd_shapes(24..=30, 24..=34)
}

const DIRECTIONS: [ConvDirection; 3] = [
    ConvDirection::Forward,
    ConvDirection::DataGrad,
    ConvDirection::WeightGrad,
];
const ALGORITHMS: [ConvAlgorithm; 4] = [
    ConvAlgorithm::Im2col,
    ConvAlgorithm::Direct,
    ConvAlgorithm::Winograd,
    ConvAlgorithm::Winograd4x4,
];

/// The output tile side of a Winograd algorithm.
fn wino_tile(alg: ConvAlgorithm) -> Option<usize> {
    match alg {
        ConvAlgorithm::Winograd => Some(2),
        ConvAlgorithm::Winograd4x4 => Some(4),
        _ => None,
    }
}

/// Whether this CPU has the explicit GEMM kernels the Direct and Winograd algorithms need.
fn explicit_kernels() -> bool {
    fastlayers::cpu::simd_level() >= fastlayers::cpu::SimdLevel::Avx2
}

/// The case's convolution through a `ConvPlan` with every algorithm each direction can run (each
/// forced in turn, the other directions at the cost model's choice), each against the reference
/// within the bound above. Every (direction, algorithm) of `required` must be among those that
/// ran, where the CPU has the explicit kernels: a test aimed at a path fails if it misses it.
/// Returns what ran.
fn check_conv<T: Float>(
    c: &ConvCase,
    required: &[(ConvDirection, ConvAlgorithm)],
) -> Vec<(ConvDirection, ConvAlgorithm)> {
    let mut rng = Rng::new(c.seed);
    let x: Tensor<T> = rng.randn(&c.xs, 1.0, 0.0);
    let w: Tensor<T> = rng.randn(&c.ws, 1.0, 0.0);
    let b: Tensor<T> = rng.randn(&[c.ws[0]], 1.0, 0.0);
    let (out_r, cache_r) = conv_forward_naive(&x, &w, &b, &c.p).unwrap();
    let (scale, cache_abs) = conv_forward_naive(&abs(&x), &abs(&w), &abs(&b), &c.p).unwrap();
    let k = c.ws[1] * c.ws[2] * c.ws[3];
    let dout: Tensor<T> = rng.randn(out_r.shape(), 1.0, 0.0);
    let (dx_r, dw_r, db_r) = conv_backward_naive(&dout, &cache_r).unwrap();
    let (sx, sw, sb) = conv_backward_naive(&abs(&dout), &cache_abs).unwrap();
    let (n, f, ho, wo) = (
        out_r.shape()[0],
        out_r.shape()[1],
        out_r.shape()[2],
        out_r.shape()[3],
    );
    let plan = ConvPlan::<T>::new(&c.xs, &c.ws, &c.p).unwrap();
    let par = Parallelism::Current;
    let mut ran = vec![];
    // Winograd scales (forward, dx, dw) per tile side, computed on first use.
    let wino: [std::cell::OnceCell<Scales<T>>; 2] = Default::default();
    let wscales = |m: usize| wino[m / 4].get_or_init(|| winograd_scales(c, &x, &w, &b, &dout, m));
    // The rounding depth of a Winograd row: K plus the transforms' (see the module doc).
    let depth = |alg: ConvAlgorithm, kd: usize| kd + wino_tile(alg).map_or(0, |m| 4 * (m + 2));
    for dir in DIRECTIONS {
        for alg in ALGORITHMS {
            let Ok(p) = plan.with_algorithm(dir, alg) else {
                continue;
            };
            assert_eq!(p.algorithm(dir), alg, "{p:?}");
            ran.push((dir, alg));
            let what = format!("{dir:?} {alg:?}");
            let mut ws = vec![T::nan(); p.workspace_len(par).unwrap()];
            if dir == ConvDirection::Forward {
                let mut out = Tensor::full(out_r.shape(), T::nan()).unwrap();
                p.forward_into(&x, &w, &b, &mut out, &mut ws, par).unwrap();
                let s = match wino_tile(alg) {
                    Some(m) => &wscales(m).0,
                    None => &scale,
                };
                assert_bounded(&format!("{what} out"), &out, &out_r, s, depth(alg, k));
                continue;
            }
            let mut dx = Tensor::full(&c.xs, T::nan()).unwrap();
            let mut dw = Tensor::full(&c.ws, T::nan()).unwrap();
            let mut db = Tensor::full(&[c.ws[0]], T::nan()).unwrap();
            p.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
                .unwrap();
            // Each Winograd direction against its own scale (see the module doc).
            let (ax, aw) = (
                p.algorithm(ConvDirection::DataGrad),
                p.algorithm(ConvDirection::WeightGrad),
            );
            let sx = wino_tile(ax).map_or(&sx, |m| &wscales(m).1);
            let sw = wino_tile(aw).map_or(&sw, |m| &wscales(m).2);
            let (kx, kw) = (f * c.ws[2] * c.ws[3], n * ho * wo);
            assert_bounded(&format!("{what} dx"), &dx, &dx_r, sx, depth(ax, kx));
            assert_bounded(&format!("{what} dw"), &dw, &dw_r, sw, depth(aw, kw));
            assert_bounded(&format!("{what} db"), &db, &db_r, &sb, kw);
        }
    }
    if explicit_kernels() {
        for r in required {
            assert!(ran.contains(r), "{r:?} did not run for {c:?}: {plan:?}");
        }
    }
    ran
}

/// A small matrix as rows.
type Matrix = Vec<Vec<f64>>;

/// The error scales of (out, dx, dw).
type Scales<T> = (Tensor<T>, Tensor<T>, Tensor<T>);

/// B^T, G and A^T of F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray, 2015), as rows.
fn wino_matrices(m: usize) -> (Matrix, Matrix, Matrix) {
    let v = |rows: &[&[f64]]| rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>();
    if m == 2 {
        (
            v(&[
                &[1., 0., -1., 0.],
                &[0., 1., 1., 0.],
                &[0., -1., 1., 0.],
                &[0., 1., 0., -1.],
            ]),
            v(&[
                &[1., 0., 0.],
                &[0.5, 0.5, 0.5],
                &[0.5, -0.5, 0.5],
                &[0., 0., 1.],
            ]),
            v(&[&[1., 1., 1., 0.], &[0., 1., -1., -1.]]),
        )
    } else {
        let (s, t, f) = (1. / 6., 1. / 12., 1. / 24.);
        (
            v(&[
                &[4., 0., -5., 0., 1., 0.],
                &[0., -4., -4., 1., 1., 0.],
                &[0., 4., -4., -1., 1., 0.],
                &[0., -2., -1., 2., 1., 0.],
                &[0., 2., -1., -2., 1., 0.],
                &[0., 4., 0., -5., 0., 1.],
            ]),
            v(&[
                &[0.25, 0., 0.],
                &[-s, -s, -s],
                &[-s, s, -s],
                &[f, t, s],
                &[f, -t, s],
                &[0., 0., 1.],
            ]),
            v(&[
                &[1., 1., 1., 1., 1., 0.],
                &[0., 1., -1., 2., -2., 0.],
                &[0., 1., 1., 4., 4., 0.],
                &[0., 1., -1., 8., -8., 1.],
            ]),
        )
    }
}

/// |L| X |R|^T for row-major matrices (L: p x q, X: q x r, R: s x r): p x s.
fn abs_sandwich(l: &[Vec<f64>], x: &[Vec<f64>], r: &[Vec<f64>]) -> Matrix {
    let lx: Vec<Vec<f64>> = l
        .iter()
        .map(|lr| {
            (0..x[0].len())
                .map(|j| lr.iter().zip(x).map(|(a, xr)| a.abs() * xr[j]).sum())
                .collect()
        })
        .collect();
    lx.iter()
        .map(|row| {
            r.iter()
                .map(|rr| row.iter().zip(rr).map(|(a, b)| a * b.abs()).sum())
                .collect()
        })
        .collect()
}

/// The Winograd scales S_W (see the module doc) of the forward, dx and dw of a 3 x 3, stride-1,
/// undilated convolution run as F(m x m, 3 x 3): the algorithm evaluated on absolute values.
fn winograd_scales<T: Float>(
    c: &ConvCase,
    x: &Tensor<T>,
    w: &Tensor<T>,
    b: &Tensor<T>,
    dout: &Tensor<T>,
    m: usize,
) -> Scales<T> {
    let [n, ch, h, wd] = c.xs;
    let [f, cg, _, _] = c.ws;
    let (g, (ph, pw)) = (c.p.groups, c.p.pad);
    let fg = f / g;
    let (ho, wo) = (h + 2 * ph - 2, wd + 2 * pw - 2);
    let al = m + 2;
    let (bt, gm, at) = wino_matrices(m);
    // A = (A^T)^T as rows, for dY's transform.
    let a_rows: Vec<Vec<f64>> = (0..al).map(|i| at.iter().map(|r| r[i]).collect()).collect();
    let gt_rows: Vec<Vec<f64>> = (0..3).map(|i| gm.iter().map(|r| r[i]).collect()).collect();
    let abs = |t: &Tensor<T>, i: usize| t.data()[i].to_f().abs();
    // The al x al patch of |t| (plane `base` of hh x ww) from (r0, c0); outside reads 0.
    let patch = |t: &Tensor<T>,
                 base: usize,
                 (hh, ww): (usize, usize),
                 (r0, c0): (isize, isize),
                 side: usize| {
        (0..side as isize)
            .map(|r| {
                (0..side as isize)
                    .map(|q| {
                        let (y, xx) = (r0 + r, c0 + q);
                        if y >= 0 && xx >= 0 && (y as usize) < hh && (xx as usize) < ww {
                            abs(t, base + y as usize * ww + xx as usize)
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f64>>()
            })
            .collect::<Vec<_>>()
    };
    // |G| |k| |G^T| for a 3 x 3 kernel given as 9 absolute values (row-major).
    let u_abs = |k: [f64; 9]| {
        let kk: Vec<Vec<f64>> = (0..3).map(|r| k[3 * r..3 * r + 3].to_vec()).collect();
        abs_sandwich(&gm, &kk, &gm)
    };
    let kern = |fi: usize, cl: usize, flip: bool| -> [f64; 9] {
        std::array::from_fn(|t| abs(w, (fi * cg + cl) * 9 + if flip { 8 - t } else { t }))
    };
    let (th, tw) = (ho.div_ceil(m), wo.div_ceil(m));
    // Forward: per image, output plane and tile.
    let mut sf = vec![0.0; n * f * ho * wo];
    for ni in 0..n {
        for fi in 0..f {
            for ty in 0..th {
                for tx in 0..tw {
                    let mut acc = vec![vec![0.0; al]; al];
                    for cl in 0..cg {
                        let ci = fi / fg * cg + cl;
                        let d = patch(
                            x,
                            (ni * ch + ci) * h * wd,
                            (h, wd),
                            (
                                (m * ty) as isize - ph as isize,
                                (m * tx) as isize - pw as isize,
                            ),
                            al,
                        );
                        let v = abs_sandwich(&bt, &d, &bt);
                        let u = u_abs(kern(fi, cl, false));
                        for i in 0..al {
                            for j in 0..al {
                                acc[i][j] += u[i][j] * v[i][j];
                            }
                        }
                    }
                    let y = abs_sandwich(&at, &acc, &at);
                    for (r, yr) in y.iter().enumerate() {
                        for (q, yv) in yr.iter().enumerate() {
                            let (oh, ow) = (m * ty + r, m * tx + q);
                            if oh < ho && ow < wo {
                                sf[((ni * f + fi) * ho + oh) * wo + ow] = yv + abs(b, fi);
                            }
                        }
                    }
                }
            }
        }
    }
    // dx: the correlation of dout padded by 2 - pad with the flipped weights.
    let mut sx = vec![0.0; n * ch * h * wd];
    let (dth, dtw) = (h.div_ceil(m), wd.div_ceil(m));
    for ni in 0..n {
        for ci in 0..ch {
            let (grp, cl) = (ci / cg, ci % cg);
            for ty in 0..dth {
                for tx in 0..dtw {
                    let mut acc = vec![vec![0.0; al]; al];
                    for fi in grp * fg..(grp + 1) * fg {
                        let d = patch(
                            dout,
                            (ni * f + fi) * ho * wo,
                            (ho, wo),
                            (
                                (m * ty) as isize - (2 - ph as isize),
                                (m * tx) as isize - (2 - pw as isize),
                            ),
                            al,
                        );
                        let v = abs_sandwich(&bt, &d, &bt);
                        let u = u_abs(kern(fi, cl, true));
                        for i in 0..al {
                            for j in 0..al {
                                acc[i][j] += u[i][j] * v[i][j];
                            }
                        }
                    }
                    let y = abs_sandwich(&at, &acc, &at);
                    for (r, yr) in y.iter().enumerate() {
                        for (q, yv) in yr.iter().enumerate() {
                            let (yy, xx) = (m * ty + r, m * tx + q);
                            if yy < h && xx < wd {
                                sx[((ni * ch + ci) * h + yy) * wd + xx] = *yv;
                            }
                        }
                    }
                }
            }
        }
    }
    // dw: dU = sum over tiles of (|A| |dY| |A^T|) . (|B^T| |d| |B|), then |G^T| dU |G|.
    let mut sw = vec![0.0; f * cg * 9];
    for fi in 0..f {
        for cl in 0..cg {
            let ci = fi / fg * cg + cl;
            let mut du = vec![vec![0.0; al]; al];
            for ni in 0..n {
                for ty in 0..th {
                    for tx in 0..tw {
                        let dy = patch(
                            dout,
                            (ni * f + fi) * ho * wo,
                            (ho, wo),
                            ((m * ty) as isize, (m * tx) as isize),
                            m,
                        );
                        let wt = abs_sandwich(&a_rows, &dy, &a_rows);
                        let d = patch(
                            x,
                            (ni * ch + ci) * h * wd,
                            (h, wd),
                            (
                                (m * ty) as isize - ph as isize,
                                (m * tx) as isize - pw as isize,
                            ),
                            al,
                        );
                        let v = abs_sandwich(&bt, &d, &bt);
                        for i in 0..al {
                            for j in 0..al {
                                du[i][j] += wt[i][j] * v[i][j];
                            }
                        }
                    }
                }
            }
            let k = abs_sandwich(&gt_rows, &du, &gt_rows);
            for r in 0..3 {
                for q in 0..3 {
                    sw[(fi * cg + cl) * 9 + 3 * r + q] = k[r][q];
                }
            }
        }
    }
    let t = |v: Vec<f64>, shape: &[usize]| Tensor::from_f64(&Tensor::new(v, shape).unwrap());
    (t(sf, &[n, f, ho, wo]), t(sx, &c.xs), t(sw, &c.ws))
}

/// What a direct-case convolution must run: the forward and dw direct always, dx direct where
/// it applies (stride 1, undilated, padding below the kernel), by the rule stated in
/// `ConvAlgorithm::Direct`'s documentation, not by asking the library.
fn direct_required(c: &ConvCase) -> Vec<(ConvDirection, ConvAlgorithm)> {
    let mut r = vec![
        (ConvDirection::Forward, ConvAlgorithm::Direct),
        (ConvDirection::WeightGrad, ConvAlgorithm::Direct),
    ];
    if c.p.stride == (1, 1) && c.p.dilation == (1, 1) && c.p.pad.0 < c.ws[2] && c.p.pad.1 < c.ws[3]
    {
        r.push((ConvDirection::DataGrad, ConvAlgorithm::Direct));
    }
    r
}

/// What a Winograd-case convolution must run with `alg`: every direction, dx where the padding
/// is at most 2.
fn winograd_required(c: &ConvCase, alg: ConvAlgorithm) -> Vec<(ConvDirection, ConvAlgorithm)> {
    let mut r = vec![
        (ConvDirection::Forward, alg),
        (ConvDirection::WeightGrad, alg),
    ];
    if c.p.pad.0 <= 2 && c.p.pad.1 <= 2 {
        r.push((ConvDirection::DataGrad, alg));
    }
    r
}

/// im2col runs every direction of every shape.
const IM2COL: [(ConvDirection, ConvAlgorithm); 3] = [
    (ConvDirection::Forward, ConvAlgorithm::Im2col),
    (ConvDirection::DataGrad, ConvAlgorithm::Im2col),
    (ConvDirection::WeightGrad, ConvAlgorithm::Im2col),
];

/// Contractions longer than one KC block (256 at AVX2): the forward's bias row then lands in a
/// later block than the first, whose store the others add to; with 10 and 7 filters (5-row and
/// 6-row panels) and with groups.
#[test]
fn conv_fast_matches_reference_across_kc_blocks() {
    let cases = [
        ([2, 32, 7, 6], [10, 32, 3, 3], ConvParam::new(1, 1)),
        ([2, 60, 5, 5], [7, 60, 3, 3], ConvParam::new(2, 1)),
        (
            [1, 64, 5, 5],
            [10, 32, 3, 3],
            ConvParam::new(1, 1).with_groups(2),
        ),
    ];
    for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
        let c = ConvCase {
            xs,
            ws,
            p,
            seed: 40 + i as u64,
        };
        check_conv::<f64>(&c, &IM2COL);
        check_conv::<f32>(&c, &IM2COL);
    }
}

/// Rows longer than the stack rows of the stride-2 helpers (the padded copy's 1024-element row,
/// col2im's 512-element phases), which then take the general strided code; and a long stride-1
/// row through the direct forward and dx.
#[test]
fn conv_fast_matches_reference_on_wide_rows() {
    let cases = [
        ([1, 2, 2, 1100], [3, 2, 3, 3], ConvParam::new(2, 1)),
        ([1, 2, 3, 1030], [2, 2, 3, 3], ConvParam::new(2, 2)),
        ([1, 16, 2, 700], [2, 16, 3, 3], ConvParam::new(1, 1)),
    ];
    for (i, (xs, ws, p)) in cases.into_iter().enumerate() {
        let c = ConvCase {
            xs,
            ws,
            p,
            seed: 60 + i as u64,
        };
        let want: &[_] = if i == 2 {
            &direct_required(&c)
        } else {
            &IM2COL
        };
        check_conv::<f64>(&c, want);
        check_conv::<f32>(&c, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn conv_fast_matches_reference_f64(c in conv_case()) { check_conv::<f64>(&c, &IM2COL); }

    #[test]
    fn conv_fast_matches_reference_f32(c in conv_case()) { check_conv::<f32>(&c, &IM2COL); }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), ..ProptestConfig::default() })]

    #[test]
    fn conv_winograd_matches_reference(c in winograd_case()) {
        check_conv::<f64>(&c, &winograd_required(&c, ConvAlgorithm::Winograd));
        check_conv::<f32>(&c, &winograd_required(&c, ConvAlgorithm::Winograd));
    }

    #[test]
    fn conv_winograd4_matches_reference(c in winograd4_case()) {
        check_conv::<f64>(&c, &winograd_required(&c, ConvAlgorithm::Winograd4x4));
        check_conv::<f32>(&c, &winograd_required(&c, ConvAlgorithm::Winograd4x4));
    }

    #[test]
    fn conv_direct_matches_reference(c in direct_case()) {
        check_conv::<f64>(&c, &direct_required(&c));
        check_conv::<f32>(&c, &direct_required(&c));
    }
}

#[derive(Debug, Clone)]
struct PoolCase {
    xs: [usize; 4],
    p: PoolParam,
    seed: u64,
    ties: bool,
}

fn pool_case() -> impl Strategy<Value = PoolCase> {
    (
        (1usize..=2, 1usize..=3, 1usize..=10, 1usize..=10),
        (1usize..=4, 1usize..=4),
        (1usize..=3, 1usize..=3),
        (0usize..=2, 0usize..=2),
        any::<bool>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_filter_map(
            "window must fit",
            |((n, c, h, w), (ph, pw), (sh, sw), (pdh, pdw), ceil, seed, ties)| {
                let p = PoolParam::new(ph, pw, 1)
                    .with_stride(sh, sw)
                    .with_pad(pdh, pdw)
                    .with_ceil_mode(ceil);
                let xs = [n, c, h, w];
                PoolPlan::<f64>::new(&xs, &p)
                    .ok()
                    .map(|_| PoolCase { xs, p, seed, ties })
            },
        )
}

fn check_pool<T: Float>(c: &PoolCase) {
    let mut rng = Rng::new(c.seed);
    let mut x: Tensor<T> = rng.randn(&c.xs, 1.0, 0.0);
    if c.ties {
        // Few distinct values (and some NaN): ties and NaN everywhere.
        for v in x.data_mut() {
            let r = rng.below(5);
            *v = if r == 4 && rng.below(4) == 0 {
                T::nan()
            } else {
                T::from_f(r as f64)
            };
        }
    }
    let (out_r, cache_r) = max_pool_forward_naive(&x, &c.p).unwrap();
    let (out_f, cache_f) = max_pool_forward_fast(&x, &c.p).unwrap();
    let same =
        |a: &Tensor<T>, b: &Tensor<T>| a.data().iter().zip(b.data()).all(|(u, v)| u.to_bits_eq(v));
    assert!(same(&out_r, &out_f), "forward differs");
    let mut dout: Tensor<T> = rng.randn(out_r.shape(), 1.0, 0.0);
    if c.ties {
        // Signed zeros (0 + -0 is +0 in the scatter) and NaN in dout too.
        for v in dout.data_mut() {
            match rng.below(8) {
                0 => *v = -T::zero(),
                1 => *v = T::nan(),
                _ => {}
            }
        }
    }
    let dx_r = max_pool_backward_naive(&dout, &cache_r).unwrap();
    let dx_f = max_pool_backward_fast(&dout, &cache_f).unwrap();
    assert!(same(&dx_r, &dx_f), "backward differs");
    // Mixed caches: each backward accepts the other forward's cache.
    assert!(same(
        &max_pool_backward_fast(&dout, &cache_r).unwrap(),
        &dx_r
    ));
    assert!(same(
        &max_pool_backward_naive(&dout, &cache_f).unwrap(),
        &dx_r
    ));
    // Every path that applies, forced through a PoolPlan: the same bits.
    let plan = PoolPlan::<T>::new(&c.xs, &c.p).unwrap();
    let n = out_r.len();
    let mut ran = vec![];
    for path in [PoolPath::TwoByTwo, PoolPath::PhaseSplit, PoolPath::Generic] {
        let Ok(p) = plan.with_path(path) else {
            continue;
        };
        assert_eq!(p.path(), path);
        ran.push(path);
        let par = Parallelism::Current;
        let (mut out, mut idx) = (
            Tensor::full(out_r.shape(), T::nan()).unwrap(),
            vec![0u32; n],
        );
        p.forward_into(&x, &mut out, &mut idx, &mut [], par)
            .unwrap();
        assert!(same(&out_r, &out), "{path:?} forward differs");
        let mut dx = Tensor::full(&c.xs, T::nan()).unwrap();
        p.backward_into(&dout, &idx, &mut dx, &mut [], par).unwrap();
        assert!(same(&dx_r, &dx), "{path:?} backward differs");
    }
    assert!(ran.contains(&PoolPath::Generic) && ran.contains(&plan.path()));
    if c.p == PoolParam::new(2, 2, 2) {
        assert!(ran.contains(&PoolPath::TwoByTwo), "{c:?}");
    }
}

trait BitsEq {
    fn to_bits_eq(&self, o: &Self) -> bool;
}
impl<T: Float> BitsEq for T {
    fn to_bits_eq(&self, o: &Self) -> bool {
        (self.is_nan() && o.is_nan()) || self.to_f().to_bits() == o.to_f().to_bits()
    }
}

/// 2x2 windows at stride 2 (the dedicated forward and one-pass backward) on planes wider than
/// its 16-window blocks, odd extents included.
fn pool_2x2_case() -> impl Strategy<Value = PoolCase> {
    (
        (1usize..=2, 1usize..=3, 2usize..=9, 2usize..=40),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|((n, c, h, w), seed, ties)| PoolCase {
            xs: [n, c, h, w],
            p: PoolParam::new(2, 2, 2),
            seed,
            ties,
        })
}

/// The 2x2 backward given indices that are inside the plane but not inside their own window
/// (a cache from another forward): it must scatter them like the reference, not write windows.
#[test]
fn pool_2x2_backward_with_foreign_indices_scatters() {
    let mut rng = Rng::new(9);
    let (xs, p) = ([2, 3, 6, 37], PoolParam::new(2, 2, 2));
    let g = *PoolPlan::<f64>::new(&xs, &p).unwrap().geom();
    let os = g.out_shape();
    let (plane, oplane) = (6 * 37, os[2] * os[3]);
    let wo = os[3];
    let dout: Tensor<f64> = rng.randn(&g.out_shape(), 1.0, 0.0);
    for bad in [0, 17, oplane - 1] {
        // Every index in its window (the forward's), except output `bad` of the second plane.
        let mut idx: Vec<u32> = (0..6 * oplane)
            .map(|o| {
                let (oh, ow) = ((o % oplane) / wo, o % wo);
                (2 * oh * 37 + 2 * ow + 37 * rng.below(2) + rng.below(2)) as u32
            })
            .collect();
        idx[oplane + bad] = rng.below(plane) as u32;
        let mut want = vec![0.0; 6 * plane];
        for (o, (&d, &i)) in dout.data().iter().zip(&idx).enumerate() {
            want[(o / oplane) * plane + i as usize] += d;
        }
        let mut dx = Tensor::full(&xs, f64::NAN).unwrap();
        let plan = PoolPlan::<f64>::new(&xs, &p).unwrap();
        assert_eq!(plan.path(), PoolPath::TwoByTwo);
        plan.backward_into(&dout, &idx, &mut dx, &mut [], Parallelism::Sequential)
            .unwrap();
        assert!(
            dx.data()
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "bad {bad}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn pool_2x2_fast_equals_reference(c in pool_2x2_case()) {
        check_pool::<f64>(&c);
        check_pool::<f32>(&c);
    }

    #[test]
    fn pool_fast_equals_reference_f64(c in pool_case()) { check_pool::<f64>(&c); }

    #[test]
    fn pool_fast_equals_reference_f32(c in pool_case()) { check_pool::<f32>(&c); }
}

#[derive(Debug, Clone)]
struct NormCase {
    kind: u8,
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    g: usize,
    train: bool,
    pytorch: bool,
    seed: u64,
}

/// Norm cases of the layer kinds `kind` (0 batch norm, 1 spatial batch norm, 2 layer norm, 3
/// group norm), up to `n` samples, `cpg` channels per group, planes of `hw.0 x hw.1`, up to `g`
/// groups.
fn norm_cases(
    kind: impl Strategy<Value = u8>,
    (n, cpg, g): (usize, usize, usize),
    hw: (
        std::ops::RangeInclusive<usize>,
        std::ops::RangeInclusive<usize>,
    ),
) -> impl Strategy<Value = NormCase> {
    (
        kind,
        1usize..=n,
        1usize..=cpg,
        hw.0,
        hw.1,
        1usize..=g,
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(kind, n, cpg, h, w, g, train, pytorch, seed)| NormCase {
            kind,
            n: n + usize::from(pytorch),
            c: cpg * g,
            h,
            w,
            g,
            train,
            pytorch,
            seed,
        })
}

fn norm_case() -> impl Strategy<Value = NormCase> {
    norm_cases(0u8..4, (5, 4, 3), (1..=6, 1..=6))
}

/// Statistic group and channel of flat element `i` of x (shape `xs`), by each layer's
/// definition.
fn group_channel(kind: NormKind, xs: &[usize], i: usize) -> (usize, usize) {
    match kind {
        NormKind::BatchNorm => (i % xs[1], i % xs[1]),
        NormKind::LayerNorm => (i / xs[1], i % xs[1]),
        NormKind::SpatialBatchNorm => {
            let c = (i / (xs[2] * xs[3])) % xs[1];
            (c, c)
        }
        NormKind::GroupNorm { groups } => {
            let hw = xs[2] * xs[3];
            let (n, c) = (i / (xs[1] * hw), (i / hw) % xs[1]);
            (n * groups + c / (xs[1] / groups), c)
        }
    }
}

type Fwd<T> = fn(
    &Tensor<T>,
    &Tensor<T>,
    &Tensor<T>,
    &NormCase,
    &mut BnParam<T>,
) -> Result<(Tensor<T>, NormCache<T>)>;

fn check_norm<T: Float>(c: &NormCase, tol: f64) {
    let mut rng = Rng::new(c.seed);
    let (xs, ch): (Vec<usize>, usize) = match c.kind {
        0 | 2 => (vec![c.n, c.c * c.h], c.c * c.h),
        _ => (vec![c.n, c.c, c.h, c.w], c.c),
    };
    let x: Tensor<T> = rng.randn(&xs, 3.0, 7.0);
    let gamma: Tensor<T> = rng.randn(&[ch], 1.0, 0.0);
    let beta: Tensor<T> = rng.randn(&[ch], 1.0, 0.0);
    let dout: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
    let mut bn = if c.pytorch {
        BnParam::pytorch(Mode::Train)
    } else {
        BnParam::train()
    };
    if !c.train {
        bn.mode = Mode::Test;
        bn.running_mean = Some((0..ch).map(|_| T::from_f(rng.normal() + 7.0)).collect());
        bn.running_var = Some(
            (0..ch)
                .map(|_| T::from_f(rng.uniform() * 9.0 + 0.5))
                .collect(),
        );
    }
    let (naive, fast): (Fwd<T>, Fwd<T>) = match c.kind {
        0 => (
            |x, g, b, _, bn| batchnorm_forward_naive(x, g, b, bn),
            |x, g, b, _, bn| batchnorm_forward(x, g, b, bn),
        ),
        1 => (
            |x, g, b, _, bn| spatial_batchnorm_forward_naive(x, g, b, bn),
            |x, g, b, _, bn| spatial_batchnorm_forward(x, g, b, bn),
        ),
        2 => (
            |x, g, b, _, _| layernorm_forward_naive(x, g, b, &NormParam::default()),
            |x, g, b, _, _| layernorm_forward(x, g, b, &NormParam::default()),
        ),
        _ => (
            |x, g, b, c, _| spatial_groupnorm_forward_naive(x, g, b, c.g, &NormParam::default()),
            |x, g, b, c, _| spatial_groupnorm_forward(x, g, b, c.g, &NormParam::default()),
        ),
    };
    let mut bn_r = bn.clone();
    let mut bn_f = bn.clone();
    let (out_r, cache_r) = naive(&x, &gamma, &beta, c, &mut bn_r).unwrap();
    let (out_f, cache_f) = fast(&x, &gamma, &beta, c, &mut bn_f).unwrap();
    // The fast kernels apply the statistics as one fused x * scale + shift (scale = gamma
    // inv_std, shift = beta - mean scale), whose rounding is relative to those two terms, not
    // to out: where the mean is large beside the spread they exceed |out| (a group of two with
    // mean 6.5, std 2.9 and gamma -1.48, beta -1.26 gives out 0.2196 from a shift of 2.0; the
    // fast f32 value is 2.5 ulps of that shift off, 1.2e-6 of |out| as a norm). The reference's
    // own mean carries ulps of |mean| into x - mean too. So each element's error is bounded by
    // tol times |gamma| inv_std (|x| + |mean|) + |beta| + |out|.
    let kind = cache_r.kind();
    for (i, (&f, &r)) in out_f.data().iter().zip(out_r.data()).enumerate() {
        let (gi, ci) = group_channel(kind, &xs, i);
        let terms = gamma.data()[ci].to_f().abs()
            * cache_r.inv_std()[gi]
            * (x.data()[i].to_f().abs() + cache_r.mean()[gi].abs())
            + beta.data()[ci].to_f().abs()
            + r.to_f().abs();
        assert!(
            (f.to_f() - r.to_f()).abs() <= tol * terms,
            "out[{i}]: {f} vs {r}, terms {terms:e}"
        );
    }
    if let (Some(a), Some(b)) = (&bn_r.running_mean, &bn_f.running_mean) {
        assert!(
            norm_error(a, b) <= tol
                && norm_error(
                    bn_r.running_var.as_ref().unwrap(),
                    bn_f.running_var.as_ref().unwrap()
                ) <= tol
        );
    }
    let bwd_r = match c.kind {
        0 => batchnorm_backward_alt_naive(&dout, &cache_r),
        1 => spatial_batchnorm_backward_naive(&dout, &cache_r),
        2 => layernorm_backward_naive(&dout, &cache_r),
        _ => spatial_groupnorm_backward_naive(&dout, &cache_r),
    }
    .unwrap();
    let bwd_f = match c.kind {
        0 => batchnorm_backward(&dout, &cache_f),
        1 => spatial_batchnorm_backward(&dout, &cache_f),
        2 => layernorm_backward(&dout, &cache_f),
        _ => spatial_groupnorm_backward(&dout, &cache_f),
    }
    .unwrap();
    // dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) can cancel almost
    // completely (layer norm over D = 2 has xhat = +-1 whatever x is), so its error is measured
    // against the size of the terms, inv_std * |gamma| * |dout|, not against dx itself.
    let amax = |v: &[T]| v.iter().map(|a| a.to_f().abs()).fold(0.0, f64::max);
    let terms = cache_r.inv_std().iter().fold(0.0, |m: f64, v| m.max(*v))
        * amax(gamma.data())
        * amax(dout.data());
    let err = bwd_f
        .0
        .data()
        .iter()
        .zip(bwd_r.0.data())
        .map(|(a, b)| (a.to_f() - b.to_f()).abs())
        .fold(0.0, f64::max);
    assert!(
        err <= tol * (terms + amax(bwd_r.0.data())),
        "dx: error {err:e} vs terms {terms:e}"
    );
    // dgamma[c] = sum dout * xhat and dbeta[c] = sum dout can cancel too; a summation's error is
    // bounded relative to the sum of the absolute terms. And xhat itself carries an absolute error
    // of a few ulps of T (the mean is accurate to a few ulps of the data's spread), which matters
    // for elements next to the mean (tiny xhat): hence |xhat| + 1 per term.
    let (mut s_g, mut s_b) = (vec![0.0f64; ch], vec![0.0f64; ch]);
    for (i, (&d, &v)) in dout.data().iter().zip(x.data()).enumerate() {
        let (gi, c) = group_channel(kind, &xs, i);
        let xhat = (v.to_f() - cache_r.mean()[gi]) * cache_r.inv_std()[gi];
        s_g[c] += d.to_f().abs() * (xhat.abs() + 1.0);
        s_b[c] += d.to_f().abs();
    }
    for c in 0..ch {
        let (gf, gr) = (bwd_f.1.data()[c].to_f(), bwd_r.1.data()[c].to_f());
        let (bf, br) = (bwd_f.2.data()[c].to_f(), bwd_r.2.data()[c].to_f());
        assert!(
            (gf - gr).abs() <= tol * (s_g[c] + gr.abs()),
            "dgamma[{c}]: {gf} vs {gr}, terms {}",
            s_g[c]
        );
        assert!(
            (bf - br).abs() <= tol * (s_b[c] + br.abs()),
            "dbeta[{c}]: {bf} vs {br}, terms {}",
            s_b[c]
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn norms_fast_match_reference_f64(c in norm_case()) { check_norm::<f64>(&c, 1e-12); }

    #[test]
    fn norms_fast_match_reference_f32(c in norm_case()) { check_norm::<f32>(&c, 1e-6); }
}

/// Spatial batch norm and group norm with planes of 64-144 elements: the channel layouts' first
/// pass runs sample-major from 64 on (`norm_case`'s planes are at most 36).
fn norm_large_plane_case() -> impl Strategy<Value = NormCase> {
    norm_cases(
        prop_oneof![Just(1u8), Just(3u8)],
        (4, 3, 2),
        (8..=12, 8..=12),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(32), ..ProptestConfig::default() })]

    #[test]
    fn norms_on_large_planes_match_reference(c in norm_large_plane_case()) {
        check_norm::<f64>(&c, 1e-12);
        check_norm::<f32>(&c, 1e-6);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn affine_fast_matches_reference(n in 1usize..6, d1 in 1usize..5, d2 in 1usize..5, m in 1usize..7, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x: Tensor<f64> = rng.randn(&[n, d1, d2], 1.0, 0.0);
        let w: Tensor<f64> = rng.randn(&[d1 * d2, m], 1.0, 0.0);
        let b: Tensor<f64> = rng.randn(&[m], 1.0, 0.0);
        let (o_r, c_r) = affine_forward_naive(&x, &w, &b).unwrap();
        let (o_f, c_f) = affine_forward(&x, &w, &b).unwrap();
        let (s, c_abs) = affine_forward_naive(&abs(&x), &abs(&w), &abs(&b)).unwrap();
        assert_bounded("affine out", &o_f, &o_r, &s, d1 * d2);
        let dout: Tensor<f64> = rng.randn(&[n, m], 1.0, 0.0);
        let (gr, gf) = (affine_backward_naive(&dout, &c_r).unwrap(), affine_backward(&dout, &c_f).unwrap());
        let sa = affine_backward_naive(&abs(&dout), &c_abs).unwrap();
        assert_bounded("affine dx", &gf.0, &gr.0, &sa.0, m);
        assert_bounded("affine dw", &gf.1, &gr.1, &sa.1, n);
        assert_bounded("affine db", &gf.2, &gr.2, &sa.2, n);
    }
}
