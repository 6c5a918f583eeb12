//! The machine's measured peak FLOP/s: independent FMA chains in registers, nothing else.
//! The benchmark reports kernels as a percentage of this.

use std::time::Instant;

/// Independent accumulator chains: FMA latency (4 cycles) x 2 FMA pipes needs 8; 12 hides more.
const CHAINS: usize = 12;

/// `$name(iters)`: CHAINS independent FMA chains of one vector type for `iters` rounds; returns
/// a sum of the lanes so the work cannot be optimised away.
macro_rules! fma_loop {
    ($name:ident, $feat:literal, $t:ty, $lanes:expr, $set1:ident, $fmadd:ident, $add:ident,
     $store:ident) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feat)]
        fn $name(iters: u64) -> $t {
            use std::arch::x86_64::*;
            let mut acc = [$set1(0.0); CHAINS];
            let a = $set1(0.999_999);
            let b = $set1(1e-7);
            for _ in 0..iters {
                for v in acc.iter_mut() {
                    *v = $fmadd(*v, a, b);
                }
            }
            let mut s = $set1(0.0);
            for v in acc {
                s = $add(s, v);
            }
            let mut out = [0.0 as $t; $lanes];
            // SAFETY: `out` holds exactly one vector's lanes, one unaligned store.
            unsafe { $store(out.as_mut_ptr(), s) };
            out.iter().sum()
        }
    };
}

fma_loop!(
    fma_f32_avx2,
    "avx2,fma",
    f32,
    8,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_storeu_ps
);
fma_loop!(
    fma_f64_avx2,
    "avx2,fma",
    f64,
    4,
    _mm256_set1_pd,
    _mm256_fmadd_pd,
    _mm256_add_pd,
    _mm256_storeu_pd
);
fma_loop!(
    fma_f32_avx512,
    "avx512f",
    f32,
    16,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_storeu_ps
);
fma_loop!(
    fma_f64_avx512,
    "avx512f",
    f64,
    8,
    _mm512_set1_pd,
    _mm512_fmadd_pd,
    _mm512_add_pd,
    _mm512_storeu_pd
);

/// Seconds for `iters` iterations of the FMA loop on this thread, and the flops it did: with the
/// widest FMA the CPU has (512-bit where it has AVX-512F: on the Zen 5 the 256-bit loop measured
/// half the machine's peak).
fn one_thread(f64: bool, iters: u64) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::cpu::{Level, detected_simd_level as detected};
        let lv = detected();
        if lv >= Level::Avx2 {
            let t = Instant::now();
            // SAFETY: each loop runs only at a level whose features the CPU has (detected()
            // reports Avx512 only with AVX-512F, Avx2 only with AVX2 and FMA).
            let (sink, lanes) = unsafe {
                match (lv >= Level::Avx512, f64) {
                    (true, true) => (fma_f64_avx512(iters), 8.0),
                    (true, false) => (fma_f32_avx512(iters) as f64, 16.0),
                    (false, true) => (fma_f64_avx2(iters), 4.0),
                    (false, false) => (fma_f32_avx2(iters) as f64, 8.0),
                }
            };
            std::hint::black_box(sink);
            return (
                t.elapsed().as_secs_f64(),
                iters as f64 * CHAINS as f64 * lanes * 2.0,
            );
        }
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
