//! The fast backward: dx (col2im, direct or Winograd), dw per fixed chunk of images, db.

use super::ConvAlgorithm;
use super::forward::*;
use super::im2col::*;
use super::plan::Algos;
use super::plan::*;
use super::winograd::{self, Wino};
use crate::gemm::{self as pg, BSrc, Shape};
use crate::parallel::{Parallelism, Slots};
use crate::params::ConvGeom;
use crate::scalar::Float;

/// Backward into caller buffers: dx (like x, from w; skipped when `wdx` is None, as for a
/// network's first layer), dw (like w), db (F), `ws` as for the forward.
///
/// The work is `min(N, DW_CHUNKS)` fixed chunks of images; each chunk accumulates its partial
/// dw and (in f64) db over its images in order, and dw, db are the sums of the partials in
/// chunk order. dx is per image. When the chunks split evenly over the threads, a chunk's job
/// also does its images' dx, so each image's dout is read from memory once for all three (one
/// parallel phase instead of two); otherwise dx runs first, one job per image. Either way every
/// value is computed by the same operations in the same order: the bits do not depend on it.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_into<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    x: &[T],
    dout: &[T],
    wdx: Option<(&[T], &mut [T])>,
    dw: &mut [T],
    db: &mut [T],
    ws: &mut [T],
    par: Parallelism<'_>,
) {
    let threads = par.threads();
    debug_assert!(ws.len() >= backward_workspace_len(g, a, threads).unwrap_or(usize::MAX));
    let chw = g.c * g.h * g.w;
    let (wp, ws) = ws.split_at_mut(packed_w_len(g, a));
    let (ws, staged) = ws.split_at_mut(threads.max(1) * bwd_slot_len(g, a));
    let staged = &mut staged[..staged_len(g, a)];
    let slots = Slots::new(ws, threads, bwd_slot_len(g, a));
    let (dxw, mut dx) = match wdx {
        Some((w, dx)) => (Some(DxWeights::pack(g, a, w, wp, par)), Some(dx)),
        None => (None, None),
    };
    let dxw = dxw.as_ref();
    let chunks = dw_chunks(g);
    // Fused when the chunks split evenly over the threads (3 threads on 4 chunks would leave
    // dx unbalanced too).
    let fused = chunks.is_multiple_of(threads.max(1));
    // Images per dx job and per group of the fused loop: Winograd's blocks of whole images.
    let dx_ib = a.wino_dx(g).map_or(1, |wg| wg.ib());
    let dw_ib = a.wino_dw(g).map_or(1, |wg| wg.ib());
    if let (false, Some(dx), Some(dxw)) = (fused, dx.as_deref_mut(), dxw) {
        par.for_each_chunk(dx, dx_ib * chw, &|j, dxc, slot| {
            let nimg = dxc.len() / chw;
            slots.with(slot, |ws| {
                dx_images(g, a, dout, j * dx_ib, nimg, dxc, dxw, ws)
            })
        });
    }
    let fused = fused && dx.is_some();
    // Per chunk: its partial dw, its f64 partial db, and (fused) its images' dx.
    let mut dbp = vec![0.0f64; chunks * g.f];
    let fk = dw_part_len(g, a);
    let wdw = a.wino_dw(g);
    let mut jobs = Vec::with_capacity(chunks);
    let mut dx_rest: &mut [T] = dx.unwrap_or_default();
    let (mut db_rest, mut st_rest) = (&mut dbp[..], &mut staged[..]);
    for c in 0..chunks {
        let imgs = chunk_images(g, c);
        let (dxc, r) =
            std::mem::take(&mut dx_rest).split_at_mut(if fused { imgs.len() * chw } else { 0 });
        dx_rest = r;
        let (dbc, r) = std::mem::take(&mut db_rest).split_at_mut(g.f);
        db_rest = r;
        let (part, r) = std::mem::take(&mut st_rest).split_at_mut(fk);
        st_rest = r;
        jobs.push((imgs, part, dbc, fused.then_some(dxc)));
    }
    let gsz = dx_ib.max(dw_ib);
    par.for_each_item(jobs, &|(imgs, part, dbc, dxc), slot| {
        part.fill(T::zero());
        slots.with(slot, |ws| {
            let n0 = imgs.start;
            let mut dxc = dxc;
            // Groups of images, so that each image's dout is read for dx, dw and db together.
            for g0 in imgs.clone().step_by(gsz) {
                let nimg = gsz.min(imgs.end - g0);
                if let (Some(dxc), Some(dxw)) = (dxc.as_deref_mut(), dxw) {
                    let d = &mut dxc[(g0 - n0) * chw..(g0 - n0 + nimg) * chw];
                    dx_images(g, a, dout, g0, nimg, d, dxw, ws);
                }
                match &wdw {
                    Some(wg) => {
                        let (cg, fg, hw, p) = (g.cg(), g.fg(), g.h * g.w, g.pixels());
                        for grp in 0..g.groups() {
                            winograd::dw_images(
                                wg,
                                (&x[g0 * chw + grp * cg * hw..], chw),
                                (&dout[(g0 * g.f + grp * fg) * p..], g.f * p),
                                nimg,
                                &mut part[grp * wg.du_len()..(grp + 1) * wg.du_len()],
                                ws,
                            );
                        }
                    }
                    None => {
                        for n in g0..g0 + nimg {
                            dw_image(g, a, x, dout, n, part, ws);
                        }
                    }
                }
                for n in g0..g0 + nimg {
                    let dn = &dout[n * g.f * g.pixels()..(n + 1) * g.f * g.pixels()];
                    for (s, row) in dbc.iter_mut().zip(dn.chunks_exact(g.pixels().max(1))) {
                        *s += crate::norm::fast::sum_f64(row);
                    }
                }
            }
        })
    });
    // dw and db: the chunks' partials added in chunk order into the first (for Winograd these
    // are dU, then transformed).
    // Element ranges in parallel, each element's partials in chunk order: the same sums on
    // any thread count (Winograd's dU is 16/9 or 4 times F x K: a serial pass showed up).
    let (first, rest) = staged.split_at_mut(fk);
    const SUM_RUN: usize = 1 << 14;
    let rest = &*rest;
    par.for_each_chunk(first, SUM_RUN, &|j, run, _| {
        let r = j * SUM_RUN..j * SUM_RUN + run.len();
        for part in rest.chunks_exact(fk) {
            for (d, v) in run.iter_mut().zip(&part[r.clone()]) {
                *d += *v;
            }
        }
    });
    match &wdw {
        Some(wg) => {
            let (ul, wl) = (wg.du_len(), wg.cout * wg.cin * 9);
            for grp in 0..g.groups() {
                winograd::dw_from_du(
                    wg,
                    &first[grp * ul..(grp + 1) * ul],
                    &mut dw[grp * wl..(grp + 1) * wl],
                    par,
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
pub(super) enum DxWeights<'a, T> {
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
pub(super) fn six_five_rows(s: Shape, k: usize) -> usize {
    if s.mr != 6 {
        return k;
    }
    (0..6)
        .map(|b| 5 * b)
        .find(|&r5| r5 <= k && (k - r5).is_multiple_of(6))
        .map_or(k, |r5| k - r5)
}

impl<'a, T: Float> DxWeights<'a, T> {
    fn pack(g: &ConvGeom, a: &Algos, w: &[T], wp: &'a mut [T], par: Parallelism<'_>) -> Self {
        let (k, fg, cg, kk) = (g.k_rows(), g.fg(), g.cg(), g.kh * g.kw);
        let sh = a.s;
        if let Some(wg) = a.wino_dx(g) {
            let gl = wg.packed_len();
            for grp in 0..g.groups() {
                // Kernel (out c, in f) = W[grp*fg + f][c] rotated by 180 degrees.
                let wgr = &w[grp * fg * cg * kk..(grp + 1) * fg * cg * kk];
                let k = |c: usize, f: usize| -> [T; 9] {
                    std::array::from_fn(|t| wgr[(f * cg + c) * 9 + 8 - t])
                };
                winograd::pack_weights(&wg, k, &mut wp[grp * gl..(grp + 1) * gl], par);
            }
            return DxWeights::Winograd { wp, wg, gl };
        }
        if a.dx == ConvAlgorithm::Direct {
            let sa = pg::rows_shape(sh, cg);
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
            let s5 = sh.with_mr(5);
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

/// dx of images n0 .. n0 + nimg into dxc (every element written), with slot `ws`: Winograd's
/// blocks of whole images, one image at a time for the other algorithms.
#[allow(clippy::too_many_arguments)]
fn dx_images<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    dout: &[T],
    n0: usize,
    nimg: usize,
    dxc: &mut [T],
    dxw: &DxWeights<'_, T>,
    ws: &mut [T],
) {
    let chw = g.c * g.h * g.w;
    if let DxWeights::Winograd { wp, wg, gl } = *dxw {
        let (p, fg, cg, hw) = (g.pixels(), g.fg(), g.cg(), g.h * g.w);
        for grp in 0..g.groups() {
            winograd::conv_images(
                &wg,
                &wp[grp * gl..(grp + 1) * gl],
                (&dout[(n0 * g.f + grp * fg) * p..], g.f * p),
                (&mut dxc[grp * cg * hw..], chw),
                nimg,
                &[],
                ws,
            );
        }
        return;
    }
    for n in n0..n0 + nimg {
        dx_image(
            g,
            a,
            dout,
            n,
            &mut dxc[(n - n0) * chw..(n - n0 + 1) * chw],
            dxw,
            ws,
        );
    }
}

/// dx of image n into dxn (every element written), with slot `ws`; the direct and im2col paths.
fn dx_image<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    dout: &[T],
    n: usize,
    dxn: &mut [T],
    dxw: &DxWeights<'_, T>,
    ws: &mut [T],
) {
    let sh = a.s;
    let (p, k, fg, cg) = (g.pixels(), g.k_rows(), g.fg(), g.cg());
    let fp = g.f * p;
    let dn = &dout[n * fp..(n + 1) * fp];
    match *dxw {
        DxWeights::Winograd { .. } => unreachable!("dx_images runs Winograd's blocks"),
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
            let parts = [(sh, 0, rows6, 0), (sh.with_mr(5), rows6, k - rows6, off5)];
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

/// dcol (k x pt) = A (packed k x fg, the transposed weights) * B, B's row f being the run
/// `src[f * p..][..pt]` of dout, read in place by the implicit-GEMM kernel (one output row of
/// pt pixels; `src` must hold `(fg - 1) * p + pt` rounded up to NR).
#[allow(clippy::too_many_arguments)]
pub(super) fn dcol_in_place<T: Float>(
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
pub(super) fn pack_taps<T: Float>(
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
pub(super) fn dw_image<T: Float>(
    g: &ConvGeom,
    a: &Algos,
    x: &[T],
    dout: &[T],
    n: usize,
    part: &mut [T],
    ws: &mut [T],
) {
    let sh = a.s;
    let (p, k, fg, chw) = (g.pixels(), g.k_rows(), g.fg(), g.c * g.h * g.w);
    let fp = g.f * p;
    let sa = pg::rows_shape(sh, fg);
    let th = tile_rows(g);
    let direct = a.dw == ConvAlgorithm::Direct;
    let pd = fwd_pad(g);
    let (xs, abuf, bbuf) = dw_split(g, a, ws);
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
