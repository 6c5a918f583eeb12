//! Reference convolution: the definition as loops, accumulated in f64.
//!
//! `out[n][f][oh][ow] = b[f] + sum_{c,i,j} x[n][g*C/G + c][oh*sh + i*dh - ph][ow*sw + j*dw - pw]
//!                                       * w[f][c][i][j]`, with g = f / (F/G), padding reads zero.

use crate::params::ConvGeom;
use crate::scalar::Float;

#[inline(always)]
fn xi(g: &ConvGeom, n: usize, c: usize, r: usize, s: usize) -> usize {
    ((n * g.c + c) * g.h + r) * g.w + s
}
#[inline(always)]
fn wi(g: &ConvGeom, f: usize, c: usize, i: usize, j: usize) -> usize {
    ((f * g.cg() + c) * g.kh + i) * g.kw + j
}
#[inline(always)]
fn oi(g: &ConvGeom, n: usize, f: usize, oh: usize, ow: usize) -> usize {
    ((n * g.f + f) * g.ho + oh) * g.wo + ow
}

/// Visits every (x index, w index) pair that meets at output (n, f, oh, ow).
#[inline(always)]
fn for_taps(
    g: &ConvGeom,
    n: usize,
    f: usize,
    oh: usize,
    ow: usize,
    mut visit: impl FnMut(usize, usize),
) {
    let grp = f / g.fg();
    for c in 0..g.cg() {
        for i in 0..g.kh {
            let Some(r) = g.in_row(oh, i) else { continue };
            for j in 0..g.kw {
                let Some(s) = g.in_col(ow, j) else { continue };
                visit(xi(g, n, grp * g.cg() + c, r, s), wi(g, f, c, i, j));
            }
        }
    }
}

/// out (N, F, HO, WO) from x, w, b. Slices have the lengths `g` implies.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: &[T], out: &mut [T]) {
    for n in 0..g.n {
        for f in 0..g.f {
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    let mut acc = b[f].to_f();
                    for_taps(g, n, f, oh, ow, |a, k| acc += x[a].to_f() * w[k].to_f());
                    out[oi(g, n, f, oh, ow)] = T::from_f(acc);
                }
            }
        }
    }
}

/// dx, dw, db from dout by scattering each output's gradient back along its taps.
pub fn backward<T: Float>(
    g: &ConvGeom,
    x: &[T],
    w: &[T],
    dout: &[T],
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
) {
    let mut dx64 = vec![0.0f64; dx.len()];
    let mut dw64 = vec![0.0f64; dw.len()];
    let mut db64 = vec![0.0f64; db.len()];
    for n in 0..g.n {
        for f in 0..g.f {
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    let d = dout[oi(g, n, f, oh, ow)].to_f();
                    db64[f] += d;
                    for_taps(g, n, f, oh, ow, |a, k| {
                        dx64[a] += w[k].to_f() * d;
                        dw64[k] += x[a].to_f() * d;
                    });
                }
            }
        }
    }
    for (o, v) in dx.iter_mut().zip(dx64) {
        *o = T::from_f(v);
    }
    for (o, v) in dw.iter_mut().zip(dw64) {
        *o = T::from_f(v);
    }
    for (o, v) in db.iter_mut().zip(db64) {
        *o = T::from_f(v);
    }
}
