//! Winograd F(2x2, 3x3): the stride-1, undilated 3 x 3 correlation with 16 multiplications per
//! 2 x 2 output tile instead of 36 (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2015), so the GEMM does 2.25x fewer FLOPs than the direct convolution.
//!
//! For a 4 x 4 input patch d (tile (ty, tx) starts at padded row 2ty, column 2tx) and a 3 x 3
//! kernel g, the 2 x 2 outputs are `Y = A^T [(G g G^T) . (B^T d B)] A` with
//!
//! ```text
//! B^T = [1  0 -1  0]    G = [ 1    0    0 ]    A^T = [1  1  1  0]
//!       [0  1  1  0]        [1/2  1/2  1/2]          [0  1 -1 -1]
//!       [0 -1  1  0]        [1/2 -1/2  1/2]
//!       [0  1  0 -1]        [ 0    0    1 ]
//! ```
//!
//! Summed over input channels, each of the 16 elements xi of the transformed tile is one GEMM:
//! `M[xi] (cout x tiles) = U[xi] (cout x cin) * V[xi] (cin x tiles)`, U the transformed weights
//! (computed in f64, packed once per call), V the transformed input. Per image (and block of
//! tile rows, so V and M stay in L2) the work is: input transform, 16 packed GEMMs, output
//! transform (plus bias). The transforms are additions only; the GEMM is the packed engine's.
//!
//! The weight gradient runs the same tiles backwards (`dw_image`): with W = A dY A^T (dY the
//! 2 x 2 tile of dout, zero outside the output), `dU[xi] (cout x cin) += W[xi] (cout x tiles) *
//! V[xi]^T (tiles x cin)` summed over every tile of every image, then `dw = G^T dU G` per
//! (output, input) pair (`dw_from_du`, in f64).
//!
//! Accuracy: B^T and A^T have entries 0 and +-1, G's are 0, 1 and 1/2 (exact in binary), so the
//! rounding differs from the direct sum by the transforms' few extra additions: an f32 output
//! carries a few more ulps of the sum of |terms| than the direct path (the bound the property
//! test uses is in kernels.md).

use crate::cpu::multiversion;
use crate::gemm::{self as pg, BSrc, Shape};
use crate::scalar::Float;
use crate::tuning::{WINO_MIN_BLOCK_TILES, wino_block_elems};

/// A stride-1, undilated 3 x 3 correlation of `cin` planes of h x w, zero-padded by (ph, pw),
/// into `cout` planes of ho x wo (ho = h + 2 ph - 2).
#[derive(Clone, Copy, Debug)]
pub(super) struct Wino {
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
    /// Tile rows and columns.
    fn th(&self) -> usize {
        self.ho().div_ceil(2)
    }
    fn tw(&self) -> usize {
        self.wo().div_ceil(2)
    }
    /// Tile rows per block: equal blocks whose V and M hold about `wino_block_elems()`.
    fn tb(&self) -> usize {
        let per_row = 16 * self.tw() * (self.cin + self.cout);
        let most = (wino_block_elems() / per_row.max(1))
            .max(WINO_MIN_BLOCK_TILES.div_ceil(self.tw()))
            .clamp(1, self.th().max(1));
        self.th().div_ceil(self.th().div_ceil(most))
    }
    /// Elements of the per-block scratch: the block's padded input rows of one channel.
    fn scratch_len(&self) -> usize {
        (2 * self.tb() + 2) * padded_width(self.tw())
    }
    /// Workspace of one image's transform (per thread).
    pub fn slot_len(&self) -> usize {
        let s = self.s;
        let t = self.tb() * self.tw();
        16 * t * (self.cin + self.cout) + self.scratch_len() + pg::packed_b_len(s, self.cin, t)
    }
    /// Workspace of one image's weight-gradient pass (per thread): V and W of a block, the
    /// scratch rows, one packed B panel.
    pub fn dw_slot_len(&self) -> usize {
        let s = self.s;
        let t = self.tb() * self.tw();
        16 * t * (self.cin + self.cout) + self.scratch_len() + pg::b_panels_bbuf_len(s)
    }
    /// Elements of a dU (16 x cout x cin).
    pub fn du_len(&self) -> usize {
        16 * self.cout * self.cin
    }
    /// The panel shape of the packed U.
    pub fn a_shape(&self) -> Shape {
        pg::rows_shape(self.s, self.cout)
    }
    /// Elements of one packed U[xi].
    pub fn u_len(&self) -> usize {
        pg::packed_a_len(self.a_shape(), self.cout, self.cin)
    }
    /// Elements of the 16 packed U[xi].
    pub fn packed_len(&self) -> usize {
        16 * self.u_len()
    }
}

/// Transforms and packs the weights: `k(o, i)` is the 3 x 3 kernel (row-major) of output `o`
/// from input `i`; U[xi = 4a + b][o][i] = (G k G^T)[a][b], computed in f64 and rounded once,
/// written straight into each U[xi]'s packed-A layout (panels of MR outputs per KC block of
/// inputs; see `pg::pack_a`).
pub(super) fn pack_weights<T: Float>(wg: &Wino, k: impl Fn(usize, usize) -> [T; 9], out: &mut [T]) {
    let (sa, ul) = (wg.a_shape(), wg.u_len());
    let (mr, mpad) = (sa.mr, wg.cout.next_multiple_of(sa.mr));
    assert!(mr <= MAX_MR, "no level has panels of {mr} rows");
    let out = &mut out[..16 * ul];
    if mpad != wg.cout {
        // The padding rows of the last panel are zero.
        out.fill(T::zero());
    }
    // Input i's column: where (o = 0, i) lands, and the panel stride of its KC block.
    let mut col = Vec::with_capacity(wg.cin);
    for (k0, kc) in pg::kc_blocks(sa, wg.cin) {
        col.extend((k0..k0 + kc).map(|i| (k0 * mpad + (i - k0) * mr, kc * mr)));
    }
    // One panel of MR outputs at a time, one input at a time: the panel's MR values of each
    // U[xi] are contiguous in the packed layout, so the arithmetic runs MR lanes wide.
    for p in 0..mpad / mr {
        let live = mr.min(wg.cout - p * mr);
        for (i, &(base, pstride)) in col.iter().enumerate() {
            let mut g = [[0.0f64; MAX_MR]; 9];
            for l in 0..live {
                for (t, v) in k(p * mr + l, i).iter().enumerate() {
                    g[t][l] = v.to_f();
                }
            }
            // G g (4 x 3), then (G g) G^T (4 x 4); G's rows are g0, (g0+g1+g2)/2,
            // (g0-g1+g2)/2, g2.
            let lanes = |f: &dyn Fn(usize) -> f64| -> [f64; MAX_MR] { std::array::from_fn(f) };
            let gg: [[[f64; MAX_MR]; 3]; 4] = std::array::from_fn(|a| {
                std::array::from_fn(|j| {
                    let (r0, r1, r2) = (&g[j], &g[3 + j], &g[6 + j]);
                    match a {
                        0 => *r0,
                        1 => lanes(&|l| 0.5 * (r0[l] + r1[l] + r2[l])),
                        2 => lanes(&|l| 0.5 * (r0[l] - r1[l] + r2[l])),
                        _ => *r2,
                    }
                })
            });
            let at = base + p * pstride;
            for (a, q) in gg.iter().enumerate() {
                let u = [
                    q[0],
                    lanes(&|l| 0.5 * (q[0][l] + q[1][l] + q[2][l])),
                    lanes(&|l| 0.5 * (q[0][l] - q[1][l] + q[2][l])),
                    q[2],
                ];
                for (b, ub) in u.iter().enumerate() {
                    let dst = &mut out[(4 * a + b) * ul + at..][..mr];
                    for (d, &v) in dst.iter_mut().zip(ub) {
                        *d = T::from_f(v);
                    }
                }
            }
        }
    }
}

/// The tallest A panel of any level (the AVX-512 level's).
const MAX_MR: usize = pg::AVX512_MR;

/// One image: `out` (cout x ho x wo) = the correlation of `x` (cin x h x w) with the packed
/// weights `up`, plus `bias` (one per output plane, or empty). Every element of `out` is
/// stored. `ws` holds `slot_len` elements.
pub(super) fn conv_image<T: Float>(
    wg: &Wino,
    up: &[T],
    x: &[T],
    out: &mut [T],
    bias: &[T],
    ws: &mut [T],
) {
    let (th, tw, tb) = (wg.th(), wg.tw(), wg.tb());
    let (ho, wo) = (wg.ho(), wg.wo());
    assert!(x.len() >= wg.cin * wg.h * wg.w && out.len() >= wg.cout * ho * wo);
    assert!(bias.is_empty() || bias.len() >= wg.cout);
    let (sa, ul) = (wg.a_shape(), wg.u_len());
    let tmax = tb * tw;
    let (v, rest) = ws.split_at_mut(16 * wg.cin * tmax);
    let (m, rest) = rest.split_at_mut(16 * wg.cout * tmax);
    let (scratch, bbuf) = rest.split_at_mut(wg.scratch_len());
    for ty0 in (0..th).step_by(tb) {
        let ty1 = (ty0 + tb).min(th);
        let nt = (ty1 - ty0) * tw;
        input_transform(
            x,
            wg.cin,
            (wg.h, wg.w),
            (wg.ph, wg.pw),
            (ty0, ty1),
            tw,
            v,
            scratch,
        );
        for xi in 0..16 {
            pg::gemm_packed_a(
                sa,
                wg.cout,
                nt,
                wg.cin,
                &up[xi * ul..(xi + 1) * ul],
                BSrc::Rows {
                    data: &v[xi * wg.cin * nt..(xi + 1) * wg.cin * nt],
                    ld: nt,
                },
                &mut m[xi * wg.cout * nt..(xi + 1) * wg.cout * nt],
                nt,
                bbuf,
                true,
            );
        }
        output_transform(m, wg.cout, (ho, wo), (ty0, ty1), tw, out, bias);
    }
}

/// One image's weight gradient added into `du` (16 x cout x cin, `du_len`): `du[xi] += W[xi]
/// V[xi]^T` over the image's tiles, W = A dY A^T the transformed tiles of `dout` (cout x ho x
/// wo), V the input transform of `x` (cin x h x w). `ws` holds `dw_slot_len` elements.
pub(super) fn dw_image<T: Float>(wg: &Wino, x: &[T], dout: &[T], du: &mut [T], ws: &mut [T]) {
    let (th, tw, tb) = (wg.th(), wg.tw(), wg.tb());
    let (ho, wo) = (wg.ho(), wg.wo());
    assert!(x.len() >= wg.cin * wg.h * wg.w && dout.len() >= wg.cout * ho * wo);
    assert!(du.len() >= wg.du_len());
    let s = wg.a_shape();
    let tmax = tb * tw;
    let (v, rest) = ws.split_at_mut(16 * wg.cin * tmax);
    let (wt, rest) = rest.split_at_mut(16 * wg.cout * tmax);
    let (scratch, bbuf) = rest.split_at_mut(wg.scratch_len());
    let (cin, cout) = (wg.cin, wg.cout);
    for ty0 in (0..th).step_by(tb) {
        let ty1 = (ty0 + tb).min(th);
        let nt = (ty1 - ty0) * tw;
        input_transform(
            x,
            cin,
            (wg.h, wg.w),
            (wg.ph, wg.pw),
            (ty0, ty1),
            tw,
            v,
            scratch,
        );
        dout_transform(dout, cout, (ho, wo), (ty0, ty1), tw, wt);
        for xi in 0..16 {
            let vx = &v[xi * cin * nt..(xi + 1) * cin * nt];
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
                (&wt[xi * cout * nt..(xi + 1) * cout * nt], nt),
                &mut du[xi * cout * cin..(xi + 1) * cout * cin],
                cin,
                bbuf,
                false,
                pack_b,
            );
        }
    }
}

/// `dw[o][i]` (3 x 3, row-major, in `dw[(o * cin + i) * 9..]`) = G^T dU[.][o][i] G, in f64 from
/// the 16 values of `du` (16 x cout x cin).
pub(super) fn dw_from_du<T: Float>(wg: &Wino, du: &[T], dw: &mut [T]) {
    let (cin, cout) = (wg.cin, wg.cout);
    let plane = cout * cin;
    assert!(du.len() >= 16 * plane && dw.len() >= 9 * plane);
    // G^T's rows: (1, 1/2, 1/2, 0), (0, 1/2, -1/2, 0), (0, 1/2, 1/2, 1).
    let gt = |a: [f64; 4]| {
        [
            a[0] + 0.5 * (a[1] + a[2]),
            0.5 * (a[1] - a[2]),
            0.5 * (a[1] + a[2]) + a[3],
        ]
    };
    for oi in 0..plane {
        let u = |a: usize, b: usize| du[(4 * a + b) * plane + oi].to_f();
        // q = G^T dU (3 x 4), column by column; then q G, row by row.
        let cols: [[f64; 3]; 4] = std::array::from_fn(|b| gt([u(0, b), u(1, b), u(2, b), u(3, b)]));
        let out = &mut dw[oi * 9..oi * 9 + 9];
        for r in 0..3 {
            let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
            for (c, v) in row.iter().enumerate() {
                out[3 * r + c] = T::from_f(*v);
            }
        }
    }
}

/// Tiles per transform step: fixed-size arrays, so the transforms compile to vector code
/// whatever the image width (a loop over 8 tiles of a row would be mostly scalar remainder).
const LANES: usize = 8;

multiversion! {
    /// V[xi][c][t] for the tiles of tile rows ty0..ty1 (t = (ty - ty0) * tw + tx, row stride
    /// (ty1 - ty0) * tw): each channel's rows 2 ty0 .. 2 ty1 + 2 of the padded input are copied
    /// into `scratch` (zero outside the image; rows LANES-aligned), then for each run of LANES
    /// tiles of a tile row the 4 x (2 LANES + 2) patch is split into even and odd columns (so
    /// tile tx's columns 0..4 are e[tx], o[tx], e[tx + 1], o[tx + 1]) and B^T d B is taken
    /// over rows, then columns.
    fn input_transform<T>(
        x: &[T],
        cin: usize,
        hw: (usize, usize),
        pad: (usize, usize),
        tys: (usize, usize),
        tw: usize,
        v: &mut [T],
        scratch: &mut [T],
    ) {
        let ((h, w), (ph, pw), (ty0, ty1)) = (hw, pad, tys);
        let nty = ty1 - ty0;
        let (rows, wp) = (2 * nty + 2, padded_width(tw));
        let nt = nty * tw;
        let pbuf = &mut scratch[..rows * wp];
        // Rows outside the image and columns outside each row are the same for every
        // channel: zeroed once, never written.
        pbuf.fill(T::zero());
        for c in 0..cin {
            let plane = &x[c * h * w..(c + 1) * h * w];
            for r in 0..rows {
                let y = (2 * ty0 + r).wrapping_sub(ph);
                if y < h {
                    // Rows of tens of elements: an inline copy, not a memmove call per row.
                    super::im2col::copy_short(
                        &mut pbuf[r * wp + pw..r * wp + pw + w],
                        &plane[y * w..(y + 1) * w],
                    );
                }
            }
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
                    let base = c * nt + ty * tw + tx0;
                    for (xi, vals) in vals.iter().enumerate() {
                        let at = xi * cin * nt + base;
                        if n == LANES {
                            // A constant length: one vector store, not a memmove call.
                            v[at..at + LANES].copy_from_slice(vals);
                        } else {
                            v[at..at + n].copy_from_slice(&vals[..n]);
                        }
                    }
                }
            }
        }
    }
}

/// Width of the transform's padded input rows: every run of LANES tiles reads 2 LANES + 2
/// columns.
fn padded_width(tw: usize) -> usize {
    2 * tw.next_multiple_of(LANES) + 2
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
        out: &mut [T],
        bias: &[T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        let nt = (ty1 - ty0) * tw;
        for f in 0..cout {
            let bv = bias.get(f).copied().unwrap_or(T::zero());
            for ty in 0..ty1 - ty0 {
                for tx0 in (0..tw).step_by(LANES) {
                    let n = LANES.min(tw - tx0);
                    let mut mv = [[T::zero(); LANES]; 16];
                    for (xi, row) in mv.iter_mut().enumerate() {
                        let r = &m[(xi * cout + f) * nt + ty * tw + tx0..];
                        if n == LANES {
                            row.copy_from_slice(&r[..LANES]);
                        } else {
                            row[..n].copy_from_slice(&r[..n]);
                        }
                    }
                    // s[a][c] = (A^T M)[a][c].
                    let mut s0 = [[T::zero(); LANES]; 4];
                    let mut s1 = [[T::zero(); LANES]; 4];
                    for c in 0..4 {
                        for l in 0..LANES {
                            s0[c][l] = mv[c][l] + mv[4 + c][l] + mv[8 + c][l];
                            s1[c][l] = mv[4 + c][l] - mv[8 + c][l] - mv[12 + c][l];
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
        w: &mut [T],
    ) {
        let ((ho, wo), (ty0, ty1)) = (howo, tys);
        let nt = (ty1 - ty0) * tw;
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
                    let base = f * nt + ty * tw + tx0;
                    for (xi, vals) in vals.iter().enumerate() {
                        let at = xi * cout * nt + base;
                        if n == LANES {
                            w[at..at + LANES].copy_from_slice(vals);
                        } else {
                            w[at..at + n].copy_from_slice(&vals[..n]);
                        }
                    }
                }
            }
        }
    }
}
