//! Fast convolution: im2col + GEMM, tile by tile, with bounded workspace.
//!
//! Column matrix of one image and one group g (K = C/G*KH*KW rows, P = HO*WO columns):
//!
//! ```text
//! col[(c*KH + i)*KW + j][oh*WO + ow] <- x[n][g*C/G + c][oh*sh + i*dh - ph][ow*sw + j*dw - pw]
//! (0 in the padding)
//! ```
//!
//! - forward, per image (parallel over images): im2col into this thread's slot; then
//!   `out[n][g] (F/G x P) = W[g] (F/G x K) * col (K x P)` with out pre-filled with the bias (beta = 1).
//! - backward dx, per image: `dcol (K x P) = W[g]^T * dout[n][g]` into the slot, then col2im
//!   scatters dcol back into dx[n] (no im2col needed).
//! - backward dw, per block of `KB` column rows (parallel over blocks): for n = 0..N in order,
//!   build only those rows of image n's column matrix and accumulate
//!   `dw[g][:, rows] += dout[n][g] * col_rows^T`. Each dw element has exactly one owner and one
//!   summation order, so dw is bitwise identical for any thread count, with no partial copies.
//! - db, per filter (parallel over filters): f64 sum over n then pixels, in order.
//!
//! Workspace: `threads * K * P` elements (one group's column matrix per thread), whatever N is,
//! plus, in the backward, a staging area the size of dw (rounded up to whole KB-row blocks).
//! All of it is the caller's (`*_workspace_len` gives the exact size); the kernels allocate
//! only O(threads) bookkeeping.

use crate::gemm::{gemm, rm, tr};
use crate::parallel::{Parallelism, Slots};
use crate::params::ConvGeom;
use crate::scalar::Float;
use crate::simd::multiversion;

/// Column-matrix rows per dw job: a fixed function of the shape, never of the thread count.
const KB: usize = 64;

/// Elements of one slot: one group's column matrix of one image.
pub fn slot_len(g: &ConvGeom) -> usize {
    g.k_rows() * g.pixels()
}

/// dw staging: one (F/G x KB) block per (group, row block) job.
fn staged_len(g: &ConvGeom) -> usize {
    g.groups() * g.k_rows().div_ceil(KB) * g.fg() * KB
}

/// Exact workspace (elements of T) `forward_into` needs with `threads` threads.
pub fn forward_workspace_len(g: &ConvGeom, threads: usize) -> usize {
    threads.max(1) * slot_len(g)
}

/// `backward_workspace_len` with overflow checking (for absurd thread counts).
pub fn backward_workspace_len_checked(g: &ConvGeom, threads: usize) -> Option<usize> {
    threads
        .max(1)
        .checked_mul(slot_len(g))?
        .checked_add(staged_len(g))
}

/// Exact workspace (elements of T) `backward_into` needs with `threads` threads.
pub fn backward_workspace_len(g: &ConvGeom, threads: usize) -> usize {
    forward_workspace_len(g, threads) + staged_len(g)
}

/// Output columns `ow` whose tap j lands inside the input row: `lo..hi`.
#[inline(always)]
fn ow_range(g: &ConvGeom, j: usize) -> (usize, usize) {
    let (sw, pw, off) = (g.p.stride.1, g.p.pad.1, j * g.p.dilation.1);
    let lo = if off >= pw {
        0
    } else {
        (pw - off).div_ceil(sw)
    };
    let hi = if g.w + pw > off {
        (g.w + pw - off).div_ceil(sw)
    } else {
        0
    };
    (lo.min(g.wo), hi.min(g.wo).max(lo.min(g.wo)))
}

multiversion! {
    /// Rows `r0..r1` of image `xn`'s group-`grp` column matrix into `col` (row r at (r - r0) * P).
    fn im2col_rows<T>(g: &ConvGeom, xn: &[T], grp: usize, r0: usize, r1: usize, col: &mut [T]) {
        let (p, kk) = (g.pixels(), g.kh * g.kw);
        let (sw, pw) = (g.p.stride.1, g.p.pad.1);
        for r in r0..r1 {
            let (c, i, j) = (r / kk, (r % kk) / g.kw, r % g.kw);
            let plane = &xn[(grp * g.cg() + c) * g.h * g.w..][..g.h * g.w];
            let (lo, hi) = ow_range(g, j);
            let row = &mut col[(r - r0) * p..(r - r0 + 1) * p];
            for oh in 0..g.ho {
                let dst = &mut row[oh * g.wo..(oh + 1) * g.wo];
                let Some(ih) = g.in_row(oh, i) else {
                    dst.fill(T::zero());
                    continue;
                };
                let src = &plane[ih * g.w..(ih + 1) * g.w];
                dst[..lo].fill(T::zero());
                dst[hi..].fill(T::zero());
                if lo < hi {
                    // First input column: lo*sw + j*dw - pw >= 0 by construction of lo.
                    let s0 = lo * sw + j * g.p.dilation.1 - pw;
                    if sw == 1 {
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (k, d) in dst[lo..hi].iter_mut().enumerate() {
                            *d = src[s0 + k * sw];
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// dxn[...] += the group-`grp` column matrix `col` scattered back (col2im), in a fixed order.
    fn col2im<T>(g: &ConvGeom, col: &[T], grp: usize, dxn: &mut [T]) {
        let (p, kk) = (g.pixels(), g.kh * g.kw);
        let (sw, pw) = (g.p.stride.1, g.p.pad.1);
        for r in 0..g.k_rows() {
            let (c, i, j) = (r / kk, (r % kk) / g.kw, r % g.kw);
            let plane = &mut dxn[(grp * g.cg() + c) * g.h * g.w..][..g.h * g.w];
            let (lo, hi) = ow_range(g, j);
            if lo >= hi {
                continue;
            }
            let row = &col[r * p..(r + 1) * p];
            for oh in 0..g.ho {
                let Some(ih) = g.in_row(oh, i) else { continue };
                let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                let src = &row[oh * g.wo..(oh + 1) * g.wo];
                let s0 = lo * sw + j * g.p.dilation.1 - pw;
                if sw == 1 {
                    for (d, s) in dst[s0..s0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += *s;
                    }
                } else {
                    for (k, s) in src[lo..hi].iter().enumerate() {
                        dst[s0 + k * sw] += *s;
                    }
                }
            }
        }
    }
}

/// Forward into caller buffers: `out` (N*F*HO*WO), `ws` at least `workspace_len(g, par.threads())`.
/// Slices must have the lengths `g` implies (checked by the public wrappers).
#[allow(clippy::too_many_arguments)]
pub fn forward_into<T: Float>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let threads = par.threads();
    debug_assert!(ws.len() >= forward_workspace_len(g, threads));
    debug_assert_eq!(out.len(), g.n * g.f * g.pixels());
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let slots = Slots::new(ws, threads, slot_len(g));
    par.for_each_chunk(out, g.f * p, &|n, on, slot| {
        let xn = &x[n * chw..(n + 1) * chw];
        for f in 0..g.f {
            on[f * p..(f + 1) * p].fill(b[f]);
        }
        slots.with(slot, |col| {
            for grp in 0..g.groups() {
                im2col_rows(g, xn, grp, 0, k, col);
                gemm(
                    fg,
                    k,
                    p,
                    T::one(),
                    rm(&w[grp * fg * k..(grp + 1) * fg * k], k),
                    rm(&col[..k * p], p),
                    T::one(),
                    &mut on[grp * fg * p..(grp + 1) * fg * p],
                    p,
                );
            }
        });
    });
}

/// Backward into caller buffers: dx (like x), dw (like w), db (F), `ws` as for the forward.
#[allow(clippy::too_many_arguments)]
pub fn backward_into<T: Float>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    dout: &[T],
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let threads = par.threads();
    debug_assert!(ws.len() >= backward_workspace_len(g, threads));
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let fp = g.f * p;
    let (ws, staged) = ws.split_at_mut(forward_workspace_len(g, threads));
    let staged = &mut staged[..staged_len(g)];
    let slots = Slots::new(ws, threads, slot_len(g));

    // dx: per image, dcol = W^T dout then col2im.
    par.for_each_chunk(dx, chw, &|n, dxn, slot| {
        dxn.fill(T::zero());
        let dn = &dout[n * fp..(n + 1) * fp];
        slots.with(slot, |col| {
            for grp in 0..g.groups() {
                gemm(
                    k,
                    fg,
                    p,
                    T::one(),
                    tr(&w[grp * fg * k..(grp + 1) * fg * k], k),
                    rm(&dn[grp * fg * p..(grp + 1) * fg * p], p),
                    T::zero(),
                    &mut col[..k * p],
                    p,
                );
                col2im(g, &col[..k * p], grp, dxn);
            }
        });
    });

    // dw: per (group, block of KB column rows), images accumulated in order. dw[grp] is
    // (fg x k) row-major and a job owns columns r0..r1 of it, so each job accumulates into its
    // own (fg x KB) block of the staging area, copied into place after.
    let kblocks = k.div_ceil(KB);
    let block = |job: usize| {
        let kb = job % kblocks;
        (job / kblocks, kb * KB, ((kb + 1) * KB).min(k))
    };
    par.for_each_chunk(staged, fg * KB, &|job, blk, slot| {
        let (grp, r0, r1) = block(job);
        let kr = r1 - r0;
        let acc = &mut blk[..fg * kr];
        slots.with(slot, |col| {
            for n in 0..g.n {
                im2col_rows(g, &x[n * chw..(n + 1) * chw], grp, r0, r1, col);
                let dn = &dout[n * fp + grp * fg * p..n * fp + (grp + 1) * fg * p];
                let beta = if n == 0 { T::zero() } else { T::one() };
                gemm(
                    fg,
                    p,
                    kr,
                    T::one(),
                    rm(dn, p),
                    tr(&col[..kr * p], p),
                    beta,
                    acc,
                    kr,
                );
            }
        });
    });
    for job in 0..g.groups() * kblocks {
        let (grp, r0, r1) = block(job);
        let kr = r1 - r0;
        let blk = &staged[job * fg * KB..job * fg * KB + fg * kr];
        for f in 0..fg {
            let row = (grp * fg + f) * k;
            dw[row + r0..row + r1].copy_from_slice(&blk[f * kr..(f + 1) * kr]);
        }
    }

    // db: per filter, f64 sum in a fixed order.
    par.for_each_chunk(db, 1, &|f, dbf, _| {
        let mut s = 0.0f64;
        for n in 0..g.n {
            s += crate::norm::fast::sum_f64(&dout[n * fp + f * p..n * fp + (f + 1) * p]);
        }
        dbf[0] = T::from_f(s);
    });
}
