//! The fast forward: im2col + packed GEMM, the direct (implicit-GEMM) convolution, Winograd.

use super::ConvAlgorithm;
use super::im2col::*;
use super::plan::Algos;
use super::plan::*;
use super::winograd::{self, Wino};
use crate::gemm::{self as pg, Shape};
use crate::parallel::{Parallelism, Slots};
use crate::params::ConvGeom;
use crate::scalar::Float;
use crate::tuning::*;

/// Output rows per row block of the direct convolution: the block's C (F/G x rows x WO) stays
/// in L1/L2 across the KC blocks that add into it.
pub(super) fn direct_rows(m: usize, ho: usize, wo: usize) -> usize {
    let most = (direct_c_elems() / (m * wo).max(1)).clamp(1, ho.max(1));
    ho.div_ceil(ho.div_ceil(most).max(1)).max(1)
}

/// One direct convolution: `c` (m rows of ho x wo pixels, row stride ldc) = bias + A * B, A
/// packed (m x K, K = planes x kh x kw, K's order (plane, i, j)) and B read in place from the
/// padded planes `plane0..plane0 + planes` of `src`.
#[allow(clippy::too_many_arguments)]
pub(super) fn direct_conv<T: Float>(
    s: Shape,
    m: usize,
    (planes, kh, kw): (usize, usize, usize),
    ap: &[T],
    src: &[T],
    pd: Pad,
    plane0: usize,
    (ho, wo): (usize, usize),
    c: &mut [T],
    ldc: usize,
    bias: &[T],
) {
    let k = planes * kh * kw;
    let mpad = m.next_multiple_of(s.mr);
    let rb = direct_rows(m, ho, wo);
    let mut off = [0usize; pg::MAX_KC];
    for r0 in (0..ho).step_by(rb) {
        for (k0, kc) in pg::kc_blocks(s, k) {
            assert!(kc <= pg::MAX_KC);
            for (kk, o) in off[..kc].iter_mut().enumerate() {
                let r = k0 + kk;
                let (pl, i, j) = tap_of(r, kh, kw);
                *o = pd.tap(plane0 + pl, i, j);
            }
            pg::direct_block(
                s,
                pg::DBlk {
                    m,
                    kc,
                    ap: &ap[k0 * mpad..(k0 + kc) * mpad],
                    src,
                    off: &off[..kc],
                    pitch: pd.pitch(),
                    oh: r0..(r0 + rb).min(ho),
                    wo,
                    c: &mut *c,
                    ldc,
                    set: k0 == 0,
                    bias,
                },
            );
        }
    }
}

/// Forward into caller buffers: `out` (N*F*HO*WO), `ws` at least `workspace_len(g, par.threads())`.
/// Slices must have the lengths `g` implies (checked by the public wrappers). Packs the weights
/// into the front of `ws`, then runs `forward_packed` with the rest.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_into<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    x: &[T],
    w: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    debug_assert!(ws.len() >= forward_workspace_len(g, a, par.threads()).unwrap_or(usize::MAX));
    let (wp, ws) = ws.split_at_mut(packed_w_len(g, a));
    pack_weights(g, a, w, b, wp, par);
    forward_packed(g, a, wp, x, b, out, ws, par);
}

/// Packs w (and for im2col the bias) the way `a`'s forward reads them, into `wp` (at least
/// `packed_w_len(g, a)`): once per call, shared by every image and tile, or once for many
/// calls (`ConvPlan::pack_weights`).
#[inline(never)]
pub(super) fn pack_weights<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    w: &[T],
    b: &[T],
    wp: &mut [T],
    par: Parallelism<'_>,
) {
    debug_assert!(wp.len() >= packed_w_len(g, a));
    let (k, fg, cg) = (g.k_rows(), g.fg(), g.cg());
    if let Some(wg) = a.wino_fwd(g) {
        let gl = wg.packed_len();
        for grp in 0..g.groups() {
            let wgr = &w[grp * fg * cg * 9..(grp + 1) * fg * cg * 9];
            let k = |o: usize, i: usize| -> [T; 9] {
                std::array::from_fn(|t| wgr[(o * cg + i) * 9 + t])
            };
            winograd::pack_weights(&wg, k, &mut wp[grp * gl..(grp + 1) * gl], par);
        }
        return;
    }
    let sa = pg::rows_shape(a.s, fg);
    if a.fwd == ConvAlgorithm::Direct {
        let ga = pg::packed_a_len(sa, fg, k);
        for grp in 0..g.groups() {
            let wg = &w[grp * fg * k..(grp + 1) * fg * k];
            pg::pack_a(sa, fg, k, wg, k, 1, &mut wp[grp * ga..(grp + 1) * ga]);
        }
        return;
    }
    // im2col: the bias is an extra column (K + 1): B gets a row of ones, so the GEMM writes
    // out = W col + b directly (its first KC block stores) and out is neither pre-filled nor
    // read. Row panels fitted to F/G (5-row panels for 25 filters); never larger than the
    // plan shape's packing, so `packed_w_len` holds them.
    let k1 = k + 1;
    let ga = pg::packed_a_len(sa, fg, k1);
    debug_assert!(g.groups() * ga <= wp.len());
    for grp in 0..g.groups() {
        let wg = &w[grp * fg * k..(grp + 1) * fg * k];
        let bg = &b[grp * fg..(grp + 1) * fg];
        let get = |i: usize, kk: usize| if kk < k { wg[i * k + kk] } else { bg[i] };
        pg::pack_a_with(sa, fg, k1, get, &mut wp[grp * ga..(grp + 1) * ga]);
    }
}

/// The forward with weights `pack_weights` packed for the same `a`; `ws` holds the per-thread
/// slots (`threads * fwd_slot_len`).
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(super) fn forward_packed<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    wp: &[T],
    x: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let threads = par.threads();
    let sh = a.s;
    debug_assert_eq!(out.len(), g.n * g.f * g.pixels());
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    if let Some(wg) = a.wino_fwd(g) {
        return forward_winograd(g, a, wg, wp, x, b, out, ws, par);
    }
    if a.fwd == ConvAlgorithm::Direct {
        return forward_direct(g, a, wp, x, b, out, ws, par);
    }
    let k1 = k + 1;
    let sa = pg::rows_shape(sh, fg);
    let ga = pg::packed_a_len(sa, fg, k1);
    let slots = Slots::new(ws, threads, fwd_slot_len(g, a));
    let th = tile_rows(g);
    let tiles = g.ho.div_ceil(th);
    par.for_each_chunk(out, g.f * p, &|n, on, slot| {
        let xn = &x[n * chw..(n + 1) * chw];
        slots.with(slot, |ws| {
            let (col, bbuf) = ws.split_at_mut(sh.kc.min(k1) * th * g.wo);
            for t in 0..tiles {
                let (oh0, oh1) = (t * th, ((t + 1) * th).min(g.ho));
                let pt = (oh1 - oh0) * g.wo;
                for grp in 0..g.groups() {
                    // out[n][g] tile (fg x pt, row stride p) = [W[g] | b] * [col tile; 1], the
                    // column tile built one KC block of rows at a time and packed at once.
                    pg::gemm_packed_with(
                        sa,
                        fg,
                        pt,
                        k1,
                        &wp[grp * ga..(grp + 1) * ga],
                        &mut on[grp * fg * p + oh0 * g.wo..],
                        p,
                        bbuf,
                        true,
                        |k0, kc, out| {
                            let real = (k0 + kc).min(k);
                            if k0 < real {
                                im2col_rows(g, xn, grp, k0, real, oh0, oh1, col);
                            }
                            if k0 + kc > k {
                                col[(k - k0) * pt..(k - k0 + 1) * pt].fill(T::one());
                            }
                            pg::pack_b_rows_into(sh, kc, pt, &col[..kc * pt], pt, out);
                        },
                    );
                }
            }
        });
    });
}

/// The forward as Winograd F(m x m, 3x3) (see `wino_fwd`), per block of images.
#[allow(clippy::too_many_arguments)]
fn forward_winograd<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    wg: Wino,
    wp: &[T],
    x: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let (p, fg, cg, chw) = (g.pixels(), g.fg(), g.cg(), g.c * g.h * g.w);
    let gl = wg.packed_len();
    let slots = Slots::new(ws, par.threads(), fwd_slot_len(g, a));
    // Jobs of `ib` images: Winograd's blocks (whole images when they are small).
    let ib = wg.ib();
    par.for_each_chunk(out, ib * g.f * p, &|j, oc, slot| {
        let nimg = oc.len() / (g.f * p);
        slots.with(slot, |ws| {
            let x0 = j * ib * chw;
            for grp in 0..g.groups() {
                winograd::conv_images(
                    &wg,
                    &wp[grp * gl..(grp + 1) * gl],
                    (&x[x0 + grp * cg * g.h * g.w..], chw),
                    (&mut oc[grp * fg * p..], g.f * p),
                    nimg,
                    &b[grp * fg..(grp + 1) * fg],
                    ws,
                );
            }
        });
    });
}

/// The forward as a direct convolution (see `direct_fwd`), per image.
#[allow(clippy::too_many_arguments)]
fn forward_direct<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    wp: &[T],
    x: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let sh = a.s;
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let sa = pg::rows_shape(sh, fg);
    let ga = pg::packed_a_len(sa, fg, k);
    let pd = fwd_pad(g);
    let slots = Slots::new(ws, par.threads(), fwd_slot_len(g, a));
    par.for_each_chunk(out, g.f * p, &|n, on, slot| {
        slots.with(slot, |ws| {
            let xp = &mut ws[..pd.len(sh)];
            pad_planes(&x[n * chw..(n + 1) * chw], pd, xp);
            for grp in 0..g.groups() {
                direct_conv(
                    sa,
                    fg,
                    (g.cg(), g.kh, g.kw),
                    &wp[grp * ga..(grp + 1) * ga],
                    xp,
                    pd,
                    grp * g.cg(),
                    (g.ho, g.wo),
                    &mut on[grp * fg * p..],
                    p,
                    &b[grp * fg..(grp + 1) * fg],
                );
            }
        });
    });
}
