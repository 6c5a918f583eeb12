//! AVX2 + FMA micro-kernels: 6 rows x 2 vectors of C in 12 ymm registers, 2 vector loads of B
//! and 6 broadcasts of A per k (BLIS's Haswell shape), for f32 (6 x 16) and f64 (6 x 8).

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
pub(crate) unsafe fn transpose_f32(
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
pub(crate) unsafe fn transpose_f64(
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
