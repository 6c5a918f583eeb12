//! Fast convolution: one packed GEMM engine fed two ways, with bounded workspace (kernels.md has
//! the full map and the measurements).
//!
//! - **Direct** (`direct_fwd`, AVX2 or AVX-512, output rows that fill the pixel slots): B is read
//!   in place from a zero-padded, stride-phase-split copy of the image (`Pad`), through a
//!   per-KC-block table of tap offsets; forward `out = bias + W B`, and for stride 1
//!   (`direct_dx`) dx as the correlation of padded dout with the flipped, transposed weights.
//! - **Winograd F(2x2, 3x3)** (`wino_fwd`, `wino_dx`; `winograd.rs`): 3 x 3 stride-1
//!   convolutions with 96+ channels per group, forward and dx, 16 GEMMs on transformed tiles.
//! - **im2col** (everything else): the column matrix of one image and group,
//!
//!   ```text
//!   col[(c*KH + i)*KW + j][oh*WO + ow] <- x[n][g*C/G + c][oh*sh + i*dh - ph][ow*sw + j*dw - pw]
//!   ```
//!
//!   (0 in the padding), built tile by tile and packed one KC block at a time while in L2:
//!   forward `out = [W | b] [col; 1]`; dx = col2im(W^T dout), dout read in place where that
//!   pays (`dcol_in_place_pays`), col2im storing each dx row once at column stride 2 when one
//!   tile covers the image (`col2im_2_store`).
//! - dw (both): per chunk of images (`DW_CHUNKS` chunks, a function of N only; parallel over
//!   chunks) `part (F x K) += dout_tile * col_tile^T`, A (dout) read in place at the AVX2 and
//!   AVX-512 levels, B's tap panels packed just in time from the padded copy or the im2col tile
//!   by register transposes; dw = `part[0] + part[1] + ...` in chunk order. Fixed partition,
//!   fixed combine order: bitwise identical for any thread count.
//! - db: f64 partial sums per chunk, inside the dw jobs, added in chunk order.
//!
//! Workspace: the packed weights, per thread the larger of what a path needs (padded copy, or a
//! KC block / tile of columns and a packed B block), and `min(N, DW_CHUNKS)` partial copies of
//! dw; all of it the caller's (`*_workspace_len` gives the exact size). The kernels allocate only
//! O(threads) bookkeeping.

use super::winograd::{self, Wino};
use crate::packed_gemm::{self as pg, BSrc, Shape};
use crate::parallel::{Parallelism, Slots};
use crate::params::ConvGeom;
use crate::scalar::Float;
use crate::simd::multiversion;

/// Target size of one column tile in f32 elements (768 KB): the tile and the GEMM's packed copy
/// of it stay in L2. f64 tiles hold the same element count (twice the bytes, still in L2).
const TILE_ELEMS: usize = 192 * 1024;

/// Output rows per column tile: a function of the shape only.
fn tile_rows(g: &ConvGeom) -> usize {
    let most = (TILE_ELEMS / (g.k_rows() * g.wo).max(1)).clamp(1, g.ho);
    // Equal tiles: 32 rows at most 10 a tile are 4 x 8, not 10 + 10 + 10 + 2 (a last tile of
    // few pixels still streams all the packed weights).
    g.ho.div_ceil(g.ho.div_ceil(most))
}

/// Image chunks of the dw reduction: a constant, so the partition depends on N only.
const DW_CHUNKS: usize = 4;

fn dw_chunks(g: &ConvGeom) -> usize {
    DW_CHUNKS.min(g.n).max(1)
}

/// Images of dw chunk `c`: an even split of 0..N.
fn chunk_images(g: &ConvGeom, c: usize) -> std::ops::Range<usize> {
    let k = dw_chunks(g);
    (c * g.n / k)..((c + 1) * g.n / k)
}

/// Elements of one forward slot: one KC block of a column tile and its packed copy (im2col
/// runs a KC block of rows at a time, so the block is packed while it is still in L2).
fn fwd_slot_len(g: &ConvGeom, s: Shape) -> usize {
    if let Some(wg) = wino_fwd(g, s) {
        return wg.slot_len(s);
    }
    if direct_fwd(g, s) {
        return fwd_pad(g).len(s);
    }
    let pt = g.wo * tile_rows(g);
    s.kc.min(g.k_rows() + 1) * pt + pg::packed_b_len(s, g.k_rows() + 1, pt)
}

/// Elements of one backward slot: the larger of what dx and dw use.
fn bwd_slot_len(g: &ConvGeom, s: Shape) -> usize {
    let pt = g.wo * tile_rows(g);
    let dx = if let Some(wg) = wino_dx(g, s) {
        wg.slot_len(s)
    } else if direct_dx(g, s) {
        dx_pad(g).len(s)
    } else {
        g.k_rows() * pt + pg::packed_b_len(s, g.fg(), pt)
    };
    let dw = match wino_dw(g, s) {
        Some(wg) => wg.dw_slot_len(s),
        None => dw_src_len(g, s) + dw_abuf_len(g, s) + pg::b_panels_bbuf_len(s),
    };
    dx.max(dw)
}

/// Where dw reads the column tile from: a padded copy of the image (direct shapes) or an
/// im2col tile.
fn dw_src_len(g: &ConvGeom, s: Shape) -> usize {
    if direct_fwd(g, s) {
        fwd_pad(g).len(s)
    } else {
        g.k_rows() * g.wo * tile_rows(g)
    }
}

/// dw's packed dout block: none where the A-in-place kernels read dout directly.
fn dw_abuf_len(g: &ConvGeom, s: Shape) -> usize {
    if pg::direct_available(s) {
        0
    } else {
        pg::b_panels_abuf_len(s, g.fg())
    }
}

/// The dw part of a backward slot: (column source, packed dout block, packed tap panel).
fn dw_split<'a, T>(
    g: &ConvGeom,
    s: Shape,
    ws: &'a mut [T],
) -> (&'a mut [T], &'a mut [T], &'a mut [T]) {
    let (src, rest) = ws.split_at_mut(dw_src_len(g, s));
    let (abuf, rest) = rest.split_at_mut(dw_abuf_len(g, s));
    (src, abuf, &mut rest[..pg::b_panels_bbuf_len(s)])
}

/// Packed weights: every group's (F/G x (K + 1)) block for the im2col forward (the bias as an
/// extra column; the direct forward packs F/G x K), its transpose (K x F/G) for the im2col dx, or
/// the flipped transpose (C/G x F/G*KH*KW) for the direct dx, or Winograd's 16 transformed
/// matrices (forward or dx); the largest, so one size serves every path. Sized with the default shape, whose panels are never shorter than
/// `shape_for_rows`'s.
fn packed_w_len<T: Float>(g: &ConvGeom, s: Shape) -> usize {
    let kk = g.kh * g.kw;
    let wino = |w: Option<Wino>| w.map_or(0, |w| w.packed_len::<T>());
    g.groups()
        * pg::packed_a_len(s, g.fg(), g.k_rows() + 1)
            .max(pg::packed_a_len(s, g.k_rows(), g.fg()))
            .max(pg::packed_a_len(s, g.cg(), g.fg() * kk))
            .max(wino(wino_fwd(g, s)))
            .max(wino(wino_dx(g, s)))
}

/// Channels per group (in and out) from which Winograd runs. Each transformed value feeds
/// `cout` (input side) or comes from `cin` (output side) multiply-adds, so the transforms' share
/// falls with the channel counts: on the Zen 5, 2 threads, res_conv (64 channels) ran the same
/// either way (f32 5.4-5.8 ms Winograd, 5.2-6.0 direct) while res2_conv (128) gained 1.3x.
const WINO_MIN_CHANNELS: usize = 96;

/// Whether the convolution is the kind Winograd F(2x2, 3x3) computes: 3 x 3, stride 1,
/// undilated.
fn wino_kind(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.p.stride == (1, 1) && g.p.dilation == (1, 1)
}

/// `wg` (a correlation of a `wino_kind` convolution) where Winograd pays and fits: enough
/// channels, a level with the explicit GEMM kernels, at least one NR panel of tiles, and a
/// workspace within one image's column matrix (K x P, the bound of every path).
fn wino_if(g: &ConvGeom, s: Shape, wg: Wino) -> Option<Wino> {
    let tiles = wg.ho().div_ceil(2) * wg.wo().div_ceil(2);
    (pg::direct_available(s)
        && wg.cin >= WINO_MIN_CHANNELS
        && wg.cout >= WINO_MIN_CHANNELS
        && tiles >= s.nr
        && wg.slot_len(s) <= g.k_rows() * g.pixels())
    .then_some(wg)
}

/// The forward as Winograd, where it applies.
fn wino_fwd(g: &ConvGeom, s: Shape) -> Option<Wino> {
    if !wino_kind(g) {
        return None;
    }
    let wg = Wino {
        cin: g.cg(),
        cout: g.fg(),
        h: g.h,
        w: g.w,
        ph: g.p.pad.0,
        pw: g.p.pad.1,
    };
    wino_if(g, s, wg)
}

/// dw as Winograd (the forward's tiles run backwards; see `winograd::dw_image`), where the
/// forward would be Winograd and its per-thread workspace fits the same bound.
fn wino_dw(g: &ConvGeom, s: Shape) -> Option<Wino> {
    wino_fwd(g, s).filter(|wg| wg.dw_slot_len(s) <= g.k_rows() * g.pixels())
}

/// dx as Winograd (the correlation of dout padded by 2 - pad with the flipped, transposed
/// weights; see `direct_fwd`), where it applies.
fn wino_dx(g: &ConvGeom, s: Shape) -> Option<Wino> {
    if !wino_kind(g) || g.p.pad.0 > 2 || g.p.pad.1 > 2 {
        return None;
    }
    let wg = Wino {
        cin: g.fg(),
        cout: g.cg(),
        h: g.ho,
        w: g.wo,
        ph: 2 - g.p.pad.0,
        pw: 2 - g.p.pad.1,
    };
    wino_if(g, s, wg)
}

/// The direct (implicit-GEMM) convolution, used where it applies (a SIMD level with direct
/// kernels, and output rows that fill the NR-pixel tiles): the GEMM reads its B operand in place
/// from a zero-padded copy of the image, `B[(c, i, j)][(oh, ow)] = xpad[c][oh*sh + i*dh][ow*sw +
/// j*dw]`. The copy is split into `sw` column phases (column u of phase q is padded column
/// u*sw + q), so for a fixed tap the NR pixels of one output row are NR consecutive elements of
/// one phase row: no column matrix, no packing of B. Per image the extra memory is the copy (C x
/// (H + 2ph) x (W + 2pw) and a row of slack: for a 3 x 3 kernel at stride 1 a ninth of the
/// column matrix). The KC blocks are the GEMM's; an offset table (one entry per row of B in the
/// block) turns (c, i, j) into a distance in the copy.
///
/// The data gradient of a stride-1, undilated convolution is itself one (a "full" correlation):
/// `dx[c][y][x] = sum_{f,i,j} W[f][c][KH-1-i][KW-1-j] * dpad[f][y + i][x + j]`, with dout
/// zero-padded by KH-1-ph rows and KW-1-pw columns, so dx runs through the same kernel with the
/// flipped, transposed weights and needs no col2im.
fn direct_fwd(g: &ConvGeom, s: Shape) -> bool {
    // Slots are one output row's NR / 2 pixels: a row of 8 in 16-pixel slots would waste half.
    pg::direct_available(s) && g.wo.next_multiple_of(pg::direct_slot(s)) * 3 <= g.wo * 4
}

/// Whether dx runs direct: a stride-1, undilated convolution whose padding is less than the
/// kernel (the correlation's padding KH-1-ph is then not negative), with enough input channels
/// per group to fill the MR-row panels (dx's rows are input channels; with C = 3 the im2col path
/// is faster), and input rows that fill the tiles.
fn direct_dx(g: &ConvGeom, s: Shape) -> bool {
    pg::direct_available(s)
        && g.p.stride == (1, 1)
        && g.p.dilation == (1, 1)
        && g.p.pad.0 < g.kh
        && g.p.pad.1 < g.kw
        && g.cg() >= DIRECT_DX_MIN_CHANNELS
        && g.w.next_multiple_of(pg::direct_slot(s)) * 3 <= g.w * 4
}

/// Input channels per group from which dx runs direct.
const DIRECT_DX_MIN_CHANNELS: usize = 16;

/// The forward's (and dw's) padded copy of x.
fn fwd_pad(g: &ConvGeom) -> Pad {
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
fn dx_pad(g: &ConvGeom) -> Pad {
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
struct Pad {
    planes: usize,
    h: usize,
    w: usize,
    pad: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
}

impl Pad {
    fn hp(&self) -> usize {
        self.h + 2 * self.pad.0
    }
    /// Width of a phase row.
    fn wq(&self) -> usize {
        (self.w + 2 * self.pad.1).div_ceil(self.stride.1)
    }
    fn plane(&self) -> usize {
        self.hp() * self.wq()
    }
    fn block(&self) -> usize {
        self.planes * self.plane()
    }
    /// Distance between the starts of consecutive output rows.
    fn pitch(&self) -> usize {
        self.stride.0 * self.wq()
    }
    /// Where tap (plane, i, j) of output pixel (0, 0) is.
    fn tap(&self, pl: usize, i: usize, j: usize) -> usize {
        let col = j * self.dil.1;
        (col % self.stride.1) * self.block()
            + pl * self.plane()
            + i * self.dil.0 * self.wq()
            + col / self.stride.1
    }
    /// Elements of the copy, with NR of slack at the end for the last row's partial tile.
    fn len(&self, s: Shape) -> usize {
        self.stride.1 * self.block() + s.nr
    }
}

/// Output rows per row block of the direct convolution: the block's C (F/G x rows x WO) stays
/// in L1/L2 across the KC blocks that add into it.
fn direct_rows(m: usize, ho: usize, wo: usize) -> usize {
    let most = (DIRECT_C_ELEMS / (m * wo).max(1)).clamp(1, ho.max(1));
    ho.div_ceil(ho.div_ceil(most).max(1)).max(1)
}

/// Target size of the C block of the direct convolution, elements (128 KB of f32: with the
/// weights' KC block and the padded image it stays in a 512 KB L2; 32K measured 1-2% faster
/// than 16K on the forwards, 64K no better).
const DIRECT_C_ELEMS: usize = 32 * 1024;

/// `dst` = the planes of `src` zero-padded and phase-split as `pd` says, then zeroed slack.
fn pad_planes<T: Float>(src: &[T], pd: Pad, dst: &mut [T]) {
    let (wq, hw, (ph, pw), sw) = (pd.wq(), pd.h * pd.w, pd.pad, pd.stride.1);
    let (body, slack) = dst.split_at_mut(sw * pd.block());
    if sw == 2 && 2 * wq <= PAD_ROW {
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
                if sw == 1 {
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

/// Longest padded row `pad_planes_2` builds on the stack.
const PAD_ROW: usize = 1024;

/// `pad_planes` for column stride 2: each input row is padded once into a stack row, which one
/// loop splits into the even and odd phases (per-phase strided gathers cost a few calls per row:
/// 10% of the notebook convolution's forward).
fn pad_planes_2<T: Float>(src: &[T], pd: Pad, body: &mut [T]) {
    let (wq, hw, (ph, pw)) = (pd.wq(), pd.h * pd.w, pd.pad);
    let mut buf = [T::zero(); PAD_ROW];
    let row = &mut buf[..2 * wq];
    let (even, odd) = body.split_at_mut(pd.block());
    let planes = even
        .chunks_exact_mut(pd.plane())
        .zip(odd.chunks_exact_mut(pd.plane()));
    for (s, (e, o)) in src.chunks_exact(hw).zip(planes) {
        for d in [&mut *e, &mut *o] {
            fill_zero(&mut d[..ph * wq]);
            fill_zero(&mut d[(ph + pd.h) * wq..]);
        }
        for (r, sr) in s.chunks_exact(pd.w).enumerate() {
            // row[..pw] and row[pw + w..] stay zero from the start.
            copy_short(&mut row[pw..pw + pd.w], sr);
            let er = &mut e[(ph + r) * wq..(ph + r + 1) * wq];
            let or = &mut o[(ph + r) * wq..(ph + r + 1) * wq];
            for ((a, b), pair) in er.iter_mut().zip(or.iter_mut()).zip(row.chunks_exact(2)) {
                *a = pair[0];
                *b = pair[1];
            }
        }
    }
}

/// One direct convolution: `c` (m rows of ho x wo pixels, row stride ldc) = bias + A * B, A
/// packed (m x K, K = planes x kh x kw, K's order (plane, i, j)) and B read in place from the
/// padded planes `plane0..plane0 + planes` of `src`.
#[allow(clippy::too_many_arguments)]
fn direct_conv<T: Float>(
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

/// Elements of one image chunk's dw partial: F x K, or for Winograd dw each group's dU (16 x
/// F/G x C/G; 16/9 of F x K).
fn dw_part_len(g: &ConvGeom, s: Shape) -> usize {
    match wino_dw(g, s) {
        Some(wg) => g.groups() * wg.du_len(),
        None => g.f * g.k_rows(),
    }
}

/// dw partials: one per image chunk.
fn staged_len(g: &ConvGeom, s: Shape) -> usize {
    dw_chunks(g) * dw_part_len(g, s)
}

/// Exact workspace (elements of T) `forward_into` needs with `threads` threads at the SIMD level
/// in force.
pub fn forward_workspace_len<T: Float>(g: &ConvGeom, threads: usize) -> usize {
    let s = pg::shape::<T>();
    packed_w_len::<T>(g, s) + threads.max(1) * fwd_slot_len(g, s)
}

/// `forward_workspace_len` with overflow checking (for absurd thread counts).
pub fn forward_workspace_len_checked<T: Float>(g: &ConvGeom, threads: usize) -> Option<usize> {
    let s = pg::shape::<T>();
    threads
        .max(1)
        .checked_mul(fwd_slot_len(g, s))?
        .checked_add(packed_w_len::<T>(g, s))
}

/// `backward_workspace_len` with overflow checking (for absurd thread counts).
pub fn backward_workspace_len_checked<T: Float>(g: &ConvGeom, threads: usize) -> Option<usize> {
    let s = pg::shape::<T>();
    threads
        .max(1)
        .checked_mul(bwd_slot_len(g, s))?
        .checked_add(staged_len(g, s))?
        .checked_add(packed_w_len::<T>(g, s))
}

/// Exact workspace (elements of T) `backward_into` needs with `threads` threads.
pub fn backward_workspace_len<T: Float>(g: &ConvGeom, threads: usize) -> usize {
    let s = pg::shape::<T>();
    threads.max(1) * bwd_slot_len(g, s) + staged_len(g, s) + packed_w_len::<T>(g, s)
}

/// Row r of a group's column matrix as its tap: (channel in the group, kernel row, kernel
/// column).
#[inline(always)]
fn tap_of(r: usize, kh: usize, kw: usize) -> (usize, usize, usize) {
    (r / (kh * kw), (r / kw) % kh, r % kw)
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
fn gather_strided<T: Copy>(dst: &mut [T], src: &[T], sw: usize) {
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
fn fill_zero<T: Float>(dst: &mut [T]) {
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
    fn im2col_rows<T>(g: &ConvGeom, xn: &[T], grp: usize, r0: usize, r1: usize, oh0: usize, oh1: usize, col: &mut [T]) {
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
    fn col2im<T>(g: &ConvGeom, col: &[T], grp: usize, oh0: usize, oh1: usize, dxn: &mut [T]) {
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
fn phase_len_2(g: &ConvGeom) -> usize {
    (g.wo + ((g.kw - 1) * g.p.dilation.1) / 2).max((g.w + g.p.pad.1) / 2 + 2)
}

/// `col2im` at column stride 2. Output column ow of tap j lands at padded input column
/// X = 2 ow + j dw: in phase X % 2, at X / 2 = ow + (j dw) / 2. So per (channel, kernel row,
/// output row) the kernel taps' rows are added contiguously into two phase rows, which are then
/// added into the input row as interleaved pairs: no strided scatter (the strided adds were 14%
/// of the notebook convolution's backward).
#[inline(always)]
fn col2im_2<T: Float>(g: &ConvGeom, col: &[T], grp: usize, oh0: usize, oh1: usize, dxn: &mut [T]) {
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
fn col2im_stores(g: &ConvGeom) -> bool {
    g.p.stride.1 == 2 && phase_len_2(g) <= PAD_ROW / 2 && tile_rows(g) >= g.ho
}

/// `col2im_2` for a tile that covers every output row: each input row of the group's channels
/// is written once (stored, not added). Per (channel, input row), the rows of every (kernel row,
/// output row) pair that lands there are gathered into the two phase rows, which are then stored
/// interleaved; rows nothing lands on are stored as zeros.
#[inline(always)]
fn col2im_2_store<T: Float>(g: &ConvGeom, col: &[T], grp: usize, dxn: &mut [T]) {
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
fn interleave<T: Float>(dst: &mut [T], a: &[T], b: &[T]) {
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
    let sh = pg::shape::<T>();
    debug_assert!(ws.len() >= forward_workspace_len::<T>(g, threads));
    debug_assert_eq!(out.len(), g.n * g.f * g.pixels());
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    if let Some(wg) = wino_fwd(g, sh) {
        return forward_winograd(g, wg, x, w, b, out, ws, par);
    }
    if direct_fwd(g, sh) {
        return forward_direct(g, x, w, b, out, ws, par);
    }
    // The weights are packed once per call and shared by every image and tile, with the bias as
    // an extra column (K + 1): B gets a row of ones, so the GEMM writes out = W col + b directly
    // (its first KC block stores) and out is neither pre-filled nor read.
    let k1 = k + 1;
    // Row panels fitted to F/G (5-row panels for 25 filters); never larger than `sh`'s packing,
    // so the workspace sized with `sh` holds it.
    let sa = pg::shape_for_rows::<T>(fg);
    let (wp, ws) = ws.split_at_mut(packed_w_len::<T>(g, sh));
    let ga = pg::packed_a_len(sa, fg, k1);
    debug_assert!(g.groups() * ga <= wp.len());
    for grp in 0..g.groups() {
        let wg = &w[grp * fg * k..(grp + 1) * fg * k];
        let bg = &b[grp * fg..(grp + 1) * fg];
        let get = |i: usize, kk: usize| if kk < k { wg[i * k + kk] } else { bg[i] };
        pg::pack_a_with(sa, fg, k1, get, &mut wp[grp * ga..(grp + 1) * ga]);
    }
    let wp = &*wp;
    let slots = Slots::new(ws, threads, fwd_slot_len(g, sh));
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

/// The forward as Winograd F(2x2, 3x3) (see `wino_fwd`), per image.
#[allow(clippy::too_many_arguments)]
fn forward_winograd<T: Float>(
    g: &ConvGeom,
    wg: Wino,
    x: &[T],
    w: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let sh = pg::shape::<T>();
    let (p, fg, cg, chw) = (g.pixels(), g.fg(), g.cg(), g.c * g.h * g.w);
    let (wp, ws) = ws.split_at_mut(packed_w_len::<T>(g, sh));
    let gl = wg.packed_len::<T>();
    for grp in 0..g.groups() {
        let wgr = &w[grp * fg * cg * 9..(grp + 1) * fg * cg * 9];
        let k =
            |o: usize, i: usize| -> [T; 9] { std::array::from_fn(|t| wgr[(o * cg + i) * 9 + t]) };
        winograd::pack_weights(&wg, k, &mut wp[grp * gl..(grp + 1) * gl]);
    }
    let wp = &*wp;
    let slots = Slots::new(ws, par.threads(), fwd_slot_len(g, sh));
    par.for_each_chunk(out, g.f * p, &|n, on, slot| {
        slots.with(slot, |ws| {
            let xn = &x[n * chw..(n + 1) * chw];
            for grp in 0..g.groups() {
                winograd::conv_image(
                    &wg,
                    &wp[grp * gl..(grp + 1) * gl],
                    &xn[grp * cg * g.h * g.w..],
                    &mut on[grp * fg * p..(grp + 1) * fg * p],
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
    x: &[T],
    w: &[T],
    b: &[T],
    out: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let sh = pg::shape::<T>();
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let sa = pg::shape_for_rows::<T>(fg);
    let (wp, ws) = ws.split_at_mut(packed_w_len::<T>(g, sh));
    let ga = pg::packed_a_len(sa, fg, k);
    for grp in 0..g.groups() {
        let wg = &w[grp * fg * k..(grp + 1) * fg * k];
        pg::pack_a(sa, fg, k, wg, k, 1, &mut wp[grp * ga..(grp + 1) * ga]);
    }
    let wp = &*wp;
    let pd = fwd_pad(g);
    let slots = Slots::new(ws, par.threads(), fwd_slot_len(g, sh));
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

/// Backward into caller buffers: dx (like x), dw (like w), db (F), `ws` as for the forward.
///
/// The work is `min(N, DW_CHUNKS)` fixed chunks of images; each chunk accumulates its partial
/// dw and (in f64) db over its images in order, and dw, db are the sums of the partials in
/// chunk order. dx is per image. When the chunks split evenly over the threads, a chunk's job
/// also does its images' dx, so each image's dout is read from memory once for all three (one
/// parallel phase instead of two); otherwise dx runs first, one job per image. Either way every
/// value is computed by the same operations in the same order: the bits do not depend on it.
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
    let sh = pg::shape::<T>();
    debug_assert!(ws.len() >= backward_workspace_len::<T>(g, threads));
    let chw = g.c * g.h * g.w;
    let (wp, ws) = ws.split_at_mut(packed_w_len::<T>(g, sh));
    let (ws, staged) = ws.split_at_mut(threads.max(1) * bwd_slot_len(g, sh));
    let staged = &mut staged[..staged_len(g, sh)];
    let slots = Slots::new(ws, threads, bwd_slot_len(g, sh));
    let dxw = DxWeights::pack(g, w, wp);
    let dxw = &dxw;
    let chunks = dw_chunks(g);
    // Fused when the chunks split evenly over the threads (3 threads on 4 chunks would leave
    // dx unbalanced too).
    let fused = chunks.is_multiple_of(threads.max(1));
    if !fused {
        par.for_each_chunk(dx, chw, &|n, dxn, slot| {
            slots.with(slot, |ws| dx_image(g, dout, n, dxn, dxw, ws))
        });
    }
    // Per chunk: its partial dw, its f64 partial db, and (fused) its images' dx.
    let mut dbp = vec![0.0f64; chunks * g.f];
    let fk = dw_part_len(g, sh);
    let wdw = wino_dw(g, sh);
    let mut jobs = Vec::with_capacity(chunks);
    let (mut dx_rest, mut db_rest, mut st_rest) = (&mut dx[..], &mut dbp[..], &mut staged[..]);
    for c in 0..chunks {
        let imgs = chunk_images(g, c);
        let (dxc, r) = std::mem::take(&mut dx_rest).split_at_mut(imgs.len() * chw);
        dx_rest = r;
        let (dbc, r) = std::mem::take(&mut db_rest).split_at_mut(g.f);
        db_rest = r;
        let (part, r) = std::mem::take(&mut st_rest).split_at_mut(fk);
        st_rest = r;
        jobs.push((imgs, part, dbc, fused.then_some(dxc)));
    }
    par.for_each_item(jobs, &|(imgs, part, dbc, dxc), slot| {
        part.fill(T::zero());
        slots.with(slot, |ws| {
            let n0 = imgs.start;
            let mut dxc = dxc;
            for n in imgs {
                if let Some(dxc) = dxc.as_deref_mut() {
                    dx_image(
                        g,
                        dout,
                        n,
                        &mut dxc[(n - n0) * chw..(n - n0 + 1) * chw],
                        dxw,
                        ws,
                    );
                }
                match &wdw {
                    Some(wg) => {
                        let (cg, fg, hw, p) = (g.cg(), g.fg(), g.h * g.w, g.pixels());
                        for grp in 0..g.groups() {
                            winograd::dw_image(
                                wg,
                                &x[n * chw + grp * cg * hw..n * chw + (grp + 1) * cg * hw],
                                &dout[(n * g.f + grp * fg) * p..(n * g.f + (grp + 1) * fg) * p],
                                &mut part[grp * wg.du_len()..(grp + 1) * wg.du_len()],
                                ws,
                            );
                        }
                    }
                    None => dw_image(g, x, dout, n, part, ws),
                }
                let dn = &dout[n * g.f * g.pixels()..(n + 1) * g.f * g.pixels()];
                for (s, row) in dbc.iter_mut().zip(dn.chunks_exact(g.pixels().max(1))) {
                    *s += crate::norm::fast::sum_f64(row);
                }
            }
        })
    });
    // dw and db: the chunks' partials added in chunk order into the first (for Winograd these
    // are dU, then transformed).
    let (first, rest) = staged.split_at_mut(fk);
    for part in rest.chunks_exact(fk) {
        for (d, v) in first.iter_mut().zip(part) {
            *d += *v;
        }
    }
    match &wdw {
        Some(wg) => {
            let (ul, wl) = (wg.du_len(), wg.cout * wg.cin * 9);
            for grp in 0..g.groups() {
                winograd::dw_from_du(
                    wg,
                    &first[grp * ul..(grp + 1) * ul],
                    &mut dw[grp * wl..(grp + 1) * wl],
                );
            }
        }
        None => dw.copy_from_slice(first),
    }
    for (f, d) in db.iter_mut().enumerate() {
        *d = T::from_f(
            (0..chunks)
                .map(|c| dbp[c * g.f + f])
                .fold(0.0, |a, v| a + v),
        );
    }
}

/// The weights as dx's GEMM wants them, packed once per call.
enum DxWeights<'a, T> {
    /// Winograd's U for the flipped, transposed weights (see `wino_dx`): per group `gl`
    /// elements.
    Winograd { wp: &'a [T], wg: Wino, gl: usize },
    /// Flipped and transposed for the direct correlation (see `direct_fwd`): per group a
    /// (C/G x F/G*KH*KW) block of `sa`'s packing, `ga` elements each.
    Direct { wp: &'a [T], sa: Shape, ga: usize },
    /// W[g]^T (K x F/G) for dcol = W^T dout: its first `rows6` rows in panels of the default
    /// shape, the rest (a multiple of 5) in 5-row panels at `off5`, so no panel is padded
    /// (`six_five_rows`); per group `ga` elements. `in_place`: whether dx's GEMM reads dout in
    /// place (`dcol_in_place_pays`, decided once per call; the split packing goes with it).
    Im2col {
        wp: &'a [T],
        ga: usize,
        rows6: usize,
        off5: usize,
        in_place: bool,
    },
}

/// The rows of a K-row A to pack in 6-row panels so that the rest fills 5-row panels exactly
/// (27 = 2 x 6 + 3 x 5: the notebook's 3 x 3 x 3 taps, which 6-row panels pad to 30); `k` when
/// that is impossible or needless (a multiple of 6). Only for a 6-row default shape (the
/// AVX2 level, where the in-place kernels have both heights).
fn six_five_rows(s: Shape, k: usize) -> usize {
    if s.mr != 6 {
        return k;
    }
    (0..6)
        .map(|b| 5 * b)
        .find(|&r5| r5 <= k && (k - r5).is_multiple_of(6))
        .map_or(k, |r5| k - r5)
}

impl<'a, T: Float> DxWeights<'a, T> {
    fn pack(g: &ConvGeom, w: &[T], wp: &'a mut [T]) -> Self {
        let (k, fg, cg, kk) = (g.k_rows(), g.fg(), g.cg(), g.kh * g.kw);
        let sh = pg::shape::<T>();
        if let Some(wg) = wino_dx(g, sh) {
            let gl = wg.packed_len::<T>();
            for grp in 0..g.groups() {
                // Kernel (out c, in f) = W[grp*fg + f][c] rotated by 180 degrees.
                let wgr = &w[grp * fg * cg * kk..(grp + 1) * fg * cg * kk];
                let k = |c: usize, f: usize| -> [T; 9] {
                    std::array::from_fn(|t| wgr[(f * cg + c) * 9 + 8 - t])
                };
                winograd::pack_weights(&wg, k, &mut wp[grp * gl..(grp + 1) * gl]);
            }
            return DxWeights::Winograd { wp, wg, gl };
        }
        if direct_dx(g, sh) {
            let sa = pg::shape_for_rows::<T>(cg);
            let kd = fg * kk;
            let ga = pg::packed_a_len(sa, cg, kd);
            for grp in 0..g.groups() {
                // A[c][(f, i, j)] = W[grp*fg + f][c][KH-1-i][KW-1-j]: column (f, t = i*KW + j)
                // starts at W[grp*fg + f][0][KK-1-t], rows (c) KK apart.
                let wg = &w[grp * fg * cg * kk..(grp + 1) * fg * cg * kk];
                let col = |r: usize| (r / kk) * cg * kk + kk - 1 - r % kk;
                pg::pack_a_cols(sa, cg, kd, wg, kk, col, &mut wp[grp * ga..(grp + 1) * ga]);
            }
            DxWeights::Direct { wp, sa, ga }
        } else {
            // Split panels only where dout is read in place (the packed path would pack each
            // B block twice).
            let in_place =
                pg::direct_available(sh) && dcol_in_place_pays::<T>(sh, k, fg, g.pixels());
            let rows6 = if in_place { six_five_rows(sh, k) } else { k };
            let s5 = Shape { mr: 5, ..sh };
            let ga = pg::packed_a_len(sh, k, fg);
            let off5 = pg::packed_a_len(sh, rows6, fg);
            debug_assert!(off5 + pg::packed_a_len(s5, k - rows6, fg) <= ga);
            for grp in 0..g.groups() {
                let wg = &w[grp * fg * k..(grp + 1) * fg * k];
                let wpg = &mut wp[grp * ga..(grp + 1) * ga];
                let (p6, p5) = wpg.split_at_mut(off5);
                pg::pack_a(sh, rows6, fg, wg, 1, k, p6);
                if rows6 < k {
                    pg::pack_a(s5, k - rows6, fg, &wg[rows6..], 1, k, p5);
                }
            }
            DxWeights::Im2col {
                wp,
                ga,
                rows6,
                off5,
                in_place,
            }
        }
    }
}

/// dx of image n into dxn (every element written), with slot `ws`.
fn dx_image<T: Float>(
    g: &ConvGeom,
    dout: &[T],
    n: usize,
    dxn: &mut [T],
    dxw: &DxWeights<'_, T>,
    ws: &mut [T],
) {
    let sh = pg::shape::<T>();
    let (p, k, fg, cg) = (g.pixels(), g.k_rows(), g.fg(), g.cg());
    let fp = g.f * p;
    let dn = &dout[n * fp..(n + 1) * fp];
    match *dxw {
        DxWeights::Winograd { wp, wg, gl } => {
            let hw = g.h * g.w;
            for grp in 0..g.groups() {
                winograd::conv_image(
                    &wg,
                    &wp[grp * gl..(grp + 1) * gl],
                    &dn[grp * fg * p..],
                    &mut dxn[grp * cg * hw..(grp + 1) * cg * hw],
                    &[],
                    ws,
                );
            }
        }
        DxWeights::Direct { wp, sa, ga } => {
            // The full correlation of padded dout with the flipped weights, stored into dx.
            let pd = dx_pad(g);
            let hw = g.h * g.w;
            let dp = &mut ws[..pd.len(sh)];
            pad_planes(dn, pd, dp);
            for grp in 0..g.groups() {
                direct_conv(
                    sa,
                    cg,
                    (fg, g.kh, g.kw),
                    &wp[grp * ga..(grp + 1) * ga],
                    dp,
                    pd,
                    grp * fg,
                    (g.h, g.w),
                    &mut dxn[grp * cg * hw..],
                    hw,
                    &[],
                );
            }
        }
        DxWeights::Im2col {
            wp,
            ga,
            rows6,
            off5,
            in_place,
        } => {
            // dcol = W^T dout tile by tile, then col2im (which adds into dx unless it stores
            // every element).
            if !col2im_stores(g) {
                dxn.fill(T::zero());
            }
            let th = tile_rows(g);
            let (col, bbuf) = ws.split_at_mut(k * g.wo * th);
            // The A rows in 6-row panels, then those in 5-row ones: (shape, first row, rows,
            // offset of their packing).
            let parts = [
                (sh, 0, rows6, 0),
                (Shape { mr: 5, ..sh }, rows6, k - rows6, off5),
            ];
            for t in 0..g.ho.div_ceil(th) {
                let (oh0, oh1) = (t * th, ((t + 1) * th).min(g.ho));
                let pt = (oh1 - oh0) * g.wo;
                for grp in 0..g.groups() {
                    // dcol (k x pt) = W[g]^T * dout[n][g] tile (fg x pt, row stride p), stored
                    // (not accumulated), so the tile needs no zeroing first.
                    let bsrc = &dn[grp * fg * p + oh0 * g.wo..];
                    // B's rows are runs of dout: read them in place (an implicit GEMM with
                    // one pixel row of pt) when that beats packing (`in_place`) and the last
                    // row's over-read of up to NR - 1 stays inside dout.
                    let in_place =
                        in_place && (fg - 1) * p + pt.next_multiple_of(sh.nr) <= bsrc.len();
                    for &(s, r0, m, aoff) in &parts {
                        if m == 0 {
                            continue;
                        }
                        let ap = &wp[grp * ga + aoff..(grp + 1) * ga];
                        let c = &mut col[r0 * pt..(r0 + m) * pt];
                        if in_place {
                            dcol_in_place(s, m, fg, ap, bsrc, p, pt, c);
                        } else {
                            pg::gemm_packed_a(
                                s,
                                m,
                                pt,
                                fg,
                                ap,
                                BSrc::Rows { data: bsrc, ld: p },
                                c,
                                pt,
                                bbuf,
                                true,
                            );
                        }
                    }
                    col2im(g, &col[..k * pt], grp, oh0, oh1, dxn);
                }
            }
        }
    }
}

/// Whether dx's GEMM should read dout in place rather than pack it. An in-place B tile is fg
/// rows of one cache line each, p elements apart, re-read from L1 by each of the k / MR panels
/// of A; rows a multiple of 4 KB apart share an L1 set (8 ways), so with many rows per set the
/// tile falls back to L2 for every panel. In place pays when the rows fit their sets or A has
/// few panels (measured: nb_conv, 27 rows in 5 panels, 2 KB apart, 3-6% faster backward;
/// tlcn_conv, 147 rows in 25 panels, 8 KB apart in f64, 10-13% slower).
fn dcol_in_place_pays<T>(s: Shape, k: usize, fg: usize, p: usize) -> bool {
    const L1_SETS: usize = 64;
    const L1_WAYS: usize = 8;
    let lines = (p * std::mem::size_of::<T>()).div_ceil(64) % L1_SETS;
    let sets = L1_SETS / gcd(lines, L1_SETS);
    fg.div_ceil(sets.min(fg).max(1)) <= L1_WAYS || k.div_ceil(s.mr) <= 6
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// dcol (k x pt) = A (packed k x fg, the transposed weights) * B, B's row f being the run
/// `src[f * p..][..pt]` of dout, read in place by the implicit-GEMM kernel (one output row of
/// pt pixels; `src` must hold `(fg - 1) * p + pt` rounded up to NR).
#[allow(clippy::too_many_arguments)]
fn dcol_in_place<T: Float>(
    s: Shape,
    k: usize,
    fg: usize,
    ap: &[T],
    src: &[T],
    p: usize,
    pt: usize,
    col: &mut [T],
) {
    let mpad = k.next_multiple_of(s.mr);
    let mut off = [0usize; pg::MAX_KC];
    for (k0, kc) in pg::kc_blocks(s, fg) {
        assert!(kc <= pg::MAX_KC);
        for (kk, o) in off[..kc].iter_mut().enumerate() {
            *o = (k0 + kk) * p;
        }
        pg::direct_block(
            s,
            pg::DBlk {
                m: k,
                kc,
                ap: &ap[k0 * mpad..(k0 + kc) * mpad],
                src,
                off: &off[..kc],
                pitch: pt,
                oh: 0..1,
                wo: pt,
                c: &mut *col,
                ldc: pt,
                set: k0 == 0,
                bias: &[],
            },
        );
    }
}

/// Packs one B panel of dw's GEMM: `out[kk * NR + jj]` = row `j0 + jj` of the column tile at
/// pixel `k0 + kk`, where pixel q (output row q / wo, column q % wo) of tile row r is
/// `src[base(r) + (q / wo) * pitch + q % wo]`; 0 for rows past `rows`. One transpose per run of
/// pixels within an output row.
#[allow(clippy::too_many_arguments)]
fn pack_taps<T: Float>(
    s: Shape,
    src: &[T],
    base: impl Fn(usize) -> usize,
    (pitch, wo): (usize, usize),
    (k0, kc): (usize, usize),
    (j0, rows): (usize, usize),
    out: &mut [T],
) {
    let nb = s.nr.min(rows - j0);
    let mut b0 = [0usize; pg::MAX_NR];
    for (jj, b) in b0[..nb].iter_mut().enumerate() {
        *b = base(j0 + jj);
    }
    let mut bq = [0usize; pg::MAX_NR];
    let mut q = k0;
    while q < k0 + kc {
        let (qr, qc) = (q / wo, q % wo);
        let run = (wo - qc).min(k0 + kc - q);
        for (d, b) in bq[..nb].iter_mut().zip(&b0) {
            *d = b + qr * pitch + qc;
        }
        pg::transpose_runs(s, src, &bq[..nb], run, &mut out[(q - k0) * s.nr..]);
        q += run;
    }
}

/// dw of image n added into `part` (F x K, dw's layout): `part += dout_tile (F/G x pt) *
/// col_tile^T (pt x K)`, contracting over the tile's pixels. A is dout (rows are filters,
/// contiguous over pixels; a KC block is F/G x KC, in L2); B's panels (KC pixels x NR kernel
/// taps) are packed just in time from a zero-padded copy of the image where the convolution is
/// direct (tap (c, i, j) of the tile is a window of it) or else from an im2col tile, and used in
/// L1 against every A panel.
fn dw_image<T: Float>(g: &ConvGeom, x: &[T], dout: &[T], n: usize, part: &mut [T], ws: &mut [T]) {
    let sh = pg::shape::<T>();
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let fp = g.f * p;
    let sa = pg::shape_for_rows::<T>(fg);
    let th = tile_rows(g);
    let direct = direct_fwd(g, sh);
    let pd = fwd_pad(g);
    let (xs, abuf, bbuf) = dw_split(g, sh, ws);
    // dw_split leaves out the packed dout block exactly where A is read in place.
    debug_assert_eq!(pg::direct_available(sa), pg::direct_available(sh));
    let xn = &x[n * chw..(n + 1) * chw];
    if direct {
        pad_planes(xn, pd, xs);
    }
    for t in 0..g.ho.div_ceil(th) {
        let (oh0, oh1) = (t * th, ((t + 1) * th).min(g.ho));
        let pt = (oh1 - oh0) * g.wo;
        for grp in 0..g.groups() {
            if !direct {
                im2col_rows(g, xn, grp, 0, k, oh0, oh1, xs);
            }
            let xs = &*xs;
            // Tap r = (c, i, j) of the tile: a window of the padded image, or row r of the
            // im2col tile.
            let base = |r: usize| {
                if direct {
                    let (ch, i, j) = tap_of(r, g.kh, g.kw);
                    pd.tap(grp * g.cg() + ch, i, j) + oh0 * pd.pitch()
                } else {
                    r * pt
                }
            };
            let pitch = if direct { pd.pitch() } else { g.wo };
            let dn = &dout[n * fp + grp * fg * p + oh0 * g.wo..];
            let part = &mut part[grp * fg * k..(grp + 1) * fg * k];
            let pack_b = |k0, kc, j0, out: &mut [T]| {
                pack_taps(sa, xs, base, (pitch, g.wo), (k0, kc), (j0, k), out)
            };
            if pg::direct_available(sa) {
                // dout's rows are contiguous over the pixels: broadcast A from them in place.
                pg::gemm_b_panels_a_rows(sa, fg, k, pt, (dn, p), part, k, bbuf, false, pack_b);
            } else {
                pg::gemm_b_panels(
                    sa,
                    fg,
                    k,
                    pt,
                    part,
                    k,
                    abuf,
                    bbuf,
                    false,
                    |k0, kc, out| pg::pack_a(sa, fg, kc, &dn[k0..], p, 1, out),
                    pack_b,
                );
            }
        }
    }
}
