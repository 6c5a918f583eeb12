//! Semantic decisions (ties, NaN, padding, running statistics, dropout scaling) and algebraic
//! identities that check the references by independent constructions.

#![allow(clippy::needless_range_loop, clippy::identity_op)]

mod common;

use common::*;
use fastlayers::*;

fn t(data: Vec<f64>, shape: &[usize]) -> Tensor<f64> {
    Tensor::new(data, shape).unwrap()
}

// ---------- max pooling ----------

#[test]
fn pool_ties_go_to_the_first_maximum() {
    // One 2x2 window, all equal: the gradient goes to element 0 only (np.argmax).
    let x = t(vec![1.0; 4], &[1, 1, 2, 2]);
    let p = PoolParam::new(2, 2, 2);
    let (_, c) = max_pool_forward_naive(&x, &p).unwrap();
    let dx = max_pool_backward_naive(&t(vec![5.0], &[1, 1, 1, 1]), &c).unwrap();
    assert_eq!(dx.data(), &[5.0, 0.0, 0.0, 0.0]);
    // Tie between elements 1 and 3: element 1 (first in row-major order) wins.
    let x = t(vec![0.0, 2.0, 1.0, 2.0], &[1, 1, 2, 2]);
    let (_, c) = max_pool_forward_naive(&x, &p).unwrap();
    let dx = max_pool_backward_naive(&t(vec![1.0], &[1, 1, 1, 1]), &c).unwrap();
    assert_eq!(dx.data(), &[0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn pool_nan_wins_and_first_nan_gets_the_gradient() {
    let x = t(vec![1.0, f64::NAN, 7.0, f64::NAN], &[1, 1, 2, 2]);
    let p = PoolParam::new(2, 2, 2);
    let (out, c) = max_pool_forward_naive(&x, &p).unwrap();
    assert!(out.data()[0].is_nan());
    let dx = max_pool_backward_naive(&t(vec![1.0], &[1, 1, 1, 1]), &c).unwrap();
    assert_eq!(dx.data()[..], [0.0, 1.0, 0.0, 0.0]);
}

#[test]
fn pool_overlapping_windows_accumulate() {
    // 1x3 input, window 1x2 stride 1: the middle element is the max of both windows.
    let x = t(vec![0.0, 5.0, 1.0], &[1, 1, 1, 3]);
    let p = PoolParam::new(1, 2, 1);
    let (out, c) = max_pool_forward_naive(&x, &p).unwrap();
    assert_eq!(out.data(), &[5.0, 5.0]);
    let dx = max_pool_backward_naive(&t(vec![2.0, 3.0], &[1, 1, 1, 2]), &c).unwrap();
    assert_eq!(dx.data(), &[0.0, 5.0, 0.0]);
}

/// Pads every plane with `fill` (top/left `ph`/`pw`, bottom/right `ph + eh`/`pw + ew`).
fn pad_planes(
    x: &Tensor<f64>,
    ph: usize,
    pw: usize,
    eh: usize,
    ew: usize,
    fill: f64,
) -> Tensor<f64> {
    let s = x.shape();
    let (hp, wp) = (s[2] + 2 * ph + eh, s[3] + 2 * pw + ew);
    let mut out = Tensor::full(&[s[0], s[1], hp, wp], fill).unwrap();
    for nc in 0..s[0] * s[1] {
        for r in 0..s[2] {
            for c in 0..s[3] {
                out.data_mut()[(nc * hp + r + ph) * wp + c + pw] =
                    x.data()[(nc * s[2] + r) * s[3] + c];
            }
        }
    }
    out
}

#[test]
fn pool_padding_never_wins_and_equals_explicit_neg_inf_padding() {
    let mut rng = Rng::new(5);
    // All-negative input: zero padding would win if padding were read as 0.
    let x = rng.randn::<f64>(&[2, 3, 7, 6], 1.0, -10.0);
    for (ph, pw, ceil) in [(1, 1, false), (1, 0, true), (0, 1, true), (1, 1, true)] {
        let p = PoolParam::new(3, 3, 2)
            .with_pad(ph, pw)
            .with_ceil_mode(ceil);
        let (out, _) = max_pool_forward_naive(&x, &p).unwrap();
        assert!(out.data().iter().all(|&v| v < -5.0), "padding won");
        // Independent construction: pad with -inf ourselves (plus enough extra -inf on the
        // bottom/right for ceil mode's last window) and pool without padding.
        let (ho, wo) = (out.shape()[2], out.shape()[3]);
        let need_h = (ho - 1) * 2 + 3;
        let need_w = (wo - 1) * 2 + 3;
        let eh = need_h.saturating_sub(7 + 2 * ph);
        let ew = need_w.saturating_sub(6 + 2 * pw);
        let xp = pad_planes(&x, ph, pw, eh, ew, f64::NEG_INFINITY);
        let (want, _) = max_pool_forward_naive(&xp, &PoolParam::new(3, 3, 2)).unwrap();
        let want = want.data()[..].to_vec();
        // The explicit construction may have one more row/col than ceil mode keeps.
        let (wh, ww) = ((xp.shape()[2] - 3) / 2 + 1, (xp.shape()[3] - 3) / 2 + 1);
        for nc in 0..6 {
            for r in 0..ho {
                for c in 0..wo {
                    assert_eq!(
                        out.data()[(nc * ho + r) * wo + c],
                        want[(nc * wh + r) * ww + c]
                    );
                }
            }
        }
    }
}

// ---------- convolution: independent constructions ----------

fn conv(x: &Tensor<f64>, w: &Tensor<f64>, b: &Tensor<f64>, p: ConvParam) -> Tensor<f64> {
    conv_forward_naive(x, w, b, &p).unwrap().0
}

#[test]
fn conv_padding_equals_explicit_zero_padding() {
    let mut rng = Rng::new(1);
    let x = randn(&mut rng, &[2, 3, 5, 6]);
    let w = randn(&mut rng, &[4, 3, 3, 2]);
    let b = randn(&mut rng, &[4]);
    let got = conv(&x, &w, &b, ConvParam::new(1, 0).with_pad(2, 1));
    let want = conv(
        &pad_planes(&x, 2, 1, 0, 0, 0.0),
        &w,
        &b,
        ConvParam::new(1, 0),
    );
    assert_close("pad", &got, &want, 1e-14);
}

#[test]
fn conv_stride_subsamples_the_stride_one_output() {
    let mut rng = Rng::new(2);
    let x = randn(&mut rng, &[1, 2, 7, 8]);
    let w = randn(&mut rng, &[3, 2, 3, 3]);
    let b = randn(&mut rng, &[3]);
    let full = conv(&x, &w, &b, ConvParam::new(1, 1));
    let strided = conv(&x, &w, &b, ConvParam::new(1, 1).with_stride(2, 3));
    let (ho, wo) = (strided.shape()[2], strided.shape()[3]);
    assert_eq!((ho, wo), (4, 3));
    for f in 0..3 {
        for r in 0..ho {
            for c in 0..wo {
                let a = strided.data()[(f * ho + r) * wo + c];
                let e = full.data()[(f * 7 + 2 * r) * 8 + 3 * c];
                assert!((a - e).abs() < 1e-14);
            }
        }
    }
}

#[test]
fn conv_dilation_equals_a_kernel_with_inserted_zeros() {
    let mut rng = Rng::new(3);
    let x = randn(&mut rng, &[2, 2, 9, 8]);
    let w = randn(&mut rng, &[3, 2, 3, 2]);
    let b = randn(&mut rng, &[3]);
    let (dh, dw) = (2, 3);
    let (kh, kw) = ((3 - 1) * dh + 1, (2 - 1) * dw + 1);
    let mut wd = Tensor::zeros(&[3, 2, kh, kw]).unwrap();
    for fc in 0..6 {
        for i in 0..3 {
            for j in 0..2 {
                wd.data_mut()[(fc * kh + i * dh) * kw + j * dw] = w.data()[(fc * 3 + i) * 2 + j];
            }
        }
    }
    let got = conv(&x, &w, &b, ConvParam::new(1, 1).with_dilation(dh, dw));
    let want = conv(&x, &wd, &b, ConvParam::new(1, 1));
    assert_close("dilation", &got, &want, 1e-14);
}

#[test]
fn conv_groups_equal_separate_convolutions() {
    let mut rng = Rng::new(4);
    let (g, c, f) = (3, 6, 9);
    let x = randn(&mut rng, &[2, c, 5, 5]);
    let w = randn(&mut rng, &[f, c / g, 3, 3]);
    let b = randn(&mut rng, &[f]);
    let got = conv(&x, &w, &b, ConvParam::new(1, 1).with_groups(g));
    let plane = 25;
    for grp in 0..g {
        // x channels [grp*2, grp*2+2), filters [grp*3, grp*3+3)
        let xs = Tensor::from_fn(&[2, 2, 5, 5], |i| {
            let (n, r) = (i / (2 * plane), i % (2 * plane));
            x.data()[n * c * plane + grp * 2 * plane + r]
        })
        .unwrap();
        let wsz = 2 * 9;
        let ws = Tensor::new(
            w.data()[grp * 3 * wsz..(grp + 1) * 3 * wsz].to_vec(),
            &[3, 2, 3, 3],
        )
        .unwrap();
        let bs = Tensor::new(b.data()[grp * 3..grp * 3 + 3].to_vec(), &[3]).unwrap();
        let want = conv(&xs, &ws, &bs, ConvParam::new(1, 1));
        for n in 0..2 {
            for fo in 0..3 {
                for p in 0..plane {
                    let a = got.data()[(n * f + grp * 3 + fo) * plane + p];
                    let e = want.data()[(n * 3 + fo) * plane + p];
                    assert!((a - e).abs() < 1e-13);
                }
            }
        }
    }
}

// ---------- normalisation ----------

#[test]
fn batchnorm_test_mode_uses_running_statistics_only() {
    let mut rng = Rng::new(6);
    let x = rng.randn::<f64>(&[8, 3], 2.0, 5.0);
    let gamma = randn(&mut rng, &[3]);
    let beta = randn(&mut rng, &[3]);
    let mut p = BnParam::test();
    p.running_mean = Some(vec![1.0, -2.0, 0.5]);
    p.running_var = Some(vec![4.0, 0.25, 9.0]);
    let before = p.clone();
    let (out, _) = batchnorm_forward_naive(&x, &gamma, &beta, &mut p).unwrap();
    assert_eq!(p, before, "test mode must not touch the running statistics");
    for i in 0..8 {
        for d in 0..3 {
            let rm = before.running_mean.as_ref().unwrap()[d];
            let rv = before.running_var.as_ref().unwrap()[d];
            let want =
                gamma.data()[d] * (x.data()[i * 3 + d] - rm) / (rv + 1e-5).sqrt() + beta.data()[d];
            assert!((out.data()[i * 3 + d] - want).abs() < 1e-12);
        }
    }
}

fn mean_var(col: &[f64]) -> (f64, f64) {
    let m = col.iter().sum::<f64>() / col.len() as f64;
    (
        m,
        col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / col.len() as f64,
    )
}

#[test]
fn running_statistics_follow_each_convention() {
    let mut rng = Rng::new(7);
    let x = rng.randn::<f64>(&[6, 2], 3.0, 1.0);
    let (g, b) = (
        Tensor::full(&[2], 1.0).unwrap(),
        Tensor::zeros(&[2]).unwrap(),
    );
    let cols: Vec<(f64, f64)> = (0..2)
        .map(|d| mean_var(&[0, 1, 2, 3, 4, 5].map(|i| x.data()[i * 2 + d])))
        .collect();

    // Notebook: absent stats start at zero; momentum 0.9 weights the old value.
    let mut p = BnParam::train();
    batchnorm_forward_naive(&x, &g, &b, &mut p).unwrap();
    for d in 0..2 {
        assert!((p.running_mean.as_ref().unwrap()[d] - 0.1 * cols[d].0).abs() < 1e-14);
        assert!((p.running_var.as_ref().unwrap()[d] - 0.1 * cols[d].1).abs() < 1e-14);
    }
    // PyTorch: mean 0 / var 1 start, momentum 0.1 weights the new value, unbiased variance.
    let mut p = BnParam::pytorch(Mode::Train);
    batchnorm_forward_naive(&x, &g, &b, &mut p).unwrap();
    for d in 0..2 {
        assert!((p.running_mean.as_ref().unwrap()[d] - 0.1 * cols[d].0).abs() < 1e-14);
        let want = 0.9 * 1.0 + 0.1 * cols[d].1 * 6.0 / 5.0;
        assert!((p.running_var.as_ref().unwrap()[d] - want).abs() < 1e-14);
    }
    // Both normalise with the uncorrected batch variance.
    let (o1, _) = batchnorm_forward_naive(&x, &g, &b, &mut BnParam::train()).unwrap();
    let (o2, _) = batchnorm_forward_naive(&x, &g, &b, &mut BnParam::pytorch(Mode::Train)).unwrap();
    assert_eq!(o1, o2);
}

#[test]
fn spatial_batchnorm_equals_batchnorm_on_the_transposed_matrix() {
    // The notebook's construction: (N, C, H, W) -> (N*H*W, C), batchnorm, back.
    let mut rng = Rng::new(8);
    let (n, c, h, w) = (2, 3, 4, 5);
    let x = rng.randn::<f64>(&[n, c, h, w], 4.0, 10.0);
    let gamma = randn(&mut rng, &[c]);
    let beta = randn(&mut rng, &[c]);
    let dout = randn(&mut rng, &[n, c, h, w]);
    let nhwc = |t: &Tensor<f64>| {
        Tensor::from_fn(&[n * h * w, c], |i| {
            let (row, ch) = (i / c, i % c);
            let (ni, hw) = (row / (h * w), row % (h * w));
            t.data()[(ni * c + ch) * h * w + hw]
        })
        .unwrap()
    };
    let (o_s, cache_s) =
        spatial_batchnorm_forward_naive(&x, &gamma, &beta, &mut BnParam::train()).unwrap();
    let (o_f, cache_f) =
        batchnorm_forward_naive(&nhwc(&x), &gamma, &beta, &mut BnParam::train()).unwrap();
    assert_close("forward", &nhwc(&o_s), &o_f, 1e-14);
    let (dx_s, dg_s, db_s) = spatial_batchnorm_backward_naive(&dout, &cache_s).unwrap();
    let (dx_f, dg_f, db_f) = batchnorm_backward_naive(&nhwc(&dout), &cache_f).unwrap();
    assert_close("dx", &nhwc(&dx_s), &dx_f, 1e-12);
    assert_close("dgamma", &dg_s, &dg_f, 1e-13);
    assert_close("dbeta", &db_s, &db_f, 1e-13);
}

#[test]
fn groupnorm_with_one_group_is_layernorm_over_chw() {
    let mut rng = Rng::new(9);
    let x = rng.randn::<f64>(&[3, 4, 2, 3], 2.0, -1.0);
    let p = NormParam::default();
    let (gn, _) = spatial_groupnorm_forward_naive(
        &x,
        &Tensor::full(&[4], 1.0).unwrap(),
        &Tensor::zeros(&[4]).unwrap(),
        1,
        &p,
    )
    .unwrap();
    let (ln, _) = layernorm_forward_naive(
        &x.clone().reshape(&[3, 24]).unwrap(),
        &Tensor::full(&[24], 1.0).unwrap(),
        &Tensor::zeros(&[24]).unwrap(),
        &p,
    )
    .unwrap();
    assert_close("gn(G=1) vs ln", &gn.reshape(&[3, 24]).unwrap(), &ln, 1e-14);
}

#[test]
fn constant_input_normalises_to_beta_without_nan() {
    let x = Tensor::full(&[4, 3], 2.5f32).unwrap();
    let beta = Tensor::new(vec![1.0f32, 2.0, 3.0], &[3]).unwrap();
    let (out, cache) = batchnorm_forward_naive(
        &x,
        &Tensor::full(&[3], 7.0).unwrap(),
        &beta,
        &mut BnParam::train(),
    )
    .unwrap();
    for (i, v) in out.data().iter().enumerate() {
        assert_eq!(*v, beta.data()[i % 3]);
    }
    let (dx, _, _) =
        batchnorm_backward_naive(&Tensor::full(&[4, 3], 1.0f32).unwrap(), &cache).unwrap();
    assert!(dx.data().iter().all(|v| v.is_finite()));
}

#[test]
fn f32_statistics_are_accurate_for_large_offset_data() {
    // 1e6 values of 1000 + N(0, 1) in f32: naive f32 sums would lose several digits.
    let mut rng = Rng::new(10);
    let x: Tensor<f32> = rng.randn(&[1, 1, 1000, 1000], 1.0, 1000.0);
    let x64 = x.to_f64();
    let (m, v) = mean_var(x64.data());
    let (_, cache) = spatial_batchnorm_forward_naive(
        &x,
        &Tensor::full(&[1], 1.0).unwrap(),
        &Tensor::zeros(&[1]).unwrap(),
        &mut BnParam::train(),
    )
    .unwrap();
    assert!((cache.mean()[0] - m).abs() < 1e-12 * m.abs());
    assert!((cache.inv_std()[0] - 1.0 / (v + 1e-5).sqrt()).abs() < 1e-12);
}

// ---------- dropout, relu ----------

#[test]
fn dropout_is_inverted_and_identity_at_test_time() {
    let mut rng = Rng::new(11);
    let x = rng.randn::<f64>(&[40, 50], 1.0, 3.0);
    let p = 0.3;
    let (out, cache) = dropout_forward(&x, &DropoutParam::train(p, Some(42))).unwrap();
    let mask = cache.mask().unwrap();
    for ((&o, &v), &m) in out.data().iter().zip(x.data()).zip(mask) {
        assert!(m == 0.0 || m == 1.0 / p);
        assert_eq!(o, v * m);
    }
    let (again, _) = dropout_forward(&x, &DropoutParam::train(p, Some(42))).unwrap();
    assert_eq!(out, again, "a seeded mask is reproducible");
    let (other, _) = dropout_forward(&x, &DropoutParam::train(p, Some(43))).unwrap();
    assert_ne!(out, other);
    let (test, _) = dropout_forward(&x, &DropoutParam::test(p)).unwrap();
    assert_eq!(test, x);
    let (keep_all, _) = dropout_forward(&x, &DropoutParam::train(1.0, None)).unwrap();
    assert_eq!(keep_all, x);
}

#[test]
fn relu_propagates_nan_and_blocks_its_gradient() {
    let x = t(vec![-1.0, 0.0, 2.0, f64::NAN], &[4]);
    let (out, c) = relu_forward(&x).unwrap();
    assert_eq!(&out.data()[..3], &[0.0, 0.0, 2.0]);
    assert!(out.data()[3].is_nan());
    let dx = relu_backward(&t(vec![1.0; 4], &[4]), &c).unwrap();
    assert_eq!(dx.data(), &[0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn losses_match_closed_forms() {
    // Equal scores: softmax loss is ln C, SVM loss is C - 1.
    let x = Tensor::full(&[3, 4], 0.7).unwrap();
    let (l, _) = softmax_loss(&x, &[0, 1, 3]).unwrap();
    assert!((l - 4f64.ln()).abs() < 1e-15);
    let (l, dx) = svm_loss(&x, &[0, 1, 3]).unwrap();
    assert_eq!(l, 3.0);
    assert_eq!(&dx.data()[..4], &[-1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0]);
    // Huge scores do not overflow softmax.
    let (l, dx) = softmax_loss(&t(vec![1000.0, 0.0], &[1, 2]), &[0]).unwrap();
    assert!(l.abs() < 1e-300 && dx.data().iter().all(|v| v.is_finite()));
}

// ---------- data model ----------

#[test]
fn ndarray_round_trip_does_not_copy() {
    let t = Tensor::<f32>::linspace(0.0, 1.0, &[2, 3, 4]).unwrap();
    let ptr = t.data().as_ptr();
    let a = t.into_ndarray();
    assert_eq!(a.as_ptr(), ptr);
    let back = Tensor::from_ndarray(a);
    assert_eq!(back.data().as_ptr(), ptr);
    assert_eq!(back.shape(), &[2, 3, 4]);
    let view = back.as_ndarray();
    let tv = TensorView::from_ndarray(&view).unwrap();
    assert_eq!(tv.data().as_ptr(), ptr);
    // A transposed (non-standard) view is refused rather than silently reinterpreted.
    let tr = view.t();
    assert!(TensorView::from_ndarray(&tr).is_none());
}

#[test]
fn fast_f32_norms_stay_accurate_for_large_offset_data() {
    // 10^6 values of 1000 + N(0, 1) in f32. The fast kernels accumulate in blocks of T lanes
    // flushed to f64 and shift by an element of the group: the statistics must match an exact
    // f64 computation on the same values, and the outputs the reference to a few f32 ulps.
    let mut rng = Rng::new(12);
    let x: Tensor<f32> = rng.randn(&[1, 1, 1000, 1000], 1.0, 1000.0);
    let (m, v) = mean_var(x.to_f64().data());
    let one = Tensor::full(&[1], 1.0f32).unwrap();
    let zero = Tensor::zeros(&[1]).unwrap();
    let (out_f, c_f) = spatial_batchnorm_forward(&x, &one, &zero, &mut BnParam::train()).unwrap();
    assert!(
        (c_f.mean()[0] - m).abs() <= 1e-9 * m.abs(),
        "mean {} vs {m}",
        c_f.mean()[0]
    );
    let want_inv = 1.0 / (v + 1e-5).sqrt();
    assert!(
        (c_f.inv_std()[0] - want_inv).abs() <= 1e-6 * want_inv,
        "inv_std"
    );
    let (out_r, _) =
        spatial_batchnorm_forward_naive(&x, &one, &zero, &mut BnParam::train()).unwrap();
    assert_close("bn out", &out_f, &out_r, 1e-6);
    // Group norm over the same data (one group).
    let (out_f, _) = spatial_groupnorm_forward(&x, &one, &zero, 1, &NormParam::default()).unwrap();
    let (out_r, _) =
        spatial_groupnorm_forward_naive(&x, &one, &zero, 1, &NormParam::default()).unwrap();
    assert_close("gn out", &out_f, &out_r, 1e-6);
}

// ---------- convolution on non-finite data ----------

/// NaN, +inf, -inf or finite: the class of a value, which every algorithm must share with the
/// reference (finite values agree within tolerance; tests/fast_vs_reference.rs checks those).
fn class(v: f64) -> i8 {
    if v.is_nan() {
        2
    } else if v == f64::INFINITY {
        1
    } else if v == f64::NEG_INFINITY {
        -1
    } else {
        0
    }
}

#[test]
fn conv_nan_and_infinity_positions_are_the_references_on_every_algorithm() {
    // 3 x 3, stride 1, pad 1: every algorithm can run it (Winograd, direct dx, im2col). One
    // infinite weight at a corner tap: the direct dx used to form 0 * inf on the border rows,
    // whose taps lie outside the output (NaN where the reference is finite); Winograd's
    // transforms used to turn a tile holding an infinity into NaN.
    // 16 x 16: enough 4 x 4 tiles for F(4x4, 3x3) at every level.
    let (n, c, f, h) = (2, 16, 16, 16);
    let p = ConvParam::new(1, 1);
    let mut rng = Rng::new(7);
    let x = Tensor::<f64>::from_fn(&[n, c, h, h], |_| 2.0 * rng.uniform() - 1.0).unwrap();
    let w = Tensor::<f64>::from_fn(&[f, c, 3, 3], |_| 2.0 * rng.uniform() - 1.0).unwrap();
    let b = Tensor::<f64>::zeros(&[f]).unwrap();
    let dout = Tensor::<f64>::from_fn(&[n, f, h, h], |_| 2.0 * rng.uniform() - 1.0).unwrap();
    let cases: [(&str, usize); 4] = [("w", 0), ("x", 1), ("dout", 2), ("none", 3)];
    for (what, which) in cases {
        let (mut x, mut w, mut dout) = (x.clone(), w.clone(), dout.clone());
        match which {
            0 => w.data_mut()[3 * 9 + 8] = f64::INFINITY,
            1 => x.data_mut()[5 * h * h + 3 * h + 4] = f64::NEG_INFINITY,
            2 => dout.data_mut()[f * h * h + 2 * h + 2] = f64::INFINITY,
            _ => {}
        }
        let (out_r, cache) = conv_forward_naive(&x, &w, &b, &p).unwrap();
        let (dx_r, dw_r, _) = conv_backward_naive(&dout, &cache).unwrap();
        let base = ConvPlan::<f64>::new(x.shape(), w.shape(), &p).unwrap();
        for alg in [
            ConvAlgorithm::Im2col,
            ConvAlgorithm::Direct,
            ConvAlgorithm::Winograd,
            ConvAlgorithm::Winograd4x4,
        ] {
            let plan = [
                ConvDirection::Forward,
                ConvDirection::DataGrad,
                ConvDirection::WeightGrad,
            ]
            .iter()
            .try_fold(base, |pl, &d| pl.with_algorithm(d, alg));
            let plan = match plan {
                Ok(pl) => pl,
                // Only the portable level lacks the explicit kernels these paths need.
                Err(_) if base.simd_level() == fastlayers::cpu::SimdLevel::Portable => continue,
                Err(e) => panic!("{alg:?} cannot run 3x3 pad 1: {e}"),
            };
            let par = Parallelism::Sequential;
            // Sized from the plan: it must cover the im2col fallback too.
            let mut ws = vec![0.0; plan.workspace_len(par).unwrap()];
            let mut out = Tensor::zeros(out_r.shape()).unwrap();
            plan.forward_into(&x, &w, &b, &mut out, &mut ws, par)
                .unwrap();
            let (mut dx, mut dw, mut db) = (
                Tensor::zeros(x.shape()).unwrap(),
                Tensor::zeros(w.shape()).unwrap(),
                Tensor::zeros(&[f]).unwrap(),
            );
            plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
                .unwrap();
            for (name, fast, r) in [
                ("out", &out, &out_r),
                ("dx", &dx, &dx_r),
                ("dw", &dw, &dw_r),
            ] {
                for (i, (&a, &e)) in fast.data().iter().zip(r.data()).enumerate() {
                    assert_eq!(
                        class(a),
                        class(e),
                        "{alg:?}, non-finite {what}: {name}[{i}] = {a} vs reference {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn eps_zero_on_constant_input_is_nan_as_documented() {
    // BnParam::eps / NormParam::eps: a zero-variance group with eps = 0 gives NaN (0 * inf),
    // reference and fast alike; any eps > 0 keeps it finite.
    let x = Tensor::full(&[4, 3], 2.5f64).unwrap();
    let (g, b) = (
        Tensor::full(&[3], 1.0).unwrap(),
        Tensor::zeros(&[3]).unwrap(),
    );
    for eps in [0.0, 1e-5] {
        let mut p = BnParam::train();
        p.eps = eps;
        let (r, cache) = batchnorm_forward_naive(&x, &g, &b, &mut p.clone()).unwrap();
        let (f, fcache) = batchnorm_forward(&x, &g, &b, &mut p).unwrap();
        let dout = Tensor::full(&[4, 3], 1.0).unwrap();
        let (dxr, _, _) = batchnorm_backward_naive(&dout, &cache).unwrap();
        let (dxf, _, _) = batchnorm_backward(&dout, &fcache).unwrap();
        let (ln, _) = layernorm_forward(&x, &g, &b, &NormParam { eps }).unwrap();
        for t in [&r, &f, &dxr, &dxf, &ln] {
            assert!(
                t.data().iter().all(|v| v.is_nan() == (eps == 0.0)),
                "eps {eps}: {:?}",
                t.data()
            );
        }
    }
}

#[test]
fn non_finite_scores_follow_the_documented_loss_semantics() {
    let x = |row: [f64; 3]| Tensor::new(row.to_vec(), &[1, 3]).unwrap();
    let inf = f64::INFINITY;
    // +inf or NaN anywhere: NaN loss and dx.
    for row in [[inf, 0.0, 1.0], [f64::NAN, 0.0, 1.0]] {
        let (l, dx) = softmax_loss(&x(row), &[1]).unwrap();
        assert!(
            l.is_nan() && dx.data().iter().all(|v| v.is_nan()),
            "{row:?}"
        );
    }
    // -inf off the label: probability 0, the loss of the other two scores.
    let (l, dx) = softmax_loss(&x([-inf, 0.0, 1.0]), &[1]).unwrap();
    let expect = -(0.0f64 - (1.0f64.exp() + 1.0).ln());
    assert!(
        (l - expect).abs() < 1e-15 && dx.data()[0] == 0.0,
        "{l} {dx:?}"
    );
    // -inf on the label: loss +inf, dx finite.
    let (l, dx) = softmax_loss(&x([-inf, 0.0, 1.0]), &[0]).unwrap();
    assert!(l == inf && dx.data().iter().all(|v| v.is_finite()));
    // A row of -inf: NaN.
    let (l, _) = softmax_loss(&x([-inf; 3]), &[0]).unwrap();
    assert!(l.is_nan());
}

/// Data that are small multiples of `unit` (T's smallest subnormal when 0), so deviations from
/// the mean are subnormal, or their squares past f32's range.
fn multiples<T: Float>(rng: &mut Rng, shape: &[usize], unit: f64) -> Tensor<T> {
    let unit = match (unit, T::NAME) {
        (0.0, "f32") => f32::from_bits(1) as f64,
        (0.0, _) => f64::from_bits(1),
        _ => unit,
    };
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| T::from_f(unit * (1 + rng.below(20)) as f64))
        .collect();
    Tensor::new(v, shape).unwrap()
}

fn extreme_spread_norms<T: Float>(unit: f64, eps: f64, tol: f64) {
    // The fuzzer's norm finding and its class: with subnormal deviations x - mean and an eps far
    // below any real use, inv_std is up to 1e150 and dgamma = sum(dout * (x - mean)) * inv_std
    // is far from the subnormal range; forming dout * (x - mean) in T first underflowed (to 0,
    // or to a few ulps of the smallest subnormal) and the scaling amplified the loss. The error
    // is measured against sum |dout| * |x_hat| over the channel's elements, which bounds
    // |dgamma|: a relative bound, independent of how small dgamma is.
    let mut rng = Rng::new(19);
    for (shape, kind) in [
        (vec![4, 3, 5, 5], 0),  // spatial bn, per-channel path (planes < 64)
        (vec![2, 2, 8, 8], 0),  // spatial bn, sample-major path
        (vec![2, 4, 5, 5], 1),  // group norm, G = 2
        (vec![4, 30, 1, 1], 2), // layer norm
    ] {
        for mode in [Mode::Train, Mode::Test] {
            if kind != 0 && mode == Mode::Test {
                continue;
            }
            let c = shape[1];
            let x: Tensor<T> = multiples(&mut rng, &shape, unit);
            let dout: Tensor<T> = rng.randn(&shape, 1.0, 0.0);
            let g: Tensor<T> = rng.randn(&[c], 1.0, 0.0);
            let b: Tensor<T> = rng.randn(&[c], 1.0, 0.0);
            let ((of, or), (dxf, dgf, dbf), (dxr, dgr, dbr)) = match kind {
                0 => {
                    let mut p = BnParam::<T>::train();
                    p.mode = mode;
                    p.eps = eps;
                    if mode == Mode::Test {
                        p.running_mean = Some(vec![T::zero(); c]);
                        p.running_var = Some(vec![T::zero(); c]);
                    }
                    let (of, cf) = spatial_batchnorm_forward(&x, &g, &b, &mut p.clone()).unwrap();
                    let (or, cr) = spatial_batchnorm_forward_naive(&x, &g, &b, &mut p).unwrap();
                    (
                        (of, or),
                        spatial_batchnorm_backward(&dout, &cf).unwrap(),
                        spatial_batchnorm_backward_naive(&dout, &cr).unwrap(),
                    )
                }
                1 => {
                    let p = NormParam { eps };
                    let (of, cf) = spatial_groupnorm_forward(&x, &g, &b, 2, &p).unwrap();
                    let (or, cr) = spatial_groupnorm_forward_naive(&x, &g, &b, 2, &p).unwrap();
                    (
                        (of, or),
                        spatial_groupnorm_backward(&dout, &cf).unwrap(),
                        spatial_groupnorm_backward_naive(&dout, &cr).unwrap(),
                    )
                }
                _ => {
                    let (x, dout) = (
                        x.clone().reshape(&[4, 30]).unwrap(),
                        dout.clone().reshape(&[4, 30]).unwrap(),
                    );
                    let p = NormParam { eps };
                    let (of, cf) = layernorm_forward(&x, &g, &b, &p).unwrap();
                    let (or, cr) = layernorm_forward_naive(&x, &g, &b, &p).unwrap();
                    let f = layernorm_backward(&dout, &cf).unwrap();
                    let r = layernorm_backward_naive(&dout, &cr).unwrap();
                    (
                        (of, or),
                        (f.0.reshape(&shape).unwrap(), f.1, f.2),
                        (r.0.reshape(&shape).unwrap(), r.1, r.2),
                    )
                }
            };
            let what = format!("{} {shape:?} {mode:?} eps {eps:e}", T::NAME);
            // The bound: per channel, sum |dout| |x_hat| with x_hat = (x - mean) inv_std from
            // statistics computed here (two-pass, f64): |dgamma| is at most that.
            let hw = shape[2] * shape[3];
            let group = |i: usize| {
                let (n, ch) = (i / (c * hw), (i / hw) % c);
                match kind {
                    0 => ch,
                    1 => n * 2 + ch / 2,
                    _ => n,
                }
            };
            let ngroups = (0..x.len()).map(group).max().unwrap() + 1;
            let (mut sum, mut cnt) = (vec![0.0f64; ngroups], vec![0.0f64; ngroups]);
            for (i, v) in x.data().iter().enumerate() {
                sum[group(i)] += v.to_f();
                cnt[group(i)] += 1.0;
            }
            let mean: Vec<f64> = if mode == Mode::Test {
                vec![0.0; ngroups]
            } else {
                sum.iter().zip(&cnt).map(|(s, n)| s / n).collect()
            };
            let mut var = vec![0.0f64; ngroups];
            if mode == Mode::Train {
                for (i, v) in x.data().iter().enumerate() {
                    let g = group(i);
                    var[g] += (v.to_f() - mean[g]).powi(2) / cnt[g];
                }
            }
            let mut s = vec![0.0f64; c];
            for (i, (v, d)) in x.data().iter().zip(dout.data()).enumerate() {
                let g = group(i);
                let xhat = (v.to_f() - mean[g]) / (var[g] + eps).sqrt();
                s[(i / hw) % c] += d.to_f().abs() * xhat.abs();
            }
            let s: Vec<f64> = s;
            for ((f, r), s) in dgf.data().iter().zip(dgr.data()).zip(&s) {
                let (f, r) = (f.to_f(), r.to_f());
                assert!(
                    r.is_finite() && (f - r).abs() <= tol * s,
                    "{what}: dgamma {f:e} vs {r:e}, bound {:e}",
                    tol * s
                );
            }
            assert_close(&format!("{what}: out"), &of, &or, tol);
            assert_close(&format!("{what}: dbeta"), &dbf, &dbr, tol);
            assert_close(&format!("{what}: dx"), &dxf, &dxr, tol);
        }
    }
}

#[test]
fn norms_of_subnormal_or_huge_spreads_match_the_reference() {
    // f32 train mode: inv_std ~1e30 takes the scaled T lanes, ~1e44 (past 2^120, x_hat of
    // order 1) the f64 products; test mode always forms its products in f64. f64: the
    // variance of subnormal data underflows to 0 (in the reference too), so inv_std = 1e150,
    // in the scaled lanes. f32 values of 1e25: squares past f32's range, variance from f64.
    // Tolerances: a few ulps of T per term against the bound.
    extreme_spread_norms::<f32>(0.0, 1e-60, 1e-5);
    extreme_spread_norms::<f32>(0.0, 1e-100, 1e-5);
    extreme_spread_norms::<f32>(1e25, 1e-5, 1e-5);
    extreme_spread_norms::<f64>(0.0, 1e-300, 1e-12);
}
