//! Our GEMM for the convolution: `C (m x n) += A (m x k) * B (k x n)` with A packed once per
//! call (the weights, reused by every image and tile) and B packed per column tile.
//!
//! BLIS-style loops: LOOP 3 splits k into KC blocks; LOOP 2 walks NR-wide panels of B (kept in
//! L1); LOOP 1 walks MR-tall panels of A (from L2); the micro-kernel keeps an MR x NR block of C
//! in registers for the whole KC block. The AVX2 and AVX-512 micro-kernels are explicit
//! `std::arch` code from one set of macros (`kernels!`): AVX2 6 x 16 (f32) / 6 x 8 (f64) in 12
//! ymm accumulators, AVX-512 8 x 32 / 8 x 16 in 16 zmm, each with a 5-row twin. The portable
//! level is plain safe Rust over fixed-size arrays, 4 x 8 / 4 x 4, left to the compiler: an
//! earlier compiler-vectorised AVX-512 block (4 x 64) ran at 40% of the explicit one's speed on
//! Zen 5 and LLVM spilled other register blocks, so the fast levels do not rely on it.
//!
//! Packed layouts (zero-padded to whole panels):
//! - A: for each KC block, for each MR panel: `kc x MR`, element (i, kk) at `kk * MR + i`;
//! - B: for each NR panel: `kc x NR`, element (kk, j) at `kk * NR + j`.

//!
//! Files by role, as matrixmultiply and gemm-common divide them: this file the block shape and
//! blocking, `pack.rs` the packed layouts, `driver.rs` the loops and the dispatch to a level's
//! kernels, `kernels/` the explicit micro-kernels per ISA, `transpose.rs` the register
//! transposes of dw's B panels, `matmul.rs` the matrixmultiply wrapper (affine layers).

mod driver;
mod kernels;
pub(crate) mod matmul;
mod pack;
#[cfg(test)]
mod tests;
mod transpose;

pub(crate) use driver::*;
pub(crate) use pack::*;
pub(crate) use transpose::*;

use crate::cpu::{Isa, Level};
use crate::scalar::Float;

/// Register block and KC for one level and element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Rows of a packed A panel (the micro-kernel's register block height).
    pub(crate) mr: usize,
    /// Columns of a packed B panel (the register block width).
    pub(crate) nr: usize,
    /// Depth of one packed block of the contraction.
    pub(crate) kc: usize,
    /// The proof that the CPU runs this shape's kernels: private, so a Shape's level is only
    /// ever one `Isa::current()` vouched for (changing mr, nr or kc cannot reach an instruction
    /// the CPU lacks: the kernels check their panel heights, see `direct_available`).
    isa: Isa,
}

impl Shape {
    /// The same level and blocking with panels of `mr` rows (the kernels check the heights they
    /// have: see `direct_available`).
    #[inline(always)]
    pub(crate) fn with_mr(self, mr: usize) -> Shape {
        Shape { mr, ..self }
    }
    /// The SIMD level of this shape's kernels (one the CPU has).
    #[inline(always)]
    pub(crate) fn level(&self) -> Level {
        self.isa.level()
    }
}

/// Panel heights of the explicit kernels: AVX2 6 rows x 2 ymm (12 accumulators of 16),
/// AVX-512 8 rows x 2 zmm (16 of 32). Each level also has an alternative height, 5, for A's whose
/// row count the main one pads badly (the notebook's 25 filters: 5 x 5 rows, against 30 or 32).
pub(crate) const AVX2_MR: usize = 6;
/// See `AVX2_MR`.
pub(crate) const AVX2_ALT_MR: usize = 5;
/// See `AVX2_MR`.
pub(crate) const AVX512_MR: usize = 8;
/// See `AVX2_MR`.
pub(crate) const AVX512_ALT_MR: usize = 5;

/// The shape for an A of `m` rows: the level's alternative panel height where it pads m to fewer
/// rows than the main one (AVX2: m a multiple of 5 and not of 6). The alternative never packs A
/// larger than the default shape, so workspace sized with `shape` holds.
pub(crate) fn rows_shape(s: Shape, m: usize) -> Shape {
    match explicit_mrs(s.level()) {
        Some((_, alt)) if m.next_multiple_of(alt) < m.next_multiple_of(s.mr) => s.with_mr(alt),
        _ => s,
    }
}

/// (main, alternative) panel heights of a level's explicit kernels; None at the portable level,
/// which has no explicit kernels.
pub(crate) fn explicit_mrs(level: Level) -> Option<(usize, usize)> {
    match level {
        Level::Avx2 => Some((AVX2_MR, AVX2_ALT_MR)),
        Level::Avx512 => Some((AVX512_MR, AVX512_ALT_MR)),
        Level::Portable => None,
    }
}

/// The block shape the current SIMD level uses for T.
pub(crate) fn shape<T: Float>() -> Shape {
    shape_at::<T>(Isa::current())
}

fn shape_at<T: Float>(isa: Isa) -> Shape {
    let f32 = std::mem::size_of::<T>() == 4;
    let level = isa.level();
    let (mr, nr, kc) = match (level, f32) {
        (Level::Avx512, true) => (AVX512_MR, 32, 256),
        (Level::Avx512, false) => (AVX512_MR, 16, 256),
        (Level::Avx2, true) => (AVX2_MR, 16, 256),
        (Level::Avx2, false) => (AVX2_MR, 8, 256),
        (Level::Portable, true) => (4, 8, 256),
        (Level::Portable, false) => (4, 4, 256),
    };
    Shape { mr, nr, kc, isa }
}

/// Elements of A (m x k) packed.
pub(crate) fn packed_a_len(s: Shape, m: usize, k: usize) -> usize {
    m.next_multiple_of(s.mr) * k
}

/// Elements of one packed B block (kc x n) of a k-long contraction with `n` columns: the
/// largest KC block `kc_blocks` makes of k (at most k, at most `s.kc`).
pub(crate) fn packed_b_len(s: Shape, k: usize, n: usize) -> usize {
    kc_blocks(s, k).next().map_or(0, |(_, kc)| kc) * n.next_multiple_of(s.nr)
}

/// Largest KC of any shape (tables of one entry per column of a KC block live on the stack).
pub(crate) const MAX_KC: usize = 256;

/// Largest NR of any shape.
pub(crate) const MAX_NR: usize = 64;

/// Whether `direct_block` has a kernel for shape `s` (the explicit micro-kernels of the AVX2 and
/// AVX-512 levels, at their main and alternative panel heights).
pub(crate) fn direct_available(s: Shape) -> bool {
    cfg!(target_arch = "x86_64")
        && explicit_mrs(s.level()).is_some_and(|(main, alt)| s.mr == main || s.mr == alt)
}

/// Pixels per slot of the direct kernels: one vector (NR / 2; both explicit levels hold two
/// vectors per row of C). A tile's two slots may lie in different output rows, so rows need
/// only fill slots, not whole NR-pixel tiles.
pub(crate) fn direct_slot(s: Shape) -> usize {
    s.nr / 2
}

/// The KC blocks `gemm_packed_a` splits a contraction of length k into, as (k0, kc) pairs: k
/// split into equal blocks of at most `s.kc` (576 -> 3 x 192 rather than 256 + 256 + 64), so no
/// block runs a short k loop with a full C update. Packing A and the GEMM both walk these, so the
/// packed A layout matches.
pub(crate) fn kc_blocks(s: Shape, k: usize) -> impl Iterator<Item = (usize, usize)> {
    let kcb = k.div_ceil(k.div_ceil(s.kc).max(1)).max(1);
    (0..k).step_by(kcb).map(move |k0| (k0, kcb.min(k - k0)))
}

/// Elements of the A buffer `gemm_b_panels` needs for m rows.
pub(crate) fn b_panels_abuf_len(s: Shape, m: usize) -> usize {
    m.next_multiple_of(s.mr) * s.kc
}

/// Elements of the B buffer `gemm_b_panels` needs (one packed panel).
pub(crate) fn b_panels_bbuf_len(s: Shape) -> usize {
    s.kc * s.nr
}
