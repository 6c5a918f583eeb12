//! Every SIMD level this CPU has, forced in turn, against the reference. One test function, so the
//! process-wide level is never changed under a concurrently running test; a requested level that
//! the CPU has but that does not take effect fails the test.

mod common;

use common::*;
use fastlayers::cpu::{
    SimdLevel as Level, detected_simd_level as detected, force_simd_level as force_level,
    simd_level as level,
};
use fastlayers::*;

fn check_all_kernels() {
    let mut rng = Rng::new(9);
    // K = 18 takes the direct forward, K = 144 the packed GEMM.
    for (xs, ws, p) in [
        (
            [3, 4, 9, 10],
            [6, 2, 3, 3],
            ConvParam::new(1, 1).with_groups(2),
        ),
        ([2, 16, 7, 9], [5, 16, 3, 3], ConvParam::new(2, 1)),
    ] {
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<f32> = rng.randn(&ws, 1.0, 0.0);
        let b: Tensor<f32> = rng.randn(&[ws[0]], 1.0, 0.0);
        let (o_r, c_r) = conv_forward_naive(&x, &w, &b, &p).unwrap();
        let (o_f, c_f) = conv_forward_fast(&x, &w, &b, &p).unwrap();
        assert_close("conv out", &o_f, &o_r, 1e-5);
        let d: Tensor<f32> = rng.randn(o_r.shape(), 1.0, 0.0);
        let (a, bb) = (
            conv_backward_naive(&d, &c_r).unwrap(),
            conv_backward_fast(&d, &c_f).unwrap(),
        );
        assert_close("conv dx", &bb.0, &a.0, 1e-5);
        assert_close("conv dw", &bb.1, &a.1, 1e-5);
    }
    // The three pool paths: 2 x 2 stride 2, phase split (3 x 3 stride 2, every window inside;
    // index lanes as wide as T's), generic (padding).
    for pp in [
        PoolParam::new(2, 2, 2),
        PoolParam::new(3, 3, 2),
        PoolParam::new(3, 3, 2).with_pad(1, 1),
    ] {
        check_pool::<f64>(&mut rng, &pp);
        check_pool::<f32>(&mut rng, &pp);
    }
    let x: Tensor<f32> = rng.randn(&[4, 6, 5, 7], 3.0, 10.0);
    let g: Tensor<f32> = rng.randn(&[6], 1.0, 0.0);
    let d: Tensor<f32> = rng.randn(x.shape(), 1.0, 0.0);
    let (o_r, c_r) = spatial_batchnorm_forward_naive(&x, &g, &g, &mut BnParam::train()).unwrap();
    let (o_f, c_f) = spatial_batchnorm_forward(&x, &g, &g, &mut BnParam::train()).unwrap();
    assert_close("bn out", &o_f, &o_r, 1e-6);
    assert_close(
        "bn dx",
        &spatial_batchnorm_backward(&d, &c_f).unwrap().0,
        &spatial_batchnorm_backward_naive(&d, &c_r).unwrap().0,
        1e-6,
    );
    let (o_r, c_r) = spatial_groupnorm_forward_naive(&x, &g, &g, 3, &NormParam::default()).unwrap();
    let (o_f, c_f) = spatial_groupnorm_forward(&x, &g, &g, 3, &NormParam::default()).unwrap();
    assert_close("gn out", &o_f, &o_r, 1e-6);
    assert_close(
        "gn dx",
        &spatial_groupnorm_backward(&d, &c_f).unwrap().0,
        &spatial_groupnorm_backward_naive(&d, &c_r).unwrap().0,
        1e-6,
    );
}

/// Fast pooling equals the reference bit for bit (values, and dx through the cached indices),
/// on an input with ties (values rounded to a few levels) so the first-maximum rule is exercised.
fn check_pool<T: Float>(rng: &mut Rng, pp: &PoolParam) {
    let x: Tensor<T> = rng
        .randn::<T>(&[2, 3, 21, 40], 1.0, 0.0)
        .map(|&v| (v * T::from_f(2.0)).round());
    let (o_r, c_r) = max_pool_forward_naive(&x, pp).unwrap();
    let (o_f, c_f) = max_pool_forward_fast(&x, pp).unwrap();
    assert_eq!(o_r, o_f, "{pp:?}");
    let d: Tensor<T> = rng.randn(o_r.shape(), 1.0, 0.0);
    assert_eq!(
        max_pool_backward_naive(&d, &c_r).unwrap(),
        max_pool_backward_fast(&d, &c_f).unwrap(),
        "{pp:?}"
    );
}

#[test]
fn every_available_simd_level_matches_the_reference() {
    let best = detected();
    let mut ran = Vec::new();
    for want in [Level::Portable, Level::Avx2, Level::Avx512] {
        if want > best {
            continue;
        }
        assert_eq!(
            force_level(want),
            want,
            "level {want:?} did not take effect"
        );
        assert_eq!(level(), want);
        check_all_kernels();
        ran.push(want);
    }
    assert!(
        ran.contains(&Level::Portable),
        "the portable path must always run"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert!(
            ran.contains(&Level::Avx2),
            "AVX2 is available but was not exercised"
        );
    }
    eprintln!("SIMD levels exercised: {ran:?}");
    force_level(best);
}
