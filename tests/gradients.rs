//! Numeric-gradient checks of every reference backward pass, over many seeds and parameter
//! sets, in f64 and f32.
//!
//! f64: analytic vs central differences (h = 1e-5) at the notebooks' bounds, measured with the
//! well-conditioned `norm_error` (see tests/common). f32: the f32 backward on f32 inputs vs the
//! f64 numeric gradient at the same (f32-representable) inputs; the references accumulate in
//! f64, so only the final rounding to f32 (2^-24) and the f64 numeric error remain: 1e-6.

#![allow(clippy::needless_range_loop, clippy::identity_op)]

mod common;

use common::*;
use fastlayers::*;

type Fwd<'a> = dyn Fn(&[Tensor<f64>]) -> Result<Tensor<f64>> + 'a;
type Bwd<'a, T> = dyn Fn(&[Tensor<T>], &Tensor<T>) -> Result<Vec<Tensor<T>>> + 'a;

/// Checks every input's gradient. Inputs are rounded to f32 first so the f32 run sees the same
/// values.
fn check_layer(
    name: &str,
    inputs: Vec<Tensor<f64>>,
    fwd: &Fwd<'_>,
    bwd64: &Bwd<'_, f64>,
    bwd32: &Bwd<'_, f32>,
    tol64: f64,
    seed: u64,
) {
    let inputs: Vec<Tensor<f64>> = inputs.iter().map(|t| to32(t).to_f64()).collect();
    let out = fwd(&inputs).unwrap();
    let mut rng = Rng::new(seed ^ 0xd0);
    let dout = to32(&randn(&mut rng, out.shape())).to_f64();
    let g64 = bwd64(&inputs, &dout).unwrap();
    let in32: Vec<Tensor<f32>> = inputs.iter().map(to32).collect();
    let g32 = bwd32(&in32, &to32(&dout)).unwrap();
    assert_eq!(g64.len(), g32.len());
    for (i, (a64, a32)) in g64.iter().zip(&g32).enumerate() {
        let num = num_grad(
            |xi| {
                let mut v = inputs.clone();
                v[i] = xi.clone();
                fwd(&v)
            },
            &inputs[i],
            &dout,
        );
        assert_close(
            &format!("{name} f64 grad {i} (seed {seed})"),
            a64,
            &num,
            tol64,
        );
        assert_close(
            &format!("{name} f32 grad {i} (seed {seed})"),
            a32,
            &num,
            1e-6_f64.max(tol64),
        );
    }
}

const SEEDS: [u64; 6] = [231, 1, 2, 3, 9, 13];

fn conv_case(xs: [usize; 4], ws: [usize; 4], p: ConvParam) {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let inputs = vec![
            randn(&mut rng, &xs),
            randn(&mut rng, &ws),
            randn(&mut rng, &[ws[0]]),
        ];
        check_layer(
            &format!("conv {xs:?} {ws:?} {p:?}"),
            inputs,
            &|v| Ok(conv_forward_naive(&v[0], &v[1], &v[2], &p)?.0),
            &|v, d| {
                let (_, c) = conv_forward_naive(&v[0], &v[1], &v[2], &p)?;
                let (a, b, e) = conv_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            &|v, d| {
                let (_, c) = conv_forward_naive(&v[0], &v[1], &v[2], &p)?;
                let (a, b, e) = conv_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            1e-8,
            seed,
        );
    }
}

#[test]
fn conv_gradients() {
    conv_case([4, 3, 5, 5], [2, 3, 3, 3], ConvParam::new(1, 1)); // the notebook's cell
    conv_case([2, 3, 7, 6], [4, 3, 3, 2], ConvParam::new(2, 1));
    conv_case(
        [1, 2, 6, 7],
        [3, 2, 2, 3],
        ConvParam::new(1, 0).with_stride(2, 1).with_pad(0, 2),
    );
    conv_case(
        [2, 2, 7, 7],
        [2, 2, 3, 3],
        ConvParam::new(1, 2).with_dilation(2, 3),
    );
    conv_case(
        [2, 4, 5, 5],
        [6, 2, 3, 3],
        ConvParam::new(1, 1).with_groups(2),
    );
    conv_case(
        [1, 3, 5, 4],
        [3, 1, 3, 3],
        ConvParam::new(2, 1).with_groups(3),
    ); // depthwise
    conv_case([1, 1, 1, 1], [1, 1, 1, 1], ConvParam::new(1, 0));
}

/// x with all values distinct and at least 1e-3 apart, so a 1e-5 perturbation never changes a
/// window's argmax and the pooling numeric gradient is exact.
fn separated(rng: &mut Rng, shape: &[usize]) -> Tensor<f64> {
    let n: usize = shape.iter().product();
    let mut vals: Vec<f64> = (0..n).map(|i| (i as f64 - n as f64 / 2.0) * 1e-2).collect();
    for i in (1..n).rev() {
        vals.swap(i, rng.below(i + 1));
    }
    Tensor::new(vals, shape).unwrap()
}

#[test]
fn max_pool_gradients() {
    let cases = [
        ([3, 2, 8, 8], PoolParam::new(2, 2, 2)), // the notebook's cell
        ([2, 2, 7, 7], PoolParam::new(3, 3, 2)), // overlapping windows
        ([1, 3, 5, 6], PoolParam::new(2, 3, 1).with_stride(1, 2)),
        ([2, 1, 6, 6], PoolParam::new(3, 3, 2).with_pad(1, 1)),
        ([1, 2, 5, 5], PoolParam::new(2, 2, 2).with_ceil_mode(true)),
        (
            [1, 1, 7, 5],
            PoolParam::new(3, 2, 2).with_pad(1, 1).with_ceil_mode(true),
        ),
    ];
    for (xs, p) in cases {
        for seed in SEEDS {
            let mut rng = Rng::new(seed);
            let inputs = vec![separated(&mut rng, &xs)];
            let bwd = |v: &[Tensor<f64>], d: &Tensor<f64>| {
                let (_, c) = max_pool_forward_naive(&v[0], &p)?;
                Ok(vec![max_pool_backward_naive(d, &c)?])
            };
            check_layer(
                &format!("pool {xs:?} {p:?}"),
                inputs,
                &|v| Ok(max_pool_forward_naive(&v[0], &p)?.0),
                &bwd,
                &|v, d| {
                    let (_, c) = max_pool_forward_naive(&v[0], &p)?;
                    Ok(vec![max_pool_backward_naive(d, &c)?])
                },
                1e-10,
                seed,
            );
        }
    }
}

#[test]
fn affine_and_relu_gradients() {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let inputs = vec![
            randn(&mut rng, &[10, 2, 3]),
            randn(&mut rng, &[6, 5]),
            randn(&mut rng, &[5]),
        ];
        check_layer(
            "affine",
            inputs,
            &|v| Ok(affine_forward_naive(&v[0], &v[1], &v[2])?.0),
            &|v, d| {
                let (_, c) = affine_forward_naive(&v[0], &v[1], &v[2])?;
                let (a, b, e) = affine_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            &|v, d| {
                let (_, c) = affine_forward_naive(&v[0], &v[1], &v[2])?;
                let (a, b, e) = affine_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            1e-9,
            seed,
        );
        // relu: values kept away from the kink at 0.
        let x = separated(&mut rng, &[10, 10]).map(|v| v + 5e-3);
        check_layer(
            "relu",
            vec![x],
            &|v| Ok(relu_forward(&v[0])?.0),
            &|v, d| Ok(vec![relu_backward(d, &relu_forward(&v[0])?.1)?]),
            &|v, d| Ok(vec![relu_backward(d, &relu_forward(&v[0])?.1)?]),
            1e-10,
            seed,
        );
    }
}

fn norm_inputs(rng: &mut Rng, xs: &[usize], c: usize, gshape: &[usize]) -> Vec<Tensor<f64>> {
    let _ = c;
    vec![
        rng.randn(xs, 5.0, 12.0),
        randn(rng, gshape),
        randn(rng, gshape),
    ]
}

#[test]
fn batchnorm_gradients_train_and_test() {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        // Train mode, (N, D): graph and closed form both checked.
        let inputs = norm_inputs(&mut rng, &[4, 5], 5, &[5]);
        type BwdFn =
            fn(&Tensor<f64>, &NormCache<f64>) -> Result<(Tensor<f64>, Tensor<f64>, Tensor<f64>)>;
        let variants: [(&str, BwdFn); 2] = [
            ("graph", |d, c| batchnorm_backward_naive(d, c)),
            ("alt", |d, c| batchnorm_backward_alt_naive(d, c)),
        ];
        for (label, b64) in variants {
            check_layer(
                &format!("batchnorm train {label}"),
                inputs.clone(),
                &|v| Ok(batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?.0),
                &|v, d| {
                    let (_, c) =
                        batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?;
                    let (a, b, e) = b64(d, &c)?;
                    Ok(vec![a, b, e])
                },
                &|v, d| {
                    let (_, c) =
                        batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?;
                    let (a, b, e) = batchnorm_backward_naive(d, &c)?;
                    Ok(vec![a, b, e])
                },
                1e-7,
                seed,
            );
        }
        // Test mode: the running statistics are constants.
        let rm: Vec<f64> = (0..5).map(|_| rng.normal() + 12.0).collect();
        let rv: Vec<f64> = (0..5).map(|_| rng.uniform() * 20.0 + 1.0).collect();
        let bn_test = |rm: &[f64], rv: &[f64]| {
            let mut p = BnParam::test();
            p.running_mean = Some(rm.to_vec());
            p.running_var = Some(rv.to_vec());
            p
        };
        let (rm32, rv32): (Vec<f32>, Vec<f32>) = (
            rm.iter().map(|&v| v as f32).collect(),
            rv.iter().map(|&v| v as f32).collect(),
        );
        let (rm64, rv64): (Vec<f64>, Vec<f64>) = (
            rm32.iter().map(|&v| v as f64).collect(),
            rv32.iter().map(|&v| v as f64).collect(),
        );
        check_layer(
            "batchnorm test",
            inputs.clone(),
            &|v| Ok(batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut bn_test(&rm64, &rv64))?.0),
            &|v, d| {
                let (_, c) =
                    batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut bn_test(&rm64, &rv64))?;
                let (a, b, e) = batchnorm_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            &|v, d| {
                let mut p = BnParam::test();
                p.running_mean = Some(rm32.clone());
                p.running_var = Some(rv32.clone());
                let (_, c) = batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut p)?;
                let (a, b, e) = batchnorm_backward_alt_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            1e-7,
            seed,
        );
        // Spatial.
        let inputs = norm_inputs(&mut rng, &[2, 3, 4, 5], 3, &[3]);
        check_layer(
            "spatial batchnorm",
            inputs,
            &|v| Ok(spatial_batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?.0),
            &|v, d| {
                let (_, c) =
                    spatial_batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?;
                let (a, b, e) = spatial_batchnorm_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            &|v, d| {
                let (_, c) =
                    spatial_batchnorm_forward_naive(&v[0], &v[1], &v[2], &mut BnParam::train())?;
                let (a, b, e) = spatial_batchnorm_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            1e-7,
            seed,
        );
    }
}

#[test]
fn layernorm_and_groupnorm_gradients() {
    let p = NormParam::default();
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let inputs = norm_inputs(&mut rng, &[4, 5], 5, &[5]);
        check_layer(
            "layernorm",
            inputs,
            &|v| Ok(layernorm_forward_naive(&v[0], &v[1], &v[2], &p)?.0),
            &|v, d| {
                let (_, c) = layernorm_forward_naive(&v[0], &v[1], &v[2], &p)?;
                let (a, b, e) = layernorm_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            &|v, d| {
                let (_, c) = layernorm_forward_naive(&v[0], &v[1], &v[2], &p)?;
                let (a, b, e) = layernorm_backward_naive(d, &c)?;
                Ok(vec![a, b, e])
            },
            1e-7,
            seed,
        );
        for (g, gshape) in [
            (2usize, vec![1, 6, 1, 1]),
            (3, vec![6]),
            (1, vec![6]),
            (6, vec![6]),
        ] {
            let inputs = norm_inputs(&mut rng, &[2, 6, 4, 5], 6, &gshape);
            check_layer(
                &format!("groupnorm G={g}"),
                inputs,
                &|v| Ok(spatial_groupnorm_forward_naive(&v[0], &v[1], &v[2], g, &p)?.0),
                &|v, d| {
                    let (_, c) = spatial_groupnorm_forward_naive(&v[0], &v[1], &v[2], g, &p)?;
                    let (a, b, e) = spatial_groupnorm_backward_naive(d, &c)?;
                    Ok(vec![a, b, e])
                },
                &|v, d| {
                    let (_, c) = spatial_groupnorm_forward_naive(&v[0], &v[1], &v[2], g, &p)?;
                    let (a, b, e) = spatial_groupnorm_backward_naive(d, &c)?;
                    Ok(vec![a, b, e])
                },
                1e-7,
                seed,
            );
        }
    }
}

#[test]
fn dropout_gradients() {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        for p in [0.2, 0.5, 1.0] {
            let prm = DropoutParam::train(p, Some(seed));
            check_layer(
                "dropout",
                vec![rng.randn(&[10, 10], 1.0, 10.0)],
                &|v| Ok(dropout_forward(&v[0], &prm)?.0),
                &|v, d| Ok(vec![dropout_backward(d, &dropout_forward(&v[0], &prm)?.1)?]),
                &|v, d| Ok(vec![dropout_backward(d, &dropout_forward(&v[0], &prm)?.1)?]),
                1e-10,
                seed,
            );
        }
    }
}

#[test]
fn loss_gradients() {
    for seed in SEEDS {
        let mut rng = Rng::new(seed);
        let x: Tensor<f64> = to32(&rng.randn(&[7, 5], 1.0, 0.0)).to_f64();
        let y: Vec<usize> = (0..7).map(|_| rng.below(5)).collect();
        let num_s = eval_numerical_gradient(|x| Ok(softmax_loss(x, &y)?.0), &x, 1e-5).unwrap();
        assert_close("softmax dx", &softmax_loss(&x, &y).unwrap().1, &num_s, 1e-8);
        assert_close(
            "softmax dx f32",
            &softmax_loss(&to32(&x), &y).unwrap().1,
            &num_s,
            1e-6,
        );
        // svm: away from margin kinks the loss is piecewise linear, so the gradient is exact.
        let num_v = eval_numerical_gradient(|x| Ok(svm_loss(x, &y)?.0), &x, 1e-5).unwrap();
        assert_close("svm dx", &svm_loss(&x, &y).unwrap().1, &num_v, 1e-8);
        assert_close(
            "svm dx f32",
            &svm_loss(&to32(&x), &y).unwrap().1,
            &num_v,
            1e-6,
        );
    }
}
