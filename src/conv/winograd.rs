//! Winograd F(m x m, 3 x 3) for m = 2 and m = 4: the stride-1, undilated 3 x 3 correlation with
//! (m + 2)^2 multiplications per m x m output tile instead of 9 m^2 (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2015): 16 per 4 outputs (2.25x fewer than
//! the direct sum) or 36 per 16 (4x fewer).
//!
//! For an (m + 2) x (m + 2) input patch d (tile (ty, tx) starts at padded row m ty, column m tx)
//! and a 3 x 3 kernel g, the m x m outputs are `Y = A^T [(G g G^T) . (B^T d B)] A` with, for
//! F(2x2, 3x3),
//!
//! ```text
//! B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1  1  1  0]
//!       [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [ 0    0    1 ]
//! ```
//!
//! and for F(4x4, 3x3) (interpolation points 0, +-1, +-2)
//!
//! ```text
//! B^T = [4  0 -5  0  1  0]   G = [ 1/4     0     0 ]   A^T = [1  1  1  1  1  0]
//!       [0 -4 -4  1  1  0]       [-1/6  -1/6  -1/6 ]         [0  1 -1  2 -2  0]
//!       [0  4 -4 -1  1  0]       [-1/6   1/6  -1/6 ]         [0  1  1  4  4  0]
//!       [0 -2 -1  2  1  0]       [1/24  1/12   1/6 ]         [0  1 -1  8 -8  1]
//!       [0  2 -1 -2  1  0]       [1/24 -1/12   1/6 ]
//!       [0  4  0 -5  0  1]       [  0     0     1  ]
//! ```
//!
//! Summed over input channels, each of the (m + 2)^2 elements xi of the transformed tile is one
//! GEMM: `M[xi] (cout x tiles) = U[xi] (cout x cin) * V[xi] (cin x tiles)`, U the transformed
//! weights (computed in f64, packed once per call), V the transformed input. Per image (and
//! block of tile rows, so V and M stay in L2) the work is: input transform, (m + 2)^2 packed
//! GEMMs, output transform (plus bias). The transforms are additions and multiplications by
//! small powers of two (exact); the GEMM is the packed engine's.
//!
//! The weight gradient runs the same tiles backwards (`dw_image`): with W = A dY A^T (dY the
//! m x m tile of dout, zero outside the output), `dU[xi] (cout x cin) += W[xi] (cout x tiles) *
//! V[xi]^T (tiles x cin)` summed over every tile of every image, then `dw = G^T dU G` per
//! (output, input) pair (`dw_from_du`, in f64).
//!
//! Accuracy: B^T and A^T have small integer entries and G's are exact in f64 for m = 2 (1/2)
//! and rounded there once for m = 4 (1/6, 1/12, 1/24), so the rounding differs from the direct
//! sum by the transforms' extra additions, but those add up terms of up to 10 (B^T's row sums
//! for m = 4) and 19 (A^T's) times the inputs: the error is bounded by the algorithm run on
//! absolute values (the bound the property test holds it to, kernels.md), which for m = 4 is
//! one to two orders of magnitude above the direct sum's.

use crate::cpu::{CACHE_LINE, line_elems, multiversion};
use crate::gemm::{self as pg, BSrc, Shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tuning::{WINO_MIN_BLOCK_TILES, wino_block_elems};

/// A stride-1, undilated 3 x 3 correlation of `cin` planes of h x w, zero-padded by (ph, pw),
/// into `cout` planes of ho x wo (ho = h + 2 ph - 2), by F(m x m, 3 x 3).
#[derive(Clone, Copy, Debug)]
pub(super) struct Wino {
    /// Output tile side: 2 or 4.
    pub m: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub ph: usize,
    pub pw: usize,
    /// The plan's GEMM shape (its level and blocking); the packed U panels derive from it.
    pub s: Shape,
}

impl Wino {
    pub fn ho(&self) -> usize {
        self.h + 2 * self.ph - 2
    }
    pub fn wo(&self) -> usize {
        self.w + 2 * self.pw - 2
    }
    /// Transformed values per tile: (m + 2)^2.
    pub fn nx(&self) -> usize {
        (self.m + 2) * (self.m + 2)
    }
    /// Tile rows and columns.
    fn th(&self) -> usize {
        self.ho().div_ceil(self.m)
    }
    fn tw(&self) -> usize {
        self.wo().div_ceil(self.m)
    }
    /// Tiles of one image.
    pub fn tiles(&self) -> usize {
        self.th() * self.tw()
    }
    /// Tile rows per block: equal blocks whose V and M hold about `wino_block_elems()`.
    fn tb(&self) -> usize {
        let per_row = self.nx() * self.tw() * (self.cin + self.cout);
        let most = (wino_block_elems() / per_row.max(1))
            .max(WINO_MIN_BLOCK_TILES.div_ceil(self.tw()))
            .clamp(1, self.th().max(1));
        self.th().div_ceil(self.th().div_ceil(most))
    }
    /// Images per block: 1 when an image has `WINO_MIN_BLOCK_TILES` tiles or more (blocks of
    /// its tile rows then), else whole images enough for that many tiles, so that each of the nx
    /// GEMMs is that wide and the transformed weights (nx matrices of cout x cin, beyond the L2
    /// at 128 channels) stream once per block rather than once per image. At most
    /// `WINO_MIN_BLOCK_TILES`; a function of the shape only.
    pub fn ib(&self) -> usize {
        let t = self.tiles().max(1);
        if t >= WINO_MIN_BLOCK_TILES {
            1
        } else {
            WINO_MIN_BLOCK_TILES.div_ceil(t)
        }
    }
    /// Tiles of the largest block of a batch of `n` images.
    pub fn block_tiles(&self, n: usize) -> usize {
        if self.ib() > 1 {
            self.ib().min(n.max(1)) * self.tiles()
        } else {
            self.tb() * self.tw()
        }
    }
    /// Elements of the per-block scratch: the block's padded input rows of one channel.
    fn scratch_len(&self) -> usize {
        (self.m * self.tb() + 2) * padded_width(self.m, self.tw())
    }
    /// Workspace of one block's transform (per thread).
    pub fn slot_len(&self) -> usize {
        let s = self.s;
        let t = self.block_tiles(usize::MAX);
        self.nx() * (self.cin * t + self.cout * t + 2 * PITCH_SLACK)
            + self.scratch_len()
            + pg::packed_b_len(s, self.cin, t)
    }
    /// Workspace of one block's weight-gradient pass (per thread): V and W of a block, the
    /// scratch rows, one packed B panel.
    pub fn dw_slot_len(&self) -> usize {
        let s = self.s;
        let t = self.block_tiles(usize::MAX);
        self.nx() * (self.cin * t + self.cout * t + 2 * PITCH_SLACK)
            + self.scratch_len()
            + pg::b_panels_bbuf_len(s)
    }
    /// Elements of a dU (nx x cout x cin).
    pub fn du_len(&self) -> usize {
        self.nx() * self.cout * self.cin
    }
    /// The panel shape of the packed U.
    pub fn a_shape(&self) -> Shape {
        pg::rows_shape(self.s, self.cout)
    }
    /// Elements of one packed U[xi].
    pub fn u_len(&self) -> usize {
        pg::packed_a_len(self.a_shape(), self.cout, self.cin)
    }
    /// Elements of the nx packed U[xi].
    pub fn packed_len(&self) -> usize {
        self.nx() * self.u_len()
    }
}

/// G of F(2x2, 3x3) and of F(4x4, 3x3) (rows: the interpolation points 0, 1, -1, infinity and
/// 0, 1, -1, 2, -2, infinity).
const G2: [[f64; 3]; 4] = [
    [1.0, 0.0, 0.0],
    [0.5, 0.5, 0.5],
    [0.5, -0.5, 0.5],
    [0.0, 0.0, 1.0],
];
const G4: [[f64; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// G for tiles of side m.
fn g_matrix(m: usize) -> &'static [[f64; 3]] {
    match m {
        2 => &G2,
        4 => &G4,
        _ => unreachable!("Winograd tiles are 2 or 4 wide"),
    }
}

/// Transforms and packs the weights: `k(o, i)` is the 3 x 3 kernel (row-major) of output `o`
/// from input `i`; U[xi = (m + 2) a + b][o][i] = (G k G^T)[a][b], computed in f64 and rounded
/// once, written straight into each U[xi]'s packed-A layout (panels of MR outputs per KC block
/// of inputs; see `pg::pack_a`). One job per row a of G (the m + 2 matrices U[(m + 2) a ..],
/// contiguous in `out`), each computing its row of G k once per (panel, input), MR lanes wide:
/// the forward packs per call, and on one thread with per-element arrays this was 30% of the
/// F(4x4) forward of res2_conv f64 (AMD EPYC model 17, `perf record`).
pub(super) fn pack_weights<T: Float>(
    wg: &Wino,
    k: impl Fn(usize, usize) -> [T; 9] + Sync,
    out: &mut [T],
    par: Parallelism<'_>,
) {
    let (sa, ul) = (wg.a_shape(), wg.u_len());
    let (mr, mpad) = (sa.mr, wg.cout.next_multiple_of(sa.mr));
    assert!(mr <= MAX_MR, "no level has panels of {mr} rows");
    let gm = g_matrix(wg.m);
    let al = gm.len();
    // Input i's column: where (o = 0, i) lands, and the panel stride of its KC block.
    let mut col = Vec::with_capacity(wg.cin);
    for (k0, kc) in pg::kc_blocks(sa, wg.cin) {
        col.extend((k0..k0 + kc).map(|i| (k0 * mpad + (i - k0) * mr, kc * mr)));
    }
    let cout = wg.cout;
    par.for_each_chunk(&mut out[..wg.nx() * ul], al * ul, &|a, rows, _| {
        if mpad != cout {
            // The padding rows of the last panel are zero.
            rows.fill(T::zero());
        }
        let ga = gm[a];
        for p in 0..mpad / mr {
            let live = mr.min(cout - p * mr);
            for (i, &(base, pstride)) in col.iter().enumerate() {
                // The panel's kernels, one lane per output (zero past `live`).
                let mut g = [[0.0f64; MAX_MR]; 9];
                for l in 0..live {
                    let kv = k(p * mr + l, i);
                    for t in 0..9 {
                        g[t][l] = kv[t].to_f();
                    }
                }
                // q = row a of G k (3 values per lane), then U[a][b] = q . (row b of G).
                let mut q = [[0.0f64; MAX_MR]; 3];
                for (j, qj) in q.iter_mut().enumerate() {
                    for l in 0..MAX_MR {
                        qj[l] = ga[0] * g[j][l] + ga[1] * g[3 + j][l] + ga[2] * g[6 + j][l];
                    }
                }
                let at = base + p * pstride;
                for (b, gb) in gm.iter().enumerate() {
                    let dst = &mut rows[b * ul + at..][..mr];
                    for (l, d) in dst.iter_mut().enumerate() {
                        *d = T::from_f(gb[0] * q[0][l] + gb[1] * q[1][l] + gb[2] * q[2][l]);
                    }
                }
            }
        }
    });
}

/// The tallest A panel of any level (the AVX-512 level's).
const MAX_MR: usize = pg::AVX512_MR;

/// The blocks of `nimg` images, each as (image, ty0, ty1) pieces: tile rows of one image at a
/// time when `ib` is 1, else groups of `ib` whole images.
fn for_blocks(wg: &Wino, nimg: usize, mut f: impl FnMut(&[(usize, usize, usize)])) {
    let (th, tb, ib) = (wg.th(), wg.tb(), wg.ib());
    if ib == 1 {
        for img in 0..nimg {
            for ty0 in (0..th).step_by(tb) {
                f(&[(img, ty0, (ty0 + tb).min(th))]);
            }
        }
        return;
    }
    let mut pieces = [(0, 0, 0); WINO_MIN_BLOCK_TILES];
    for b0 in (0..nimg).step_by(ib) {
        let nb = ib.min(nimg - b0);
        for (j, p) in pieces[..nb].iter_mut().enumerate() {
            *p = (b0 + j, 0, th);
        }
        f(&pieces[..nb]);
    }
}

/// `nimg` images: `out[i * os..]` (cout x ho x wo) = the correlation of `x[i * xs..]` (cin x h
/// x w) with the packed weights `up`, plus `bias` (one per output plane, or empty). Every
/// element of each output is stored. `ws` holds `slot_len` elements.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_images<T: Float>(
    wg: &Wino,
    up: &[T],
    (x, xs): (&[T], usize),
    (out, os): (&mut [T], usize),
    nimg: usize,
    bias: &[T],
    ws: &mut [T],
) {
    let tw = wg.tw();
    let (ho, wo) = (wg.ho(), wg.wo());
    if nimg == 0 {
        return;
    }
    assert!(x.len() >= (nimg - 1) * xs + wg.cin * wg.h * wg.w);
    assert!(out.len() >= (nimg - 1) * os + wg.cout * ho * wo);
    assert!(bias.is_empty() || bias.len() >= wg.cout);
    let (sa, ul) = (wg.a_shape(), wg.u_len());
    let tmax = wg.block_tiles(nimg);
    let (v, rest) = ws.split_at_mut(wg.nx() * (wg.cin * tmax + PITCH_SLACK));
    let (m, rest) = rest.split_at_mut(wg.nx() * (wg.cout * tmax + PITCH_SLACK));
    let (scratch, bbuf) = rest.split_at_mut(wg.scratch_len());
    for_blocks(wg, nimg, |pieces| {
        let nt: usize = pieces.iter().map(|&(_, a, b)| (b - a) * tw).sum();
        let (vp, mp) = (xi_pitch::<T>(wg.cin * nt), xi_pitch::<T>(wg.cout * nt));
        let mut t0 = 0;
        for &(img, ty0, ty1) in pieces {
            input_transform(wg, &x[img * xs..], (ty0, ty1), (t0, nt, vp), v, scratch);
            t0 += (ty1 - ty0) * tw;
        }
        for xi in 0..wg.nx() {
            pg::gemm_packed_a(
                sa,
                wg.cout,
                nt,
                wg.cin,
                &up[xi * ul..(xi + 1) * ul],
                BSrc::Rows {
                    data: &v[xi * vp..xi * vp + wg.cin * nt],
                    ld: nt,
                },
                &mut m[xi * mp..xi * mp + wg.cout * nt],
                nt,
                bbuf,
                true,
            );
        }
        let mut t0 = 0;
        for &(img, ty0, ty1) in pieces {
            let (o, tl) = (&mut out[img * os..], (t0, nt, mp));
            match wg.m {
                2 => output_transform(m, wg.cout, (ho, wo), (ty0, ty1), tw, tl, o, bias),
                _ => output_transform4(m, wg.cout, (ho, wo), (ty0, ty1), tw, tl, o, bias),
            }
            t0 += (ty1 - ty0) * tw;
        }
    });
}

/// The weight gradient of `nimg` images added into `du` (nx x cout x cin, `du_len`): `du[xi] +=
/// W[xi] V[xi]^T` over each block's tiles, W = A dY A^T the transformed tiles of `dout[i *
/// ds..]` (cout x ho x wo), V the input transform of `x[i * xs..]` (cin x h x w). `ws` holds
/// `dw_slot_len` elements.
pub(super) fn dw_images<T: Float>(
    wg: &Wino,
    (x, xs): (&[T], usize),
    (dout, ds): (&[T], usize),
    nimg: usize,
    du: &mut [T],
    ws: &mut [T],
) {
    let tw = wg.tw();
    let (ho, wo) = (wg.ho(), wg.wo());
    if nimg == 0 {
        return;
    }
    assert!(x.len() >= (nimg - 1) * xs + wg.cin * wg.h * wg.w);
    assert!(dout.len() >= (nimg - 1) * ds + wg.cout * ho * wo);
    assert!(du.len() >= wg.du_len());
    let s = wg.a_shape();
    let tmax = wg.block_tiles(nimg);
    let (v, rest) = ws.split_at_mut(wg.nx() * (wg.cin * tmax + PITCH_SLACK));
    let (wt, rest) = rest.split_at_mut(wg.nx() * (wg.cout * tmax + PITCH_SLACK));
    let (scratch, bbuf) = rest.split_at_mut(wg.scratch_len());
    let (cin, cout) = (wg.cin, wg.cout);
    for_blocks(wg, nimg, |pieces| {
        let nt: usize = pieces.iter().map(|&(_, a, b)| (b - a) * tw).sum();
        let (vp, wp) = (xi_pitch::<T>(cin * nt), xi_pitch::<T>(cout * nt));
        let mut t0 = 0;
        for &(img, ty0, ty1) in pieces {
            let (xi, di) = (&x[img * xs..], &dout[img * ds..]);
            input_transform(wg, xi, (ty0, ty1), (t0, nt, vp), v, scratch);
            let tl = (t0, nt, wp);
            match wg.m {
                2 => dout_transform(di, cout, (ho, wo), (ty0, ty1), tw, tl, wt),
                _ => dout_transform4(di, cout, (ho, wo), (ty0, ty1), tw, tl, wt),
            }
            t0 += (ty1 - ty0) * tw;
        }
        for xi in 0..wg.nx() {
            let vx = &v[xi * vp..xi * vp + cin * nt];
            // B (tiles x cin) is V[xi]^T: a panel's column jj is input j0 + jj's row of V.
            let pack_b = |k0: usize, kc: usize, j0: usize, out: &mut [T]| {
                let mut bases = [0usize; pg::MAX_NR];
                let nb = s.nr.min(cin - j0);
                for (jj, b) in bases[..nb].iter_mut().enumerate() {
                    *b = (j0 + jj) * nt + k0;
                }
                pg::transpose_runs(s, vx, &bases[..nb], kc, out);
            };
            pg::gemm_b_panels_a_rows(
                s,
                cout,
                cin,
                nt,
                (&wt[xi * wp..xi * wp + cout * nt], nt),
                &mut du[xi * cout * cin..(xi + 1) * cout * cin],
                cin,
                bbuf,
                false,
                pack_b,
            );
        }
    });
}

/// `dw[o][i]` (3 x 3, row-major, in `dw[(o * cin + i) * 9..]`) = G^T dU[.][o][i] G, in f64 from
/// the nx values of `du` (nx x cout x cin); jobs of whole (o, i) pairs.
pub(super) fn dw_from_du<T: Float>(wg: &Wino, du: &[T], dw: &mut [T], par: Parallelism<'_>) {
    let plane = wg.cout * wg.cin;
    let gm = g_matrix(wg.m);
    let al = gm.len();
    assert!(du.len() >= al * al * plane && dw.len() >= 9 * plane);
    const PAIRS: usize = 256;
    par.for_each_chunk(&mut dw[..9 * plane], 9 * PAIRS, &|j, chunk, _| {
        for (pi, out) in chunk.chunks_exact_mut(9).enumerate() {
            let oi = j * PAIRS + pi;
            // q = G^T dU (3 x al), then q G (3 x 3), each a sum over the al terms in order.
            let mut q = [[0.0f64; 6]; 3];
            for (a, ga) in gm.iter().enumerate() {
                for b in 0..al {
                    let d = du[(al * a + b) * plane + oi].to_f();
                    for r in 0..3 {
                        q[r][b] += ga[r] * d;
                    }
                }
            }
            for r in 0..3 {
                for c in 0..3 {
                    let v = (0..al).fold(0.0, |acc, b| acc + q[r][b] * gm[b][c]);
                    out[3 * r + c] = T::from_f(v);
                }
            }
        }
    });
}

/// Elements from one of V's, M's or W's (m + 2)^2 matrices to the next, for matrices of `len`
/// elements: an odd number of whole cache lines, so consecutive matrices start in different
/// L1 sets whatever the set count. The transforms touch the same (channel, tile) of every
/// matrix in turn; packed at a power-of-two size (64 channels x 64 tiles of f32: 16 KB) all
/// (m + 2)^2 of those lines fell into one L1 set, 16 or 36 lines for its 8 or 12 ways, and the
/// input transform's stores and the output transform's loads went to L2 (half of each one's
/// `perf` samples). AMD EPYC model 17, 2 threads, res_conv f32 forced to F(2x2), `LOOP=fwd
/// examples/force` alternating builds, five rounds: 14.9 -> 13.0 ms (median; faster in 5 of 5).
fn xi_pitch<T>(len: usize) -> usize {
    let le = line_elems::<T>();
    (len.div_ceil(le) | 1) * le
}

/// What `xi_pitch` adds to a matrix at most: two lines of f32.
const PITCH_SLACK: usize = 2 * CACHE_LINE / 4;

/// Tiles per transform step: fixed-size arrays, so the transforms compile to vector code
/// whatever the image width (a loop over 8 tiles of a row would be mostly scalar remainder).
const LANES: usize = 8;

/// V[xi][c][t0 + t] (`tl` = (t0, nt, xp): rows nt long, matrix xi at xi * xp, see `xi_pitch`)
/// for the tiles of tile rows `tys` of one image (see `input_transform2` / `input_transform4`).
fn input_transform<T: Float>(
    wg: &Wino,
    x: &[T],
    tys: (usize, usize),
    tl: (usize, usize, usize),
    v: &mut [T],
    scratch: &mut [T],
) {
    let (hw, pad) = ((wg.h, wg.w), (wg.ph, wg.pw));
    match wg.m {
        2 => input_transform2(x, wg.cin, hw, pad, tys, wg.tw(), tl, v, scratch),
        _ => input_transform4(x, wg.cin, hw, pad, tys, wg.tw(), tl, v, scratch),
    }
}

multiversion! {
    /// V[xi][c][t] for the tiles of tile rows ty0..ty1 (t = (ty - ty0) * tw + tx, row stride
    /// (ty1 - ty0) * tw): each channel's rows 2 ty0 .. 2 ty1 + 2 of the padded input are copied
    /// into `scratch` (zero outside the image; rows LANES-aligned), then for each run of LANES
    /// tiles of a tile row the 4 x (2 LANES + 2) patch is split into even and odd columns (so
    /// tile tx's columns 0..4 are e[tx], o[tx], e[tx + 1], o[tx + 1]) and B^T d B is taken
    /// over rows, then columns.
    fn input_transform2<T>(
        x: &[T],
        cin: usize,
        hw: (usize, usize),
        pad: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        v: &mut [T],
        scratch: &mut [T],
    ) {
        let ((h, w), (ph, pw), (ty0, ty1)) = (hw, pad, tys);
        let nty = ty1 - ty0;
        let (rows, wp) = (2 * nty + 2, padded_width(2, tw));
        // Tile t of this piece is V's column t0 + t; V's rows are `nt` long, matrix xi at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + nty * tw <= nt);
        let pbuf = &mut scratch[..rows * wp];
        // Rows outside the image and columns outside each row are the same for every
        // channel: zeroed once, never written.
        pbuf.fill(T::zero());
        for c in 0..cin {
            padded_rows(pbuf, &x[c * h * w..(c + 1) * h * w], (h, w), (ph, pw), 2 * ty0, wp);
            for ty in 0..nty {
                for tx0 in (0..tw).step_by(LANES) {
                    // Tile tx0 + l's patch is rows 2 ty + k, columns 2 (tx0 + l) + q of the
                    // padded rows; B^T d B, one tile per lane (the loads are stride-2 runs of
                    // the padded rows, never a stack array read back at another offset: those
                    // stalled on store forwarding).
                    let r: [&[T]; 4] =
                        std::array::from_fn(|k| &pbuf[(2 * ty + k) * wp + 2 * tx0..][..2 * LANES + 2]);
                    let mut vals = [[T::zero(); LANES]; 16];
                    for l in 0..LANES {
                        let d = |k: usize, q: usize| r[k][2 * l + q];
                        // t[a][q] = (B^T d)[a][q].
                        let mut t = [[T::zero(); 4]; 4];
                        for q in 0..4 {
                            t[0][q] = d(0, q) - d(2, q);
                            t[1][q] = d(1, q) + d(2, q);
                            t[2][q] = d(2, q) - d(1, q);
                            t[3][q] = d(1, q) - d(3, q);
                        }
                        for (a, ta) in t.iter().enumerate() {
                            vals[4 * a][l] = ta[0] - ta[2];
                            vals[4 * a + 1][l] = ta[1] + ta[2];
                            vals[4 * a + 2][l] = ta[2] - ta[1];
                            vals[4 * a + 3][l] = ta[1] - ta[3];
                        }
                    }
                    let n = LANES.min(tw - tx0);
                    let base = c * nt + t0 + ty * tw + tx0;
                    for (xi, vals) in vals.iter().enumerate() {
                        let at = xi * xp + base;
                        put_lanes(&mut v[at..], vals, n);
                    }
                }
            }
        }
    }
}

/// Rows y0 - ph .. of the padded `plane` (h x w) into `pbuf`'s rows, `wp` apart with the
/// image's columns from `pw`: the rows inside the image are copied, the rest of `pbuf` keeps
/// what it held (zeros, filled once per piece: the same for every channel).
#[inline(always)]
fn padded_rows<T: Float>(
    pbuf: &mut [T],
    plane: &[T],
    (h, w): (usize, usize),
    (ph, pw): (usize, usize),
    y0: usize,
    wp: usize,
) {
    for (r, prow) in pbuf.chunks_exact_mut(wp).enumerate() {
        let y = (y0 + r).wrapping_sub(ph);
        if y < h {
            // Rows of tens of elements: an inline copy, not a memmove call per row.
            super::im2col::copy_short(&mut prow[pw..pw + w], &plane[y * w..(y + 1) * w]);
        }
    }
}

/// Width of the transform's padded input rows: every run of LANES tiles reads m LANES + 2
/// columns.
fn padded_width(m: usize, tw: usize) -> usize {
    m * tw.next_multiple_of(LANES) + 2
}

multiversion! {
    /// out[f][2 ty + a][2 tx + b] = (A^T M A)[a][b] + bias[f] for the tiles of tile rows
    /// ty0..ty1 (inside ho x wo), LANES tiles at a time.
    fn output_transform<T>(
        m: &[T],
        cout: usize,
        howo: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        out: &mut [T],
        bias: &[T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        // Tile t of this piece is column t0 + t of rows `nt` long; matrix xi starts at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + (ty1 - ty0) * tw <= nt);
        for f in 0..cout {
            let bv = bias.get(f).copied().unwrap_or(T::zero());
            for ty in 0..ty1 - ty0 {
                for tx0 in (0..tw).step_by(LANES) {
                    let n = LANES.min(tw - tx0);
                    let at = f * nt + t0 + ty * tw + tx0;
                    // s[a][c] = (A^T M)[a][c], a column c of M (its four rows) at a time, each
                    // row used as soon as it is read: a 16-row copy on the stack was re-read
                    // in wider vectors than it was written, which stalled on store forwarding
                    // (res_conv f32 forced to F(2x2), 2 threads, five alternating rounds:
                    // median 10.05 -> 9.66 ms, faster in 4 of 5).
                    let mut s0 = [[T::zero(); LANES]; 4];
                    let mut s1 = [[T::zero(); LANES]; 4];
                    for c in 0..4 {
                        let row = |a: usize| get_lanes(&m[(4 * a + c) * xp + at..], n);
                        let (m0, m1, m2, m3) = (row(0), row(1), row(2), row(3));
                        for l in 0..LANES {
                            s0[c][l] = m0[l] + m1[l] + m2[l];
                            s1[c][l] = m1[l] - m2[l] - m3[l];
                        }
                    }
                    for (a, sa) in [s0, s1].iter().enumerate() {
                        let row = 2 * (ty0 + ty) + a;
                        if row >= ho {
                            continue;
                        }
                        // Columns 2 tx and 2 tx + 1, interleaved.
                        let mut y = [T::zero(); 2 * LANES];
                        for l in 0..LANES {
                            y[2 * l] = sa[0][l] + sa[1][l] + sa[2][l] + bv;
                            y[2 * l + 1] = sa[1][l] - sa[2][l] - sa[3][l] + bv;
                        }
                        let c0 = 2 * tx0;
                        let nc = (2 * LANES).min(wo - c0);
                        let o = (f * ho + row) * wo + c0;
                        if nc == 2 * LANES {
                            out[o..o + 2 * LANES].copy_from_slice(&y);
                        } else {
                            out[o..o + nc].copy_from_slice(&y[..nc]);
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// W[xi][f][t] = (A dY A^T)[xi] for the tiles of tile rows ty0..ty1, dY the tile's 2 x 2
    /// block of dout plane f (zero outside ho x wo); t and the row stride as in
    /// `input_transform`. A's rows are (1, 0), (1, 1), (1, -1), (0, -1).
    fn dout_transform<T>(
        dout: &[T],
        cout: usize,
        howo: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        w: &mut [T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        // Tile t of this piece is column t0 + t of rows `nt` long; matrix xi starts at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + (ty1 - ty0) * tw <= nt);
        for f in 0..cout {
            let plane = &dout[f * ho * wo..(f + 1) * ho * wo];
            for ty in 0..ty1 - ty0 {
                for tx0 in (0..tw).step_by(LANES) {
                    let n = LANES.min(tw - tx0);
                    // y[i][q][l]: dout row 2 ty + i, column 2 (tx0 + l) + q.
                    let mut y = [[[T::zero(); LANES]; 2]; 2];
                    for (i, yi) in y.iter_mut().enumerate() {
                        let row = 2 * (ty0 + ty) + i;
                        if row >= ho {
                            continue;
                        }
                        let c0 = 2 * tx0;
                        let src = &plane[row * wo..(row + 1) * wo];
                        if c0 + 2 * LANES <= wo {
                            // Stride-2 runs of the plane's row, read in place.
                            let r = &src[c0..c0 + 2 * LANES];
                            for l in 0..LANES {
                                yi[0][l] = r[2 * l];
                                yi[1][l] = r[2 * l + 1];
                            }
                        } else {
                            for l in 0..LANES {
                                for q in 0..2 {
                                    if let Some(&v) = src.get(c0 + 2 * l + q) {
                                        yi[q][l] = v;
                                    }
                                }
                            }
                        }
                    }
                    // t[a][q] = (A dY)[a][q], then W[a][b] = (t A^T)[a][b].
                    let mut vals = [[T::zero(); LANES]; 16];
                    for l in 0..LANES {
                        let (y0, y1) = ([y[0][0][l], y[0][1][l]], [y[1][0][l], y[1][1][l]]);
                        let t = [
                            y0,
                            [y0[0] + y1[0], y0[1] + y1[1]],
                            [y0[0] - y1[0], y0[1] - y1[1]],
                            [-y1[0], -y1[1]],
                        ];
                        for (a, ta) in t.iter().enumerate() {
                            vals[4 * a][l] = ta[0];
                            vals[4 * a + 1][l] = ta[0] + ta[1];
                            vals[4 * a + 2][l] = ta[0] - ta[1];
                            vals[4 * a + 3][l] = -ta[1];
                        }
                    }
                    let base = f * nt + t0 + ty * tw + tx0;
                    for (xi, vals) in vals.iter().enumerate() {
                        let at = xi * xp + base;
                        put_lanes(&mut w[at..], vals, n);
                    }
                }
            }
        }
    }
}

/// Six values through B^T of F(4x4, 3x3): (B^T d)[0..6].
#[inline(always)]
fn bt4<T: Float>(d: [T; 6]) -> [T; 6] {
    let (two, four, five) = (T::from_f(2.0), T::from_f(4.0), T::from_f(5.0));
    let (d42, d31) = (d[4] - d[2], d[3] - d[1]);
    [
        four * d[0] - five * d[2] + d[4],
        (d[3] + d[4]) - four * (d[1] + d[2]),
        (d[4] - d[3]) + four * (d[1] - d[2]),
        d42 + two * d31,
        d42 - two * d31,
        four * d[1] - five * d[3] + d[5],
    ]
}

/// Six values through A^T of F(4x4, 3x3): (A^T m)[0..4].
#[inline(always)]
fn at4<T: Float>(m: [T; 6]) -> [T; 4] {
    let (two, four, eight) = (T::from_f(2.0), T::from_f(4.0), T::from_f(8.0));
    let (p12, d12, p34, d34) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [
        m[0] + p12 + p34,
        d12 + two * d34,
        p12 + four * p34,
        d12 + eight * d34 + m[5],
    ]
}

/// Four values through A of F(4x4, 3x3): (A y)[0..6].
#[inline(always)]
fn a4<T: Float>(y: [T; 4]) -> [T; 6] {
    let (two, four, eight) = (T::from_f(2.0), T::from_f(4.0), T::from_f(8.0));
    let (e, o) = (y[0] + y[2], y[1] + y[3]);
    let (p02, p13) = (y[0] + four * y[2], two * y[1] + eight * y[3]);
    [y[0], e + o, e - o, p02 + p13, p02 - p13, y[3]]
}

/// Columns a run of LANES 4-wide tiles reads: 4 LANES plus the last tile's 2 extra.
const RUN4: usize = 4 * LANES + 2;

/// `dst[..LANES]` as a fixed-size array (one vector store each way, no copy call).
#[inline(always)]
fn lanes_mut<T>(dst: &mut [T]) -> &mut [T; LANES] {
    (&mut dst[..LANES]).try_into().expect("LANES elements")
}

/// `src[..LANES]` as a fixed-size array.
#[inline(always)]
fn lanes<T: Copy>(src: &[T]) -> [T; LANES] {
    src[..LANES].try_into().expect("LANES elements")
}

/// Stores the first `n` (at most LANES) of `vals` at `dst`: a whole run as one vector store (a
/// constant length, not a memmove call), a tile row's last, partial run as a copy.
#[inline(always)]
fn put_lanes<T: Copy>(dst: &mut [T], vals: &[T; LANES], n: usize) {
    if n == LANES {
        *lanes_mut(dst) = *vals;
    } else {
        dst[..n].copy_from_slice(&vals[..n]);
    }
}

/// The first `n` (at most LANES) of `src` as a run of LANES, zero past n.
#[inline(always)]
fn get_lanes<T: Float>(src: &[T], n: usize) -> [T; LANES] {
    if n == LANES {
        lanes(src)
    } else {
        let mut row = [T::zero(); LANES];
        row[..n].copy_from_slice(&src[..n]);
        row
    }
}

multiversion! {
    /// F(4x4, 3x3)'s V[xi][c][t0 + t] (rows `ld` long) for the tiles of tile rows ty0..ty1 of
    /// one image: each channel's rows 4 ty0 .. 4 ty1 + 2 of the padded input are copied into
    /// `scratch` (zero outside the image; rows LANES-aligned); for each run of LANES tiles of a
    /// tile row, B^T runs down the patch rows over all RUN4 columns at once (contiguous), then
    /// each of the 6 rows is split into its 4 column phases (tile lane l's columns are
    /// 4 l .. 4 l + 6) and B runs across, one tile per lane, straight into V. The run's
    /// intermediate arrays live outside the loops (each run overwrites them whole).
    fn input_transform4<T>(
        x: &[T],
        cin: usize,
        hw: (usize, usize),
        pad: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        v: &mut [T],
        scratch: &mut [T],
    ) {
        let ((h, w), (ph, pw), (ty0, ty1)) = (hw, pad, tys);
        let nty = ty1 - ty0;
        let (rows, wp) = (4 * nty + 2, padded_width(4, tw));
        // Tile t of this piece is V's column t0 + t; V's rows are `nt` long, matrix xi at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + nty * tw <= nt);
        let pbuf = &mut scratch[..rows * wp];
        pbuf.fill(T::zero());
        let mut e = [[T::zero(); RUN4]; 6];
        for c in 0..cin {
            padded_rows(pbuf, &x[c * h * w..(c + 1) * h * w], (h, w), (ph, pw), 4 * ty0, wp);
            for ty in 0..nty {
                for tx0 in (0..tw).step_by(LANES) {
                    let row = |k: usize| -> &[T; RUN4] {
                        pbuf[(4 * ty + k) * wp + 4 * tx0..][..RUN4]
                            .try_into()
                            .expect("RUN4 columns")
                    };
                    let r = [row(0), row(1), row(2), row(3), row(4), row(5)];
                    // e[a][col] = (B^T d)[a] at column col.
                    for col in 0..RUN4 {
                        let t = bt4([r[0][col], r[1][col], r[2][col], r[3][col], r[4][col], r[5][col]]);
                        for a in 0..6 {
                            e[a][col] = t[a];
                        }
                    }
                    let n = LANES.min(tw - tx0);
                    let base = c * nt + t0 + ty * tw + tx0;
                    for (a, ea) in e.iter().enumerate() {
                        // The 4 column phases of the run, and phases 4 and 5 (the next tile's
                        // 0 and 1) as them shifted by a lane: gathers for those were 13% of
                        // this function (AMD EPYC model 17).
                        let mut ph = [[T::zero(); LANES]; 4];
                        for l in 0..LANES {
                            for q in 0..4 {
                                ph[q][l] = ea[4 * l + q];
                            }
                        }
                        let next = |q: usize| -> [T; LANES] {
                            std::array::from_fn(|l| {
                                if l + 1 < LANES { ph[q][l + 1] } else { ea[4 * LANES + q] }
                            })
                        };
                        let (p4, p5) = (next(0), next(1));
                        let mut vb = [[T::zero(); LANES]; 6];
                        for l in 0..LANES {
                            let t = bt4([ph[0][l], ph[1][l], ph[2][l], ph[3][l], p4[l], p5[l]]);
                            for b in 0..6 {
                                vb[b][l] = t[b];
                            }
                        }
                        for (b, vals) in vb.iter().enumerate() {
                            let at = (6 * a + b) * xp + base;
                            put_lanes(&mut v[at..], vals, n);
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// F(4x4, 3x3): out[f][4 ty + a][4 tx + b] = (A^T M A)[a][b] + bias[f] for the tiles of tile
    /// rows ty0..ty1 of one image (inside ho x wo; M's tile t0 + t, rows `ld` long), LANES tiles
    /// at a time: A^T down each of the 6 columns, then A across each of the 4 rows, written
    /// interleaved straight into the output row.
    fn output_transform4<T>(
        m: &[T],
        cout: usize,
        howo: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        out: &mut [T],
        bias: &[T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        // Tile t of this piece is column t0 + t of rows `nt` long; matrix xi starts at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + (ty1 - ty0) * tw <= nt);
        let mut s = [[[T::zero(); LANES]; 6]; 4];
        for f in 0..cout {
            let bv = bias.get(f).copied().unwrap_or(T::zero());
            for ty in 0..ty1 - ty0 {
                for tx0 in (0..tw).step_by(LANES) {
                    let n = LANES.min(tw - tx0);
                    let ld = |xi: usize| {
                        let r = &m[xi * xp + f * nt + t0 + ty * tw + tx0..];
                        get_lanes(r, n)
                    };
                    // s[a][c] = (A^T M)[a][c].
                    for c in 0..6 {
                        let col = [ld(c), ld(6 + c), ld(12 + c), ld(18 + c), ld(24 + c), ld(30 + c)];
                        for l in 0..LANES {
                            let t = at4([col[0][l], col[1][l], col[2][l], col[3][l], col[4][l], col[5][l]]);
                            for a in 0..4 {
                                s[a][c][l] = t[a];
                            }
                        }
                    }
                    let c0 = 4 * tx0;
                    let nc = (4 * LANES).min(wo - c0);
                    for (a, sa) in s.iter().enumerate() {
                        let row = 4 * (ty0 + ty) + a;
                        if row >= ho {
                            continue;
                        }
                        let o = (f * ho + row) * wo + c0;
                        if nc == 4 * LANES {
                            let dst: &mut [T; 4 * LANES] =
                                (&mut out[o..o + 4 * LANES]).try_into().expect("4 LANES columns");
                            for l in 0..LANES {
                                let t = at4([sa[0][l], sa[1][l], sa[2][l], sa[3][l], sa[4][l], sa[5][l]]);
                                for b in 0..4 {
                                    dst[4 * l + b] = t[b] + bv;
                                }
                            }
                        } else {
                            let dst = &mut out[o..o + nc];
                            for l in 0..LANES {
                                let t = at4([sa[0][l], sa[1][l], sa[2][l], sa[3][l], sa[4][l], sa[5][l]]);
                                for b in 0..4 {
                                    if let Some(d) = dst.get_mut(4 * l + b) {
                                        *d = t[b] + bv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// F(4x4, 3x3): W[xi][f][t0 + t] = (A dY A^T)[xi] (rows `ld` long) for the tiles of tile rows
    /// ty0..ty1 of one image, dY the tile's 4 x 4 block of dout plane f (zero outside ho x wo).
    fn dout_transform4<T>(
        dout: &[T],
        cout: usize,
        howo: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        tl: (usize, usize, usize),
        w: &mut [T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        // Tile t of this piece is column t0 + t of rows `nt` long; matrix xi starts at xi * xp.
        let (t0, nt, xp) = tl;
        debug_assert!(t0 + (ty1 - ty0) * tw <= nt);
        let mut y = [[[T::zero(); LANES]; 4]; 4];
        let mut t = [[[T::zero(); LANES]; 4]; 6];
        for f in 0..cout {
            let plane = &dout[f * ho * wo..(f + 1) * ho * wo];
            for ty in 0..ty1 - ty0 {
                for tx0 in (0..tw).step_by(LANES) {
                    let n = LANES.min(tw - tx0);
                    // y[i][q][l]: dout row 4 ty + i, column 4 (tx0 + l) + q.
                    for (i, yi) in y.iter_mut().enumerate() {
                        let row = 4 * (ty0 + ty) + i;
                        let c0 = 4 * tx0;
                        if row < ho && c0 + 4 * LANES <= wo {
                            let r: &[T; 4 * LANES] = plane[row * wo + c0..][..4 * LANES]
                                .try_into()
                                .expect("4 LANES columns");
                            for l in 0..LANES {
                                for q in 0..4 {
                                    yi[q][l] = r[4 * l + q];
                                }
                            }
                        } else {
                            for l in 0..LANES {
                                for q in 0..4 {
                                    let col = c0 + 4 * l + q;
                                    yi[q][l] = if row < ho && col < wo {
                                        plane[row * wo + col]
                                    } else {
                                        T::zero()
                                    };
                                }
                            }
                        }
                    }
                    // t[a][q] = (A dY)[a][q] down each column q, then W[a] = A across row a.
                    for q in 0..4 {
                        for l in 0..LANES {
                            let col = a4([y[0][q][l], y[1][q][l], y[2][q][l], y[3][q][l]]);
                            for a in 0..6 {
                                t[a][q][l] = col[a];
                            }
                        }
                    }
                    let base = f * nt + t0 + ty * tw + tx0;
                    for (a, ta) in t.iter().enumerate() {
                        let mut wa = [[T::zero(); LANES]; 6];
                        for l in 0..LANES {
                            let r = a4([ta[0][l], ta[1][l], ta[2][l], ta[3][l]]);
                            for b in 0..6 {
                                wa[b][l] = r[b];
                            }
                        }
                        for (b, vals) in wa.iter().enumerate() {
                            let at = (6 * a + b) * xp + base;
                            put_lanes(&mut w[at..], vals, n);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pitch holds the matrix, stays within the slack the workspace sizes allow, and is an
    /// odd number of lines, so matrix xi starts in a different L1 set from matrix xi + 1 (and,
    /// with 64 sets, from every matrix up to 63 further on).
    fn pitch_is_odd_lines<T>() {
        let le = line_elems::<T>();
        for len in (0..5000).chain([4096, 8192, 16384, 1 << 20]) {
            let p = xi_pitch::<T>(len);
            assert!(p >= len && p <= len + PITCH_SLACK, "len {len} pitch {p}");
            assert_eq!(p % le, 0, "len {len}");
            assert_eq!((p / le) % 2, 1, "len {len}");
            let sets = 64;
            let first: Vec<usize> = (0..sets).map(|xi| (xi * p / le) % sets).collect();
            let mut distinct = first.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), sets, "len {len}: {first:?}");
        }
    }

    #[test]
    fn xi_pitch_spreads_the_matrices_over_the_sets() {
        pitch_is_odd_lines::<f32>();
        pitch_is_odd_lines::<f64>();
    }
}
