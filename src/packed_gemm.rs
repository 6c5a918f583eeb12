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

/// Packs A (m x k, element (i, kk) at `a[i * rsa + kk * csa]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_a<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    out: &mut [T],
) {
    match s.mr {
        4 => pack_a_mr::<T, 4>(s, m, k, a, rsa, csa, out),
        5 => pack_a_mr::<T, 5>(s, m, k, a, rsa, csa, out),
        6 => pack_a_mr::<T, 6>(s, m, k, a, rsa, csa, out),
        8 => pack_a_mr::<T, 8>(s, m, k, a, rsa, csa, out),
        mr => unreachable!("no packing for MR = {mr}"),
    }
}

/// Packs A (m x k) given element by element: `get(i, kk)`. For small matrices built from parts
/// (the convolution's weights with the bias as an extra column), packed once per call.
pub(crate) fn pack_a_with<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    get: impl Fn(usize, usize) -> T,
    out: &mut [T],
) {
    pack_a_by_cols(s, m, k, |kk| kk, |kk, i| get(i, kk), out)
}

/// Packs A (m x k) whose column kk starts at `a[col(kk)]`, rows `rs` apart: element (i, kk) at
/// `a[col(kk) + i * rs]`. `col` runs once per column (the data gradient's flipped weights need a
/// division to find a column; per element it was 2% of a res2 backward, on one thread).
pub(crate) fn pack_a_cols<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rs: usize,
    col: impl Fn(usize) -> usize,
    out: &mut [T],
) {
    pack_a_by_cols(s, m, k, col, |b, i| a[b + i * rs], out)
}

/// Largest KC of any shape (tables of one entry per column of a KC block live on the stack).
pub(crate) const MAX_KC: usize = 256;

/// Largest NR of any shape.
pub(crate) const MAX_NR: usize = 64;

/// The packing walk of `pack_a_with` and `pack_a_cols`: per KC block, `col(kk)` once per column,
/// then element (i, kk) is `get(col(kk), i)` (0 in the rows past m).
fn pack_a_by_cols<T: Float>(
    s: Shape,
    m: usize,
    k: usize,
    col: impl Fn(usize) -> usize,
    get: impl Fn(usize, usize) -> T,
    out: &mut [T],
) {
    let mut cb = [0usize; MAX_KC];
    let mut o = 0;
    for (k0, kc) in kc_blocks(s, k) {
        assert!(kc <= MAX_KC);
        for (kk, b) in cb[..kc].iter_mut().enumerate() {
            *b = col(k0 + kk);
        }
        for p in 0..m.div_ceil(s.mr) {
            for &b in &cb[..kc] {
                for i in 0..s.mr {
                    let r = p * s.mr + i;
                    out[o] = if r < m { get(b, r) } else { T::zero() };
                    o += 1;
                }
            }
        }
    }
}

/// `pack_a` with MR a constant, so the inner loop over a panel's rows is unrolled and full
/// panels need no bounds test per element.
#[allow(clippy::too_many_arguments)]
fn pack_a_mr<T: Float, const MR: usize>(
    s: Shape,
    m: usize,
    k: usize,
    a: &[T],
    rsa: usize,
    csa: usize,
    out: &mut [T],
) {
    let panels = m.div_ceil(MR);
    let mut o = 0;
    for (k0, kc) in kc_blocks(s, k) {
        for p in 0..panels {
            let dst = &mut out[o..o + kc * MR];
            o += kc * MR;
            let rows = MR.min(m - p * MR);
            for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
                let base = p * MR * rsa + (k0 + kk) * csa;
                if rows == MR {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = a[base + i * rsa];
                    }
                } else {
                    for (i, v) in d.iter_mut().enumerate() {
                        *v = if i < rows {
                            a[base + i * rsa]
                        } else {
                            T::zero()
                        };
                    }
                }
            }
        }
    }
}

/// Where B (k x n) comes from.
#[derive(Clone, Copy)]
pub(crate) enum BSrc<'a, T> {
    /// Row-major: element (kk, j) at `data[kk * ld + j]`.
    Rows { data: &'a [T], ld: usize },
    /// Column-major (B transposed in memory): element (kk, j) at `data[j * ld + kk]`.
    // Only the unit tests read B column-major; the kernels always pass rows.
    #[cfg_attr(not(test), allow(dead_code))]
    Cols { data: &'a [T], ld: usize },
}

/// Packs a row-major kc x n block (leading dimension ld) into NR panels: for callers of
/// `gemm_packed_with` that build each block of B in a buffer first.
pub(crate) fn pack_b_rows_into<T: Float>(
    s: Shape,
    kc: usize,
    n: usize,
    b: &[T],
    ld: usize,
    out: &mut [T],
) {
    pack_b(s, 0, kc, n, BSrc::Rows { data: b, ld }, out)
}

/// Packs rows k0..k0+kc of B into NR panels.
fn pack_b<T: Float>(s: Shape, k0: usize, kc: usize, n: usize, b: BSrc<'_, T>, out: &mut [T]) {
    match (s.nr, b) {
        (4, BSrc::Rows { data, ld }) => pack_b_rows::<T, 4>(kc, n, &data[k0 * ld..], ld, out),
        (8, BSrc::Rows { data, ld }) => pack_b_rows::<T, 8>(kc, n, &data[k0 * ld..], ld, out),
        (16, BSrc::Rows { data, ld }) => pack_b_rows::<T, 16>(kc, n, &data[k0 * ld..], ld, out),
        (32, BSrc::Rows { data, ld }) => pack_b_rows::<T, 32>(kc, n, &data[k0 * ld..], ld, out),
        (64, BSrc::Rows { data, ld }) => pack_b_rows::<T, 64>(kc, n, &data[k0 * ld..], ld, out),
        (nr, BSrc::Cols { data, ld }) => pack_b_cols(nr, kc, n, &data[k0..], ld, out),
        (nr, _) => unreachable!("no packing for NR = {nr}"),
    }
}

/// Row-major B: a full panel row is one fixed-size copy (inlined, not a memmove call).
fn pack_b_rows<T: Float, const NR: usize>(kc: usize, n: usize, b: &[T], ldb: usize, out: &mut [T]) {
    for p in 0..n.div_ceil(NR) {
        let (j0, j1) = (p * NR, ((p + 1) * NR).min(n));
        let dst = &mut out[p * kc * NR..(p + 1) * kc * NR];
        for (kk, d) in dst.chunks_exact_mut(NR).enumerate() {
            let src = &b[kk * ldb + j0..kk * ldb + j1];
            if let (Ok(d), Ok(src)) = (<&mut [T; NR]>::try_from(&mut *d), <&[T; NR]>::try_from(src))
            {
                *d = *src;
            } else {
                d[..j1 - j0].copy_from_slice(src);
                d[j1 - j0..].fill(T::zero());
            }
        }
    }
}

/// Column-major B: each of a panel's NR columns is contiguous in memory and is written with
/// stride NR.
fn pack_b_cols<T: Float>(nr: usize, kc: usize, n: usize, b: &[T], ld: usize, out: &mut [T]) {
    for p in 0..n.div_ceil(nr) {
        let (j0, j1) = (p * nr, ((p + 1) * nr).min(n));
        let dst = &mut out[p * kc * nr..(p + 1) * kc * nr];
        for j in j0..j1 {
            let src = &b[j * ld..j * ld + kc];
            for (d, &v) in dst[j - j0..].iter_mut().step_by(nr).zip(src) {
                *d = v;
            }
        }
        for j in j1 - j0..nr {
            for d in dst[j..].iter_mut().step_by(nr) {
                *d = T::zero();
            }
        }
    }
}

/// C[rows x cols] (leading dimension ldc) += A panel (kc x MR) * B panel (kc x NR), or = when
/// `set` (C is then write-only: the caller need not zero it). The portable level's kernel: a
/// multiply and an add, since `mul_add` without hardware FMA is a slow library call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn micro<T: Float, const MR: usize, const NR: usize>(
    kc: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    ldc: usize,
    rows: usize,
    cols: usize,
    set: bool,
) {
    let mut acc = [[T::zero(); NR]; MR];
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        let ak: &[T; MR] = ak.try_into().expect("MR chunk");
        let bk: &[T; NR] = bk.try_into().expect("NR chunk");
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = ak[i] * bk[j] + acc[i][j];
            }
        }
    }
    for i in 0..rows {
        let crow = &mut c[i * ldc..i * ldc + cols];
        for (cv, av) in crow.iter_mut().zip(&acc[i][..cols]) {
            *cv = if set { *av } else { *cv + *av };
        }
    }
}

/// One KC block of a GEMM: C (m x n, leading dimension ldc) += or = (`set`) packed A block
/// (m x kc) * packed B block (kc x n).
pub(crate) struct Blk<'a, T> {
    m: usize,
    n: usize,
    kc: usize,
    ap: &'a [T],
    bp: &'a [T],
    c: &'a mut [T],
    ldc: usize,
    set: bool,
}

/// One KC block of an implicit GEMM (the direct convolution): C (m x pixels) (+)= packed A
/// block (m x kc) * B, where B is never built: its row kk for the S pixels of a slot starting at
/// output (r, ow0) is read in place from `src[r * pitch + ow0 + off[kk]..][..S]` (a padded
/// image, so a row of B is a run of one input row; S = `direct_slot`, one vector). C element
/// (i, r, ow) is at `c[i * ldc + r * wo + ow]`. With `set` the block stores `bias[i] + A B` (an
/// empty bias is zero) and never reads C. A row's last slot, when it runs past `wo`, reads up to
/// S - 1 elements beyond the row (the slack the caller leaves at the end of `src`) and stores
/// only the valid columns.
pub(crate) struct DBlk<'a, T> {
    pub m: usize,
    pub kc: usize,
    pub ap: &'a [T],
    pub src: &'a [T],
    pub off: &'a [usize],
    pub pitch: usize,
    pub oh: std::ops::Range<usize>,
    pub wo: usize,
    pub c: &'a mut [T],
    pub ldc: usize,
    pub set: bool,
    pub bias: &'a [T],
}

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

/// Runs one implicit-GEMM KC block (see `DBlk`) with shape `s`, which must pass
/// `direct_available`.
pub(crate) fn direct_block<T: Float>(s: Shape, d: DBlk<'_, T>) {
    assert!(direct_available(s), "no direct kernel for {s:?}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: direct_available checked that the level is Avx2 or Avx512, which level() reports
    // only when the CPU has AVX2 and FMA (and AVX-512F/VL for Avx512).
    unsafe {
        if s.level() == Level::Avx512 {
            direct_avx512(d, s.mr)
        } else {
            direct_avx2(d, s.mr)
        }
    }
}

/// Calls the kernel among `$f32_m`, `$f32_a`, `$f64_m`, `$f64_a` (main and alternative panel
/// height) that fits element type `$T` and panel height `$mr` (`$alt` selects the alternative),
/// on `$blk` viewed as that type.
#[cfg(target_arch = "x86_64")]
macro_rules! by_type {
    ($T:ty, $mr:expr, $alt:expr, $blk:expr, $f32_6:path, $f32_5:path, $f64_6:path,
     $f64_5:path) => {{
        use std::any::TypeId;
        if TypeId::of::<$T>() == TypeId::of::<f32>() {
            // SAFETY: T is f32 (same TypeId).
            let b = unsafe { $blk.cast::<f32>() };
            if $mr == $alt { $f32_5(b) } else { $f32_6(b) }
        } else {
            debug_assert!(TypeId::of::<$T>() == TypeId::of::<f64>());
            // SAFETY: Float is sealed and implemented for f32 and f64 only, so T is f64 here.
            let b = unsafe { $blk.cast::<f64>() };
            if $mr == $alt { $f64_5(b) } else { $f64_6(b) }
        }
    }};
}

/// For a block type `$Blk` (its T-typed fields: the slices `cast` and the mutable slice
/// `cast_mut`; the rest `copy`): `$Blk::cast`, the same block viewed as another (identical)
/// element type, `$run(blk, mr)`, which runs the one of the four AVX2 kernels that fits T
/// and MR, and `$run512(blk, mr)`, its AVX-512 twin.
macro_rules! kernel_kind {
    ($(#[$doc:meta])* $run:ident, $run512:ident,
     $Blk:ident { cast: [$($sl:ident),*], cast_mut: $m:ident, copy: [$($f:ident),*] },
     [$k32_6:ident, $k32_5:ident, $k64_6:ident, $k64_5:ident]) => {
        #[cfg(target_arch = "x86_64")]
        impl<'a, T: 'static> $Blk<'a, T> {
            /// The same block with its slices viewed as U.
            ///
            /// # Safety
            /// T and U must be the same type.
            unsafe fn cast<U: 'static>(self) -> $Blk<'a, U> {
                // SAFETY: T == U (caller), which is all `cast` and `cast_mut` require.
                unsafe {
                    $Blk {
                        $($sl: cast(self.$sl),)*
                        $m: cast_mut(self.$m),
                        $($f: self.$f,)*
                    }
                }
            }
        }

        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $run<T: Float>(b: $Blk<'_, T>, mr: usize) {
            by_type!(T, mr, AVX2_ALT_MR, b, avx2::$k32_6, avx2::$k32_5, avx2::$k64_6, avx2::$k64_5)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn $run512<T: Float>(b: $Blk<'_, T>, mr: usize) {
            by_type!(
                T, mr, AVX512_ALT_MR, b, avx512::$k32_6, avx512::$k32_5, avx512::$k64_6,
                avx512::$k64_5
            )
        }
    };
}

kernel_kind!(
    /// LOOP 2 and LOOP 1 for one KC block at the AVX2 level: explicit FMA micro-kernels (see
    /// `avx2`), because LLVM compiled the generic 6 x 8 f64 block to 16-18 GFLOP/s of a 48
    /// GFLOP/s core on Zen 3 (the f32 one to 75-84 of 95).
    block_avx2,
    block_avx512,
    Blk { cast: [ap, bp], cast_mut: c, copy: [m, n, kc, ldc, set] },
    [block_f32, block_f32_alt, block_f64, block_f64_alt]
);
kernel_kind!(
    /// One implicit-GEMM KC block at the AVX2 level.
    direct_avx2,
    direct_avx512,
    DBlk { cast: [ap, src, bias], cast_mut: c, copy: [m, kc, off, pitch, oh, wo, ldc, set] },
    [dblock_f32, dblock_f32_alt, dblock_f64, dblock_f64_alt]
);
kernel_kind!(
    /// One A-in-place KC block at the AVX2 level.
    a_rows_avx2,
    a_rows_avx512,
    ABlk { cast: [a, bp], cast_mut: c, copy: [m, n, kc, lda, ldc, set] },
    [ablock_f32, ablock_f32_alt, ablock_f64, ablock_f64_alt]
);

/// One KC block of a GEMM whose A is read in place: C (m x n, n <= NR, leading dimension ldc)
/// (+)= A (m x kc, element (i, kk) at `a[i * lda + kk]`) * packed B panel (kc x NR). The micro
/// -kernel broadcasts A's elements straight from its rows (a broadcast is a load either way),
/// so an A whose rows are contiguous over k (dout in the weight gradient) needs no packing.
pub(crate) struct ABlk<'a, T> {
    pub m: usize,
    pub n: usize,
    pub kc: usize,
    pub a: &'a [T],
    pub lda: usize,
    pub bp: &'a [T],
    pub c: &'a mut [T],
    pub ldc: usize,
    pub set: bool,
}

/// Runs one A-in-place KC block (see `ABlk`) with shape `s`, which must pass
/// `direct_available` (the same AVX2 5- and 6-row kernels).
pub(crate) fn a_rows_block<T: Float>(s: Shape, b: ABlk<'_, T>) {
    assert!(direct_available(s), "no A-in-place kernel for {s:?}");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: direct_available checked that the level is Avx2 or Avx512, which level() reports
    // only when the CPU has AVX2 and FMA (and AVX-512F/VL for Avx512).
    unsafe {
        if s.level() == Level::Avx512 {
            a_rows_avx512(b, s.mr)
        } else {
            a_rows_avx2(b, s.mr)
        }
    }
}

/// LOOP 2 and LOOP 1 for one KC block: every NR panel of packed B against every MR panel of
/// packed A, `micro(a_panel, b_panel, c_tile, rows, cols)` on each (inlined into each level's
/// block, so the loops are compiled with that level's features).
#[inline(always)]
fn panels<T>(
    (mr, nr): (usize, usize),
    blk: Blk<'_, T>,
    mut micro: impl FnMut(&[T], &[T], &mut [T], usize, usize),
) {
    let Blk {
        m,
        n,
        kc,
        ap,
        bp,
        c,
        ldc,
        ..
    } = blk;
    for jp in 0..n.div_ceil(nr) {
        let (j0, cols) = (jp * nr, nr.min(n - jp * nr));
        let bpanel = &bp[jp * kc * nr..(jp + 1) * kc * nr];
        for ip in 0..m.div_ceil(mr) {
            let (i0, rows) = (ip * mr, mr.min(m - ip * mr));
            let apanel = &ap[ip * kc * mr..(ip + 1) * kc * mr];
            micro(apanel, bpanel, &mut c[i0 * ldc + j0..], rows, cols);
        }
    }
}

/// One KC block with the generic micro-kernel.
#[inline(always)]
fn block<T: Float, const MR: usize, const NR: usize>(b: Blk<'_, T>) {
    let (kc, ldc, set) = (b.kc, b.ldc, b.set);
    panels((MR, NR), b, |a, bp, ct, rows, cols| {
        micro::<T, MR, NR>(kc, a, bp, ct, ldc, rows, cols, set)
    })
}

/// Reinterprets a slice of T as a slice of U.
///
/// # Safety
/// T and U must be the same type.
#[cfg(target_arch = "x86_64")]
unsafe fn cast<T: 'static, U: 'static>(s: &[T]) -> &[U] {
    debug_assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>());
    // SAFETY: T == U (caller), so pointer, length, alignment and lifetime carry over unchanged.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) }
}

/// Mutable twin of `cast`.
///
/// # Safety
/// T and U must be the same type.
#[cfg(target_arch = "x86_64")]
unsafe fn cast_mut<T: 'static, U: 'static>(s: &mut [T]) -> &mut [U] {
    debug_assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>());
    // SAFETY: as in `cast`; the unique borrow of s moves into the result.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) }
}

// The explicit micro-kernels, written once as macros and instantiated per SIMD level: MR rows
// of NV vectors of C in MR * NV registers, NV vector loads of B and MR broadcasts of A per k.

/// Writes (`set`) or adds the MR x 2 accumulators into C[rows x cols] (leading dimension
/// ldc): a macro, not a function, so it is compiled inline into each micro-kernel (a
/// `#[target_feature]` function cannot be `#[inline(always)]`, and as a call it cost 5%).
macro_rules! store_acc {
    ($acc:expr, $c:expr, $ldc:expr, $rows:expr, $cols:expr, $set:expr, $mr:expr, $t:ty,
     $lanes:expr, $nv:expr, $load:ident, $store:ident, $add:ident) => {{
        let (rows, cols): (usize, usize) = ($rows, $cols);
        const MR: usize = $mr;
        const NV: usize = $nv;
        const NR: usize = NV * $lanes;
        assert!((1..=MR).contains(&rows) && (1..=NR).contains(&cols));
        assert!($c.len() >= (rows - 1) * $ldc + cols);
        if cols == NR {
            // Whole rows (all MR, or the first `rows` of a last, partial panel): vector
            // stores.
            for (i, row) in $acc.iter().enumerate().take(rows) {
                let cr = &mut $c[i * $ldc..i * $ldc + NR];
                for (v, &rv) in row.iter().enumerate() {
                    // SAFETY: cr has exactly NR = NV * lanes elements and v < NV.
                    unsafe {
                        let p = cr.as_mut_ptr().add(v * $lanes);
                        if $set {
                            $store(p, rv);
                        } else {
                            $store(p, $add($load(p), rv));
                        }
                    }
                }
            }
        } else {
            let mut tmp = [0.0 as $t; NR];
            for (i, row) in $acc.iter().enumerate().take(rows) {
                for (v, &rv) in row.iter().enumerate() {
                    // SAFETY: tmp has exactly NR = NV * lanes elements and v < NV.
                    unsafe { $store(tmp.as_mut_ptr().add(v * $lanes), rv) };
                }
                for (cv, tv) in $c[i * $ldc..i * $ldc + cols].iter_mut().zip(&tmp) {
                    *cv = if $set { *tv } else { *cv + *tv };
                }
            }
        }
    }};
}

macro_rules! kernel {
    ($block:ident, $micro:ident, $dblock:ident, $dmicro:ident, $ablock:ident,
     $amicro:ident, $mr:expr, $feat:literal, $t:ty, $v:ty, $lanes:expr, $nv:expr,
     $zero:ident, $bcast:ident, $load:ident, $store:ident, $fma:ident, $add:ident) => {
        /// C[rows x cols] (leading dimension ldc) += A panel (kc x MR) * B panel (kc x NR), or = when
        /// `set`.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        fn $micro(
            kc: usize,
            a: &[$t],
            b: &[$t],
            c: &mut [$t],
            ldc: usize,
            rows: usize,
            cols: usize,
            set: bool,
        ) {
            const MR: usize = $mr;
            const NR: usize = $nv * $lanes;
            assert!(a.len() >= kc * MR && b.len() >= kc * NR);
            assert!((1..=MR).contains(&rows) && (1..=NR).contains(&cols));
            assert!(c.len() >= (rows - 1) * ldc + cols);
            let mut acc = [[$zero(); $nv]; MR];
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            for kk in 0..kc {
                // SAFETY: kk < kc, and a holds kc * MR, b kc * NR elements (asserted
                // above), so every read below is in bounds; loadu needs no alignment.
                unsafe {
                    let mut bv = [$zero(); $nv];
                    for (v, bvv) in bv.iter_mut().enumerate() {
                        *bvv = $load(pb.add(kk * NR + v * $lanes));
                    }
                    let ak = pa.add(kk * MR);
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = $bcast(&*ak.add(i));
                        for (r, &b) in row.iter_mut().zip(&bv) {
                            *r = $fma(av, b, *r);
                        }
                    }
                }
            }
            store_acc!(
                acc, c, ldc, rows, cols, set, $mr, $t, $lanes, $nv, $load, $store, $add
            );
        }

        /// The micro-kernel of the implicit GEMM: as `$micro`, but B's NV vectors are NV
        /// independent slots of `lanes` pixels: row kk of slot v is read in place at
        /// `pb[v] + off[kk]`, and its sums go to `c[i * ldc + co[v]..][..cols[v]]` (nothing for
        /// `cols[v] == 0`, a padding slot). So a tile's slots may lie in different output rows:
        /// rows of 16 pixels fill 32-pixel tiles. With `set` the accumulators start from `bias`
        /// (one value per row; empty means zero) and C is never read.
        ///
        /// # Safety
        /// For every kk < kc and v < NV, the `lanes` elements from `pb[v] + off[kk]` are inside
        /// one allocation that is readable for the call.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $dmicro(
            kc: usize,
            a: &[$t],
            pb: [*const $t; $nv],
            off: &[usize],
            c: &mut [$t],
            (co, cols): ([usize; $nv], [usize; $nv]),
            ldc: usize,
            rows: usize,
            set: bool,
            bias: &[$t],
        ) {
            const MR: usize = $mr;
            const L: usize = $lanes;
            assert!(a.len() >= kc * MR && off.len() >= kc);
            assert!((1..=MR).contains(&rows) && bias.len() <= rows);
            for (&o, &n) in co.iter().zip(&cols) {
                assert!(n <= L && (n == 0 || c.len() >= (rows - 1) * ldc + o + n));
            }
            let mut acc = [[$zero(); $nv]; MR];
            if set {
                for (row, bv) in acc.iter_mut().zip(bias) {
                    *row = [$bcast(bv); $nv];
                }
            }
            let pa = a.as_ptr();
            for kk in 0..kc {
                // SAFETY: kk < kc <= off.len() and a holds kc * MR elements (asserted);
                // the B reads are in bounds by the caller's contract.
                unsafe {
                    let o = *off.get_unchecked(kk);
                    let mut bv = [$zero(); $nv];
                    for (bvv, &p) in bv.iter_mut().zip(&pb) {
                        *bvv = $load(p.add(o));
                    }
                    let ak = pa.add(kk * MR);
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = $bcast(&*ak.add(i));
                        for (r, &b) in row.iter_mut().zip(&bv) {
                            *r = $fma(av, b, *r);
                        }
                    }
                }
            }
            // The accumulators leave the registers only here, after the k loop (black_box
            // materialises them once): without it LLVM kept a memory copy of acc and updated it
            // at every k, one stack store per FMA (found in the disassembly; the AVX2 notebook
            // forward ran 60% slower).
            let acc = std::hint::black_box(acc);
            if cols.iter().all(|&n| n == L) {
                // Every slot whole (the common tile): vector stores through one base pointer,
                // no slicing per row and slot (on the notebook's 27-step calls that cost 5-10%).
                let pc = c.as_mut_ptr();
                for (i, row) in acc.iter().enumerate().take(rows) {
                    for (&rv, &o) in row.iter().zip(&co) {
                        // SAFETY: i < rows and c.len() >= (rows - 1) * ldc + o + L for every
                        // slot (asserted above), so the L elements at i * ldc + o are inside c.
                        unsafe {
                            let p = pc.add(i * ldc + o);
                            if set {
                                $store(p, rv);
                            } else {
                                $store(p, $add($load(p), rv));
                            }
                        }
                    }
                }
                return;
            }
            for (i, row) in acc.iter().enumerate().take(rows) {
                for ((&rv, &o), &n) in row.iter().zip(&co).zip(&cols) {
                    let cr = &mut c[i * ldc + o..i * ldc + o + n];
                    if n == L {
                        // SAFETY: cr has exactly L elements.
                        unsafe {
                            let p = cr.as_mut_ptr();
                            if set {
                                $store(p, rv);
                            } else {
                                $store(p, $add($load(p), rv));
                            }
                        }
                    } else if n > 0 {
                        let mut tmp = [0.0 as $t; L];
                        // SAFETY: tmp has exactly L elements.
                        unsafe { $store(tmp.as_mut_ptr(), rv) };
                        for (cv, tv) in cr.iter_mut().zip(&tmp) {
                            *cv = if set { *tv } else { *cv + *tv };
                        }
                    }
                }
            }
        }

        /// One KC block of the implicit GEMM (see `DBlk`): the pixels of the output rows
        /// `d.oh` in slots of `lanes` (a row's last slot may be partial), NV slots per tile in
        /// raster order, each tile against every MR panel of A.
        #[target_feature(enable = $feat)]
        pub(super) fn $dblock(d: super::DBlk<'_, $t>) {
            const MR: usize = $mr;
            const L: usize = $lanes;
            let super::DBlk {
                m,
                kc,
                ap,
                src,
                off,
                pitch,
                oh,
                wo,
                c,
                ldc,
                set,
                bias,
            } = d;
            if m == 0 || kc == 0 || wo == 0 || oh.is_empty() {
                return;
            }
            let off = &off[..kc];
            assert!(ap.len() >= m.div_ceil(MR) * kc * MR);
            assert!(bias.is_empty() || bias.len() >= m);
            // Every read is at base + off[kk] + 0..L with base <= last_base.
            let last_base = (oh.end - 1) * pitch + (wo - 1) / L * L;
            let maxoff = off.iter().copied().max().unwrap_or(0);
            assert!(last_base + maxoff + L <= src.len());
            // The next slot (output row r, first column ow0), advanced in raster order.
            let (mut r, mut ow0) = (oh.start, 0);
            while r < oh.end {
                let mut pb = [src.as_ptr(); $nv];
                let (mut co, mut cols) = ([0usize; $nv], [0usize; $nv]);
                for v in 0..$nv {
                    if r < oh.end {
                        // SAFETY: r * pitch + ow0 <= last_base <= src.len() (asserted above).
                        pb[v] = unsafe { src.as_ptr().add(r * pitch + ow0) };
                        co[v] = r * wo + ow0;
                        cols[v] = L.min(wo - ow0);
                        ow0 += L;
                        if ow0 >= wo {
                            (r, ow0) = (r + 1, 0);
                        }
                    } else {
                        // A padding slot: re-reads slot 0's pixels, stores nothing.
                        pb[v] = pb[0];
                    }
                }
                for ip in 0..m.div_ceil(MR) {
                    let (i0, rows) = (ip * MR, MR.min(m - ip * MR));
                    let bi = if bias.is_empty() {
                        bias
                    } else {
                        &bias[i0..i0 + rows]
                    };
                    // SAFETY: every pb[v] + off[kk] + L <= src.as_ptr() + last_base + maxoff
                    // + L, inside src (asserted above).
                    unsafe {
                        $dmicro(
                            kc,
                            &ap[ip * kc * MR..(ip + 1) * kc * MR],
                            pb,
                            off,
                            &mut c[i0 * ldc..],
                            (co, cols),
                            ldc,
                            rows,
                            set,
                            bi,
                        )
                    }
                }
            }
        }

        /// The micro-kernel with A read in place: as `$micro`, but element (i, kk) of the
        /// A panel is `pa[i * lda + kk]`; rows past `rows` re-read the last row (their sums
        /// are never stored), so nothing beyond A's m rows is read.
        ///
        /// # Safety
        /// For i < rows and kk < kc, `pa + i * lda + kk` is inside one allocation that is
        /// readable for the call.
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $amicro(
            kc: usize,
            pa: *const $t,
            lda: usize,
            b: &[$t],
            c: &mut [$t],
            ldc: usize,
            rows: usize,
            cols: usize,
            set: bool,
        ) {
            const MR: usize = $mr;
            const NR: usize = $nv * $lanes;
            assert!(b.len() >= kc * NR);
            assert!((1..=MR).contains(&rows) && (1..=NR).contains(&cols));
            let ar: [*const $t; MR] = std::array::from_fn(|i| {
                // SAFETY: i.min(rows - 1) < rows, a row of A (caller's contract).
                unsafe { pa.add(i.min(rows - 1) * lda) }
            });
            let mut acc = [[$zero(); $nv]; MR];
            let pb = b.as_ptr();
            if $nv > 1 && cols <= $lanes {
                // A last panel of at most one vector of columns (the weight gradient's 27
                // taps end in 3 of 8 in f64): the second vector's products are never stored,
                // so they are not computed.
                for kk in 0..kc {
                    // SAFETY: as in the loop below.
                    unsafe {
                        let b0 = $load(pb.add(kk * NR));
                        for (row, &ai) in acc.iter_mut().zip(&ar) {
                            row[0] = $fma($bcast(&*ai.add(kk)), b0, row[0]);
                        }
                    }
                }
            } else {
                for kk in 0..kc {
                    // SAFETY: kk < kc: b holds kc * NR elements (asserted), and ar[i] + kk
                    // is inside A by the caller's contract.
                    unsafe {
                        let mut bv = [$zero(); $nv];
                        for (v, bvv) in bv.iter_mut().enumerate() {
                            *bvv = $load(pb.add(kk * NR + v * $lanes));
                        }
                        for (row, &ai) in acc.iter_mut().zip(&ar) {
                            let av = $bcast(&*ai.add(kk));
                            for (r, &b) in row.iter_mut().zip(&bv) {
                                *r = $fma(av, b, *r);
                            }
                        }
                    }
                }
            }
            store_acc!(
                acc, c, ldc, rows, cols, set, $mr, $t, $lanes, $nv, $load, $store, $add
            );
        }

        /// One A-in-place KC block (see `ABlk`): the B panel against every MR rows of A.
        #[target_feature(enable = $feat)]
        pub(super) fn $ablock(b: super::ABlk<'_, $t>) {
            const MR: usize = $mr;
            let super::ABlk {
                m,
                n,
                kc,
                a,
                lda,
                bp,
                c,
                ldc,
                set,
            } = b;
            if m == 0 || n == 0 || kc == 0 {
                return;
            }
            assert!(n <= $nv * $lanes);
            assert!(a.len() >= (m - 1) * lda + kc);
            for ip in 0..m.div_ceil(MR) {
                let (i0, rows) = (ip * MR, MR.min(m - ip * MR));
                // SAFETY: rows i0..i0 + rows < m of A, each kc long, are inside `a`
                // (asserted above).
                unsafe {
                    $amicro(
                        kc,
                        a.as_ptr().add(i0 * lda),
                        lda,
                        bp,
                        &mut c[i0 * ldc..],
                        ldc,
                        rows,
                        n,
                        set,
                    )
                }
            }
        }

        /// LOOP 2 and LOOP 1 over one KC block.
        #[target_feature(enable = $feat)]
        pub(super) fn $block(b: super::Blk<'_, $t>) {
            let (kc, ldc, set) = (b.kc, b.ldc, b.set);
            super::panels(($mr, $nv * $lanes), b, |a, bp, ct, rows, cols| {
                $micro(kc, a, bp, ct, ldc, rows, cols, set)
            })
        }
    };
}
/// One `kernel!` per (block, micro-kernel, MR) in the list, all with one element type's
/// intrinsics.
macro_rules! kernels {
    ($feat:literal, $t:ty, $v:ty, $lanes:expr, $nv:expr, [], $($intr:ident),*) => {};
    ($feat:literal, $t:ty, $v:ty, $lanes:expr, $nv:expr,
     [($block:ident, $micro:ident, $dblock:ident, $dmicro:ident, $ablock:ident,
       $amicro:ident, $mr:expr)
      $(, $more:tt)*],
     $($intr:ident),*) => {
        kernel!(
            $block, $micro, $dblock, $dmicro, $ablock, $amicro, $mr, $feat, $t, $v, $lanes,
            $nv, $($intr),*
        );
        kernels!($feat, $t, $v, $lanes, $nv, [$($more),*], $($intr),*);
    };
}
/// AVX2 + FMA micro-kernels: 6 rows x 2 vectors of C in 12 ymm registers, 2 vector loads of B
/// and 6 broadcasts of A per k (BLIS's Haswell shape), for f32 (6 x 16) and f64 (6 x 8).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    kernels!(
        "avx2,fma",
        f32,
        __m256,
        8,
        2,
        [
            (
                block_f32, micro_f32, dblock_f32, dmicro_f32, ablock_f32, amicro_f32, 6
            ),
            (
                block_f32_alt,
                micro_f32_alt,
                dblock_f32_alt,
                dmicro_f32_alt,
                ablock_f32_alt,
                amicro_f32_alt,
                5
            )
        ],
        _mm256_setzero_ps,
        _mm256_broadcast_ss,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps
    );
    kernels!(
        "avx2,fma",
        f64,
        __m256d,
        4,
        2,
        [
            (
                block_f64, micro_f64, dblock_f64, dmicro_f64, ablock_f64, amicro_f64, 6
            ),
            (
                block_f64_alt,
                micro_f64_alt,
                dblock_f64_alt,
                dmicro_f64_alt,
                ablock_f64_alt,
                amicro_f64_alt,
                5
            )
        ],
        _mm256_setzero_pd,
        _mm256_broadcast_sd,
        _mm256_loadu_pd,
        _mm256_storeu_pd,
        _mm256_fmadd_pd,
        _mm256_add_pd
    );

    /// `transpose_runs` for an f32 panel (up to 16 runs; missing ones are zero rows): 8 x 8
    /// blocks through registers.
    ///
    /// # Safety
    /// The CPU has AVX2; bases.len() <= 16, every bases[jj] + len <= src.len(), and
    /// out.len() >= (len - 1) * ld + 16 (rows of the panel `ld` apart, ld >= 16).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose_f32(
        src: &[f32],
        bases: &[usize],
        len: usize,
        out: &mut [f32],
        ld: usize,
    ) {
        debug_assert!(ld >= 16 && bases.len() <= 16 && out.len() >= (len.max(1) - 1) * ld + 16);
        debug_assert!(bases.iter().all(|&b| b + len <= src.len()));
        let (ps, po) = (src.as_ptr(), out.as_mut_ptr());
        let mut kk = 0;
        while kk + 8 <= len {
            for half in 0..2 {
                // SAFETY: for a present base, bases[half * 8 + t] + kk + 8 <= base + len <=
                // src.len(), and (kk + t) * ld + half * 8 + 8 <= (len - 1) * ld + 16 <=
                // out.len()
                // (contract).
                unsafe {
                    let r = |t: usize| match bases.get(half * 8 + t) {
                        Some(&b) => _mm256_loadu_ps(ps.add(b + kk)),
                        None => _mm256_setzero_ps(),
                    };
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    let (r4, r5, r6, r7) = (r(4), r(5), r(6), r(7));
                    let t0 = _mm256_unpacklo_ps(r0, r1);
                    let t1 = _mm256_unpackhi_ps(r0, r1);
                    let t2 = _mm256_unpacklo_ps(r2, r3);
                    let t3 = _mm256_unpackhi_ps(r2, r3);
                    let t4 = _mm256_unpacklo_ps(r4, r5);
                    let t5 = _mm256_unpackhi_ps(r4, r5);
                    let t6 = _mm256_unpacklo_ps(r6, r7);
                    let t7 = _mm256_unpackhi_ps(r6, r7);
                    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                    let o = |t: usize| po.add((kk + t) * ld + half * 8);
                    _mm256_storeu_ps(o(0), _mm256_permute2f128_ps::<0x20>(u0, u4));
                    _mm256_storeu_ps(o(1), _mm256_permute2f128_ps::<0x20>(u1, u5));
                    _mm256_storeu_ps(o(2), _mm256_permute2f128_ps::<0x20>(u2, u6));
                    _mm256_storeu_ps(o(3), _mm256_permute2f128_ps::<0x20>(u3, u7));
                    _mm256_storeu_ps(o(4), _mm256_permute2f128_ps::<0x31>(u0, u4));
                    _mm256_storeu_ps(o(5), _mm256_permute2f128_ps::<0x31>(u1, u5));
                    _mm256_storeu_ps(o(6), _mm256_permute2f128_ps::<0x31>(u2, u6));
                    _mm256_storeu_ps(o(7), _mm256_permute2f128_ps::<0x31>(u3, u7));
                }
            }
            kk += 8;
        }
        super::transpose_scalar((16, ld), src, bases, kk, len, out);
    }

    /// `transpose_runs` for an f64 panel (up to 8 runs; missing ones are zero rows): 4 x 4
    /// blocks through registers.
    ///
    /// # Safety
    /// The CPU has AVX2; bases.len() <= 8, every bases[jj] + len <= src.len(), and
    /// out.len() >= (len - 1) * ld + 8 (rows of the panel `ld` apart, ld >= 8).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose_f64(
        src: &[f64],
        bases: &[usize],
        len: usize,
        out: &mut [f64],
        ld: usize,
    ) {
        debug_assert!(ld >= 8 && bases.len() <= 8 && out.len() >= (len.max(1) - 1) * ld + 8);
        debug_assert!(bases.iter().all(|&b| b + len <= src.len()));
        let (ps, po) = (src.as_ptr(), out.as_mut_ptr());
        let mut kk = 0;
        while kk + 4 <= len {
            for half in 0..2 {
                // SAFETY: for a present base, bases[half * 4 + t] + kk + 4 <= base + len <=
                // src.len(), and (kk + t) * ld + half * 4 + 4 <= (len - 1) * ld + 8 <=
                // out.len()
                // (contract).
                unsafe {
                    let r = |t: usize| match bases.get(half * 4 + t) {
                        Some(&b) => _mm256_loadu_pd(ps.add(b + kk)),
                        None => _mm256_setzero_pd(),
                    };
                    let (r0, r1, r2, r3) = (r(0), r(1), r(2), r(3));
                    let t0 = _mm256_unpacklo_pd(r0, r1);
                    let t1 = _mm256_unpackhi_pd(r0, r1);
                    let t2 = _mm256_unpacklo_pd(r2, r3);
                    let t3 = _mm256_unpackhi_pd(r2, r3);
                    let o = |t: usize| po.add((kk + t) * ld + half * 4);
                    _mm256_storeu_pd(o(0), _mm256_permute2f128_pd::<0x20>(t0, t2));
                    _mm256_storeu_pd(o(1), _mm256_permute2f128_pd::<0x20>(t1, t3));
                    _mm256_storeu_pd(o(2), _mm256_permute2f128_pd::<0x31>(t0, t2));
                    _mm256_storeu_pd(o(3), _mm256_permute2f128_pd::<0x31>(t1, t3));
                }
            }
            kk += 4;
        }
        super::transpose_scalar((8, ld), src, bases, kk, len, out);
    }
}

/// AVX-512 micro-kernels: 8 rows x 2 zmm of C (16 of the 32 zmm registers), two vector loads of
/// B and 8 broadcasts of A per k (folded into the FMAs as embedded broadcasts), for f32 (8 x 32)
/// and f64 (8 x 16); the 5-row twins are the alternative height. Measured on Zen 5 against
/// 16 x 1 zmm (NR 16, 17 loads per 16 FMAs, which runs into the two vector loads a cycle):
/// 8 x 2 is 12-19% faster in the GEMM benchmark (f32 128 x 256 x 1152: 198 -> 235 GFLOP/s on
/// one core), 12 x 2 in between. The direct kernels' two slots may lie in different output
/// rows, so rows of 16 pixels still fill a 32-pixel f32 tile.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bcast_ps(x: &f32) -> __m512 {
        _mm512_set1_ps(*x)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn bcast_pd(x: &f64) -> __m512d {
        _mm512_set1_pd(*x)
    }

    kernels!(
        "avx512f,avx512vl,avx2,fma",
        f32,
        __m512,
        16,
        2,
        [
            (
                block_f32, micro_f32, dblock_f32, dmicro_f32, ablock_f32, amicro_f32, 8
            ),
            (
                block_f32_alt,
                micro_f32_alt,
                dblock_f32_alt,
                dmicro_f32_alt,
                ablock_f32_alt,
                amicro_f32_alt,
                5
            )
        ],
        _mm512_setzero_ps,
        bcast_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps
    );
    kernels!(
        "avx512f,avx512vl,avx2,fma",
        f64,
        __m512d,
        8,
        2,
        [
            (
                block_f64, micro_f64, dblock_f64, dmicro_f64, ablock_f64, amicro_f64, 8
            ),
            (
                block_f64_alt,
                micro_f64_alt,
                dblock_f64_alt,
                dmicro_f64_alt,
                ablock_f64_alt,
                amicro_f64_alt,
                5
            )
        ],
        _mm512_setzero_pd,
        bcast_pd,
        _mm512_loadu_pd,
        _mm512_storeu_pd,
        _mm512_fmadd_pd,
        _mm512_add_pd
    );
}

fn block_portable<T: Float>(b: Blk<'_, T>) {
    if std::mem::size_of::<T>() == 4 {
        block::<T, 4, 8>(b)
    } else {
        block::<T, 4, 4>(b)
    }
}

/// C (m x n, leading dimension ldc) += A (packed by `pack_a` with shape `s`) * B (k x n, from
/// `b`), or C = A * B when `overwrite` (C's old contents are then never read, so the caller
/// need not zero it). `bbuf` holds at least `packed_b_len(s, k, n)` elements.
/// `s` must be `shape::<T>()` of the level in force (it is read once by the caller so a whole
/// call uses one shape).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed_a<T: Float>(
    s: Shape,
    m: usize,
    n: usize,
    k: usize,
    ap: &[T],
    b: BSrc<'_, T>,
    c: &mut [T],
    ldc: usize,
    bbuf: &mut [T],
    overwrite: bool,
) {
    gemm_packed_with(s, m, n, k, ap, c, ldc, bbuf, overwrite, |k0, kc, out| {
        pack_b(s, k0, kc, n, b, out)
    })
}

/// The KC blocks `gemm_packed_a` splits a contraction of length k into, as (k0, kc) pairs: k
/// split into equal blocks of at most `s.kc` (576 -> 3 x 192 rather than 256 + 256 + 64), so no
/// block runs a short k loop with a full C update. Packing A and the GEMM both walk these, so the
/// packed A layout matches.
pub(crate) fn kc_blocks(s: Shape, k: usize) -> impl Iterator<Item = (usize, usize)> {
    let kcb = k.div_ceil(k.div_ceil(s.kc).max(1)).max(1);
    (0..k).step_by(kcb).map(move |k0| (k0, kcb.min(k - k0)))
}

/// `gemm_packed_a` with B produced by the caller one KC block at a time: `pack(k0, kc, out)`
/// writes rows k0..k0+kc of B into `out` in the packed layout (use `pack_b_rows_into`). The
/// convolution generates each block's im2col rows right there, so they stay in L2.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_packed_with<T: Float>(
    s: Shape,
    m: usize,
    n: usize,
    k: usize,
    ap: &[T],
    c: &mut [T],
    ldc: usize,
    bbuf: &mut [T],
    overwrite: bool,
    mut pack: impl FnMut(usize, usize, &mut [T]),
) {
    debug_assert!(ap.len() >= packed_a_len(s, m, k));
    debug_assert!(bbuf.len() >= packed_b_len(s, k, n));
    debug_assert!(c.len() >= (m.max(1) - 1) * ldc + n);
    let mpad = m.next_multiple_of(s.mr);
    // LOOP 3: KC blocks of k.
    for (k0, kc) in kc_blocks(s, k) {
        let bblk = &mut bbuf[..kc * n.next_multiple_of(s.nr)];
        pack(k0, kc, bblk);
        let bblk = &*bblk;
        let ablk = &ap[k0 * mpad..k0 * mpad + kc * mpad];
        // The first KC block stores when overwriting; later blocks add to it.
        let set = overwrite && k0 == 0;
        run_block(
            s,
            Blk {
                m,
                n,
                kc,
                ap: ablk,
                bp: bblk,
                c: &mut *c,
                ldc,
                set,
            },
        );
    }
}

/// One KC block with the kernel of `s.level`.
fn run_block<T: Float>(s: Shape, blk: Blk<'_, T>) {
    match s.level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a Shape's level comes from level(), which reports Avx512 only when the
        // CPU has AVX-512F/VL, AVX2 and FMA.
        Level::Avx512 => unsafe { block_avx512(blk, s.mr) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, Avx2 only when the CPU has AVX2 and FMA.
        Level::Avx2 => unsafe { block_avx2(blk, s.mr) },
        _ => block_portable(blk),
    }
}

/// Elements of the A buffer `gemm_b_panels` needs for m rows.
pub(crate) fn b_panels_abuf_len(s: Shape, m: usize) -> usize {
    m.next_multiple_of(s.mr) * s.kc
}

/// Elements of the B buffer `gemm_b_panels` needs (one packed panel).
pub(crate) fn b_panels_bbuf_len(s: Shape) -> usize {
    s.kc * s.nr
}

/// C (m x n, leading dimension ldc) += A * B (k-long contraction), or = when `overwrite`, with
/// both operands packed by the caller just in time: for each KC block, `pack_a(k0, kc, abuf)`
/// packs A's m x kc block (the layout of `pack_a` for one block: MR panels of kc x MR), then for
/// each NR panel of B `pack_b(k0, kc, j0, out)` writes B's rows k0..k0+kc, columns
/// j0..j0+NR (zero beyond n) as kc x NR, element (kk, jj) at `kk * NR + jj`. The panel is used
/// against every A panel while it is in L1, and the A block (m x KC) stays in L2 — for an A of
/// few rows and a B of many columns (the weight gradient: filters x kernel taps).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_b_panels<T: Float>(
    s: Shape,
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    ldc: usize,
    abuf: &mut [T],
    bbuf: &mut [T],
    overwrite: bool,
    mut pack_a: impl FnMut(usize, usize, &mut [T]),
    mut pack_b: impl FnMut(usize, usize, usize, &mut [T]),
) {
    debug_assert!(c.len() >= (m.max(1) - 1) * ldc + n);
    let mpad = m.next_multiple_of(s.mr);
    for (k0, kc) in kc_blocks(s, k) {
        let ablk = &mut abuf[..mpad * kc];
        pack_a(k0, kc, ablk);
        let ablk = &*ablk;
        let set = overwrite && k0 == 0;
        for j0 in (0..n).step_by(s.nr) {
            let panel = &mut bbuf[..kc * s.nr];
            pack_b(k0, kc, j0, panel);
            run_block(
                s,
                Blk {
                    m,
                    n: s.nr.min(n - j0),
                    kc,
                    ap: ablk,
                    bp: panel,
                    c: &mut c[j0..],
                    ldc,
                    set,
                },
            );
        }
    }
}

/// `gemm_b_panels` with A read in place (element (i, kk) at `a[i * lda + kk]`) instead of packed
/// per KC block; `s` must pass `direct_available`. For the weight gradient, whose A (dout) has
/// rows contiguous over the contraction.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_b_panels_a_rows<T: Float>(
    s: Shape,
    m: usize,
    n: usize,
    k: usize,
    (a, lda): (&[T], usize),
    c: &mut [T],
    ldc: usize,
    bbuf: &mut [T],
    overwrite: bool,
    mut pack_b: impl FnMut(usize, usize, usize, &mut [T]),
) {
    debug_assert!(c.len() >= (m.max(1) - 1) * ldc + n);
    for (k0, kc) in kc_blocks(s, k) {
        let set = overwrite && k0 == 0;
        for j0 in (0..n).step_by(s.nr) {
            let panel = &mut bbuf[..kc * s.nr];
            pack_b(k0, kc, j0, panel);
            a_rows_block(
                s,
                ABlk {
                    m,
                    n: s.nr.min(n - j0),
                    kc,
                    a: &a[k0..],
                    lda,
                    bp: panel,
                    c: &mut c[j0..],
                    ldc,
                    set,
                },
            );
        }
    }
}

/// `out[kk * s.nr + jj] = src[bases[jj] + kk]` for kk < len, jj < bases.len() (at most s.nr),
/// and 0 for the panel's columns past bases.len(): a transpose of up to NR runs of `src` into
/// `len` rows of one packed B panel (the weight gradient packs kernel taps this way). At the
/// explicit levels it goes through 8 x 8 (f32) / 4 x 4 (f64) register transposes, 16 (f32) / 8
/// (f64) columns at a time.
pub(crate) fn transpose_runs<T: Float>(
    s: Shape,
    src: &[T],
    bases: &[usize],
    len: usize,
    out: &mut [T],
) {
    let nr = s.nr;
    assert!(bases.len() <= nr && out.len() >= len * nr);
    assert!(bases.iter().all(|&b| b + len <= src.len()));
    #[cfg(target_arch = "x86_64")]
    if s.level() >= Level::Avx2 {
        use std::any::TypeId;
        let f32 = TypeId::of::<T>() == TypeId::of::<f32>();
        let w = if f32 { 16 } else { 8 };
        if nr.is_multiple_of(w) {
            for (h, o) in (0..nr).step_by(w).enumerate() {
                let b = &bases[(h * w).min(bases.len())..((h + 1) * w).min(bases.len())];
                let out = &mut out[o..];
                if f32 {
                    // SAFETY: T is f32 (same TypeId); the level is Avx2 or above, which level()
                    // reports only when the CPU has AVX2 and FMA; b has at most 16 runs, each
                    // inside src, and out (from column o) holds (len - 1) * nr + 16 elements
                    // (asserted above: len * nr from column 0, o + 16 <= nr).
                    unsafe { avx2::transpose_f32(cast(src), b, len, cast_mut(out), nr) };
                } else {
                    debug_assert!(TypeId::of::<T>() == TypeId::of::<f64>());
                    // SAFETY: as above, with T = f64 (Float is f32 or f64) and 8 columns.
                    unsafe { avx2::transpose_f64(cast(src), b, len, cast_mut(out), nr) };
                }
            }
            return;
        }
    }
    transpose_scalar((nr, nr), src, bases, 0, len, out);
}

/// `transpose_runs` for kk in from..len, element by element: `width` columns of rows `ld`
/// apart.
fn transpose_scalar<T: Float>(
    (width, ld): (usize, usize),
    src: &[T],
    bases: &[usize],
    from: usize,
    len: usize,
    out: &mut [T],
) {
    for kk in from..len {
        let row = &mut out[kk * ld..kk * ld + width];
        for (jj, d) in row.iter_mut().enumerate() {
            *d = bases.get(jj).map_or(T::zero(), |&b| src[b + kk]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::{detected_simd_level as detected, force_simd_level as force_level};

    fn naive(m: usize, n: usize, k: usize, a: &[f64], b: &[f64], c: &mut [f64]) {
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] += (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum::<f64>();
            }
        }
    }

    /// C0 + A B through `gemm_packed_a` in T, with B given row-major and column-major, against
    /// the f64 result `want` to within `tol`.
    #[allow(clippy::too_many_arguments)]
    fn run<T: Float>(
        lv: Level,
        mr: Option<usize>,
        (m, n, k): (usize, usize, usize),
        a: &[f64],
        b: &[f64],
        c0: &[f64],
        want: &[f64],
        tol: f64,
    ) {
        let t = |v: &[f64]| -> Vec<T> { v.iter().map(|&x| T::from_f(x)).collect() };
        let (a, b) = (t(a), t(b));
        let bt: Vec<T> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let s = shape::<T>();
        assert_eq!(s.level(), lv);
        let s = Shape {
            mr: mr.unwrap_or(s.mr),
            ..s
        };
        let mut ap = vec![T::nan(); packed_a_len(s, m, k)];
        pack_a(s, m, k, &a, k, 1, &mut ap);
        let mut bb = vec![T::nan(); packed_b_len(s, k, n)];
        // C0 + AB with B in either layout, then AB alone written over a NaN-filled C (overwrite
        // must never read C).
        let ab: Vec<f64> = want.iter().zip(c0).map(|(w, c)| w - c).collect();
        for (what, src, overwrite) in [
            ("rows", BSrc::Rows { data: &b, ld: n }, false),
            ("cols", BSrc::Cols { data: &bt, ld: k }, false),
            ("overwrite", BSrc::Rows { data: &b, ld: n }, true),
        ] {
            let (mut c, expect) = if overwrite {
                (vec![T::nan(); m * n], &ab)
            } else {
                (t(c0), &want.to_vec())
            };
            gemm_packed_a(s, m, n, k, &ap, src, &mut c, n, &mut bb, overwrite);
            for (x, y) in c.iter().zip(expect) {
                assert!(
                    (x.to_f() - y).abs() <= tol,
                    "{} {lv:?} {what} {m}x{n}x{k}: {x} vs {y}",
                    T::NAME
                );
            }
        }
        // Both operands packed just in time, accumulating and overwriting (over NaN).
        let mut abuf = vec![T::nan(); b_panels_abuf_len(s, m)];
        let mut bbuf = vec![T::nan(); b_panels_bbuf_len(s)];
        for overwrite in [false, true] {
            let (mut c, expect) = if overwrite {
                (vec![T::nan(); m * n], &ab)
            } else {
                (t(c0), &want.to_vec())
            };
            gemm_b_panels(
                s,
                m,
                n,
                k,
                &mut c,
                n,
                &mut abuf,
                &mut bbuf,
                overwrite,
                |k0, kc, out| pack_a(s, m, kc, &a[k0..], k, 1, out),
                |k0, kc, j0, out| {
                    for kk in 0..kc {
                        for jj in 0..s.nr {
                            let j = j0 + jj;
                            out[kk * s.nr + jj] = if j < n {
                                b[(k0 + kk) * n + j]
                            } else {
                                T::zero()
                            };
                        }
                    }
                },
            );
            for (x, y) in c.iter().zip(expect) {
                assert!(
                    (x.to_f() - y).abs() <= tol,
                    "{} {lv:?} b-panels {overwrite} {m}x{n}x{k}: {x} vs {y}",
                    T::NAME
                );
            }
            // The same with A read in place (where a kernel for it exists): bitwise the packed
            // result, since each C element sums the same products in the same order. A's rows
            // are sliced to exactly m * k elements, so a read past its last row would panic in
            // the bounds assertion rather than pass unseen.
            if direct_available(s) {
                let mut c2 = if overwrite {
                    vec![T::nan(); m * n]
                } else {
                    t(c0)
                };
                gemm_b_panels_a_rows(
                    s,
                    m,
                    n,
                    k,
                    (&a[..m * k], k),
                    &mut c2,
                    n,
                    &mut bbuf,
                    overwrite,
                    |k0, kc, j0, out| {
                        for kk in 0..kc {
                            for jj in 0..s.nr {
                                let j = j0 + jj;
                                out[kk * s.nr + jj] = if j < n {
                                    b[(k0 + kk) * n + j]
                                } else {
                                    T::zero()
                                };
                            }
                        }
                    },
                );
                let bits = |v: &[T]| v.iter().map(|x| x.to_f().to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&c2),
                    bits(&c),
                    "{} {lv:?} a-rows {overwrite} {m}x{n}x{k}",
                    T::NAME
                );
            }
        }
    }

    /// Held by the tests that force SIMD levels (the level is process-wide and tests run in
    /// parallel).
    static LEVELS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn matches_naive_at_every_level_and_edge() {
        let _levels = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = crate::Rng::new(5);
        for lv in [Level::Portable, Level::Avx2, Level::Avx512] {
            if lv > detected() {
                continue;
            }
            force_level(lv);
            for (m, n, k) in [
                (1, 1, 1),
                (25, 256, 27),
                (64, 70, 600),
                (15, 33, 193),
                (14, 32, 192),
                (3, 5, 400),
                (13, 17, 513),
                (25, 256, 28),
                (5, 9, 3),
            ] {
                let a: Vec<f64> = (0..m * k).map(|_| rng.normal()).collect();
                let b: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
                let c0: Vec<f64> = (0..m * n).map(|_| rng.normal()).collect();
                let mut want = c0.clone();
                naive(m, n, k, &a, &b, &mut want);
                // Error bound scale: k * max|a| * max|b| (a dot product of length k).
                let scale: f64 = a.iter().map(|v| v.abs()).fold(0.0, f64::max)
                    * b.iter().map(|v| v.abs()).fold(0.0, f64::max)
                    * k as f64;
                let mnk = (m, n, k);
                run::<f64>(lv, None, mnk, &a, &b, &c0, &want, 1e-13 * (scale + 1.0));
                // f32: the inputs themselves are rounded to f32, hence the wider bound.
                run::<f32>(lv, None, mnk, &a, &b, &c0, &want, 1e-5 * (scale + 1.0));
                // The alternative panel height `shape_for_rows` picks at each explicit level.
                if let Some((_, alt)) = explicit_mrs(lv) {
                    run::<f64>(
                        lv,
                        Some(alt),
                        mnk,
                        &a,
                        &b,
                        &c0,
                        &want,
                        1e-13 * (scale + 1.0),
                    );
                    run::<f32>(lv, Some(alt), mnk, &a, &b, &c0, &want, 1e-5 * (scale + 1.0));
                }
            }
        }
        force_level(detected());
    }

    /// The tap-panel transpose at every level, f32 and f64: full and partial panels (fewer runs
    /// than NR, zero-filled), run lengths with and without a tail past the 8 x 8 / 4 x 4 blocks,
    /// against the definition.
    #[test]
    fn transpose_runs_matches_definition() {
        fn check<T: Float>(lv: Level, rng: &mut crate::Rng) {
            let s = shape::<T>();
            assert_eq!(s.level(), lv);
            let src: Vec<T> = (0..500).map(|_| T::from_f(rng.normal())).collect();
            for (runs, len) in [
                (s.nr, 16),
                (s.nr, 13),
                (3, 16),
                (s.nr - 1, 7),
                (1, 1),
                (0, 5),
            ] {
                let bases: Vec<usize> = (0..runs).map(|_| rng.below(500 - len)).collect();
                let mut out = vec![T::nan(); len * s.nr];
                transpose_runs(s, &src, &bases, len, &mut out);
                for kk in 0..len {
                    for jj in 0..s.nr {
                        let want = bases.get(jj).map_or(T::zero(), |&b| src[b + kk]);
                        let got = out[kk * s.nr + jj];
                        assert!(
                            got.to_f() == want.to_f(),
                            "{lv:?} {runs}x{len} ({kk}, {jj})"
                        );
                    }
                }
            }
        }
        let _levels = LEVELS.lock().unwrap_or_else(|e| e.into_inner());
        let mut rng = crate::Rng::new(11);
        for lv in [Level::Portable, Level::Avx2, Level::Avx512] {
            if lv > detected() {
                continue;
            }
            force_level(lv);
            check::<f32>(lv, &mut rng);
            check::<f64>(lv, &mut rng);
        }
        force_level(detected());
    }

    /// `pack_a_cols` with an affine column map packs exactly what `pack_a` does.
    #[test]
    fn pack_a_cols_matches_pack_a() {
        let s = shape::<f64>();
        let (m, k) = (13, 300);
        let a: Vec<f64> = (0..m * k).map(|v| v as f64).collect();
        let mut want = vec![f64::NAN; packed_a_len(s, m, k)];
        pack_a(s, m, k, &a, k, 1, &mut want);
        let mut got = vec![f64::NAN; packed_a_len(s, m, k)];
        pack_a_cols(s, m, k, &a, k, |kk| kk, &mut got);
        assert_eq!(want, got);
    }
}
