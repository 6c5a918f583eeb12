//! Fast normalisation kernels: fused two-pass, f64 statistics, deterministic.
//!
//! Two shapes of work cover the four layers:
//! - channel layouts (batch norm (N, D) = (N, D, 1, 1), spatial batch norm): a statistic is a
//!   channel spread over N planes of H*W. Pass 1 sums each plane and adds a channel's planes
//!   in sample order: sample-major (one job per sample) for planes of 64+ elements, one job per
//!   channel for shorter ones; pass 2 sweeps each sample once, normalising (forward) or writing
//!   dx (backward).
//! - group layouts (layer norm (N, D) = one group of D channels of 1 element, group norm): a
//!   statistic is one contiguous block. One job per block does both passes while the block is in
//!   cache: shifted sums for mean and variance, then the normalised output (or, backward, per-channel
//!   sums of dout and dout*(x - mean), then dx). dgamma/dbeta combine the per-(n, c) sums over n
//!   in order afterwards.
//!
//! Accuracy: statistics are shifted sums, sum(x - k) and sum((x - k)^2) with k an element of the
//! group, so the variance does not cancel when the mean is large. They accumulate in blocks: 16
//! lanes of T over 8 rows, then into f64 lanes combined pairwise, so the error is a few ulps of T
//! whatever N*H*W is (a blocked, pairwise scheme), and the order is fixed whatever the thread
//! count. Element-wise passes run in T (16 f32 lanes per AVX-512 register, no conversions) with
//! the mean split into hi + lo parts of T: (x - hi) - lo is x - mean to a few ulps even when the
//! mean is large against the spread.

use super::{BwdIn, BwdOut, NormLayout};
use crate::cpu::{line_elems, multiversion};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tuning::{
    NORM_FLUSH_ROWS, NORM_LANES, NORM_PAR_MIN_ELEMS, NORM_SAMPLE_MAJOR_MIN_HW,
    norm_prefetch_max_bytes,
};

#[inline(always)]
fn combine(t: [f64; NORM_LANES]) -> f64 {
    let mut w = t;
    let mut n = NORM_LANES;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            w[l] += w[l + n];
        }
    }
    w[0]
}

/// Adds a block's T lanes into the f64 lanes. `black_box` makes the block's accumulator a plain
/// store: without it LLVM's SLP vectoriser sized the whole accumulation loop to the f32 -> f64
/// conversion (2 lanes per xmm), so the dy * (x - mean) sum ran 2 f32 lanes at a time instead
/// of 8 (seen in the disassembly; bn backward pass 1 was the slower of the two passes).
/// It goes through `black_box` in two halves of 8 lanes: one 16-lane f32 store read back as two
/// 8-lane halves by `vcvtps2pd` does not store-forward on the Zen 5 (the upper-half load waits
/// for the store to commit: a third of group norm backward's one-thread samples sat on those two
/// loads). With halves, each load matches its store; the accumulation runs 8 f32 lanes per
/// register. One thread, f32: group norm forward 0.35 -> 0.23 ms, backward 0.59 -> 0.52.
#[inline(always)]
fn flush<T: Float>(tot: &mut [f64; NORM_LANES], acc: [T; NORM_LANES]) {
    // f64 needs no conversion, so neither the SLP problem nor the barrier: through `black_box`
    // its 8-lane halves went to an unaligned stack slot and back. Batch norm forward f64, 2
    // threads, in-process (examples/normloop), three alternating rounds: 0.60 -> 0.52 ms.
    if std::mem::size_of::<T>() == 8 {
        for l in 0..NORM_LANES {
            tot[l] += acc[l].to_f();
        }
        return;
    }
    for h in 0..2 {
        let half: [T; NORM_LANES / 2] = std::array::from_fn(|l| acc[h * NORM_LANES / 2 + l]);
        let half = std::hint::black_box(half);
        for l in 0..NORM_LANES / 2 {
            tot[h * NORM_LANES / 2 + l] += half[l].to_f();
        }
    }
}

/// sum(f(x_i)) with blocked accumulation: NORM_LANES lanes of T over NORM_FLUSH_ROWS rows, then into f64 lanes,
/// combined pairwise. The same order for any thread count (element i -> lane i % NORM_LANES).
/// Blocks are fixed-size arrays so the vectoriser sees whole registers.
#[inline(always)]
fn block_sum<T: Float>(x: &[T], f: impl Fn(T) -> T) -> f64 {
    let mut tot = [0.0f64; NORM_LANES];
    let mut blocks = x.chunks_exact(NORM_LANES * NORM_FLUSH_ROWS);
    for blk in &mut blocks {
        let blk: &[T; NORM_LANES * NORM_FLUSH_ROWS] = blk.try_into().expect("whole block");
        let mut acc = [T::zero(); NORM_LANES];
        for r in 0..NORM_FLUSH_ROWS {
            for l in 0..NORM_LANES {
                acc[l] += f(blk[r * NORM_LANES + l]);
            }
        }
        flush(&mut tot, acc);
    }
    for (i, &v) in blocks.remainder().iter().enumerate() {
        tot[i % NORM_LANES] += f(v).to_f();
    }
    combine(tot)
}

/// (sum(f(a_i, b_i)), sum(g(a_i, b_i))) in one pass, each blocked like `block_sum` (the same
/// lanes and order as two separate calls, so the results are bitwise those of two passes).
#[inline(always)]
fn block_sum_pair<T: Float>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> T,
    g: impl Fn(T, T) -> T,
) -> (f64, f64) {
    block_sum_pair_hook(a, b, f, g, |_| {})
}

/// `block_sum_pair` calling `hook(i)` before each whole block, i its first element (a
/// prefetch of what a later pass writes: the sums are the same).
#[inline(always)]
fn block_sum_pair_hook<T: Float>(
    a: &[T],
    b: &[T],
    f: impl Fn(T, T) -> T,
    g: impl Fn(T, T) -> T,
    hook: impl Fn(usize),
) -> (f64, f64) {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut tf, mut tg) = ([0.0f64; NORM_LANES], [0.0f64; NORM_LANES]);
    let full = n / (NORM_LANES * NORM_FLUSH_ROWS) * (NORM_LANES * NORM_FLUSH_ROWS);
    for (bi, (ba, bb)) in a[..full]
        .chunks_exact(NORM_LANES * NORM_FLUSH_ROWS)
        .zip(b[..full].chunks_exact(NORM_LANES * NORM_FLUSH_ROWS))
        .enumerate()
    {
        hook(bi * NORM_LANES * NORM_FLUSH_ROWS);
        let ba: &[T; NORM_LANES * NORM_FLUSH_ROWS] = ba.try_into().expect("whole block");
        let bb: &[T; NORM_LANES * NORM_FLUSH_ROWS] = bb.try_into().expect("whole block");
        let (mut af, mut ag) = ([T::zero(); NORM_LANES], [T::zero(); NORM_LANES]);
        for r in 0..NORM_FLUSH_ROWS {
            for l in 0..NORM_LANES {
                let (u, v) = (ba[r * NORM_LANES + l], bb[r * NORM_LANES + l]);
                af[l] += f(u, v);
                ag[l] += g(u, v);
            }
        }
        flush(&mut tf, af);
        flush(&mut tg, ag);
    }
    for i in full..n {
        tf[(i - full) % NORM_LANES] += f(a[i], b[i]).to_f();
        tg[(i - full) % NORM_LANES] += g(a[i], b[i]).to_f();
    }
    (combine(tf), combine(tg))
}

/// sum(x) in f64 (blocked).
#[inline(always)]
pub(crate) fn sum_f64<T: Float>(x: &[T]) -> f64 {
    block_sum(x, |v| v)
}

/// The mean as hi + lo in T: `(x - hi) - lo` is x - mean to a few ulps of T even when the mean
/// is large against the spread (x - hi is exact near the mean, by Sterbenz's lemma).
#[inline(always)]
fn split<T: Float>(m: f64) -> (T, T) {
    let hi = T::from_f(m);
    (hi, T::from_f(m - hi.to_f()))
}

/// (sum(x - k), sum((x - k)^2)), k an element of the group (so exact in T). The shift keeps the
/// variance from cancelling when the mean is large.
#[inline(always)]
fn shifted_sums<T: Float>(x: &[T], k: T) -> (f64, f64) {
    shifted_sums_hook(x, k, |_| {})
}

/// `shifted_sums` calling `hook(i)` before the block of x starting at i (a prefetch: the sums
/// do not change).
#[inline(always)]
fn shifted_sums_hook<T: Float>(x: &[T], k: T, hook: impl Fn(usize)) -> (f64, f64) {
    block_sum_pair_hook(
        x,
        x,
        |v, _| v - k,
        |v, _| {
            let d = v - k;
            d * d
        },
        hook,
    )
}

/// How `sum_dy_dev` scales the deviations x - m before the products with dy, so that the
/// products neither underflow nor overflow when 1 / sqrt(var + eps) is far from 1. Unscaled,
/// a subnormal deviation times dy underflows in T and the later multiplication by inv_std
/// (up to 1e150 with eps = 1e-300) amplifies the loss: dgamma 0 where the true value is
/// 1e104 (found by the fuzzer; fuzz/seeds/norm/subnormal-test-mode-dgamma).
#[derive(Clone, Copy, Debug, PartialEq)]
enum DevScale {
    /// inv_std within 2^+-32 of 1: products in T, as written (what ordinary data takes).
    One,
    /// Products dy * ((x - m) * s) in T, s a power of two near inv_std (in T's normal range):
    /// exact scaling, so the sum is s times the unscaled one to the bit where that does not
    /// underflow. Train mode only, where |(x - m) inv_std| <= sqrt(count) bounds the scaled
    /// deviation.
    Lanes(f64),
    /// Products dy * ((x - m) * s) formed in f64: test mode (running statistics bound
    /// nothing: s = inv_std itself, the reference's x_hat), and train mode when the power of
    /// two is past T's range (f32 with inv_std > 2^120).
    Wide(f64),
}

impl DevScale {
    /// The scaling for a statistic with `inv` = 1 / sqrt(var + eps), and r = inv / s, the
    /// factor that turns the scaled sum into sum(dy * x_hat).
    fn new<T: Float>(inv: f64, batch: bool) -> (DevScale, f64) {
        if !batch {
            return (DevScale::Wide(inv), 1.0);
        }
        if !(inv.is_finite() && inv >= f64::MIN_POSITIVE) {
            return (DevScale::One, inv);
        }
        // The power of two at or below inv: its exponent bits.
        let s = f64::from_bits(inv.to_bits() & 0xfff0_0000_0000_0000);
        let e = s.log2();
        if e.abs() <= 32.0 {
            (DevScale::One, inv)
        } else if std::mem::size_of::<T>() == 8 || e.abs() <= 120.0 {
            (DevScale::Lanes(s), inv / s)
        } else {
            (DevScale::Wide(s), inv / s)
        }
    }
}

/// (sum(dy), sum(dy * (x - m) * s)) with s as `scale` says (1 for `DevScale::One`).
#[inline(always)]
fn sum_dy_dev<T: Float>(dy: &[T], x: &[T], m: f64, scale: DevScale) -> (f64, f64) {
    let (hi, lo) = split::<T>(m);
    match scale {
        DevScale::One => block_sum_pair(dy, x, |d, _| d, |d, v| d * ((v - hi) - lo)),
        DevScale::Lanes(s) => {
            // lo is scaled from f64: unscaled in T it can underflow (a subnormal mean), an
            // error that s would amplify like the products'. v - hi is exact here.
            let lo = T::from_f((m - hi.to_f()) * s);
            let s = T::from_f(s);
            block_sum_pair(dy, x, |d, _| d, |d, v| d * ((v - hi) * s - lo))
        }
        DevScale::Wide(s) => {
            let n = dy.len().min(x.len());
            let mut tot = [0.0f64; NORM_LANES];
            for (i, (d, v)) in dy[..n].iter().zip(&x[..n]).enumerate() {
                tot[i % NORM_LANES] += d.to_f() * ((v.to_f() - m) * s);
            }
            (block_sum(&dy[..n], |d| d), combine(tot))
        }
    }
}

/// Whether f32 shifted sums may have lost the variance: squares (x - k)^2 overflow past
/// |x - k| = 1.8e19 and fall into the subnormal range (losing digits) below 2^-63. The
/// reference holds them in f64; so does `wide_shifted`, the rare path these groups take.
/// Never for f64, whose squares lose only where the reference's f64 graph loses too. A group
/// of equal values (s1 = s2 = 0, a dead ReLU channel) is exact and keeps the fast path.
#[inline(always)]
fn squares_lost<'a, T: Float + 'a>(
    s1: f64,
    s2: f64,
    cnt: f64,
    mut planes: impl Iterator<Item = &'a [T]>,
    k: T,
) -> bool {
    std::mem::size_of::<T>() == 4
        && (!s2.is_finite() || s2 < cnt * 2f64.powi(-96))
        && !(s1 == 0.0 && s2 == 0.0 && planes.all(|p| p.iter().all(|&v| v == k)))
}

/// (sum(x - k), sum((x - k)^2)) over the planes, each term in f64.
#[cold]
fn wide_shifted<'a, T: Float + 'a>(planes: impl Iterator<Item = &'a [T]>, k: T) -> (f64, f64) {
    let k = k.to_f();
    let (mut s1, mut s2) = (0.0, 0.0);
    for p in planes {
        for v in p {
            let d = v.to_f() - k;
            s1 += d;
            s2 += d * d;
        }
    }
    (s1, s2)
}

/// The shifted sums `s` of the planes, or, where `squares_lost` says f32 lost them, the same
/// sums recomputed in f64.
#[inline(always)]
fn kept_or_wide<'a, T: Float + 'a>(
    s: (f64, f64),
    cnt: f64,
    planes: impl Iterator<Item = &'a [T]> + Clone,
    k: T,
) -> (f64, f64) {
    if squares_lost(s.0, s.1, cnt, planes.clone(), k) {
        wide_shifted(planes, k)
    } else {
        s
    }
}

/// Mean and (uncorrected) variance from shifted sums over `cnt` elements.
#[inline(always)]
fn moments(s1: f64, s2: f64, k: f64, cnt: f64) -> (f64, f64) {
    let m = s1 / cnt;
    // Clamps a rounding-negative variance to 0 but keeps a NaN (an infinity in the group:
    // inf - inf), as the reference's variance is; `f64::max` would turn it into 0, a finite
    // running variance and a finite 1 / sqrt(eps) from infinite data.
    let v = s2 / cnt - m * m;
    (k + m, if v < 0.0 { 0.0 } else { v })
}

/// Whether the element-wise pass of a call that touches `bytes` (inputs and output) writes
/// with non-temporal stores: when the tensors exceed the last-level cache (see
/// `simd::streaming_threshold`), a normal store first reads the output line from memory and then
/// evicts a line of the inputs that the next pass or call will read again. Measured on the Zen 5
/// (32 MB L3), batch norm backward, in-process alternating runs, 2 threads: f64 (48 MB) 0.93 ->
/// 0.80-0.88 ms; f32 (24 MB, cache-resident) 0.30 -> 0.36 ms with streaming, hence the threshold.
fn streaming(bytes: usize) -> bool {
    crate::cpu::level() >= crate::cpu::Level::Avx2 && bytes > crate::tuning::streaming_threshold()
}

/// How an element-wise pass writes its output. Non-temporal stores (`streaming` calls) go up
/// or down the run. A non-temporal store stays in the store queue until its write-combining
/// line goes out, and a later load whose address agrees with it in the low 12 bits but overlaps
/// it only in part waits for it (4K aliasing): when the output lies a little past a source
/// (modulo 4 KB) in the sweep's direction, each load of the next elements waits on the stores
/// just issued. AMD EPYC model 17, group norm forward f64, 2 threads, upward sweep
/// (`examples/placement`): out 48 bytes past x 1.9-2.1 ms against 0.80-0.85 at 0 or 1024 bytes,
/// 80 bytes 1.6, 240 bytes 1.1 (out 16 to 80 bytes *before* x: 25-30% slower). A downward
/// sweep mirrors it: out 80 bytes past x 0.80 ms, 80 bytes before it 1.64. So a job sweeps up
/// unless its output lies just past a source, then down unless it also lies just before one,
/// else it writes with plain stores (no queue wait, but a read for ownership per line: 25-50%
/// slower than an unhindered sweep). Plain stores leave the queue sooner but meet the same
/// hazard on a smaller scale: group norm backward f32 at the bench's placement (dx 48 bytes
/// past x, 32 past dout) 0.435 ms against 0.396 unhindered, 0.411 sweeping down; so they go
/// down too when the output lies just past a source and not just before one.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    /// Plain stores, upwards.
    Plain,
    /// Plain stores, downwards.
    PlainDown,
    /// Non-temporal stores, upwards.
    Up,
    /// Non-temporal stores, downwards.
    Down,
}

/// Distance (bytes, modulo 4 KB) within which a non-temporal store just past a source in the
/// sweep's direction makes the source's loads wait (seen up to 240 bytes, not at 1024).
const ALIAS_NEAR: usize = 512;

impl Store {
    /// The stores of a job writing `out` from `srcs` (same-length slices read at the same
    /// indices): plain unless `nt`, in the direction the addresses allow. Every run of the job
    /// lies at the same offsets from its sources, so one choice holds for all of them.
    fn of<T>(nt: bool, out: &[T], srcs: &[&[T]]) -> Store {
        let o = out.as_ptr() as usize;
        let near = |d: usize| d != 0 && d < ALIAS_NEAR;
        let past = |s: &&[T]| near(o.wrapping_sub(s.as_ptr() as usize) & 4095);
        let before = |s: &&[T]| near((s.as_ptr() as usize).wrapping_sub(o) & 4095);
        if !nt {
            return if srcs.iter().any(past) && !srcs.iter().any(before) {
                Store::PlainDown
            } else {
                Store::Plain
            };
        }
        if !srcs.iter().any(past) {
            Store::Up
        } else if !srcs.iter().any(before) {
            Store::Down
        } else {
            Store::Plain
        }
    }
    fn streams(self) -> bool {
        matches!(self, Store::Up | Store::Down)
    }
    fn down(self) -> bool {
        matches!(self, Store::Down | Store::PlainDown)
    }
    /// 0..n in the sweep's order (a downward sweep also takes a job's runs from the last).
    fn order(self, n: usize) -> impl Iterator<Item = usize> {
        let down = self.down();
        (0..n).map(move |i| if down { n - 1 - i } else { i })
    }
}

/// `out[i] = f(i)` for every i with non-temporal stores (32-byte `_mm256_stream` stores on the
/// whole cache lines of the run, upwards or downwards as `st` says, the partial lines at its
/// ends with plain stores in the same direction; the caller then runs `fence`), for jobs that
/// `streaming` allowed. Same values as plain stores, in any order. Batch norm backward f64 with
/// the bench's heap placement (x, dout, dx at 3360, 3376, 3408 modulo 4 KB: a downward sweep of
/// runs that start 16 bytes into a line), `examples/placement`, same rounds: 1.24-1.28 ms with
/// 32-byte alignment and the head written first, 1.05-1.06 now, against 1.01-1.07 at offset 0.
/// A line written partly by plain and partly by non-temporal stores is written twice, and a
/// head written before a downward sweep breaks each run's descent.
#[inline(always)]
fn stream_run<T: Float>(out: &mut [T], st: Store, f: impl Fn(usize) -> T + Copy) {
    debug_assert!(st.streams());
    // One instantiation per direction, each a single loop: one loop with the direction in its
    // index computation, or one store closure called from two loops, ran the upward sweep
    // 1.7-4x slower.
    if st == Store::Down {
        stream_dir::<T, true>(out, f)
    } else {
        stream_dir::<T, false>(out, f)
    }
}

#[inline(always)]
fn stream_dir<T: Float, const DOWN: bool>(out: &mut [T], f: impl Fn(usize) -> T) {
    #[cfg(target_arch = "x86_64")]
    {
        let n = out.len();
        use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
        const U: usize = 32;
        let e = U / std::mem::size_of::<T>();
        // Whole cache lines only: a line written partly by plain stores (a run's head or tail,
        // or the neighbouring run's) and partly by non-temporal ones is written twice.
        let head = out.as_ptr().align_offset(2 * U).min(n);
        let steps = (n - head) / (2 * e) * 2;
        let end = head + steps * e;
        // The plain ends in the sweep's order too: a downward sweep writes its tail first and
        // its head last, so each run goes down the addresses like the whole sweep.
        let (lo, hi) = out.split_at_mut(end);
        if DOWN {
            for (i, o) in hi.iter_mut().enumerate().rev() {
                *o = f(end + i);
            }
        } else {
            for (i, o) in lo[..head].iter_mut().enumerate() {
                *o = f(i);
            }
        }
        for k in 0..steps {
            let i = if DOWN {
                end - (k + 1) * e
            } else {
                head + k * e
            };
            let mut t = [T::zero(); 8];
            for (l, v) in t[..e].iter_mut().enumerate() {
                *v = f(i + l);
            }
            let dst = lo[i..i + e].as_mut_ptr();
            debug_assert!(crate::cpu::level() >= crate::cpu::Level::Avx2);
            debug_assert_eq!(dst as usize % U, 0);
            // SAFETY: callers run this only where `streaming` said so, which checked AVX2;
            // `dst` is `lo[i..i + e]` (`lo` = `out[..end]`), in bounds (slicing checked it), 32
            // bytes (e elements of T) and 32-byte aligned (`head` is 64-byte aligned and i - head
            // a multiple of e); `t` holds at least 32 bytes (8 elements of 4 or 8).
            unsafe {
                _mm256_stream_si256(
                    dst.cast::<__m256i>(),
                    _mm256_loadu_si256(t.as_ptr().cast::<__m256i>()),
                )
            };
        }
        if DOWN {
            for (i, o) in lo[..head].iter_mut().enumerate().rev() {
                *o = f(i);
            }
        } else {
            for (i, o) in hi.iter_mut().enumerate() {
                *o = f(end + i);
            }
        }
    }
    // `streaming` is false off x86_64; plain stores keep this compiling there.
    #[cfg(not(target_arch = "x86_64"))]
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
}

/// Orders a job's non-temporal stores before whatever the job's completion publishes (they are
/// weakly ordered, and rayon's join is only a release of normal stores).
#[inline(always)]
fn fence(st: Store) {
    #[cfg(target_arch = "x86_64")]
    if st.streams() {
        // SAFETY: SSE is part of the x86_64 baseline.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = st;
}

/// Touches every cache line of `v` with a prefetch into L2 (`_MM_HINT_T1`), so the stores of a
/// later pass over `v` find their lines in cache instead of waiting on a read for ownership
/// each. Group backward prefetches each channel's dx lines just before that channel's sums: the
/// reads for ownership overlap the sums over dout and x, where before they stalled the dx pass
/// (a quarter of a one-thread run's samples sat on its stores; in-process, group norm backward
/// f32 in one of the host's slow spells: 2 threads 0.32-0.35 -> 0.26-0.27 ms, one thread
/// 0.68-0.69 -> 0.50-0.55).
///
/// Into L2, a channel at a time: the block's whole dx into L1 up front (`_MM_HINT_T0`, 512 lines
/// for a 32 KB block) competed with the sums' own stream for L1 and the miss queue, and was
/// evicted to L2 by that stream anyway. AMD EPYC model 17, `examples/normloop gnb f32`, eight
/// alternating rounds of the two builds: 2 threads median 0.461 -> 0.414 ms (faster in 7 of 8
/// pairs), one thread 1.01 -> 0.88 (8 of 8); the T1 hint for the whole block up front was no
/// better than T0 (six rounds). Group norm forward prefetches its output the same way, a block
/// of the sums at a time (`shifted_sums_hook`): one thread median 0.65 -> 0.57 ms, 2 threads
/// 0.266 -> 0.252 (eight alternating rounds; the whole block into L1 up front had been within
/// noise). Not batch norm backward's next dx plane (slower with T0: 0.66 -> 0.74 ms, one
/// thread): its pass 2 follows the whole of pass 1, which evicts anything prefetched during it.
#[inline(always)]
fn prefetch_lines<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(v);
}

/// Touches every cache line of `v` with a prefetch into L1 (`_MM_HINT_T0`): group norm
/// backward's dx lines, which `prefetch_lines` brought into L2 during the sums, right before the
/// dx pass over that channel stores to them (a channel's dx, x and dout fit L1 together). Each
/// store otherwise waits for its line from L2 in order, and the store queue fills (`perf`: a
/// sixth of one thread's samples on the instruction after the dx stores). AMD EPYC model 17,
/// `examples/normloop gnb f32`, eight alternating rounds of the two builds: AVX-512 2 threads
/// median 0.521 -> 0.461 ms (faster in 6 of 8), one thread 1.09 -> 1.03 (7 of 8); AVX2 within
/// noise (2 threads 0.487 -> 0.499, one thread 1.07 -> 1.10, in a slow spell of the host; an
/// earlier probe of six rounds had one thread 0.95 -> 0.86).
#[inline(always)]
fn prefetch_lines_l1<T>(v: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(v);
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hint<const HINT: i32, T>(v: &[T]) {
    for i in (0..v.len()).step_by(line_elems::<T>()) {
        debug_assert!(i < v.len());
        // SAFETY: `v[i]` is in bounds (the range above); a prefetch never faults and changes
        // no value.
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(v.as_ptr().add(i).cast::<i8>()) };
    }
}

/// Whether a coefficient that is finite in f64 is not in T: 1 / sqrt(var + eps) of a group
/// with (near) zero variance, a subnormal spread or a tiny eps exceeds f32's range (found by
/// the fuzzer: (x - m) * inf gave NaN where the reference's f64 gives beta); or a nonzero
/// coefficient falls below T's normal range, where it loses digits or becomes 0 (dx's
/// (x - m) coefficient, of order inv_std^2, for f32 data spread over 1e25).
#[inline(always)]
fn unrepresentable_in<T: Float>(c: &[f64]) -> bool {
    let tiny = T::min_positive_value().to_f();
    c.iter()
        .any(|&v| (v.is_finite() && !T::from_f(v).is_finite()) || (v != 0.0 && v.abs() < tiny))
}

/// Largest coefficient of (x - m) that the element-wise passes apply in T. The split mean
/// hi + lo is x - m to a few ulps of T, but lo underflows when the mean is subnormal (a
/// subnormal spread), and an error of up to half of T's smallest subnormal times a coefficient
/// past 2^32 (inv_std of a variance below 2^-64 with an eps below it) is no longer negligible:
/// those groups take the f64 path, like the reference.
const WIDE_COEF: f64 = 4294967296.0;

/// out[i] = f(i) computed in f64 and rounded once: the rare path for coefficients T cannot hold.
#[cold]
fn f64_run<T: Float>(out: &mut [T], f: impl Fn(usize) -> f64) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = T::from_f(f(i));
    }
}

/// `g` over the zipped output and source elements `it` in the direction of `st`'s sweep: the
/// plain-store pass (`Plain` or `PlainDown`) of an element-wise run.
#[inline(always)]
fn plain_sweep<I: DoubleEndedIterator>(it: I, st: Store, g: impl FnMut(I::Item)) {
    debug_assert!(!st.streams());
    if st.down() {
        it.rev().for_each(g)
    } else {
        it.for_each(g)
    }
}

/// out = (x - m) * a + b, in T with the split mean.
#[inline(always)]
fn affine_run<T: Float>(x: &[T], out: &mut [T], m: f64, a: f64, b: f64, st: Store) {
    if unrepresentable_in::<T>(&[a, b]) || a.abs() > WIDE_COEF {
        return f64_run(out, |i| (x[i].to_f() - m) * a + b);
    }
    let (hi, lo) = split::<T>(m);
    let (a, b) = (T::from_f(a), T::from_f(b));
    if st.streams() {
        let x = &x[..out.len()];
        return stream_run(out, st, |i| ((x[i] - hi) - lo) * a + b);
    }
    let n = out.len();
    plain_sweep(out.iter_mut().zip(&x[..n]), st, |(o, &v)| {
        *o = ((v - hi) - lo) * a + b
    });
}

/// dx = k1 * dy + k2 * (x - m) + k3, in T with the split mean.
#[inline(always)]
fn dx_run<T: Float>(dy: &[T], x: &[T], dx: &mut [T], m: f64, k: (f64, f64, f64), st: Store) {
    if k.1 == 0.0 {
        // Test-mode statistics: dx = k1 * dy + k3 does not depend on x, and must not read it
        // (0 * (inf - m) is NaN; found by the fuzzer with an infinite input in test mode).
        if unrepresentable_in::<T>(&[k.0, k.2]) {
            return f64_run(dx, |i| k.0 * dy[i].to_f() + k.2);
        }
        let (k1, k3) = (T::from_f(k.0), T::from_f(k.2));
        if st.streams() {
            let dy = &dy[..dx.len()];
            return stream_run(dx, st, |i| k1 * dy[i] + k3);
        }
        let n = dx.len();
        return plain_sweep(dx.iter_mut().zip(&dy[..n]), st, |(o, &d)| *o = k1 * d + k3);
    }
    if unrepresentable_in::<T>(&[k.0, k.1, k.2]) || k.1.abs() > WIDE_COEF {
        return f64_run(dx, |i| k.0 * dy[i].to_f() + k.1 * (x[i].to_f() - m) + k.2);
    }
    let (hi, lo) = split::<T>(m);
    let (k1, k2, k3) = (T::from_f(k.0), T::from_f(k.1), T::from_f(k.2));
    if st.streams() {
        let (dy, x) = (&dy[..dx.len()], &x[..dx.len()]);
        return stream_run(dx, st, |i| k1 * dy[i] + k2 * ((x[i] - hi) - lo) + k3);
    }
    let n = dx.len();
    plain_sweep(
        dx.iter_mut().zip(&dy[..n]).zip(&x[..n]),
        st,
        |((o, &d), &v)| *o = k1 * d + k2 * ((v - hi) - lo) + k3,
    );
}

multiversion! {
    /// The fused ReLU after a norm's output pass: clamps `out` at 0 (NaN stays NaN, as
    /// `relu_forward`) and records in `mask` where it was positive, while the run is in cache.
    pub(crate) fn relu_run<T>(out: &mut [T], mask: &mut [u8]) {
        for (o, m) in out.iter_mut().zip(mask) {
            *m = u8::from(*o > T::zero());
            *o = crate::affine::relu(*o);
        }
    }
}

/// dy where the fused ReLU passed (mask set), else 0, as `relu_backward` gives it: `dy` itself
/// without a mask, else the masked run written into `scratch` (a plane or a block, in cache),
/// so the sums and dx see exactly the values the unfused pair would.
#[inline(always)]
fn masked<'s, T: Float>(dy: &'s [T], mask: Option<&[u8]>, scratch: &'s mut Vec<T>) -> &'s [T] {
    let Some(mask) = mask else { return dy };
    scratch.clear();
    scratch.extend(
        dy.iter()
            .zip(mask)
            .map(|(&d, &m)| T::select(m != 0, d, T::zero())),
    );
    scratch
}

/// (N, C, HW) of a channel layout, or None for a group layout.
fn channel_dims(l: &NormLayout) -> Option<(usize, usize, usize)> {
    match *l {
        NormLayout::BatchNorm { n, d } => Some((n, d, 1)),
        NormLayout::SpatialBatchNorm { n, c, h, w } => Some((n, c, h * w)),
        _ => None,
    }
}

/// (N * G groups, channels per group, HW, G) of a group layout.
fn group_dims(l: &NormLayout) -> (usize, usize, usize, usize) {
    match *l {
        NormLayout::LayerNorm { n, d } => (n, d, 1, 1),
        NormLayout::GroupNorm { n, c, h, w, g } => (n * g, c / g, h * w, g),
        _ => unreachable!("channel layouts are handled by channel_dims"),
    }
}

multiversion! {
    /// Mean and variance of channel `ch` over N planes of `hw`, one shifted pass.
    fn channel_stats<T>(x: &[T], n: usize, c: usize, hw: usize, ch: usize) -> (f64, f64) {
        let cnt = (n * hw) as f64;
        let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
        let k = plane(0)[0];
        let (mut s1, mut s2) = (0.0, 0.0);
        for i in 0..n {
            let (a, b) = shifted_sums(plane(i), k);
            s1 += a;
            s2 += b;
        }
        let (s1, s2) = kept_or_wide((s1, s2), cnt, (0..n).map(plane), k);
        moments(s1, s2, k.to_f(), cnt)
    }
}

multiversion! {
    /// Pass 2 over one sample of a channel layout: every channel plane gets its own (m, a, b).
    fn channel_sample_affine<T>(x: &[T], out: &mut [T], hw: usize, mab: &[(f64, f64, f64)], nt: bool) {
        let st = Store::of(nt, out, &[x]);
        for ch in st.order(mab.len()) {
            let (m, a, b) = mab[ch];
            affine_run(&x[ch * hw..(ch + 1) * hw], &mut out[ch * hw..(ch + 1) * hw], m, a, b, st);
        }
        fence(st);
    }
}

multiversion! {
    /// One group layout block, forward: stats, then normalise channel by channel.
    /// Returns (mean, var).
    fn group_forward<T>(x: &[T], out: &mut [T], hw: usize, gamma: &[T], beta: &[T], eps: f64, nt: bool) -> (f64, f64) {
        let k = x[0];
        // out's lines into L2 a block at a time during the sums, so the normalising pass's
        // stores find them (see `prefetch_lines`).
        let ss = if !nt && std::mem::size_of_val(out) <= norm_prefetch_max_bytes() {
            let o = &*out;
            let blk = NORM_LANES * NORM_FLUSH_ROWS;
            shifted_sums_hook(x, k, |i| {
                if let Some(b) = o.get(i..i + blk) {
                    prefetch_lines(b);
                }
            })
        } else {
            shifted_sums(x, k)
        };
        let (s1, s2) = kept_or_wide(ss, x.len() as f64, std::iter::once(x), k);
        let (mean, var) = moments(s1, s2, k.to_f(), x.len() as f64);
        let inv = 1.0 / (var + eps).sqrt();
        group_affine(x, out, hw, gamma, beta, mean, inv, nt);
        (mean, var)
    }
}

multiversion! {
    /// One group layout block normalised with given statistics.
    fn group_affine<T>(x: &[T], out: &mut [T], hw: usize, gamma: &[T], beta: &[T], mean: f64, inv: f64, nt: bool) {
        let st = Store::of(nt, out, &[x]);
        for ci in st.order(gamma.len()) {
            let r = ci * hw..(ci + 1) * hw;
            affine_run(&x[r.clone()], &mut out[r], mean, gamma[ci].to_f() * inv, beta[ci].to_f(), st);
        }
        fence(st);
    }
}

multiversion! {
    /// Per-channel (sum dy, sum dy * (x - mean)) of channel `ch` over N planes.
    fn channel_dsums<T>(dy: &[T], mask: Option<&[u8]>, x: &[T], n: usize, c: usize, hw: usize, ch: usize, mean: f64, scale: DevScale) -> (f64, f64) {
        let (mut a, mut b) = (0.0, 0.0);
        let mut scratch = Vec::new();
        for i in 0..n {
            let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
            let d = masked(&dy[r.clone()], mask.map(|m| &m[r.clone()]), &mut scratch);
            let (s, t) = sum_dy_dev(d, &x[r], mean, scale);
            a += s;
            b += t;
        }
        (a, b)
    }
}

multiversion! {
    /// Pass 1 backward over one sample of a channel layout: per channel plane
    /// (sum dy, sum dy * (x - mean)) into `out[2 ch..2 ch + 2]`, the same per-plane sums
    /// `channel_dsums` adds up.
    fn sample_dsums<T>(dy: &[T], mask: Option<&[u8]>, x: &[T], hw: usize, mean: &[f64], scale: &[DevScale], out: &mut [f64]) {
        let mut scratch = Vec::new();
        for (ch, ((&m, &sc), o)) in mean.iter().zip(scale).zip(out.chunks_exact_mut(2)).enumerate() {
            let r = ch * hw..(ch + 1) * hw;
            let d = masked(&dy[r.clone()], mask.map(|m| &m[r.clone()]), &mut scratch);
            let (a, b) = sum_dy_dev(d, &x[r], m, sc);
            o[0] = a;
            o[1] = b;
        }
    }
}

multiversion! {
    /// Pass 1 forward over one sample of a channel layout: per channel plane the shifted sums
    /// about `k[ch]` into `out[2 ch..2 ch + 2]`, the same per-plane sums `channel_stats` adds up.
    fn sample_shifted<T>(x: &[T], hw: usize, k: &[T], out: &mut [f64]) {
        for (ch, (&kc, o)) in k.iter().zip(out.chunks_exact_mut(2)).enumerate() {
            let (a, b) = shifted_sums(&x[ch * hw..(ch + 1) * hw], kc);
            o[0] = a;
            o[1] = b;
        }
    }
}

/// Per-channel totals of a pass 1 over a channel layout, computed sample-major: `per_sample(i,
/// out)` writes sample i's per-plane pair for every channel (one job per sample, sweeping the
/// sample's memory in order), then each channel's pair is summed over the samples in order from
/// 0.0: the same additions in the same order as the channel-major loop, so the same bits. One
/// job per channel read N planes of a few KB, each a separate page for the prefetcher; the
/// sweep streams.
fn plane_sums(
    n: usize,
    c: usize,
    par: Parallelism<'_>,
    per_sample: &(dyn Fn(usize, &mut [f64]) + Sync),
) -> Vec<f64> {
    let mut part = vec![0.0f64; n * 2 * c];
    par.for_each_chunk(&mut part, 2 * c, &|i, s, _| per_sample(i, s));
    let mut tot = vec![0.0f64; 2 * c];
    for p in part.chunks_exact(2 * c) {
        for (t, v) in tot.iter_mut().zip(p) {
            *t += v;
        }
    }
    tot
}

multiversion! {
    /// Pass 2 backward over one sample of a channel layout: per channel (mean, k1, k2, k3).
    fn channel_sample_dx<T>(dy: &[T], mask: Option<&[u8]>, x: &[T], dx: &mut [T], hw: usize, ks: &[(f64, f64, f64, f64)], nt: bool) {
        let mut scratch = Vec::new();
        // The masked scratch (a plane) is read in cache: only dy and x stream past dx.
        let st = Store::of(nt, dx, &[dy, x]);
        for ch in st.order(ks.len()) {
            let (m, k1, k2, k3) = ks[ch];
            let r = ch * hw..(ch + 1) * hw;
            let d = masked(&dy[r.clone()], mask.map(|m| &m[r.clone()]), &mut scratch);
            dx_run(d, &x[r.clone()], &mut dx[r], m, (k1, k2, k3), st);
        }
        fence(st);
    }
}

multiversion! {
    /// One group layout block, backward: per-channel sums into `sums` ((sum dy, sum dy*(x-m))
    /// per channel), then dx for the block.
    fn group_backward<T>(dy: &[T], mask: Option<&[u8]>, x: &[T], dx: &mut [T], hw: usize, gamma: &[T], mean: f64, inv: f64, batch: bool, sums: &mut [f64], nt: bool) {
        let mut scratch = Vec::new();
        let dy = masked(dy, mask, &mut scratch);
        let cnt = x.len() as f64;
        let prefetch = !nt && std::mem::size_of_val(dx) <= norm_prefetch_max_bytes();
        let line = line_elems::<T>();
        // dx prefetched up to here: a channel's lines before its sums, a line's worth at least
        // (layer norm's channels are single elements).
        let mut pf_to = 0;
        let (scale, rs) = DevScale::new::<T>(inv, batch);
        let (mut sdx, mut sdxx) = (0.0, 0.0);
        for (ci, gm) in gamma.iter().enumerate() {
            let r = ci * hw..(ci + 1) * hw;
            if prefetch && pf_to < r.end {
                let to = (pf_to + line).max(r.end).min(dx.len());
                prefetch_lines(&dx[pf_to..to]);
                pf_to = to;
            }
            let (a, b) = sum_dy_dev(&dy[r.clone()], &x[r], mean, scale);
            sums[2 * ci] = a;
            sums[2 * ci + 1] = b;
            sdx += gm.to_f() * a;
            sdxx += gm.to_f() * b;
        }
        // sum dxhat = sdx, sum dxhat * xhat = sdxx * rs (the deviations were scaled by
        // inv / rs), times inv twice more (not inv^3 at once: see the channel path)
        let (k2, k3) = if batch {
            (-(sdxx / cnt) * rs * inv * inv, -inv * sdx / cnt)
        } else {
            (0.0, 0.0)
        };
        let st = Store::of(nt, dx, &[dy, x]);
        // Not for channels shorter than a line (layer norm's): a prefetch per element.
        let prefetch_l1 = prefetch && hw >= line;
        for ci in st.order(gamma.len()) {
            let r = ci * hw..(ci + 1) * hw;
            if prefetch_l1 {
                prefetch_lines_l1(&dx[r.clone()]);
            }
            dx_run(&dy[r.clone()], &x[r.clone()], &mut dx[r], mean, (inv * gamma[ci].to_f(), k2, k3), st);
        }
        fence(st);
    }
}

/// Train-mode forward: normalises x into out with batch statistics; returns per-group (mean, var).
/// With `relu` (x's length), the fused ReLU clamps out and records its mask (see `relu_run`).
#[allow(clippy::too_many_arguments)]
pub fn train_forward<T: Float>(
    l: &NormLayout,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f64,
    out: &mut [T],
    relu: Option<&mut [u8]>,
    par: Parallelism<'_>,
) -> (Vec<f64>, Vec<f64>) {
    let par = par.for_work_above(x.len(), NORM_PAR_MIN_ELEMS);
    if let Some((n, c, hw)) = channel_dims(l) {
        let mut st = vec![0.0f64; 2 * c];
        if hw >= NORM_SAMPLE_MAJOR_MIN_HW {
            // Shift of each channel: its first element, as in `channel_stats`.
            let k: Vec<T> = (0..c).map(|ch| x[ch * hw]).collect();
            let chw = c * hw;
            let tot = plane_sums(n, c, par, &|i, s| {
                sample_shifted(&x[i * chw..(i + 1) * chw], hw, &k, s)
            });
            let cnt = (n * hw) as f64;
            for (ch, (s, t)) in st.chunks_exact_mut(2).zip(tot.chunks_exact(2)).enumerate() {
                let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
                let (s1, s2) = kept_or_wide((t[0], t[1]), cnt, (0..n).map(plane), k[ch]);
                let (m, v) = moments(s1, s2, k[ch].to_f(), cnt);
                s[0] = m;
                s[1] = v;
            }
        } else {
            par.for_each_chunk(&mut st, 2, &|ch, s, _| {
                let (m, v) = channel_stats(x, n, c, hw, ch);
                s[0] = m;
                s[1] = v;
            });
        }
        let (mean, var): (Vec<f64>, Vec<f64>) = st.chunks(2).map(|s| (s[0], s[1])).unzip();
        let inv = super::driver::inv_std_of(&var, eps);
        normalize(l, x, gamma, beta, &mean, &inv, out, relu, par);
        (mean, var)
    } else {
        let (groups, cg, hw, g) = group_dims(l);
        // The fused ReLU re-reads the block it just wrote: plain stores keep it in cache.
        let nt = relu.is_none() && streaming(2 * std::mem::size_of_val(x));
        let mut st = vec![0.0f64; 2 * groups];
        let blk_len = cg * hw;
        let masks: Vec<Option<&mut [u8]>> = match relu {
            Some(m) => m.chunks_mut(blk_len).map(Some).collect(),
            None => (0..groups).map(|_| None).collect(),
        };
        let items: Vec<_> = out
            .chunks_mut(blk_len)
            .zip(st.chunks_mut(2))
            .zip(masks)
            .enumerate()
            .collect();
        par.for_each_item(items, &|(gi, ((o, s), mask)), _| {
            let c0 = (gi % g) * cg;
            let blk = &x[gi * blk_len..(gi + 1) * blk_len];
            let (gm, bt) = (&gamma[c0..c0 + cg], &beta[c0..c0 + cg]);
            let (m, v) = group_forward(blk, o, hw, gm, bt, eps, nt);
            if let Some(mask) = mask {
                relu_run(o, mask);
            }
            s[0] = m;
            s[1] = v;
        });
        st.chunks(2).map(|s| (s[0], s[1])).unzip()
    }
}

/// Chunking of a channel layout's element-wise sweep (pass 2; any partition gives the same
/// bits): whole samples, unless planes are large and there are too few samples to spread over
/// the threads (fewer than 8 per thread), then planes. Whole samples measured 5-10% faster than
/// plane jobs on the bn shape (N = 32, 4 KB planes), on one thread too.
fn sample_chunk(n: usize, c: usize, hw: usize, threads: usize) -> usize {
    if hw >= 1024 && n < 8 * threads {
        hw
    } else {
        c * hw
    }
}

/// One chunk of the output pass: `job(i, out_chunk_i)`.
type ChunkJob<'a, T> = dyn Fn(usize, &mut [T]) + Sync + 'a;

/// Forward with fixed statistics (batch norm test mode, and pass 2 of train mode).
#[allow(clippy::too_many_arguments)]
pub fn normalize<T: Float>(
    l: &NormLayout,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    mean: &[f64],
    inv_std: &[f64],
    out: &mut [T],
    relu: Option<&mut [u8]>,
    par: Parallelism<'_>,
) {
    let par = par.for_work_above(x.len(), NORM_PAR_MIN_ELEMS);
    // The fused ReLU re-reads each chunk it just wrote: plain stores keep it in cache.
    let nt = relu.is_none() && streaming(2 * std::mem::size_of_val(x));
    let (chunk, job): (usize, Box<ChunkJob<'_, T>>) = if let Some((n, c, hw)) = channel_dims(l) {
        let mab: Vec<(f64, f64, f64)> = (0..c)
            .map(|ch| (mean[ch], gamma[ch].to_f() * inv_std[ch], beta[ch].to_f()))
            .collect();
        let chunk = sample_chunk(n, c, hw, par.threads());
        let job = move |i: usize, o: &mut [T]| {
            let start = i * chunk;
            let ch0 = (start / hw) % c;
            let nch = chunk / hw;
            channel_sample_affine(&x[start..start + chunk], o, hw, &mab[ch0..ch0 + nch], nt);
        };
        (chunk, Box::new(job))
    } else {
        let (_, cg, hw, g) = group_dims(l);
        let job = move |gi: usize, o: &mut [T]| {
            let c0 = (gi % g) * cg;
            let blk = &x[gi * cg * hw..(gi + 1) * cg * hw];
            let (gm, bt) = (&gamma[c0..c0 + cg], &beta[c0..c0 + cg]);
            group_affine(blk, o, hw, gm, bt, mean[gi], inv_std[gi], nt);
        };
        (cg * hw, Box::new(job))
    };
    match relu {
        Some(mask) => par.for_each_chunk2(out, chunk, mask, chunk, &|i, o, m, _| {
            job(i, o);
            relu_run(o, m);
        }),
        None => par.for_each_chunk(out, chunk, &|i, o, _| job(i, o)),
    }
}

/// Backward: dx, dgamma, dbeta. `batch` says whether the statistics came from the batch.
pub(crate) fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, par: Parallelism<'_>) {
    let BwdIn {
        l,
        batch_stats: batch,
        x,
        gamma,
        mean,
        inv_std,
        dout,
        mask,
    } = a;
    let BwdOut { dx, dgamma, dbeta } = o;
    let par = par.for_work_above(x.len(), NORM_PAR_MIN_ELEMS);
    if let Some((n, c, hw)) = channel_dims(l) {
        let (scale, rs): (Vec<DevScale>, Vec<f64>) = inv_std
            .iter()
            .map(|&inv| DevScale::new::<T>(inv, batch))
            .unzip();
        let sums = if hw >= NORM_SAMPLE_MAJOR_MIN_HW {
            let chw = c * hw;
            plane_sums(n, c, par, &|i, s| {
                let r = i * chw..(i + 1) * chw;
                let m = mask.map(|m| &m[r.clone()]);
                sample_dsums(&dout[r.clone()], m, &x[r], hw, mean, &scale, s)
            })
        } else {
            let mut sums = vec![0.0f64; 2 * c];
            par.for_each_chunk(&mut sums, 2, &|ch, s, _| {
                let (a, b) = channel_dsums(dout, mask, x, n, c, hw, ch, mean[ch], scale[ch]);
                s[0] = a;
                s[1] = b;
            });
            sums
        };
        let cnt = (n * hw) as f64;
        let ks: Vec<(f64, f64, f64, f64)> = (0..c)
            .map(|ch| {
                let (sdy, sdyx) = (sums[2 * ch], sums[2 * ch + 1]);
                // sdyx is sum dy * (x - m) * inv / rs (see `DevScale`).
                let (gm, inv, rs) = (gamma[ch].to_f(), inv_std[ch], rs[ch]);
                dgamma[ch] = T::from_f(sdyx * rs);
                dbeta[ch] = T::from_f(sdy);
                if batch {
                    // dx = inv*gm*dy - inv*gm*sdy/cnt - (x-m)*inv^3*gm*sdyx/cnt. The sum is
                    // multiplied by inv three times, not by inv^3: with a zero-variance input
                    // and a tiny eps, inv^3 overflows while the sum is 0 (inf * 0 = NaN, where
                    // the reference's xhat form gives a finite dx; found by the fuzzer).
                    (
                        mean[ch],
                        inv * gm,
                        -(gm * sdyx / cnt) * rs * inv * inv,
                        -inv * gm * sdy / cnt,
                    )
                } else {
                    (mean[ch], inv * gm, 0.0, 0.0)
                }
            })
            .collect();
        let chunk = sample_chunk(n, c, hw, par.threads());
        let nt = streaming(3 * std::mem::size_of_val(x));
        par.for_each_chunk(dx, chunk, &|i, d, _| {
            let start = i * chunk;
            let ch0 = (start / hw) % c;
            let nch = chunk / hw;
            let r = start..start + chunk;
            let m = mask.map(|m| &m[r.clone()]);
            channel_sample_dx(&dout[r.clone()], m, &x[r], d, hw, &ks[ch0..ch0 + nch], nt);
        });
    } else {
        let (groups, cg, hw, g) = group_dims(l);
        let nt = streaming(3 * std::mem::size_of_val(x));
        let mut sums = vec![0.0f64; groups * 2 * cg];
        par.for_each_chunk2(dx, cg * hw, &mut sums, 2 * cg, &|gi, d, s, _| {
            let c0 = (gi % g) * cg;
            let r = gi * cg * hw..(gi + 1) * cg * hw;
            group_backward(
                &dout[r.clone()],
                mask.map(|m| &m[r.clone()]),
                &x[r],
                d,
                hw,
                &gamma[c0..c0 + cg],
                mean[gi],
                inv_std[gi],
                batch,
                s,
                nt,
            );
        });
        // dgamma[c] = sum_n (sum dy*(x-m) * inv / rs) * rs, dbeta[c] = sum_n sum dy, over
        // samples in order.
        let rs: Vec<f64> = inv_std
            .iter()
            .map(|&inv| DevScale::new::<T>(inv, batch).1)
            .collect();
        let nsamples = groups / g;
        let cch = g * cg;
        for ch in 0..cch {
            let (mut dgm, mut dbt) = (0.0, 0.0);
            for s in 0..nsamples {
                let gi = s * g + ch / cg;
                let ci = ch % cg;
                dbt += sums[gi * 2 * cg + 2 * ci];
                dgm += sums[gi * 2 * cg + 2 * ci + 1] * rs[gi];
            }
            dgamma[ch] = T::from_f(dgm);
            dbeta[ch] = T::from_f(dbt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep (streaming if `nt`) for an output `out_gap` bytes past x and dout at
    /// `dout_gap` bytes (both modulo 4 KB), f64 buffers in one allocation so the distances are
    /// exact.
    fn sweep(nt: bool, out_gap: isize, dout_gap: isize) -> Store {
        let v = vec![0.0f64; 4 * 1024];
        let at = |gap: isize| &v[(1024 + gap / 8) as usize..][..256];
        Store::of(nt, at(out_gap), &[at(0), at(dout_gap)])
    }

    #[test]
    fn sweep_avoids_the_aliasing_distances() {
        // Not just past a source: upwards (just before one is the lesser hazard).
        for (o, d) in [
            (0, 0),
            (512, 0),
            (1024, 2048),
            (-8, 0),
            (-504, 0),
            (-2048, 512),
        ] {
            assert_eq!(sweep(true, o, d), Store::Up, "out {o} dout {d}");
            assert_eq!(sweep(false, o, d), Store::Plain, "out {o} dout {d}");
        }
        // Just past a source (less than ALIAS_NEAR) and not just before one: downwards.
        for (o, d) in [(8, 0), (80, 0), (504, 0), (80, 40), (0, -80), (4176, 4096)] {
            assert_eq!(sweep(true, o, d), Store::Down, "out {o} dout {d}");
            assert_eq!(sweep(false, o, d), Store::PlainDown, "out {o} dout {d}");
        }
        // Past one source and shortly before another: neither direction, plain stores upwards.
        for (o, d) in [(80, 160), (8, 504), (-80, -160)] {
            assert_eq!(sweep(true, o, d), Store::Plain, "out {o} dout {d}");
            assert_eq!(sweep(false, o, d), Store::Plain, "out {o} dout {d}");
        }
    }

    /// Every store kind writes the same values: dx_run and affine_run over runs whose lengths
    /// and starts leave plain heads and tails around the streamed whole lines, against the
    /// plain upward run.
    #[test]
    fn every_store_kind_writes_the_same_values() {
        let mut r = crate::rng::Rng::new(11);
        for n in [1usize, 7, 8, 9, 33, 100, 1000] {
            let x: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
            let dy: Vec<f32> = (0..n).map(|_| r.normal() as f32).collect();
            let run = |st: Store| {
                // Outputs one element into their allocations (16-byte aligned at least): a
                // plain head before the first whole line.
                let mut o = vec![vec![0.0f32; n + 1]; 3];
                dx_run(&dy, &x, &mut o[0][1..], 0.25, (1.5, -0.75, 0.125), st);
                dx_run(&dy, &x, &mut o[1][1..], 0.25, (1.5, 0.0, 0.125), st);
                affine_run(&x, &mut o[2][1..], 0.25, 2.0, -1.0, st);
                fence(st);
                o
            };
            let want = run(Store::Plain);
            for st in [Store::PlainDown, Store::Up, Store::Down] {
                if st.streams() && crate::cpu::level() < crate::cpu::Level::Avx2 {
                    continue;
                }
                assert_eq!(run(st), want, "{st:?} n {n}");
            }
        }
    }
}
