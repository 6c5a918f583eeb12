//! Data movement of the fast convolution: zero-padded, stride-phase-split copies of an image
//! (the direct and Winograd paths read their B operand from them), im2col tiles and col2im.

use super::plan::*;
use crate::cpu::multiversion;
use crate::gemm::Shape;
use crate::params::ConvGeom;
use crate::scalar::Float;

/// The forward's (and dw's) padded copy of x.
pub(super) fn fwd_pad(g: &ConvGeom) -> Pad {
    Pad {
        planes: g.c,
        h: g.h,
        w: g.w,
        pad: g.p.pad,
        stride: g.p.stride,
        dil: g.p.dilation,
    }
}

/// dx's padded copy of dout (stride 1, no dilation).
pub(super) fn dx_pad(g: &ConvGeom) -> Pad {
    Pad {
        planes: g.f,
        h: g.ho,
        w: g.wo,
        pad: (g.kh - 1 - g.p.pad.0, g.kw - 1 - g.p.pad.1),
        stride: (1, 1),
        dil: (1, 1),
    }
}

/// A zero-padded, phase-split copy of `planes` planes of h x w for a convolution with `stride`
/// and dilation `dil`: padded element (c, r, col) lives at
/// `(col % sw) * block + c * plane + r * wq + col / sw`.
#[derive(Clone, Copy)]
pub(super) struct Pad {
    planes: usize,
    h: usize,
    w: usize,
    pad: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
}

impl Pad {
    pub(super) fn hp(&self) -> usize {
        self.h + 2 * self.pad.0
    }
    /// Width of a phase row.
    pub(super) fn wq(&self) -> usize {
        (self.w + 2 * self.pad.1).div_ceil(self.stride.1)
    }
    pub(super) fn plane(&self) -> usize {
        self.hp() * self.wq()
    }
    pub(super) fn block(&self) -> usize {
        self.planes * self.plane()
    }
    /// Distance between the starts of consecutive output rows.
    pub(super) fn pitch(&self) -> usize {
        self.stride.0 * self.wq()
    }
    /// Where tap (plane, i, j) of output pixel (0, 0) is.
    pub(super) fn tap(&self, pl: usize, i: usize, j: usize) -> usize {
        let col = j * self.dil.1;
        (col % self.stride.1) * self.block()
            + pl * self.plane()
            + i * self.dil.0 * self.wq()
            + col / self.stride.1
    }
    /// Elements of the copy, with NR of slack at the end for the last row's partial tile.
    pub(super) fn len(&self, s: Shape) -> usize {
        self.stride.1 * self.block() + s.nr
    }
}

/// `dst` = the planes of `src` zero-padded and phase-split as `pd` says, then zeroed slack.
pub(super) fn pad_planes<T: Float>(src: &[T], pd: Pad, dst: &mut [T]) {
    let (wq, hw, (ph, pw), sw) = (pd.wq(), pd.h * pd.w, pd.pad, pd.stride.1);
    let (body, slack) = dst.split_at_mut(sw * pd.block());
    if sw == 2 {
        pad_planes_2(src, pd, body);
        fill_zero(slack);
        return;
    }
    for (q, phase) in body.chunks_exact_mut(pd.block()).enumerate() {
        // Phase q holds padded columns q, q + sw, ...: input columns from first_in on, one in
        // sw, landing at phase column first_out on.
        let first_out = if q >= pw { 0 } else { (pw - q).div_ceil(sw) };
        let first_in = first_out * sw + q - pw;
        let count = if first_in < pd.w {
            (pd.w - first_in).div_ceil(sw).min(wq - first_out)
        } else {
            0
        };
        for (s, d) in src.chunks_exact(hw).zip(phase.chunks_exact_mut(pd.plane())) {
            let (top, rest) = d.split_at_mut(ph * wq);
            fill_zero(top);
            let (mid, bottom) = rest.split_at_mut(pd.h * wq);
            for (row, sr) in mid.chunks_exact_mut(wq).zip(s.chunks_exact(pd.w)) {
                fill_zero(&mut row[..first_out]);
                let dst = &mut row[first_out..first_out + count];
                // A phase whose first input column lies past the row (narrow rows at a large
                // column stride) copies nothing.
                if count == 0 {
                } else if sw == 1 {
                    copy_short(dst, &sr[first_in..first_in + count]);
                } else {
                    gather_strided(dst, &sr[first_in..], sw);
                }
                fill_zero(&mut row[first_out + count..]);
            }
            fill_zero(bottom);
        }
    }
    fill_zero(slack);
}

/// Longest phase row `col2im_2` builds on the stack (two of PAD_ROW / 2).
pub(super) const PAD_ROW: usize = 1024;

/// `pad_planes` for column stride 2: each input row is split straight into the even and odd
/// phase rows in one loop over its pairs (per-phase strided gathers cost a few calls per row:
/// 10% of the notebook convolution's forward). Padded column i + pw of input column i is in
/// phase (i + pw) % 2 at (i + pw) / 2, so the pair (2u, 2u + 1) goes to one phase at u + pw / 2
/// and to the other at u + (pw + 1) / 2. Not through a padded stack row: with odd pw its
/// pairs straddled the row copy's 16-byte stores, and each load of a pair waited for both
/// stores to commit (store-to-load forwarding fails on a load spanning two stores): 38% of the
/// copy's samples on that load, the copy 17% of nb_conv's f64 forward (AMD EPYC model 17).
pub(super) fn pad_planes_2<T: Float>(src: &[T], pd: Pad, body: &mut [T]) {
    let (wq, hw, (ph, pw), w) = (pd.wq(), pd.h * pd.w, pd.pad, pd.w);
    // Phase of an even input column, and where pair u's two elements land in their phases.
    let flip = pw % 2 == 1;
    let (o0, o1) = (pw / 2, pw.div_ceil(2));
    let (n0, n1) = (w.div_ceil(2), w / 2);
    debug_assert!(o0 + n0 <= wq && o1 + n1 <= wq);
    let (even, odd) = body.split_at_mut(pd.block());
    let planes = even
        .chunks_exact_mut(pd.plane())
        .zip(odd.chunks_exact_mut(pd.plane()));
    for (s, (e, o)) in src.chunks_exact(hw).zip(planes) {
        for d in [&mut *e, &mut *o] {
            fill_zero(&mut d[..ph * wq]);
            fill_zero(&mut d[(ph + pd.h) * wq..]);
        }
        for (r, sr) in s.chunks_exact(w).enumerate() {
            let er = &mut e[(ph + r) * wq..(ph + r + 1) * wq];
            let or = &mut o[(ph + r) * wq..(ph + r + 1) * wq];
            // a takes the even input columns, b the odd ones.
            let (a, b) = if flip { (or, er) } else { (er, or) };
            zero_edge(&mut a[..o0]);
            zero_edge(&mut a[o0 + n0..]);
            zero_edge(&mut b[..o1]);
            zero_edge(&mut b[o1 + n1..]);
            let (a, b) = (&mut a[o0..o0 + n0], &mut b[o1..o1 + n1]);
            for ((x, y), pair) in a.iter_mut().zip(b.iter_mut()).zip(sr.chunks_exact(2)) {
                *x = pair[0];
                *y = pair[1];
            }
            if n0 > n1 {
                a[n1] = sr[w - 1];
            }
        }
    }
}

/// `dst = 0` for a row's padding edge, usually 0-2 elements: up to 4 by unrolled conditional
/// stores, which LLVM does not turn into a memset call as it does `fill_zero`'s remainder loop.
#[inline(always)]
fn zero_edge<T: Float>(dst: &mut [T]) {
    if dst.len() > 4 {
        return fill_zero(dst);
    }
    for i in 0..4 {
        if let Some(d) = dst.get_mut(i) {
            *d = T::zero();
        }
    }
}

/// Row r of a group's column matrix as its tap: (channel in the group, kernel row, kernel
/// column).
#[inline(always)]
pub(super) fn tap_of(r: usize, kh: usize, kw: usize) -> (usize, usize, usize) {
    (r / (kh * kw), (r / kw) % kh, r % kw)
}

/// Output columns `ow` whose tap j lands inside the input row: `lo..hi`.
#[inline(always)]
pub(super) fn ow_range(g: &ConvGeom, j: usize) -> (usize, usize) {
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

/// `dst = src` for the short runs of im2col (a row segment of tens of elements, or less):
/// fixed 8-element copies. `copy_from_slice` with a run-time length is a memmove call, and im2col
/// makes one per output row and kernel row (18K per res_conv image): the calls, not the bytes,
/// were the cost.
#[inline(always)]
pub(super) fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let d: &mut [T; 8] = d.try_into().expect("8 lanes");
        *d = s.try_into().expect("8 lanes");
    }
    for (d, s) in d8.into_remainder().iter_mut().zip(s8.remainder()) {
        *d = *s;
    }
}

/// `dst[k] = src[k * sw]`. Stride 2 (the notebook's convolution) is a separate loop with the
/// stride a constant, which LLVM vectorises with shuffles; a run-time stride stays scalar.
#[inline(always)]
pub(super) fn gather_strided<T: Copy>(dst: &mut [T], src: &[T], sw: usize) {
    if sw == 2 {
        // Whole pairs through the vectorised loop; a row whose last element has no partner
        // (odd length, e.g. W = 31) finishes with one scalar copy instead of going scalar whole.
        let pairs = (src.len() / 2).min(dst.len());
        let (head, tail) = dst.split_at_mut(pairs);
        for (d, s) in head.iter_mut().zip(src[..2 * pairs].chunks_exact(2)) {
            *d = s[0];
        }
        for (k, d) in tail.iter_mut().enumerate() {
            *d = src[2 * (pairs + k)];
        }
        return;
    }
    for (d, v) in dst.iter_mut().zip(src.iter().step_by(sw)) {
        *d = *v;
    }
}

/// `dst = 0` for short runs (the padding edges, often one element): like `copy_short`, no
/// memset call.
#[inline(always)]
pub(super) fn fill_zero<T: Float>(dst: &mut [T]) {
    let mut d8 = dst.chunks_exact_mut(8);
    for d in &mut d8 {
        let d: &mut [T; 8] = d.try_into().expect("8 lanes");
        *d = [T::zero(); 8];
    }
    for d in d8.into_remainder() {
        *d = T::zero();
    }
}

multiversion! {
    /// Rows `r0..r1` of image `xn`'s group-`grp` column matrix, restricted to output rows
    /// `oh0..oh1`, into `col` (row r at (r - r0) * PT, PT = (oh1 - oh0) * WO).
    pub(super) fn im2col_rows<T>(g: &ConvGeom, xn: &[T], grp: usize, r0: usize, r1: usize, oh0: usize, oh1: usize, col: &mut [T]) {
        let p = (oh1 - oh0) * g.wo;
        let (sw, pw) = (g.p.stride.1, g.p.pad.1);
        for r in r0..r1 {
            let (c, i, j) = tap_of(r, g.kh, g.kw);
            let plane = &xn[(grp * g.cg() + c) * g.h * g.w..][..g.h * g.w];
            let (lo, hi) = ow_range(g, j);
            let row = &mut col[(r - r0) * p..(r - r0 + 1) * p];
            for oh in oh0..oh1 {
                let dst = &mut row[(oh - oh0) * g.wo..(oh - oh0 + 1) * g.wo];
                let Some(ih) = g.in_row(oh, i) else {
                    fill_zero(dst);
                    continue;
                };
                let src = &plane[ih * g.w..(ih + 1) * g.w];
                fill_zero(&mut dst[..lo]);
                fill_zero(&mut dst[hi..]);
                if lo < hi {
                    // First input column: lo*sw + j*dw - pw >= 0 by construction of lo.
                    let s0 = lo * sw + j * g.p.dilation.1 - pw;
                    if sw == 1 {
                        copy_short(&mut dst[lo..hi], &src[s0..s0 + (hi - lo)]);
                    } else {
                        gather_strided(&mut dst[lo..hi], &src[s0..], sw);
                    }
                }
            }
        }
    }
}

multiversion! {
    /// dxn[...] += the group-`grp` column matrix tile `col` (output rows `oh0..oh1`) scattered
    /// back (col2im), in a fixed order.
    pub(super) fn col2im<T>(g: &ConvGeom, col: &[T], grp: usize, oh0: usize, oh1: usize, dxn: &mut [T]) {
        let p = (oh1 - oh0) * g.wo;
        let (sw, pw) = (g.p.stride.1, g.p.pad.1);
        if sw == 2 && phase_len_2(g) <= PAD_ROW / 2 {
            if col2im_stores(g) {
                debug_assert!(oh0 == 0 && oh1 == g.ho);
                return col2im_2_store(g, col, grp, dxn);
            }
            return col2im_2(g, col, grp, oh0, oh1, dxn);
        }
        for r in 0..g.k_rows() {
            let (c, i, j) = tap_of(r, g.kh, g.kw);
            let plane = &mut dxn[(grp * g.cg() + c) * g.h * g.w..][..g.h * g.w];
            let (lo, hi) = ow_range(g, j);
            if lo >= hi {
                continue;
            }
            let row = &col[r * p..(r + 1) * p];
            for oh in oh0..oh1 {
                let Some(ih) = g.in_row(oh, i) else { continue };
                let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                let src = &row[(oh - oh0) * g.wo..(oh - oh0 + 1) * g.wo];
                let s0 = lo * sw + j * g.p.dilation.1 - pw;
                if sw == 1 {
                    for (d, s) in dst[s0..s0 + (hi - lo)].iter_mut().zip(&src[lo..hi]) {
                        *d += *s;
                    }
                } else {
                    let dst = dst[s0..].iter_mut().step_by(sw);
                    for (d, s) in dst.zip(&src[lo..hi]) {
                        *d += *s;
                    }
                }
            }
        }
    }
}

/// Length of a phase row in `col2im_2`: every tap's output column lands inside it, and so does
/// every input column's padded position (plus one for the odd-padding pairing).
pub(super) fn phase_len_2(g: &ConvGeom) -> usize {
    (g.wo + ((g.kw - 1) * g.p.dilation.1) / 2).max((g.w + g.p.pad.1) / 2 + 2)
}

/// `col2im` at column stride 2. Output column ow of tap j lands at padded input column
/// X = 2 ow + j dw: in phase X % 2, at X / 2 = ow + (j dw) / 2. So per (channel, kernel row,
/// output row) the kernel taps' rows are added contiguously into two phase rows, which are then
/// added into the input row as interleaved pairs: no strided scatter (the strided adds were 14%
/// of the notebook convolution's backward).
#[inline(always)]
pub(super) fn col2im_2<T: Float>(
    g: &ConvGeom,
    col: &[T],
    grp: usize,
    oh0: usize,
    oh1: usize,
    dxn: &mut [T],
) {
    let (p, wo, w, pw, dw) = ((oh1 - oh0) * g.wo, g.wo, g.w, g.p.pad.1, g.p.dilation.1);
    let len = phase_len_2(g);
    let mut ph = [[T::zero(); PAD_ROW / 2]; 2];
    for c in 0..g.cg() {
        let plane = &mut dxn[(grp * g.cg() + c) * g.h * w..][..g.h * w];
        for i in 0..g.kh {
            for oh in oh0..oh1 {
                let Some(ih) = g.in_row(oh, i) else { continue };
                for q in &mut ph {
                    fill_zero(&mut q[..len]);
                }
                for j in 0..g.kw {
                    let r = (c * g.kh + i) * g.kw + j;
                    let src = &col[r * p + (oh - oh0) * wo..][..wo];
                    let x0 = j * dw;
                    let dst = &mut ph[x0 % 2][x0 / 2..x0 / 2 + wo];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += *s;
                    }
                }
                // Input column x is padded column x + pw: pairs (2v, 2v + 1) take phases
                // (pw % 2, 1 - pw % 2) at v + pw / 2 and v + (pw + 1) / 2.
                let (a, b) = (&ph[pw % 2][pw / 2..], &ph[1 - pw % 2][pw.div_ceil(2)..]);
                let dst = &mut plane[ih * w..(ih + 1) * w];
                let mut pairs = dst.chunks_exact_mut(2);
                for (d, (u, v)) in (&mut pairs).zip(a.iter().zip(b)) {
                    d[0] += *u;
                    d[1] += *v;
                }
                if let [last] = pairs.into_remainder() {
                    *last += a[(w - 1) / 2];
                }
            }
        }
    }
}

/// Whether `col2im` stores every element of dx (so dx needs no zeroing first): column stride
/// 2 with one tile covering every output row (`col2im_2_store`).
pub(super) fn col2im_stores(g: &ConvGeom) -> bool {
    g.p.stride.1 == 2 && phase_len_2(g) <= PAD_ROW / 2 && tile_rows(g) >= g.ho
}

/// `col2im_2` for a tile that covers every output row: each input row of the group's channels
/// is written once (stored, not added). Per (channel, input row), the rows of every (kernel row,
/// output row) pair that lands there are gathered into the two phase rows, which are then stored
/// interleaved; rows nothing lands on are stored as zeros.
#[inline(always)]
pub(super) fn col2im_2_store<T: Float>(g: &ConvGeom, col: &[T], grp: usize, dxn: &mut [T]) {
    let (p, wo, w, pw, dw) = (g.ho * g.wo, g.wo, g.w, g.p.pad.1, g.p.dilation.1);
    let (sh, phd, dh) = (g.p.stride.0, g.p.pad.0, g.p.dilation.0);
    let len = phase_len_2(g);
    let mut ph = [[T::zero(); PAD_ROW / 2]; 2];
    for c in 0..g.cg() {
        let plane = &mut dxn[(grp * g.cg() + c) * g.h * w..][..g.h * w];
        for (ih, dst) in plane.chunks_exact_mut(w).enumerate() {
            for q in &mut ph {
                fill_zero(&mut q[..len]);
            }
            for i in 0..g.kh {
                // The output row oh with oh * sh + i * dh - pad = ih, if any.
                let Some(t) = (ih + phd).checked_sub(i * dh) else {
                    continue;
                };
                if t % sh != 0 || t / sh >= g.ho {
                    continue;
                }
                let oh = t / sh;
                for j in 0..g.kw {
                    let r = (c * g.kh + i) * g.kw + j;
                    let src = &col[r * p + oh * wo..][..wo];
                    let x0 = j * dw;
                    let d = &mut ph[x0 % 2][x0 / 2..x0 / 2 + wo];
                    for (d, s) in d.iter_mut().zip(src) {
                        *d += *s;
                    }
                }
            }
            let (a, b) = (&ph[pw % 2][pw / 2..], &ph[1 - pw % 2][pw.div_ceil(2)..]);
            interleave(dst, a, b);
        }
    }
}

/// `dst[2v] = a[v]`, `dst[2v + 1] = b[v]` (and the last element of an odd-length dst from a),
/// 8 pairs at a time in fixed-size blocks so the compiler emits vector shuffles.
#[inline(always)]
pub(super) fn interleave<T: Float>(dst: &mut [T], a: &[T], b: &[T]) {
    let n = dst.len() / 2;
    let full = n / 8 * 8;
    for v0 in (0..full).step_by(8) {
        let d: &mut [T; 16] = (&mut dst[2 * v0..2 * v0 + 16]).try_into().expect("16");
        let u: &[T; 8] = a[v0..v0 + 8].try_into().expect("8");
        let v: &[T; 8] = b[v0..v0 + 8].try_into().expect("8");
        for t in 0..8 {
            d[2 * t] = u[t];
            d[2 * t + 1] = v[t];
        }
    }
    for v in full..n {
        dst[2 * v] = a[v];
        dst[2 * v + 1] = b[v];
    }
    if dst.len() % 2 == 1 {
        dst[2 * n] = a[n];
    }
}
