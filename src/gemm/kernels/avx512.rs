//! AVX-512 micro-kernels: 8 rows x 2 zmm of C (16 of the 32 zmm registers), two vector loads of
//! B and 8 broadcasts of A per k (folded into the FMAs as embedded broadcasts), for f32 (8 x 32)
//! and f64 (8 x 16); the 5-row twins are the alternative height. Measured on Zen 5 against
//! 16 x 1 zmm (NR 16, 17 loads per 16 FMAs, which runs into the two vector loads a cycle):
//! 8 x 2 is 12-19% faster in the GEMM benchmark (f32 128 x 256 x 1152: 198 -> 235 GFLOP/s on
//! one core), 12 x 2 in between. The direct kernels' two slots may lie in different output
//! rows, so rows of 16 pixels still fill a 32-pixel f32 tile.

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
