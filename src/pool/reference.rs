//! Reference max pooling.
//!
//! Semantics (shared with the fast kernels and written down once here):
//! - a window's maximum is its FIRST maximum in row-major order: a later element wins only if it
//!   is strictly greater (`np.argmax`, PyTorch);
//! - a NaN beats everything and the first NaN wins, so a window holding a NaN yields NaN (as
//!   `np.max`/`np.argmax`; PyTorch's CPU kernel also yields NaN but points at the last NaN);
//! - padded positions are never candidates (they are skipped, not read as -inf or 0);
//! - the stored index is `ih * W + iw`, an offset into the input plane of the same (n, c).

use crate::params::PoolGeom;
use crate::scalar::Float;

/// Index (into `plane`, one H x W input plane) of window (oh, ow)'s first maximum.
#[inline(always)]
pub fn window_argmax<T: Float>(g: &PoolGeom, plane: &[T], oh: usize, ow: usize) -> usize {
    let mut best = usize::MAX;
    let mut best_v = T::zero();
    for r in g.rows(oh) {
        for s in g.cols(ow) {
            let i = r * g.w + s;
            let v = plane[i];
            if best == usize::MAX || (!best_v.is_nan() && (v > best_v || v.is_nan())) {
                best = i;
                best_v = v;
            }
        }
    }
    debug_assert!(best != usize::MAX, "every window holds a real element");
    best
}

/// out (N, C, HO, WO) and, when asked, the argmax index of every output.
pub fn forward<T: Float>(g: &PoolGeom, x: &[T], out: &mut [T], mut argmax: Option<&mut [u32]>) {
    let plane = g.h * g.w;
    for nc in 0..g.n * g.c {
        let xp = &x[nc * plane..(nc + 1) * plane];
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let o = (nc * g.ho + oh) * g.wo + ow;
                let i = window_argmax(g, xp, oh, ow);
                out[o] = xp[i];
                if let Some(a) = argmax.as_deref_mut() {
                    a[o] = i as u32;
                }
            }
        }
    }
}

/// dx from dout: each output's gradient goes to its window's first maximum (overlapping
/// windows add up).
pub fn backward<T: Float>(g: &PoolGeom, x: &[T], dout: &[T], dx: &mut [T]) {
    let plane = g.h * g.w;
    dx.fill(T::zero());
    for nc in 0..g.n * g.c {
        let xp = &x[nc * plane..(nc + 1) * plane];
        for oh in 0..g.ho {
            for ow in 0..g.wo {
                let i = window_argmax(g, xp, oh, ow);
                dx[nc * plane + i] += dout[(nc * g.ho + oh) * g.wo + ow];
            }
        }
    }
}
