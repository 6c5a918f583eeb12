//! The explicit micro-kernels, written once as macros and instantiated per ISA in `avx2.rs`
//! and `avx512.rs`: the only `std::arch` code of the GEMM.

// What the kernels name as `super::`.
pub(super) use super::driver::{ABlk, Blk, DBlk, panels};
pub(super) use super::transpose::transpose_scalar;

/// Reinterprets a slice of T as a slice of U.
///
/// # Safety
/// T and U must be the same type.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn cast<T: 'static, U: 'static>(s: &[T]) -> &[U] {
    debug_assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>());
    // SAFETY: T == U (caller), so pointer, length, alignment and lifetime carry over unchanged.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<U>(), s.len()) }
}

/// Mutable twin of `cast`.
///
/// # Safety
/// T and U must be the same type.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn cast_mut<T: 'static, U: 'static>(s: &mut [T]) -> &mut [U] {
    debug_assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<U>());
    // SAFETY: as in `cast`; the unique borrow of s moves into the result.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<U>(), s.len()) }
}

/// Starts the lines of C[rows x cols] (leading dimension ldc) on their way into L1 while a
/// micro-kernel's k loop runs: where C lies outside the L2 (the Winograd weight gradient's dU,
/// 16 x cout x cin, 2 MB in f64 for 128 x 128 channels, updated from 64 tiles per image), each
/// tile's read-modify-write otherwise waits on the L3 at its end. No effect on the results.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn prefetch_c<T>(c: &[T], ldc: usize, rows: usize, cols: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for i in 0..rows {
        if let Some(row) = c.get(i * ldc..i * ldc + cols) {
            for p in [row.as_ptr(), row[cols - 1..].as_ptr()] {
                // SAFETY: p points into c (a live slice); a prefetch reads nothing
                // architecturally and never faults.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) };
            }
        }
    }
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
            super::prefetch_c(c, ldc, rows, cols);
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
        pub(crate) fn $dblock(d: super::DBlk<'_, $t>) {
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
            super::prefetch_c(c, ldc, rows, cols);
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
        pub(crate) fn $ablock(b: super::ABlk<'_, $t>) {
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
        pub(crate) fn $block(b: super::Blk<'_, $t>) {
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

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512;
