//! The machine's measured peak FLOP/s: independent FMA chains in registers, nothing else.
//! The benchmark reports kernels as a percentage of this.

use std::time::Instant;

/// Independent accumulator chains: FMA latency (4 cycles) x 2 FMA pipes needs 8; 12 hides more.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_f32(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); CHAINS];
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0.0f32; 8];
    // SAFETY: `out` holds 8 f32, exactly one unaligned 256-bit store.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_loop_f64(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_pd(0.0); CHAINS];
    let a = _mm256_set1_pd(0.999_999);
    let b = _mm256_set1_pd(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_pd(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_pd();
    for v in acc {
        s = _mm256_add_pd(s, v);
    }
    let mut out = [0.0f64; 4];
    // SAFETY: `out` holds 4 f64, exactly one unaligned 256-bit store.
    unsafe { _mm256_storeu_pd(out.as_mut_ptr(), s) };
    out.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop512_f32(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); CHAINS];
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_loop512_f64(iters: u64) -> f64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_pd(0.0); CHAINS];
    let a = _mm512_set1_pd(0.999_999);
    let b = _mm512_set1_pd(1e-7);
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_pd(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_pd();
    for v in acc {
        s = _mm512_add_pd(s, v);
    }
    _mm512_reduce_add_pd(s)
}

/// Seconds for `iters` iterations of the FMA loop on this thread, and the flops it did.
fn one_thread(f64: bool, iters: u64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::detected() >= crate::simd::Level::Avx512 {
        let t = Instant::now();
        // SAFETY: the CPU has AVX-512F (checked just above).
        let sink = unsafe {
            if f64 {
                fma_loop512_f64(iters)
            } else {
                fma_loop512_f32(iters) as f64
            }
        };
        std::hint::black_box(sink);
        let lanes = if f64 { 8.0 } else { 16.0 };
        return (
            t.elapsed().as_secs_f64(),
            iters as f64 * CHAINS as f64 * lanes * 2.0,
        );
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd::detected() >= crate::simd::Level::Avx2 {
        let t = Instant::now();
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        let sink = unsafe {
            if f64 {
                fma_loop_f64(iters)
            } else {
                fma_loop_f32(iters) as f64
            }
        };
        std::hint::black_box(sink);
        let lanes = if f64 { 4.0 } else { 8.0 };
        return (
            t.elapsed().as_secs_f64(),
            iters as f64 * CHAINS as f64 * lanes * 2.0,
        );
    }
    // Portable: scalar FMA chains (a lower bound of what the machine can do).
    let t = Instant::now();
    let mut acc = [0.0f64; CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_999, 1e-7);
        }
    }
    std::hint::black_box(acc);
    (
        t.elapsed().as_secs_f64(),
        iters as f64 * CHAINS as f64 * 2.0,
    )
}

/// Peak GFLOP/s of `threads` OS threads running the FMA loop at once (best of 5 runs of about
/// 50 ms each).
pub fn measure_gflops(f64: bool, threads: usize) -> f64 {
    let iters = 4_000_000u64;
    let mut best = 0.0f64;
    for _ in 0..5 {
        let results: Vec<(f64, f64)> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads.max(1))
                .map(|_| s.spawn(move || one_thread(f64, iters)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or((f64::INFINITY, 0.0)))
                .collect()
        });
        let secs = results.iter().map(|r| r.0).fold(0.0, f64::max);
        let flops: f64 = results.iter().map(|r| r.1).sum();
        best = best.max(flops / secs / 1e9);
    }
    best
}
