//! Fast max pooling: one job per (n, c) plane; the forward caches each output's argmax (a u32
//! offset `ih * W + iw` into its input plane) and the backward scatters dout through it.
//!
//! Same semantics as the reference (see `reference.rs`): first maximum wins, a NaN wins and the
//! first NaN is kept, padded positions are never candidates. 2x2 stride-2 windows without padding
//! take a dedicated path that reads two input rows at a time.

use super::PoolPath;
use crate::cpu::multiversion;
use crate::parallel::Parallelism;
use crate::params::PoolGeom;
use crate::scalar::Float;

/// Planes per parallel job: about 16K input elements, so small planes do not drown in
/// scheduling overhead. (No reduction crosses planes, so this never affects results.)
fn planes_per_job(plane: usize) -> usize {
    (16 * 1024 / plane.max(1)).max(1)
}

/// Whether candidate `v` replaces the current best `b` (first max wins; NaN wins; first NaN kept).
#[inline(always)]
fn beats<T: Float>(v: T, b: T) -> bool {
    // Non-short-circuit `&`/`|`: evaluated as flags, not as branches.
    #[allow(clippy::eq_op)]
    let (b_num, v_nan) = (b == b, v != v);
    b_num & ((v > b) | v_nan)
}

/// Branch-free index select.
#[inline(always)]
fn pick(c: bool, a: u32, b: u32) -> u32 {
    let m = (c as u32).wrapping_neg();
    (a & m) | (b & !m)
}

/// The dedicated path applies to 2x2 windows with stride 2 and no padding (ceil mode then adds
/// a partial last window only for odd extents, which the generic path handles).
pub(crate) fn is_2x2(g: &PoolGeom) -> bool {
    let p = &g.p;
    p.pool_height == 2
        && p.pool_width == 2
        && p.stride == (2, 2)
        && p.pad == (0, 0)
        && 2 * g.ho <= g.h
        && 2 * g.wo <= g.w
}

/// One 2x2 window (a, b / c, d): the max and its offset in the window's row-major order of
/// taps (0, 1, w, w + 1), first maximum wins, NaN wins.
#[inline(always)]
fn window_2x2<T: Float>(a: T, b: T, c: T, d: T, w: u32) -> (T, u32) {
    let t1 = beats(b, a);
    let (v1, i1) = (T::select(t1, b, a), pick(t1, 1, 0));
    let t2 = beats(c, v1);
    let (v2, i2) = (T::select(t2, c, v1), pick(t2, w, i1));
    let t3 = beats(d, v2);
    (T::select(t3, d, v2), pick(t3, w + 1, i2))
}

/// Output columns per block of the 2x2 path.
const L2X2: usize = 16;

multiversion! {
    /// 2x2 windows at stride 2: blocks of L2X2 output columns read as fixed-size arrays and
    /// computed into local arrays, branch-free, so the vectoriser sees a constant trip count.
    /// (A plain loop over pairs was vectorised in some crates that instantiate this kernel and
    /// not in others — the Python module got a scalar, branchy copy 4-10x slower on random data.)
    fn plane_2x2<T>(g: &PoolGeom, x: &[T], out: &mut [T], idx: &mut [u32]) {
        let (w, wo) = (g.w, g.wo);
        let w32 = w as u32;
        let full = wo / L2X2 * L2X2;
        for oh in 0..g.ho {
            let r0 = &x[2 * oh * w..2 * oh * w + w];
            let r1 = &x[(2 * oh + 1) * w..(2 * oh + 2) * w];
            let o = &mut out[oh * wo..(oh + 1) * wo];
            let ix = &mut idx[oh * wo..(oh + 1) * wo];
            let base = (2 * oh * w) as u32;
            for ow0 in (0..full).step_by(L2X2) {
                // 2 * (ow0 + L2X2) <= 2 * wo <= w: the block's windows are inside the rows.
                let s0: &[T; 2 * L2X2] = r0[2 * ow0..2 * ow0 + 2 * L2X2].try_into().expect("block");
                let s1: &[T; 2 * L2X2] = r1[2 * ow0..2 * ow0 + 2 * L2X2].try_into().expect("block");
                let mut ov = [T::zero(); L2X2];
                let mut iv = [0u32; L2X2];
                for l in 0..L2X2 {
                    let (v, i) = window_2x2(s0[2 * l], s0[2 * l + 1], s1[2 * l], s1[2 * l + 1], w32);
                    ov[l] = v;
                    iv[l] = base + 2 * (ow0 + l) as u32 + i;
                }
                o[ow0..ow0 + L2X2].copy_from_slice(&ov);
                ix[ow0..ow0 + L2X2].copy_from_slice(&iv);
            }
            for ow in full..wo {
                let (v, i) = window_2x2(r0[2 * ow], r0[2 * ow + 1], r1[2 * ow], r1[2 * ow + 1], w32);
                o[ow] = v;
                ix[ow] = base + 2 * ow as u32 + i;
            }
        }
    }
}

/// Every window lies fully inside the input (no padding, and floor mode or an exact fit).
pub(crate) fn is_unclipped(g: &PoolGeom) -> bool {
    let p = &g.p;
    p.pad == (0, 0)
        && p.pool_height * p.stride.1 * phase_len(g) <= SCRATCH
        && g.wo.next_multiple_of(VB) <= SCRATCH
        && (g.ho - 1) * p.stride.0 + p.pool_height <= g.h
        && (g.wo - 1) * p.stride.1 + p.pool_width <= g.w
}

/// Lanes of one vector block of the phase-split path (16 f32 = one AVX-512 register).
const VB: usize = 16;
/// Scratch (stack) elements of the phase-split path; rows longer than this take the generic path.
const SCRATCH: usize = 1024;

/// Phase length (padded) of a row split into `sw` phases, so every tap's lane plus a whole
/// number of vector blocks stays inside its phase.
fn phase_len(g: &PoolGeom) -> usize {
    g.w.div_ceil(g.p.stride.1).next_multiple_of(VB) + (g.p.pool_width - 1) / g.p.stride.1 + VB
}

multiversion! {
    /// Windows fully inside the plane. The window's input rows are first split into `stride`
    /// phases (`phase[i][q][t] = row_i[t * stride + q]`), so window tap (i, j) of output column
    /// ow is `phase[i][j % stride][ow + j / stride]`: a contiguous lane for all columns at once.
    /// Columns are processed in whole blocks of VB lanes (padding lanes are computed and
    /// discarded); per block the taps (i, j) are visited in row-major order, so every window
    /// still sees its candidates in row-major order (first maximum wins), with the running best
    /// value and index held in local arrays (registers) and branch-free compare and blend. (Taps
    /// outside and blocks inside stored the blend to memory, which LLVM made masked stores:
    /// slow on Zen.)
    /// `x`, `out`, `idx` hold a batch of whole planes: the scratch is set up once per batch.
    fn planes_unclipped<T>(g: &PoolGeom, xs: &[T], outs: &mut [T], idxs: &mut [u32]) {
        let (kh, sh, sw) = (g.p.pool_height, g.p.stride.0, g.p.stride.1);
        let (wo, plen) = (g.wo, phase_len(g));
        let wpad = wo.next_multiple_of(VB);
        let rlen = sw * plen;
        let mut phases = [T::zero(); SCRATCH];
        let mut cols = [0u32; SCRATCH];
        for (ow, c) in cols[..wpad].iter_mut().enumerate() {
            *c = (ow * sw) as u32;
        }
        let (plane, oplane) = (g.h * g.w, g.ho * wo);
        let planes = xs.chunks_exact(plane).zip(outs.chunks_exact_mut(oplane).zip(idxs.chunks_exact_mut(oplane)));
        for (x, (out, idx)) in planes {
        for oh in 0..g.ho {
            let r0 = oh * sh;
            for i in 0..kh {
                let row = &x[(r0 + i) * g.w..(r0 + i + 1) * g.w];
                // One strided pass per phase: no division per element (`t % sw` with a run-time
                // stride compiled to a div per element).
                for q in 0..sw.min(g.w) {
                    let dst = &mut phases[i * rlen + q * plen..i * rlen + (q + 1) * plen];
                    for (d, &v) in dst.iter_mut().zip(row[q..].iter().step_by(sw)) {
                        *d = v;
                    }
                }
            }
            for blk in (0..wpad).step_by(VB) {
                let nl = VB.min(wo - blk);
                let (o, ix) = (&mut out[oh * wo + blk..oh * wo + blk + nl], &mut idx[oh * wo + blk..oh * wo + blk + nl]);
                // Index lanes as wide as T's, so the compare's mask selects them as it is: with
                // u32 lanes beside f64 values, AVX2 narrowed every mask (ovl_pool f64 forward
                // ran 1.7x the AVX-512 time).
                if std::mem::size_of::<T>() == 8 {
                    window_block::<T, u64>(&phases, &cols, g, r0, rlen, plen, blk, o, ix);
                } else {
                    window_block::<T, u32>(&phases, &cols, g, r0, rlen, plen, blk, o, ix);
                }
            }
        }
        }
    }
}

/// An index lane of the phase-split block: u32 beside f32, u64 beside f64.
trait IdxLane: Copy {
    fn of(i: u32) -> Self;
    fn get(self) -> u32;
    /// `a` if c, else `b`, branch-free.
    fn pick(c: bool, a: Self, b: Self) -> Self;
}

impl IdxLane for u32 {
    #[inline(always)]
    fn of(i: u32) -> u32 {
        i
    }
    #[inline(always)]
    fn get(self) -> u32 {
        self
    }
    #[inline(always)]
    fn pick(c: bool, a: u32, b: u32) -> u32 {
        pick(c, a, b)
    }
}

impl IdxLane for u64 {
    #[inline(always)]
    fn of(i: u32) -> u64 {
        u64::from(i)
    }
    #[inline(always)]
    fn get(self) -> u32 {
        // Every lane holds a u32 offset (`of`), so the cast loses nothing.
        self as u32
    }
    #[inline(always)]
    fn pick(c: bool, a: u64, b: u64) -> u64 {
        let m = (c as u64).wrapping_neg();
        (a & m) | (b & !m)
    }
}

/// One block of VB output columns of output row `r0 / sh` (`planes_unclipped`): the taps in
/// row-major order with the running best value and index in local arrays; `o` and `ix` take the
/// block's valid lanes (at most VB: the last block of a row is short).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn window_block<T: Float, I: IdxLane>(
    phases: &[T; SCRATCH],
    cols: &[u32; SCRATCH],
    g: &PoolGeom,
    r0: usize,
    rlen: usize,
    plen: usize,
    blk: usize,
    o: &mut [T],
    ix: &mut [u32],
) {
    let (kh, kw, sw) = (g.p.pool_height, g.p.pool_width, g.p.stride.1);
    let c: &[u32; VB] = cols[blk..blk + VB].try_into().expect("VB lanes");
    let lane = |i: usize, j: usize| -> &[T; VB] {
        let st = i * rlen + (j % sw) * plen + j / sw + blk;
        phases[st..st + VB].try_into().expect("VB lanes")
    };
    let mut bv = *lane(0, 0);
    let base0 = (r0 * g.w) as u32;
    let mut bi = [I::of(0); VB];
    for l in 0..VB {
        bi[l] = I::of(base0 + c[l]);
    }
    for i in 0..kh {
        for j in 0..kw {
            if i == 0 && j == 0 {
                continue;
            }
            let ln = lane(i, j);
            let base = ((r0 + i) * g.w + j) as u32;
            for l in 0..VB {
                let take = beats(ln[l], bv[l]);
                bv[l] = T::select(take, ln[l], bv[l]);
                bi[l] = I::pick(take, I::of(base + c[l]), bi[l]);
            }
        }
    }
    let nl = o.len();
    o.copy_from_slice(&bv[..nl]);
    for (d, b) in ix.iter_mut().zip(&bi[..nl]) {
        *d = b.get();
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
pub(crate) fn forward_into<T: Float>(
    g: &PoolGeom,
    path: PoolPath,
    x: &[T],
    out: &mut [T],
    argmax: &mut [u32],
    par: Parallelism<'_>,
) {
    let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
    let par = par.for_bytes(std::mem::size_of_val(x));
    let (two, unclipped) = (path == PoolPath::TwoByTwo, path == PoolPath::PhaseSplit);
    let per_job = planes_per_job(plane);
    par.for_each_chunk2(
        out,
        oplane * per_job,
        argmax,
        oplane * per_job,
        &|j, o, a, _| {
            if unclipped && !two {
                let nc0 = j * per_job;
                let np = o.len() / oplane;
                return planes_unclipped(g, &x[nc0 * plane..(nc0 + np) * plane], o, a);
            }
            for (k, (o, a)) in o.chunks_mut(oplane).zip(a.chunks_mut(oplane)).enumerate() {
                let nc = j * per_job + k;
                let xp = &x[nc * plane..(nc + 1) * plane];
                if two {
                    plane_2x2(g, xp, o, a)
                } else {
                    plane_generic(g, xp, o, a)
                }
            }
        },
    );
}

multiversion! {
    /// The largest of `v` (0 when empty); `T` only names the instantiation.
    fn max_u32<T>(v: &[u32], _t: std::marker::PhantomData<T>) -> u32 {
        v.iter().fold(0u32, |m, &i| m.max(i))
    }
}

/// The largest offset of `argmax`, in parallel runs (the check before a backward reads every
/// index: on one thread, before the kernel's parallel phase, it was a fifth of ovl_pool's
/// backward, AMD EPYC model 17, `perf record`).
pub(crate) fn argmax_max(argmax: &[u32], par: Parallelism<'_>) -> u32 {
    const RUN: usize = 1 << 16;
    let mut maxes = vec![0u32; argmax.len().div_ceil(RUN)];
    par.for_bytes(std::mem::size_of_val(argmax))
        .for_each_chunk(&mut maxes, 1, &|i, m, _| {
            m[0] = max_u32::<f32>(
                &argmax[i * RUN..((i + 1) * RUN).min(argmax.len())],
                std::marker::PhantomData,
            );
        });
    maxes.into_iter().max().unwrap_or(0)
}

multiversion! {
    fn plane_scatter<T>(dout: &[T], idx: &[u32], dx: &mut [T]) {
        dx.fill(T::zero());
        for (&d, &i) in dout.iter().zip(idx) {
            dx[i as usize] += d;
        }
    }
}

multiversion! {
    /// dx of one plane for 2x2 windows at stride 2, written in one pass: input column x of the
    /// two rows under output row oh gets `0 + dout[x / 2]` where the argmax of window x / 2
    /// points at it and 0 elsewhere (`0 + d` is what the scatter into a zeroed plane computes,
    /// -0.0 included); inputs outside every window get 0. Blocks of L2X2 windows: dout and the
    /// indices are first duplicated per input column, then every column is a plain compare and
    /// select, so the loops vectorise (branchy per-window code was 7-10x slower). Returns false
    /// if an index is not one of its own window's four (a cache not from a 2x2 forward): dx is
    /// then unfinished and the caller scatters instead.
    fn plane_2x2_bwd<T>(g: &PoolGeom, dout: &[T], idx: &[u32], dx: &mut [T]) -> bool {
        let (w, wo, ho) = (g.w, g.wo, g.ho);
        let w32 = w as u32;
        let full = wo / L2X2 * L2X2;
        let (rows, rest) = dx.split_at_mut(2 * ho * w);
        for (oh, pair) in rows.chunks_exact_mut(2 * w).enumerate() {
            let (r0, r1) = pair.split_at_mut(w);
            let d = &dout[oh * wo..(oh + 1) * wo];
            let ix = &idx[oh * wo..(oh + 1) * wo];
            let base = (2 * oh * w) as u32;
            let mut hits = 0u32;
            for ow0 in (0..full).step_by(L2X2) {
                let dv: &[T; L2X2] = d[ow0..ow0 + L2X2].try_into().expect("block");
                let iv: &[u32; L2X2] = ix[ow0..ow0 + L2X2].try_into().expect("block");
                let mut dd = [T::zero(); 2 * L2X2];
                let mut ii = [0u32; 2 * L2X2];
                for l in 0..L2X2 {
                    dd[2 * l] = dv[l];
                    dd[2 * l + 1] = dv[l];
                    ii[2 * l] = iv[l];
                    ii[2 * l + 1] = iv[l];
                }
                let mut o0 = [T::zero(); 2 * L2X2];
                let mut o1 = [T::zero(); 2 * L2X2];
                let t0 = base + 2 * ow0 as u32;
                for x in 0..2 * L2X2 {
                    let t = t0 + x as u32;
                    let (m0, m1) = (ii[x] == t, ii[x] == t + w32);
                    let v = T::zero() + dd[x];
                    o0[x] = T::select(m0, v, T::zero());
                    o1[x] = T::select(m1, v, T::zero());
                    hits += m0 as u32 + m1 as u32;
                }
                r0[2 * ow0..2 * ow0 + 2 * L2X2].copy_from_slice(&o0);
                r1[2 * ow0..2 * ow0 + 2 * L2X2].copy_from_slice(&o1);
            }
            for x in 2 * full..2 * wo {
                let t = base + x as u32;
                let (m0, m1) = (ix[x / 2] == t, ix[x / 2] == t + w32);
                let v = T::zero() + d[x / 2];
                r0[x] = T::select(m0, v, T::zero());
                r1[x] = T::select(m1, v, T::zero());
                hits += m0 as u32 + m1 as u32;
            }
            // Each window's index matches exactly one of its four inputs, or it is foreign.
            if hits != wo as u32 {
                return false;
            }
            r0[2 * wo..].fill(T::zero());
            r1[2 * wo..].fill(T::zero());
        }
        rest.fill(T::zero());
        true
    }
}

/// dx (N*C*H*W) from dout and the forward's argmax; overlapping windows add up in output order.
pub(crate) fn backward_into<T: Float>(
    g: &PoolGeom,
    path: PoolPath,
    dout: &[T],
    argmax: &[u32],
    dx: &mut [T],
    par: Parallelism<'_>,
) {
    let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
    let par = par.for_bytes(std::mem::size_of_val(dx));
    let per_job = planes_per_job(plane);
    let two = path == PoolPath::TwoByTwo;
    par.for_each_chunk(dx, plane * per_job, &|j, dxs, _| {
        for (k, dxp) in dxs.chunks_mut(plane).enumerate() {
            let nc = j * per_job + k;
            let r = nc * oplane..(nc + 1) * oplane;
            let (d, ix) = (&dout[r.clone()], &argmax[r]);
            if !(two && plane_2x2_bwd(g, d, ix, dxp)) {
                plane_scatter(d, ix, dxp)
            }
        }
    });
}
