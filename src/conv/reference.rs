//! Reference convolution: the definition as loops, accumulated in f64.
//!
//! `out[n][f][oh][ow] = b[f] + sum_{c,i,j} x[n][g*C/G + c][oh*sh + i*dh - ph][ow*sw + j*dw - pw]
//!                                       * w[f][c][i][j]`, with g = f / (F/G), padding reads zero.
//!
//! A padded tap is a real term `0 * w`, as in the notebook's `np.pad` then multiply (and in
//! PyTorch): a NaN or infinite weight on a padded tap makes the output NaN (0 * inf = NaN), and
//! a NaN or infinite dout reaching a padded tap makes that tap's dw NaN. The fast kernels, which
//! multiply the zeros they pad with, give the same NaN positions.

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

/// Visits every (x index, w index) pair that meets at output (n, f, oh, ow); the x index is
/// None on a padded tap (x reads zero there).
#[inline(always)]
fn for_taps(
    g: &ConvGeom,
    n: usize,
    f: usize,
    oh: usize,
    ow: usize,
    mut visit: impl FnMut(Option<usize>, usize),
) {
    let grp = f / g.fg();
    for c in 0..g.cg() {
        for i in 0..g.kh {
            let r = g.in_row(oh, i);
            for j in 0..g.kw {
                let a = match (r, g.in_col(ow, j)) {
                    (Some(r), Some(s)) => Some(xi(g, n, grp * g.cg() + c, r, s)),
                    _ => None,
                };
                visit(a, wi(g, f, c, i, j));
            }
        }
    }
}

#[inline(always)]
fn x_at<T: Float>(x: &[T], a: Option<usize>) -> f64 {
    a.map_or(0.0, |a| x[a].to_f())
}

/// out (N, F, HO, WO) from x, w, b. Slices have the lengths `g` implies.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: &[T], out: &mut [T]) {
    for n in 0..g.n {
        for f in 0..g.f {
            for oh in 0..g.ho {
                for ow in 0..g.wo {
                    let mut acc = b[f].to_f();
                    for_taps(g, n, f, oh, ow, |a, k| acc += x_at(x, a) * w[k].to_f());
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
                        if let Some(a) = a {
                            dx64[a] += w[k].to_f() * d;
                        }
                        dw64[k] += x_at(x, a) * d;
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
