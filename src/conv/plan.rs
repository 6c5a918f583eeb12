//! The convolution plan: which algorithm each direction runs, chosen once per shape, and the
//! exact workspace each needs.

use super::im2col::*;
use super::winograd::Wino;
use crate::cpu::{SimdLevel, multiversion};
use crate::error::{Error, Result, check_workspace, expect_shape};
use crate::gemm::{self as pg, Shape};
use crate::parallel::Parallelism;
use crate::params::{ConvGeom, ConvParam};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView, TensorViewMut};
use crate::tuning::*;
use std::marker::PhantomData;

/// Output rows per column tile: a function of the shape only.
pub(super) fn tile_rows(g: &ConvGeom) -> usize {
    let most = (im2col_tile_elems() / (g.k_rows() * g.wo).max(1)).clamp(1, g.ho);
    // Equal tiles: 32 rows at most 10 a tile are 4 x 8, not 10 + 10 + 10 + 2 (a last tile of
    // few pixels still streams all the packed weights).
    g.ho.div_ceil(g.ho.div_ceil(most))
}

pub(super) fn dw_chunks(g: &ConvGeom) -> usize {
    DW_CHUNKS.min(g.n).max(1)
}

/// Images of dw chunk `c`: an even split of 0..N.
pub(super) fn chunk_images(g: &ConvGeom, c: usize) -> std::ops::Range<usize> {
    let k = dw_chunks(g);
    (c * g.n / k)..((c + 1) * g.n / k)
}

/// An algorithm one direction of the fast convolution can run (forward, data gradient dx, or
/// weight gradient dw). All of them compute the same convolution to within the documented
/// tolerance of the reference; they differ in speed and in the rounding of the last bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConvAlgorithm {
    /// im2col tiles (the column matrix of a block of output rows, kept in L2) times the packed
    /// weights; dx through col2im, dw from the im2col tiles. Runs every shape at every level.
    Im2col,
    /// Implicit GEMM: the GEMM reads its B operand in place from a zero-padded, stride-phase
    /// split copy of the image (forward, and dw's source); dx as the full correlation of the
    /// padded dout with the flipped weights (stride 1, undilated, padding below the kernel).
    /// Needs the AVX2 or AVX-512 kernels.
    Direct,
    /// Winograd F(2x2, 3x3): 3 x 3, stride 1, undilated; 16 GEMMs on transformed tiles (for dx
    /// padding at most 2). Needs the AVX2 or AVX-512 kernels and at least one GEMM panel of
    /// 2 x 2 tiles per image.
    Winograd,
    /// Winograd F(4x4, 3x3): as [`ConvAlgorithm::Winograd`] with 4 x 4 output tiles, 36 GEMMs
    /// doing 4x fewer multiplications than the direct sum (2.25x for F(2x2, 3x3)); its
    /// transforms scale the inputs by up to 10 and 19, so its rounding error is one to two
    /// orders of magnitude above the direct sum's (kernels.md states the bound). Needs at least
    /// one GEMM panel of 4 x 4 tiles per image.
    Winograd4x4,
}

impl ConvAlgorithm {
    /// The output tile side of a Winograd algorithm (2 or 4), None for the others.
    pub(crate) fn wino_tile(self) -> Option<usize> {
        match self {
            ConvAlgorithm::Winograd => Some(2),
            ConvAlgorithm::Winograd4x4 => Some(4),
            ConvAlgorithm::Im2col | ConvAlgorithm::Direct => None,
        }
    }
}

/// The algorithms of one convolution and the GEMM shape they run with: chosen once (by the cost
/// model, or forced by a test) and read by every kernel and workspace query, so the workspace a
/// caller sized always matches the path that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Algos {
    pub(crate) fwd: ConvAlgorithm,
    pub(crate) dx: ConvAlgorithm,
    pub(crate) dw: ConvAlgorithm,
    /// The GEMM's block shape (and the proof of its SIMD level).
    pub(crate) s: Shape,
}

/// Whether the convolution is the kind Winograd F(m x m, 3x3) computes: 3 x 3, stride 1,
/// undilated.
fn wino_kind(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.p.stride == (1, 1) && g.p.dilation == (1, 1)
}

/// The forward's (and dw's) Winograd problem with m x m tiles.
fn fwd_wino(g: &ConvGeom, s: Shape, m: usize) -> Wino {
    Wino {
        m,
        cin: g.cg(),
        cout: g.fg(),
        h: g.h,
        w: g.w,
        ph: g.p.pad.0,
        pw: g.p.pad.1,
        s,
    }
}

/// dx's Winograd problem with m x m tiles: the correlation of dout padded by 2 - pad with the
/// flipped, transposed weights (pad <= 2).
fn dx_wino(g: &ConvGeom, s: Shape, m: usize) -> Wino {
    Wino {
        m,
        cin: g.fg(),
        cout: g.cg(),
        h: g.ho,
        w: g.wo,
        ph: 2 - g.p.pad.0,
        pw: 2 - g.p.pad.1,
        s,
    }
}

/// Whether `wg` can run on a batch of `n`: a level with the explicit GEMM kernels and at least
/// one NR panel of tiles in a block (the GEMMs' width).
fn wino_fits(wg: &Wino, n: usize) -> bool {
    pg::direct_available(wg.s) && wg.block_tiles(n) >= wg.s.nr
}

/// Whether a Winograd slot stays within the column matrices of the images of its block (K x P
/// each, the bound the other paths keep: the workspace does not grow with N).
fn wino_slot_fits(g: &ConvGeom, wg: &Wino, slot: usize) -> bool {
    slot <= g.k_rows() * g.pixels() * wg.ib()
}

/// Whether Winograd pays for `wg`: each transformed value feeds `cout` (input side) or comes from
/// `cin` (output side) multiply-adds, so the transforms' share falls as the channels grow; and
/// its per-thread workspace fits (`wino_slot_fits`).
fn wino_pays(g: &ConvGeom, wg: &Wino) -> bool {
    wg.cin >= WINO_MIN_CHANNELS
        && wg.cout >= WINO_MIN_CHANNELS
        && wino_slot_fits(g, wg, wg.slot_len())
}

/// A Winograd algorithm's tile side.
fn tile(alg: ConvAlgorithm) -> usize {
    alg.wino_tile().expect("a Winograd algorithm")
}

/// Whether F(4x4, 3x3) pays for `wg`: channels from `WINO4_MIN_CHANNELS`, at least
/// `WINO_MIN_BLOCK_TILES` tiles per image (each image's GEMMs stream all 36 transformed weight
/// matrices: with fewer tiles that traffic, not the multiplications, sets the time), and the
/// workspace bound of `wino_pays`.
fn wino4_pays(g: &ConvGeom, wg: &Wino) -> bool {
    wg.cin >= WINO4_MIN_CHANNELS
        && wg.cout >= WINO4_MIN_CHANNELS
        && wg.tiles() >= WINO_MIN_BLOCK_TILES
        && wino_slot_fits(g, wg, wg.slot_len())
}

/// Whether a direction can run an algorithm correctly on this shape at this level: the hard
/// conditions only, none of the cost model's.
fn can_run(g: &ConvGeom, s: Shape, dir: Direction, alg: ConvAlgorithm) -> bool {
    use ConvAlgorithm::*;
    match (dir, alg) {
        (_, Im2col) => true,
        (Direction::Forward | Direction::WeightGrad, Direct) => pg::direct_available(s),
        (Direction::DataGrad, Direct) => {
            pg::direct_available(s)
                && g.p.stride == (1, 1)
                && g.p.dilation == (1, 1)
                && g.p.pad.0 < g.kh
                && g.p.pad.1 < g.kw
        }
        (Direction::Forward | Direction::WeightGrad, Winograd | Winograd4x4) => {
            wino_kind(g) && wino_fits(&fwd_wino(g, s, tile(alg)), g.n)
        }
        (Direction::DataGrad, Winograd | Winograd4x4) => {
            wino_kind(g)
                && g.p.pad.0 <= 2
                && g.p.pad.1 <= 2
                && wino_fits(&dx_wino(g, s, tile(alg)), g.n)
        }
    }
}

/// Whether output rows of `wo` pixels fill the direct kernels' pixel slots (one vector of an
/// output row each): a row of 8 in 16-pixel slots would waste half.
fn rows_fill_slots(wo: usize, s: Shape) -> bool {
    wo.next_multiple_of(pg::direct_slot(s)) * 3 <= wo * 4
}

/// The direction of a pass, for [`ConvPlan::with_algorithm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The forward pass.
    Forward,
    /// The data gradient dx.
    DataGrad,
    /// The weight gradient dw (and db, which every algorithm computes the same way).
    WeightGrad,
}

impl Algos {
    /// The cost model: per direction the fastest algorithm that can run, from the shape, the
    /// dtype and the level's kernel shape alone (never from timing), so a machine and a shape
    /// always run the same code and give the same bits. kernels.md lists each rule with its
    /// measurement. F(4x4, 3x3) is chosen for f64 data only (`f64_data`): its error, one to two
    /// orders of magnitude above the direct sum's, is 1e-14 of the output there and 4e-6 in
    /// f32, where it stays a [`ConvPlan::with_algorithm`] choice.
    pub(crate) fn choose(g: &ConvGeom, s: Shape, f64_data: bool) -> Algos {
        use ConvAlgorithm::*;
        // The fastest Winograd that runs and pays for a direction's problem, if any.
        let wino = |dir: Direction, problem: fn(&ConvGeom, Shape, usize) -> Wino| {
            let four =
                f64_data && can_run(g, s, dir, Winograd4x4) && wino4_pays(g, &problem(g, s, 4));
            if four {
                Some(Winograd4x4)
            } else if can_run(g, s, dir, Winograd) && wino_pays(g, &problem(g, s, 2)) {
                Some(Winograd)
            } else {
                None
            }
        };
        let fwd = if let Some(w) = wino(Direction::Forward, fwd_wino) {
            w
        } else if can_run(g, s, Direction::Forward, Direct) && rows_fill_slots(g.wo, s) {
            Direct
        } else {
            Im2col
        };
        // dx_wino only once can_run has checked pad <= 2 (it builds 2 - pad).
        let dx = if let Some(w) = wino(Direction::DataGrad, dx_wino) {
            w
        } else if can_run(g, s, Direction::DataGrad, Direct)
            // dx's rows are input channels: with few (C = 3) im2col is faster.
            && g.cg() >= DIRECT_DX_MIN_CHANNELS
            && rows_fill_slots(g.w, s)
        {
            Direct
        } else {
            Im2col
        };
        // dw runs the forward's Winograd where the forward does and its workspace fits;
        // otherwise it reads the padded copy where the forward's direct rule holds.
        let dw = if fwd.wino_tile().is_some_and(|m| {
            let wg = fwd_wino(g, s, m);
            wino_slot_fits(g, &wg, wg.dw_slot_len())
        }) {
            fwd
        } else if can_run(g, s, Direction::WeightGrad, Direct) && rows_fill_slots(g.wo, s) {
            Direct
        } else {
            Im2col
        };
        Algos { fwd, dx, dw, s }
    }

    /// These algorithms with `dir` forced to `alg`, or None where it cannot run.
    pub(crate) fn forced(self, g: &ConvGeom, dir: Direction, alg: ConvAlgorithm) -> Option<Algos> {
        if !can_run(g, self.s, dir, alg) {
            return None;
        }
        let mut a = self;
        match dir {
            Direction::Forward => a.fwd = alg,
            Direction::DataGrad => a.dx = alg,
            Direction::WeightGrad => a.dw = alg,
        }
        Some(a)
    }

    /// Every direction on im2col: the path that forms exactly the reference's products, so its
    /// NaN and infinity positions are the reference's for any data.
    pub(crate) fn im2col(self) -> Algos {
        use ConvAlgorithm::Im2col;
        Algos {
            fwd: Im2col,
            dx: Im2col,
            dw: Im2col,
            ..self
        }
    }

    /// The forward's algorithm for this data: Winograd's transforms add and subtract a tile's
    /// inputs (x) and a filter's taps (w), so one infinity among them turns the whole tile's
    /// outputs to NaN (inf - inf) where the reference has infinities or finite values; on
    /// such data the forward runs im2col.
    pub(crate) fn for_forward<T: Float>(self, x: &[T], w: &[T], par: Parallelism<'_>) -> Algos {
        self.for_forward_with(x, || all_finite(w, par), par)
    }

    /// `for_forward` with w's finiteness given (scanned once when the weights were packed).
    fn for_forward_with<T: Float>(
        self,
        x: &[T],
        w_finite: impl FnOnce() -> bool,
        par: Parallelism<'_>,
    ) -> Algos {
        if self.fwd.wino_tile().is_some() && !(w_finite() && all_finite(x, par)) {
            return Algos {
                fwd: ConvAlgorithm::Im2col,
                ..self
            };
        }
        self
    }

    /// The backward's algorithms for this data. Winograd dx mixes dout's tiles and w's taps,
    /// Winograd dw x's tiles and dout's; the direct dx correlates the zero-padded dout with
    /// every tap, forming 0 * w for taps whose output lies outside the image, which the
    /// reference never forms (0 * inf = NaN at the border). Where the data could make them
    /// differ from the reference's NaN positions, those directions run im2col. `w` is None
    /// when there is no dx.
    pub(crate) fn for_backward<T: Float>(
        self,
        x: &[T],
        w: Option<&[T]>,
        dout: &[T],
        par: Parallelism<'_>,
    ) -> Algos {
        use ConvAlgorithm::*;
        let mut a = self;
        let mut dout_ok = None;
        let mut dout_finite = || *dout_ok.get_or_insert_with(|| all_finite(dout, par));
        if let Some(w) = w {
            let keep = match a.dx {
                Winograd | Winograd4x4 => all_finite(w, par) && dout_finite(),
                Direct => all_finite(w, par),
                Im2col => true,
            };
            if !keep {
                a.dx = Im2col;
            }
        }
        if a.dw.wino_tile().is_some() && !(dout_finite() && all_finite(x, par)) {
            a.dw = Im2col;
        }
        a
    }

    /// The forward's Winograd problem, where the forward runs Winograd.
    pub(crate) fn wino_fwd(&self, g: &ConvGeom) -> Option<Wino> {
        self.fwd.wino_tile().map(|m| fwd_wino(g, self.s, m))
    }
    /// dw's Winograd problem, where dw runs Winograd.
    pub(crate) fn wino_dw(&self, g: &ConvGeom) -> Option<Wino> {
        self.dw.wino_tile().map(|m| fwd_wino(g, self.s, m))
    }
    /// dx's Winograd problem, where dx runs Winograd.
    pub(crate) fn wino_dx(&self, g: &ConvGeom) -> Option<Wino> {
        self.dx.wino_tile().map(|m| dx_wino(g, self.s, m))
    }
}

/// Elements of one forward slot: one KC block of a column tile and its packed copy (im2col
/// runs a KC block of rows at a time, so the block is packed while it is still in L2).
pub(super) fn fwd_slot_len(g: &ConvGeom, a: &Algos) -> usize {
    let s = a.s;
    if let Some(wg) = a.wino_fwd(g) {
        return wg.slot_len();
    }
    if a.fwd == ConvAlgorithm::Direct {
        return fwd_pad(g).len(s);
    }
    let pt = g.wo * tile_rows(g);
    s.kc.min(g.k_rows() + 1) * pt + pg::packed_b_len(s, g.k_rows() + 1, pt)
}

/// Elements of one backward slot: the larger of what dx and dw use.
pub(super) fn bwd_slot_len(g: &ConvGeom, a: &Algos) -> usize {
    let s = a.s;
    let pt = g.wo * tile_rows(g);
    let dx = if let Some(wg) = a.wino_dx(g) {
        wg.slot_len()
    } else if a.dx == ConvAlgorithm::Direct {
        dx_pad(g).len(s)
    } else {
        g.k_rows() * pt + pg::packed_b_len(s, g.fg(), pt)
    };
    let dw = match a.wino_dw(g) {
        Some(wg) => wg.dw_slot_len(),
        None => dw_src_len(g, a) + dw_abuf_len(g, s) + pg::b_panels_bbuf_len(s),
    };
    dx.max(dw)
}

/// Where dw reads the column tile from: a padded copy of the image (direct) or an im2col tile.
fn dw_src_len(g: &ConvGeom, a: &Algos) -> usize {
    if a.dw == ConvAlgorithm::Direct {
        fwd_pad(g).len(a.s)
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
pub(super) fn dw_split<'a, T>(
    g: &ConvGeom,
    a: &Algos,
    ws: &'a mut [T],
) -> (&'a mut [T], &'a mut [T], &'a mut [T]) {
    let (src, rest) = ws.split_at_mut(dw_src_len(g, a));
    let (abuf, rest) = rest.split_at_mut(dw_abuf_len(g, a.s));
    (src, abuf, &mut rest[..pg::b_panels_bbuf_len(a.s)])
}

/// Packed weights: every group's (F/G x (K + 1)) block for the im2col forward (the bias as an
/// extra column; the direct forward packs F/G x K), its transpose (K x F/G) for the im2col dx, or
/// the flipped transpose (C/G x F/G*KH*KW) for the direct dx, or Winograd's 16 transformed
/// matrices (forward or dx); the largest, so one size serves every path. Sized with the plan's
/// shape, whose panels are never shorter than `rows_shape`'s.
pub(super) fn packed_w_len(g: &ConvGeom, a: &Algos) -> usize {
    let s = a.s;
    let kk = g.kh * g.kw;
    let wino = |w: Option<Wino>| w.map_or(0, |w| w.packed_len());
    g.groups()
        * pg::packed_a_len(s, g.fg(), g.k_rows() + 1)
            .max(pg::packed_a_len(s, g.k_rows(), g.fg()))
            .max(pg::packed_a_len(s, g.cg(), g.fg() * kk))
            .max(wino(a.wino_fwd(g)))
            .max(wino(a.wino_dx(g)))
}

/// Elements of one image chunk's dw partial: F x K, or for Winograd dw each group's dU (16 x
/// F/G x C/G; 16/9 of F x K).
pub(super) fn dw_part_len(g: &ConvGeom, a: &Algos) -> usize {
    match a.wino_dw(g) {
        Some(wg) => g.groups() * wg.du_len(),
        None => g.f * g.k_rows(),
    }
}

/// dw partials: one per image chunk.
pub(super) fn staged_len(g: &ConvGeom, a: &Algos) -> usize {
    dw_chunks(g) * dw_part_len(g, a)
}

/// Exact workspace (elements of T) the forward needs with `threads` threads, for the plan's
/// algorithms and for the im2col path a call on non-finite data falls back to
/// (`Algos::for_forward`); None on overflow.
pub(super) fn forward_workspace_len(g: &ConvGeom, a: &Algos, threads: usize) -> Option<usize> {
    let b = a.im2col();
    threads
        .max(1)
        .checked_mul(fwd_slot_len(g, a).max(fwd_slot_len(g, &b)))?
        .checked_add(packed_w_len(g, a).max(packed_w_len(g, &b)))
}

/// Exact workspace (elements of T) the backward needs with `threads` threads, for the plan's
/// algorithms and any mix of them with the im2col fallback (`Algos::for_backward`): each part
/// is the larger of the two, and a mix needs no more than that part by part; None on overflow.
pub(super) fn backward_workspace_len(g: &ConvGeom, a: &Algos, threads: usize) -> Option<usize> {
    let b = a.im2col();
    threads
        .max(1)
        .checked_mul(bwd_slot_len(g, a).max(bwd_slot_len(g, &b)))?
        .checked_add(staged_len(g, a).max(staged_len(g, &b)))?
        .checked_add(packed_w_len(g, a).max(packed_w_len(g, &b)))
}

multiversion! {
    /// Whether every value of `v` is finite: branch-free within a block so that it vectorises.
    fn finite_run<T>(v: &[T]) -> bool {
        v.chunks(256)
            .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
    }
}

/// Whether every value is finite: a pass over the data at memory speed, against the
/// convolution's KH*KW*F/G multiply-adds per value, in parallel runs at the dispatched level
/// (serial at the baseline level it was 1-2% of a Winograd backward, AMD EPYC model 17).
fn all_finite<T: Float>(v: &[T], par: Parallelism<'_>) -> bool {
    const RUN: usize = 1 << 16;
    if v.len() <= RUN {
        return finite_run(v);
    }
    let mut ok = vec![true; v.len().div_ceil(RUN)];
    par.for_bytes(std::mem::size_of_val(v))
        .for_each_chunk(&mut ok, 1, &|i, o, _| {
            o[0] = finite_run(&v[i * RUN..((i + 1) * RUN).min(v.len())]);
        });
    ok.into_iter().all(|b| b)
}

/// Whether dx's GEMM should read dout in place rather than pack it. An in-place B tile is fg
/// rows of one cache line each, p elements apart, re-read from L1 by each of the k / MR panels
/// of A; rows whose distance is a multiple of the L1's sets x line bytes (4 KB on 64 sets of 64
/// bytes) share a set, so with more rows per set than the L1 has ways the tile falls back to L2
/// for every panel. In place pays when the rows fit their sets or A has few panels (measured on
/// a 32 KB 8-way L1: nb_conv, 27 rows in 5 panels, 2 KB apart, 3-6% faster backward;
/// tlcn_conv, 147 rows in 25 panels, 8 KB apart in f64, 10-13% slower). The geometry is this
/// CPU's (`cpu::l1d_geometry`; 64 sets of 8 ways of 64 bytes where CPUID does not say).
pub(super) fn dcol_in_place_pays<T>(s: Shape, k: usize, fg: usize, p: usize) -> bool {
    let l1 = crate::cpu::l1d_geometry().unwrap_or(crate::cpu::CacheGeometry {
        sets: 64,
        ways: 8,
        line: crate::cpu::CACHE_LINE,
    });
    in_place_fits(l1, p * std::mem::size_of::<T>(), fg) || k.div_ceil(s.mr) <= 6
}

/// Whether `rows` lines, `stride` bytes apart, fit the cache `c` together: the rows fall into
/// sets / gcd(stride in lines, sets) distinct sets, each holding at most `ways` of them.
fn in_place_fits(c: crate::cpu::CacheGeometry, stride: usize, rows: usize) -> bool {
    let (sets, line) = (c.sets.max(1), c.line.max(1));
    let step = stride.div_ceil(line) % sets;
    let used = sets / gcd(step, sets);
    rows.div_ceil(used.min(rows).max(1)) <= c.ways
}

pub(super) fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Where every tap of every output is padding (or there are none): out = bias + the sum of
/// 0 * w over the filter's taps, which is the bias, or NaN where a weight is not finite (as the
/// reference, and the kernels on a non-empty input, give).
fn fill_empty_work<T: Float>(g: &ConvGeom, w: &[T], b: &[T], out: &mut [T]) {
    let p = g.pixels();
    let kf = g.cg() * g.kh * g.kw;
    let zero_terms: Vec<T> = (0..g.f)
        .map(|f| {
            w[f * kf..(f + 1) * kf]
                .iter()
                .fold(T::zero(), |a, &v| a + T::zero() * v)
        })
        .collect();
    for (o, chunk) in out.chunks_mut(p.max(1)).enumerate() {
        let f = o % g.f.max(1);
        chunk.fill(b[f] + zero_terms[f]);
    }
}

/// A convolution's weights and bias packed once by [`ConvPlan::pack_weights`] for that plan's
/// forward, to run many forwards with [`ConvPlan::forward_packed_into`] without re-packing.
/// Only a plan builds one; it is bound to that plan's shape and algorithm.
#[derive(Clone)]
pub struct ConvWeights<T> {
    geom: ConvGeom,
    algos: Algos,
    w: Vec<T>,
    b: Vec<T>,
    w_finite: bool,
    packed: Vec<T>,
}

impl<T> std::fmt::Debug for ConvWeights<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConvWeights")
            .field("geom", &self.geom)
            .field("forward", &self.algos.fwd)
            .field("packed_len", &self.packed.len())
            .finish()
    }
}

/// A convolution planned once for its shapes and parameters: validated, its algorithm per
/// direction chosen by the cost model (shape, SIMD level, kernel shape; never timing, so a given
/// machine and shape always run the same code and give the same bits), its exact workspace
/// known. A framework builds one per layer and reuses it every step; `{:?}` says what it chose
/// and why.
///
/// ```
/// use fastlayers::{ConvParam, ConvPlan, Parallelism, Tensor};
/// let x = Tensor::<f32>::linspace(-0.1, 0.5, &[2, 3, 8, 8])?;
/// let w = Tensor::<f32>::linspace(-0.2, 0.3, &[4, 3, 3, 3])?;
/// let b = Tensor::<f32>::linspace(-0.1, 0.2, &[4])?;
/// let plan = ConvPlan::<f32>::new(x.shape(), w.shape(), &ConvParam::new(1, 1))?;
/// let par = Parallelism::Sequential;
/// let mut out = Tensor::zeros(&plan.geom().out_shape())?;
/// let mut ws = vec![0.0; plan.workspace_len(par)?];
/// plan.forward_into(&x, &w, &b, &mut out, &mut ws, par)?;
/// println!("{plan:?}");
/// # Ok::<(), fastlayers::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct ConvPlan<T> {
    geom: ConvGeom,
    algos: Algos,
    why: [Choice; 3],
    _t: PhantomData<fn() -> T>,
}

/// Why a direction of a plan runs its algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Choice {
    /// The cost model's rule.
    CostModel,
    /// [`ConvPlan::with_algorithm`].
    Forced,
    /// [`ConvPlan::measure`]: its median milliseconds, and the runner-up's.
    Measured {
        ms: f64,
        next: Option<(ConvAlgorithm, f64)>,
    },
}

/// Calls [`ConvPlan::measure`] times per candidate after a warm-up call (the median counts).
const MEASURE_CALLS: usize = 5;

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Forward => 0,
        Direction::DataGrad => 1,
        Direction::WeightGrad => 2,
    }
}

fn overflow() -> Error {
    crate::error::overflow("workspace", "workspace length")
}

impl<T: Float> ConvPlan<T> {
    /// Validates x (N, C, H, W) and w (F, C/groups, HH, WW) against `conv_param` (b is (F,))
    /// and chooses each direction's algorithm at the SIMD level in force.
    pub fn new(x_shape: &[usize], w_shape: &[usize], conv_param: &ConvParam) -> Result<Self> {
        let f = w_shape.first().copied().unwrap_or(0);
        Ok(Self::from_geom(ConvGeom::new(
            x_shape,
            w_shape,
            &[f],
            conv_param,
        )?))
    }

    pub(crate) fn from_geom(geom: ConvGeom) -> Self {
        ConvPlan {
            geom,
            algos: Algos::choose(&geom, pg::shape::<T>(), std::mem::size_of::<T>() == 8),
            why: [Choice::CostModel; 3],
            _t: PhantomData,
        }
    }

    /// This plan with direction `dir` running `alg` instead of the cost model's choice: for
    /// tests that must cover every path, and for comparisons. An error (argument `algorithm`)
    /// when `alg` cannot run this shape at this SIMD level.
    pub fn with_algorithm(mut self, dir: Direction, alg: ConvAlgorithm) -> Result<Self> {
        self.algos = self.algos.forced(&self.geom, dir, alg).ok_or_else(|| {
            Error::param(
                "algorithm",
                format!(
                    "an algorithm that can run {dir:?} for this shape at {:?}",
                    self.simd_level()
                ),
                format!("{alg:?}"),
            )
        })?;
        self.why[dir_index(dir)] = Choice::Forced;
        Ok(self)
    }

    /// This plan with each direction running the algorithm that measured fastest here (FFTW's
    /// MEASURE): every algorithm the direction can run is timed with `par` on random data of
    /// the plan's shapes (a warm-up call, then the median of 5), the forward first, then dw
    /// (through [`ConvPlan::backward_weights_into`]), then dx (through
    /// [`ConvPlan::backward_into`], dw at its choice). `{:?}` shows each time and the
    /// runner-up's. Allocates the data and workspace it times with.
    ///
    /// The one path whose choice depends on timing: two processes (or machines) may choose
    /// differently and then differ in the last bits. The returned plan is fixed like any other
    /// (the same code and bits on every call and any thread count). F(4x4, 3x3) Winograd is a
    /// candidate for f64 only, as in the cost model (its f32 error is an order of magnitude above
    /// the direct sum's; [`ConvPlan::with_algorithm`] forces it).
    pub fn measure(&self, par: Parallelism<'_>) -> Result<Self> {
        let g = &self.geom;
        if empty_work(g) {
            return Ok(*self);
        }
        let mut rng = crate::rng::Rng::new(0x006d_6561_7375_7265);
        let x: Tensor<T> = rng.randn(&g.x_shape(), 1.0, 0.0);
        let w: Tensor<T> = rng.randn(&g.w_shape(), 1.0, 0.0);
        let b: Tensor<T> = rng.randn(&[g.f], 1.0, 0.0);
        let dout: Tensor<T> = rng.randn(&g.out_shape(), 1.0, 0.0);
        let mut out = Tensor::zeros(&g.out_shape())?;
        let (mut dx, mut dw, mut db) = (
            Tensor::zeros(&g.x_shape())?,
            Tensor::zeros(&g.w_shape())?,
            Tensor::zeros(&[g.f])?,
        );
        let mut ws: Vec<T> = Vec::new();
        let f64_data = std::mem::size_of::<T>() == 8;
        let mut best = *self;
        for dir in [
            Direction::Forward,
            Direction::WeightGrad,
            Direction::DataGrad,
        ] {
            let mut times = Vec::new();
            for alg in [
                ConvAlgorithm::Im2col,
                ConvAlgorithm::Direct,
                ConvAlgorithm::Winograd,
                ConvAlgorithm::Winograd4x4,
            ] {
                if alg == ConvAlgorithm::Winograd4x4 && !f64_data {
                    continue;
                }
                let Ok(p) = best.with_algorithm(dir, alg) else {
                    continue;
                };
                let need = match dir {
                    Direction::Forward => p.forward_workspace_len(par)?,
                    _ => p.backward_workspace_len(par)?,
                };
                if ws.len() < need {
                    ws.resize(need, T::zero());
                }
                let mut call = || match dir {
                    Direction::Forward => p.forward_into(&x, &w, &b, &mut out, &mut ws, par),
                    Direction::WeightGrad => {
                        p.backward_weights_into(&x, &dout, &mut dw, &mut db, &mut ws, par)
                    }
                    Direction::DataGrad => {
                        p.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
                    }
                };
                call()?;
                let mut ts = Vec::with_capacity(MEASURE_CALLS);
                for _ in 0..MEASURE_CALLS {
                    let t = std::time::Instant::now();
                    call()?;
                    ts.push(t.elapsed().as_secs_f64() * 1e3);
                }
                ts.sort_by(f64::total_cmp);
                times.push((alg, ts[ts.len() / 2]));
            }
            times.sort_by(|a, b| a.1.total_cmp(&b.1));
            if let Some(&(alg, ms)) = times.first() {
                best = best.with_algorithm(dir, alg)?;
                best.why[dir_index(dir)] = Choice::Measured {
                    ms,
                    next: times.get(1).copied(),
                };
            }
        }
        Ok(best)
    }

    /// The validated geometry.
    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }

    /// The algorithm direction `dir` runs on finite data. A call whose data holds a NaN or an
    /// infinity that this algorithm would spread differently from the reference (Winograd's
    /// transforms, the direct dx's border taps) runs that direction on im2col instead, so the
    /// NaN and infinity positions are always the reference's; the workspace queries cover both.
    pub fn algorithm(&self, dir: Direction) -> ConvAlgorithm {
        match dir {
            Direction::Forward => self.algos.fwd,
            Direction::DataGrad => self.algos.dx,
            Direction::WeightGrad => self.algos.dw,
        }
    }

    /// The SIMD level of the plan's GEMM kernels (the level in force when it was built).
    pub fn simd_level(&self) -> SimdLevel {
        self.algos.s.level()
    }

    /// Exact workspace (elements of T) [`ConvPlan::forward_into`] needs with `par`'s threads
    /// (0 when there is nothing to compute: an empty batch, image, channel or filter set).
    pub fn forward_workspace_len(&self, par: Parallelism<'_>) -> Result<usize> {
        if empty_work(&self.geom) {
            return Ok(0);
        }
        forward_workspace_len(&self.geom, &self.algos, par.threads()).ok_or_else(overflow)
    }

    /// Exact workspace (elements of T) [`ConvPlan::backward_into`] needs with `par`'s threads
    /// (0 when there is nothing to compute).
    pub fn backward_workspace_len(&self, par: Parallelism<'_>) -> Result<usize> {
        if empty_work(&self.geom) {
            return Ok(0);
        }
        backward_workspace_len(&self.geom, &self.algos, par.threads()).ok_or_else(overflow)
    }

    /// Workspace enough for either direction: the larger of the two.
    pub fn workspace_len(&self, par: Parallelism<'_>) -> Result<usize> {
        Ok(self
            .forward_workspace_len(par)?
            .max(self.backward_workspace_len(par)?))
    }

    /// Forward into the caller's `out` (N, F, H', W') with the caller's workspace (at least
    /// [`ConvPlan::forward_workspace_len`]); allocates nothing proportional to the data.
    /// Everything is validated before anything is written.
    pub fn forward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        w: impl Into<TensorView<'a, T>>,
        b: impl Into<TensorView<'a, T>>,
        out: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, w, b, mut out) = (x.into(), w.into(), b.into(), out.into());
        let g = &self.geom;
        expect_shape("x", x.shape(), &g.x_shape())?;
        expect_shape("w", w.shape(), &g.w_shape())?;
        expect_shape("b", b.shape(), &[g.f])?;
        self.check_forward_out(&out, workspace, par)?;
        if empty_work(g) {
            fill_empty_work(g, w.data(), b.data(), out.data_mut());
            return Ok(());
        }
        super::forward::forward_into(
            g,
            &self.algos.for_forward(x.data(), w.data(), par),
            x.data(),
            w.data(),
            b.data(),
            out.data_mut(),
            workspace,
            par,
        );
        Ok(())
    }

    /// Packs w (F, C/groups, KH, KW) and b (F,) once for this plan's forward, for a caller whose
    /// weights stay unchanged over many calls (inference, or evaluating a model between
    /// updates): [`ConvPlan::forward_packed_into`] then skips the packing (and w's finiteness
    /// scan) that every [`ConvPlan::forward_into`] does. The result is tied to this plan's shape
    /// and algorithm, and keeps copies of w and b for the calls whose data make the forward fall
    /// back to im2col (a non-finite x under Winograd).
    pub fn pack_weights<'a>(
        &self,
        w: impl Into<TensorView<'a, T>>,
        b: impl Into<TensorView<'a, T>>,
    ) -> Result<ConvWeights<T>>
    where
        T: 'a,
    {
        let (w, b) = (w.into(), b.into());
        let g = &self.geom;
        expect_shape("w", w.shape(), &g.w_shape())?;
        expect_shape("b", b.shape(), &[g.f])?;
        let mut packed = vec![T::zero(); packed_w_len(g, &self.algos)];
        if !empty_work(g) {
            super::forward::pack_weights(
                g,
                &self.algos,
                w.data(),
                b.data(),
                &mut packed,
                Parallelism::Current,
            );
        }
        Ok(ConvWeights {
            geom: self.geom,
            algos: self.algos,
            w: w.data().to_vec(),
            b: b.data().to_vec(),
            w_finite: all_finite(w.data(), Parallelism::Current),
            packed,
        })
    }

    /// The forward's out shape and workspace length (both forward entry points).
    fn check_forward_out(
        &self,
        out: &TensorViewMut<'_, T>,
        workspace: &[T],
        par: Parallelism<'_>,
    ) -> Result<()> {
        expect_shape("out", out.shape(), &self.geom.out_shape())?;
        check_workspace(
            workspace,
            self.forward_workspace_len(par)?,
            "ConvPlan::forward_workspace_len",
        )
    }

    /// [`ConvPlan::forward_into`] with weights packed by [`ConvPlan::pack_weights`] of this plan
    /// (an `Err` naming `weights` for another plan's): the same workspace, the same bits.
    pub fn forward_packed_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        weights: &ConvWeights<T>,
        out: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, mut out) = (x.into(), out.into());
        let g = &self.geom;
        if weights.geom != *g || weights.algos != self.algos {
            return Err(Error::param(
                "weights",
                format!(
                    "weights packed by this plan ({:?}, {:?})",
                    g, self.algos.fwd
                ),
                format!(
                    "weights packed for {:?}, {:?}",
                    weights.geom, weights.algos.fwd
                ),
            ));
        }
        expect_shape("x", x.shape(), &g.x_shape())?;
        self.check_forward_out(&out, workspace, par)?;
        let (w, b) = (&weights.w[..], &weights.b[..]);
        if empty_work(g) {
            fill_empty_work(g, w, b, out.data_mut());
            return Ok(());
        }
        let a = self
            .algos
            .for_forward_with(x.data(), || weights.w_finite, par);
        if a == weights.algos {
            super::forward::forward_packed(
                g,
                &a,
                &weights.packed,
                x.data(),
                b,
                out.data_mut(),
                workspace,
                par,
            );
        } else {
            super::forward::forward_into(g, &a, x.data(), w, b, out.data_mut(), workspace, par);
        }
        Ok(())
    }

    /// Backward into the caller's dx (like x), dw (like w) and db (F,), from the forward's x and
    /// w and dout (N, F, H', W'), with the caller's workspace (at least
    /// [`ConvPlan::backward_workspace_len`]). Everything is validated before anything is written.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        w: impl Into<TensorView<'a, T>>,
        dout: impl Into<TensorView<'a, T>>,
        dx: impl Into<TensorViewMut<'o, T>>,
        dw: impl Into<TensorViewMut<'o, T>>,
        db: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (w, mut dx) = (w.into(), dx.into());
        self.backward_with(
            x.into(),
            dout.into(),
            Some((w, &mut dx)),
            dw.into(),
            db.into(),
            workspace,
            par,
        )
    }

    /// Backward for the weights only: dw (like w) and db (F,) from the forward's x and dout,
    /// without dx, for a layer whose input needs no gradient (a network's first layer: PyTorch
    /// skips it there too). Same workspace as [`ConvPlan::backward_into`], and the same dw and
    /// db bits. Everything is validated before anything is written.
    pub fn backward_weights_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        dout: impl Into<TensorView<'a, T>>,
        dw: impl Into<TensorViewMut<'o, T>>,
        db: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        self.backward_with(
            x.into(),
            dout.into(),
            None,
            dw.into(),
            db.into(),
            workspace,
            par,
        )
    }

    /// Both backward entry points: validation in argument order (x, w, dout, dx, dw, db,
    /// workspace) before any write, then the kernels (dx only when `wdx` is given).
    #[allow(clippy::too_many_arguments)]
    fn backward_with(
        &self,
        x: TensorView<'_, T>,
        dout: TensorView<'_, T>,
        mut wdx: Option<(TensorView<'_, T>, &mut TensorViewMut<'_, T>)>,
        mut dw: TensorViewMut<'_, T>,
        mut db: TensorViewMut<'_, T>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()> {
        let g = &self.geom;
        expect_shape("x", x.shape(), &g.x_shape())?;
        if let Some((w, _)) = &wdx {
            expect_shape("w", w.shape(), &g.w_shape())?;
        }
        expect_shape("dout", dout.shape(), &g.out_shape())?;
        if let Some((_, dx)) = &wdx {
            expect_shape("dx", dx.shape(), &g.x_shape())?;
        }
        expect_shape("dw", dw.shape(), &g.w_shape())?;
        expect_shape("db", db.shape(), &[g.f])?;
        check_workspace(
            workspace,
            self.backward_workspace_len(par)?,
            "ConvPlan::backward_workspace_len",
        )?;
        if empty_work(g) {
            if let Some((_, dx)) = wdx.as_mut() {
                dx.data_mut().fill(T::zero());
            }
            empty_weight_grads(g, dout.data(), dw.data_mut(), db.data_mut());
            return Ok(());
        }
        let a = self.algos.for_backward(
            x.data(),
            wdx.as_ref().map(|(w, _)| w.data()),
            dout.data(),
            par,
        );
        super::backward::backward_into(
            g,
            &a,
            x.data(),
            dout.data(),
            wdx.as_mut().map(|(w, dx)| (w.data(), dx.data_mut())),
            dw.data_mut(),
            db.data_mut(),
            workspace,
            par,
        );
        Ok(())
    }

    /// Why direction `dir` runs what it runs, in a phrase.
    fn reason(&self, dir: Direction) -> String {
        let g = &self.geom;
        let s = self.algos.s;
        match self.why[dir_index(dir)] {
            Choice::Forced => return "forced by with_algorithm".into(),
            Choice::Measured { ms, next } => {
                return match next {
                    Some((a, t)) => format!("measured fastest: {ms:.3} ms, next {a:?} {t:.3} ms"),
                    None => format!("measured: {ms:.3} ms, the only algorithm that runs"),
                };
            }
            Choice::CostModel => {}
        }
        match (dir, self.algorithm(dir)) {
            (Direction::Forward | Direction::WeightGrad, ConvAlgorithm::Winograd) => format!(
                "3x3 stride 1, {} in / {} out channels per group >= {WINO_MIN_CHANNELS}",
                g.cg(),
                g.fg()
            ),
            (Direction::DataGrad, ConvAlgorithm::Winograd) => format!(
                "3x3 stride 1, pad <= 2, {} in / {} out channels per group >= {WINO_MIN_CHANNELS}",
                g.fg(),
                g.cg()
            ),
            (Direction::Forward | Direction::WeightGrad, ConvAlgorithm::Winograd4x4) => format!(
                "f64, 3x3 stride 1, {} in / {} out channels per group >= {WINO4_MIN_CHANNELS}, {} 4x4 tiles per image >= {WINO_MIN_BLOCK_TILES}",
                g.cg(),
                g.fg(),
                g.ho.div_ceil(4) * g.wo.div_ceil(4)
            ),
            (Direction::DataGrad, ConvAlgorithm::Winograd4x4) => format!(
                "f64, 3x3 stride 1, pad <= 2, {} in / {} out channels per group >= {WINO4_MIN_CHANNELS}, {} 4x4 tiles per image >= {WINO_MIN_BLOCK_TILES}",
                g.fg(),
                g.cg(),
                g.h.div_ceil(4) * g.w.div_ceil(4)
            ),
            (Direction::Forward | Direction::WeightGrad, ConvAlgorithm::Direct) => format!(
                "explicit {:?} kernels; output rows of {} fill the {}-pixel slots",
                s.level(),
                g.wo,
                pg::direct_slot(s)
            ),
            (Direction::DataGrad, ConvAlgorithm::Direct) => format!(
                "stride 1, undilated, pad < kernel; {} >= {DIRECT_DX_MIN_CHANNELS} input channels per group; rows of {} fill the {}-pixel slots",
                g.cg(),
                g.w,
                pg::direct_slot(s)
            ),
            (_, ConvAlgorithm::Im2col) => {
                if pg::direct_available(s) {
                    "no faster algorithm's rule holds for this shape".into()
                } else {
                    format!("{:?} has no explicit GEMM kernels", s.level())
                }
            }
        }
    }
}

impl<T> std::fmt::Debug for ConvPlan<T>
where
    T: Float,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.geom;
        let d = |dir| format!("{:?} ({})", self.algorithm(dir), self.reason(dir));
        f.debug_struct("ConvPlan")
            .field("dtype", &T::NAME)
            .field("x", &g.x_shape())
            .field("w", &g.w_shape())
            .field("out", &g.out_shape())
            .field("param", g.param())
            .field("simd", &self.simd_level())
            .field("forward", &format_args!("{}", d(Direction::Forward)))
            .field("dx", &format_args!("{}", d(Direction::DataGrad)))
            .field("dw", &format_args!("{}", d(Direction::WeightGrad)))
            .finish()
    }
}

/// Whether a convolution has nothing to multiply: an empty batch, input plane, channel set,
/// filter set or output plane. The kernels' tilings assume non-empty extents (a zero chunk
/// size, a slice start past the end), and their workspace would be sized for work that is
/// never done (an empty batch of 2^30 x 2^30 images asked for 2^61 elements), so these shapes
/// take the direct definition instead.
pub(crate) fn empty_work(g: &ConvGeom) -> bool {
    [g.n, g.c, g.h, g.w, g.f, g.ho, g.wo].contains(&0)
}

/// dw and db when there is nothing to multiply: dw = 0 (a sum over no input element or no
/// output), db[f] = the sum of dout over its images and pixels (in f64, as the kernels).
fn empty_weight_grads<T: Float>(g: &ConvGeom, dout: &[T], dw: &mut [T], db: &mut [T]) {
    let p = g.pixels();
    let mut acc = vec![0.0f64; g.f];
    // dw = the sum of 0 * dout over the outputs: 0, or NaN where a dout is not finite.
    let mut zero_terms = vec![T::zero(); g.f];
    if p > 0 {
        for (o, chunk) in dout.chunks(p).enumerate() {
            acc[o % g.f] += chunk.iter().fold(0.0, |s, v| s + v.to_f());
            let z = &mut zero_terms[o % g.f];
            *z = chunk.iter().fold(*z, |s, &v| s + T::zero() * v);
        }
    }
    let kf = g.cg() * g.kh * g.kw;
    for (f, z) in zero_terms.iter().enumerate() {
        dw[f * kf..(f + 1) * kf].fill(*z);
    }
    for (d, a) in db.iter_mut().zip(acc) {
        *d = T::from_f(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_rows_fit_by_the_cache_geometry() {
        use crate::cpu::CacheGeometry;
        let l1 = |sets, ways| CacheGeometry {
            sets,
            ways,
            line: 64,
        };
        // 4 KB apart on 64 sets of 64 bytes: every row in one set, so as many rows as ways.
        assert!(in_place_fits(l1(64, 8), 4096, 8));
        assert!(!in_place_fits(l1(64, 8), 4096, 9));
        assert!(in_place_fits(l1(64, 12), 4096, 12));
        // 2 KB apart: two sets (nb_conv's f64 dout rows, 25 of them: 13 to a set).
        assert!(!in_place_fits(l1(64, 8), 2048, 25));
        assert!(!in_place_fits(l1(64, 12), 2048, 25));
        assert!(in_place_fits(l1(64, 12), 2048, 24));
        // 1 KB apart: four sets, 7 of the 25 rows to a set.
        assert!(in_place_fits(l1(64, 8), 1024, 25));
        // An odd number of lines apart visits every set.
        assert!(in_place_fits(l1(64, 8), 64 * 3, 512));
        assert!(!in_place_fits(l1(64, 8), 64 * 3, 513));
        // A smaller cache (32 sets): 2 KB apart is a whole period, one set.
        assert!(!in_place_fits(l1(32, 8), 2048, 9));
    }

    #[test]
    fn all_finite_finds_one_non_finite_value_in_any_run() {
        let n = 200_003;
        for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
            let mut v = vec![1.0f32; n];
            assert!(all_finite(&v, par));
            for at in [0, 65_535, 65_536, 131_071, n - 1] {
                for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                    v[at] = bad;
                    assert!(!all_finite(&v, par), "{bad} at {at} {par:?}");
                    v[at] = 1.0;
                }
            }
            assert!(!all_finite(&[f64::NAN], par));
        }
    }
}
