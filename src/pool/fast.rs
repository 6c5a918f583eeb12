//! Fast max pooling: one job per (n, c) plane; the forward caches each output's argmax (a u32
//! offset `ih * W + iw` into its input plane) and the backward scatters dout through it.
//!
//! Same semantics as the reference (see `reference.rs`): first maximum wins, a NaN wins and the
//! first NaN is kept, padded positions are never candidates. 2x2 stride-2 windows without padding
//! take a dedicated path that reads two input rows at a time.

use crate::parallel::Parallelism;
use crate::params::PoolGeom;
use crate::scalar::Float;
use crate::simd::multiversion;

/// Whether candidate `v` replaces the current best `b` (first max wins; NaN wins; first NaN kept).
#[inline(always)]
fn beats<T: Float>(v: T, b: T) -> bool {
    !b.is_nan() && (v > b || v.is_nan())
}

/// The dedicated path applies to 2x2 windows with stride 2 and no padding (ceil mode then adds
/// a partial last window only for odd extents, which the generic path handles).
pub fn is_2x2(g: &PoolGeom) -> bool {
    let p = &g.p;
    p.pool_height == 2
        && p.pool_width == 2
        && p.stride == (2, 2)
        && p.pad == (0, 0)
        && 2 * g.ho <= g.h
        && 2 * g.wo <= g.w
}

multiversion! {
    fn plane_2x2<T>(g: &PoolGeom, x: &[T], out: &mut [T], idx: &mut [u32]) {
        let w = g.w;
        for oh in 0..g.ho {
            let r0 = &x[2 * oh * w..2 * oh * w + w];
            let r1 = &x[(2 * oh + 1) * w..(2 * oh + 2) * w];
            let o = &mut out[oh * g.wo..(oh + 1) * g.wo];
            let ix = &mut idx[oh * g.wo..(oh + 1) * g.wo];
            let base = (2 * oh * w) as u32;
            for ow in 0..g.wo {
                let c = 2 * ow;
                let (mut bv, mut bi) = (r0[c], 0u32);
                if beats(r0[c + 1], bv) {
                    (bv, bi) = (r0[c + 1], 1);
                }
                if beats(r1[c], bv) {
                    (bv, bi) = (r1[c], w as u32);
                }
                if beats(r1[c + 1], bv) {
                    (bv, bi) = (r1[c + 1], w as u32 + 1);
                }
                o[ow] = bv;
                ix[ow] = base + c as u32 + bi;
            }
        }
    }
}

multiversion! {
    fn plane_generic<T>(g: &PoolGeom, x: &[T], out: &mut [T], idx: &mut [u32]) {
        for oh in 0..g.ho {
            let rows = g.rows(oh);
            for ow in 0..g.wo {
                let cols = g.cols(ow);
                let (mut bv, mut bi) = (x[rows.start * g.w + cols.start], rows.start * g.w + cols.start);
                for r in rows.clone() {
                    let row = &x[r * g.w..(r + 1) * g.w];
                    for s in cols.clone() {
                        if beats(row[s], bv) {
                            (bv, bi) = (row[s], r * g.w + s);
                        }
                    }
                }
                out[oh * g.wo + ow] = bv;
                idx[oh * g.wo + ow] = bi as u32;
            }
        }
    }
}

/// out (N*C*HO*WO) and argmax (same length) from x. Slices have the lengths `g` implies.
pub fn forward_into<T: Float>(
    g: &PoolGeom,
    x: &[T],
    out: &mut [T],
    argmax: &mut [u32],
    par: Parallelism<'_>,
) {
    let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
    let two = is_2x2(g);
    par.for_each_chunk2(out, oplane, argmax, oplane, &|nc, o, a, _| {
        let xp = &x[nc * plane..(nc + 1) * plane];
        if two {
            plane_2x2(g, xp, o, a)
        } else {
            plane_generic(g, xp, o, a)
        }
    });
}

multiversion! {
    fn plane_scatter<T>(dout: &[T], idx: &[u32], dx: &mut [T]) {
        dx.fill(T::zero());
        for (&d, &i) in dout.iter().zip(idx) {
            dx[i as usize] += d;
        }
    }
}

/// dx (N*C*H*W) from dout and the forward's argmax; overlapping windows add up in output order.
pub fn backward_into<T: Float>(
    g: &PoolGeom,
    dout: &[T],
    argmax: &[u32],
    dx: &mut [T],
    par: Parallelism<'_>,
) {
    let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
    par.for_each_chunk(dx, plane, &|nc, dxp, _| {
        let r = nc * oplane..(nc + 1) * oplane;
        plane_scatter(&dout[r.clone()], &argmax[r], dxp)
    });
}
