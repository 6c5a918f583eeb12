//! The BLIS loops and the dispatch of one KC block to the kernel of a shape's level.

#[cfg(target_arch = "x86_64")]
use super::kernels::{avx2, avx512, cast, cast_mut};
use super::*;
use crate::scalar::Float;

/// C[rows x cols] (leading dimension ldc) += A panel (kc x MR) * B panel (kc x NR), or = when
/// `set` (C is then write-only: the caller need not zero it). The portable level's kernel: a
/// multiply and an add, since `mul_add` without hardware FMA is a slow library call.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn micro<T: Float, const MR: usize, const NR: usize>(
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
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) kc: usize,
    pub(crate) ap: &'a [T],
    pub(crate) bp: &'a [T],
    pub(crate) c: &'a mut [T],
    pub(crate) ldc: usize,
    pub(crate) set: bool,
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
    pub(crate) m: usize,
    pub(crate) kc: usize,
    pub(crate) ap: &'a [T],
    pub(crate) src: &'a [T],
    pub(crate) off: &'a [usize],
    pub(crate) pitch: usize,
    pub(crate) oh: std::ops::Range<usize>,
    pub(crate) wo: usize,
    pub(crate) c: &'a mut [T],
    pub(crate) ldc: usize,
    pub(crate) set: bool,
    pub(crate) bias: &'a [T],
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
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) kc: usize,
    pub(crate) a: &'a [T],
    pub(crate) lda: usize,
    pub(crate) bp: &'a [T],
    pub(crate) c: &'a mut [T],
    pub(crate) ldc: usize,
    pub(crate) set: bool,
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
pub(super) fn panels<T>(
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
pub(super) fn block<T: Float, const MR: usize, const NR: usize>(b: Blk<'_, T>) {
    let (kc, ldc, set) = (b.kc, b.ldc, b.set);
    panels((MR, NR), b, |a, bp, ct, rows, cols| {
        micro::<T, MR, NR>(kc, a, bp, ct, ldc, rows, cols, set)
    })
}

pub(super) fn block_portable<T: Float>(b: Blk<'_, T>) {
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
pub(super) fn run_block<T: Float>(s: Shape, blk: Blk<'_, T>) {
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
