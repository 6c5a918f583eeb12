//! The models against numeric gradients (the notebooks' checks), the fast path against the
//! reference kernels, and the notebooks' sanity checks (initial loss, test mode).
//!
//! Tolerances: f64 throughout. The notebooks' `rel_error` (the worst element's
//! |a - b| / (|a| + |b|)) is printed, but it is a poor thing to assert on: centred differences
//! with h = 1e-6 carry rounding ~eps * |loss| / h ~ 1e-10 absolute, a large relative error on
//! the smallest entries (and on a gradient that is zero in exact arithmetic, such as a bias
//! before batch norm over N = 2, where the notebooks print up to 1e-4). The assertion is the
//! worst absolute difference against the gradient's largest entry:
//! max |num - ana| <= tol * max |ana| + 1e-8, with tol = 1e-6 (truncation ~h^2 and the
//! rounding above are both far below it; a wrong term in a backward pass is not). Run with
//! `-- --nocapture` to see both measures.

use fastlayers::{Rng, Tensor, eval_numerical_gradient, rel_error};
use fastlayers_nn::{
    CnnConfig, FcNetConfig, FullyConnectedNet, Kernels, Model, Normalization, ThreeLayerConvNet,
    TwoLayerNet,
};

fn grad_check<M: Model<f64>>(model: &mut M, x: &Tensor<f64>, y: &[usize], tol: f64, what: &str) {
    model.loss(x.view(), y).unwrap();
    let (_, grads) = model.params_and_grads();
    let grads = grads.clone();
    let names: Vec<String> = model.params().keys().cloned().collect();
    for name in names {
        let p0 = model.params()[&name].clone();
        let num = eval_numerical_gradient(
            |p: &Tensor<f64>| {
                model.params_and_grads().0.insert(name.clone(), p.clone());
                Ok(model.loss(x.view(), y).unwrap())
            },
            &p0,
            1e-6,
        )
        .unwrap();
        model.params_and_grads().0.insert(name.clone(), p0);
        let ana = &grads[&name];
        let e = rel_error(&num, ana).unwrap();
        let scale = ana.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let worst = num
            .data()
            .iter()
            .zip(ana.data())
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "{what} {name} relative error: {e:.2e}; max |num - ana| {worst:.2e} of max |ana| {scale:.2e}"
        );
        assert!(
            worst <= tol * scale + 1e-8,
            "{what} {name}: max |num - ana| {worst:.2e} > {tol:.0e} * {scale:.2e} + 1e-8"
        );
    }
}

/// Fast against reference gradients: they sum the same terms in different orders, so they
/// agree to a few ulps of the largest term: 1e-9 relative to the gradient's largest entry,
/// plus 1e-14 absolute for the gradients that are zero in exact arithmetic (a bias before
/// batch norm, whose reference and fast values are rounding noise of order 1e-17).
fn close(a: &Tensor<f64>, b: &Tensor<f64>) -> bool {
    let scale = a.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.data()
        .iter()
        .zip(b.data())
        .all(|(x, y)| (x - y).abs() <= 1e-9 * scale + 1e-14)
}

fn data(n: usize, shape: &[usize], classes: usize, seed: u64) -> (Tensor<f64>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let mut s = vec![n];
    s.extend(shape);
    let x = rng.randn(&s, 1.0, 0.0);
    let y = (0..n).map(|_| rng.below(classes)).collect();
    (x, y)
}

#[test]
fn two_layer_net_gradients() {
    let (x, y) = data(3, &[5], 7, 1);
    for reg in [0.0, 0.7] {
        let mut m = TwoLayerNet::<f64>::new(5, 50, 7, 1e-1, reg, 2);
        grad_check(&mut m, &x, &y, 1e-6, &format!("two-layer reg {reg}"));
    }
}

#[test]
fn fully_connected_net_gradients_with_every_option() {
    // The notebook's check: N, D, H1, H2, C = 2, 15, 20, 30, 10, weight_scale 5e-2.
    let (x, y) = data(2, &[15], 10, 3);
    for norm in [
        None,
        Some(Normalization::BatchNorm),
        Some(Normalization::LayerNorm),
    ] {
        for (reg, dropout) in [(0.0, 1.0), (2.5, 1.0), (0.0, 0.5)] {
            let cfg = FcNetConfig {
                hidden_dims: vec![20, 30],
                input_dim: 15,
                num_classes: 10,
                dropout,
                normalization: norm,
                reg,
                weight_scale: 5e-2,
                seed: 4,
                dropout_seed: Some(123),
            };
            let mut m = FullyConnectedNet::<f64>::new(cfg).unwrap();
            let what = format!("fc {norm:?} reg {reg} dropout {dropout}");
            let initial = m.loss(x.view(), &y).unwrap();
            println!("{what} initial loss {initial:.6}");
            grad_check(&mut m, &x, &y, 1e-6, &what);
        }
    }
}

#[test]
fn three_layer_conv_net_gradients_fast_and_reference() {
    // The notebook's check: 2 inputs of 3x16x16, 3 filters of 3x3, hidden 7.
    let (x, y) = data(2, &[3, 16, 16], 10, 5);
    for reg in [0.0, 0.5] {
        let cfg = CnnConfig {
            input_dim: [3, 16, 16],
            num_filters: 3,
            filter_size: 3,
            hidden_dim: 7,
            num_classes: 10,
            weight_scale: 1e-1,
            reg,
            seed: 6,
        };
        let mut fast = ThreeLayerConvNet::<f64>::new(cfg.clone()).unwrap();
        grad_check(&mut fast, &x, &y, 1e-6, &format!("tlcn fast reg {reg}"));
        let mut naive = ThreeLayerConvNet::<f64>::new(cfg).unwrap();
        naive.kernels = Kernels::Reference;
        let (lf, ln) = (
            fast.loss(x.view(), &y).unwrap(),
            naive.loss(x.view(), &y).unwrap(),
        );
        assert!((lf - ln).abs() <= 1e-12 * ln.abs(), "{lf} vs {ln}");
        let (_, gf) = fast.params_and_grads();
        let gf = gf.clone();
        let (_, gn) = naive.params_and_grads();
        for (k, v) in gn.iter() {
            assert!(close(v, &gf[k]), "tlcn {k}: fast vs reference");
        }
        let (sf, sn) = (
            fast.scores(x.view()).unwrap(),
            naive.scores(x.view()).unwrap(),
        );
        assert!(rel_error(&sf, &sn).unwrap() < 1e-9);
    }
}

#[test]
fn fc_net_fast_matches_reference_kernels() {
    let (x, y) = data(6, &[12], 5, 7);
    for norm in [
        None,
        Some(Normalization::BatchNorm),
        Some(Normalization::LayerNorm),
    ] {
        let cfg = FcNetConfig {
            hidden_dims: vec![9, 8],
            input_dim: 12,
            num_classes: 5,
            normalization: norm,
            dropout: 0.7,
            dropout_seed: Some(9),
            reg: 0.1,
            ..FcNetConfig::default()
        };
        let mut f = FullyConnectedNet::<f64>::new(cfg.clone()).unwrap();
        let mut r = FullyConnectedNet::<f64>::new(cfg).unwrap();
        r.kernels = Kernels::Reference;
        let (lf, lr) = (f.loss(x.view(), &y).unwrap(), r.loss(x.view(), &y).unwrap());
        assert!(
            (lf - lr).abs() <= 1e-12 * lr.abs(),
            "{norm:?}: {lf} vs {lr}"
        );
        let gf = f.params_and_grads().1.clone();
        for (k, v) in r.params_and_grads().1.iter() {
            assert!(close(v, &gf[k]), "{norm:?} {k}");
        }
    }
}

#[test]
fn initial_loss_is_about_log_10_and_regularisation_raises_it() {
    // Small random weights give nearly uniform scores: loss ~ log(10) = 2.303.
    let (x, y) = data(50, &[3, 32, 32], 10, 8);
    let mut m = ThreeLayerConvNet::<f64>::new(CnnConfig::default()).unwrap();
    let l0 = m.loss(x.view(), &y).unwrap();
    assert!((l0 - 10f64.ln()).abs() < 0.02, "initial loss {l0}");
    m.config.reg = 0.5;
    let l1 = m.loss(x.view(), &y).unwrap();
    assert!(l1 > l0, "with reg {l1} <= {l0}");
    let (x, y) = data(50, &[3 * 32 * 32], 10, 9);
    let mut fc = FullyConnectedNet::<f32>::new(FcNetConfig {
        weight_scale: 1e-3,
        ..FcNetConfig::default()
    })
    .unwrap();
    let l = fc.loss(x.map(|v| *v as f32).view(), &y).unwrap();
    assert!((l - 10f64.ln()).abs() < 0.02, "fc initial loss {l}");
}

#[test]
fn test_mode_uses_running_statistics_and_no_dropout() {
    let (x, y) = data(8, &[6], 4, 10);
    let mut m = FullyConnectedNet::<f64>::new(FcNetConfig {
        hidden_dims: vec![5],
        input_dim: 6,
        num_classes: 4,
        normalization: Some(Normalization::BatchNorm),
        dropout: 0.5,
        weight_scale: 0.5,
        ..FcNetConfig::default()
    })
    .unwrap();
    // Before any train-mode forward the running statistics are absent (mean 0, var 0 in the
    // notebook's convention); after one they are stored and test mode uses them.
    m.loss(x.view(), &y).unwrap();
    let st = m.state();
    assert_eq!(st["running_mean1"].shape(), &[5]);
    let s1 = m.scores(x.view()).unwrap();
    let s2 = m.scores(x.view()).unwrap();
    assert_eq!(
        s1.data(),
        s2.data(),
        "test mode is deterministic (no dropout)"
    );
    // A sample's test-mode scores do not depend on the rest of the batch.
    let one = Tensor::new(x.data()[..6].to_vec(), &[1, 6]).unwrap();
    let s_one = m.scores(one.view()).unwrap();
    assert!(
        rel_error(
            &s_one,
            &Tensor::new(s1.data()[..4].to_vec(), &[1, 4]).unwrap()
        )
        .unwrap()
            < 1e-12
    );
    assert_eq!(
        m.state(),
        st,
        "test mode leaves the running statistics alone"
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let mut m = ThreeLayerConvNet::<f32>::new(CnnConfig::default()).unwrap();
    let x = Tensor::<f32>::zeros(&[2, 3, 30, 32]).unwrap();
    let e = m.loss(x.view(), &[0, 1]).unwrap_err().to_string();
    assert!(e.contains("X"), "{e}");
    let x = Tensor::<f32>::zeros(&[2, 3, 32, 32]).unwrap();
    let e = m.loss(x.view(), &[0]).unwrap_err().to_string();
    assert!(e.contains("y"), "{e}");
    let e = m.loss(x.view(), &[0, 10]).unwrap_err().to_string();
    assert!(e.contains("label") || e.contains("0..10"), "{e}");
    assert!(
        ThreeLayerConvNet::<f32>::new(CnnConfig {
            filter_size: 4,
            ..CnnConfig::default()
        })
        .is_err()
    );
    assert!(
        FullyConnectedNet::<f32>::new(FcNetConfig {
            dropout: 0.0,
            ..FcNetConfig::default()
        })
        .is_err()
    );
}
