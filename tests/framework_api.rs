//! The plans (the framework API): validation before any write, exact workspace queries,
//! agreement with the notebook-style API, and the invariants callers can no longer break.

mod common;

use fastlayers::*;

fn nan_t(shape: &[usize]) -> Tensor<f64> {
    Tensor::full(shape, f64::NAN).unwrap()
}

fn nan_buf(n: usize) -> Vec<f64> {
    vec![f64::NAN; n]
}

fn untouched(v: &[f64]) -> bool {
    v.iter().all(|x| x.is_nan())
}

#[test]
fn conv_plan_validates_before_writing_and_matches_the_notebook_api() {
    let mut rng = Rng::new(1);
    let (xs, ws, p) = ([2, 3, 8, 8], [4, 3, 3, 3], ConvParam::new(1, 1));
    let x: Tensor<f64> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&ws, 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[4], 1.0, 0.0);
    let par = Parallelism::Threads(2);
    let plan = ConvPlan::<f64>::new(&xs, &ws, &p).unwrap();
    let need = plan.workspace_len(par).unwrap();
    let need_fwd = plan.forward_workspace_len(par).unwrap();
    let need_bwd = plan.backward_workspace_len(par).unwrap();
    assert_eq!(need, need_fwd.max(need_bwd));
    // Output of the wrong shape, workspace one element short: errors, nothing written.
    let (mut out, mut ws_buf) = (nan_t(&[2, 4, 8, 7]), nan_buf(need));
    let e = plan
        .forward_into(&x, &w, &b, &mut out, &mut ws_buf, par)
        .unwrap_err();
    assert_eq!(e.arg(), "out");
    assert!(untouched(out.data()) && untouched(&ws_buf));
    let (mut out, mut short) = (nan_t(&[2, 4, 8, 8]), nan_buf(need_fwd - 1));
    let e = plan
        .forward_into(&x, &w, &b, &mut out, &mut short, par)
        .unwrap_err();
    assert_eq!(e.arg(), "workspace");
    assert!(untouched(out.data()));
    // x of another shape than the plan's.
    let x2: Tensor<f64> = rng.randn(&[3, 3, 8, 8], 1.0, 0.0);
    let e = plan
        .forward_into(&x2, &w, &b, &mut out, &mut ws_buf, par)
        .unwrap_err();
    assert_eq!(e.arg(), "x");
    // The exact forward workspace is enough; output starts as NaN, so every element must be
    // written.
    let mut fwd_ws = nan_buf(need_fwd);
    plan.forward_into(&x, &w, &b, &mut out, &mut fwd_ws, par)
        .unwrap();
    let (want, _) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    assert_eq!(out.data(), want.data());
    // Backward: bad dout, then a good call into NaN-filled buffers.
    let dout: Tensor<f64> = rng.randn(&[2, 4, 8, 8], 1.0, 0.0);
    let (mut dx, mut dw, mut db) = (nan_t(&xs), nan_t(&ws), nan_t(&[4]));
    let bad: Tensor<f64> = rng.randn(&[2, 4, 8, 7], 1.0, 0.0);
    let e = plan
        .backward_into(&x, &w, &bad, &mut dx, &mut dw, &mut db, &mut ws_buf, par)
        .unwrap_err();
    assert_eq!(e.arg(), "dout");
    assert!(untouched(dx.data()) && untouched(dw.data()) && untouched(db.data()));
    let mut dw_bad = nan_t(&[4, 3, 3, 2]);
    let e = plan
        .backward_into(
            &x,
            &w,
            &dout,
            &mut dx,
            &mut dw_bad,
            &mut db,
            &mut ws_buf,
            par,
        )
        .unwrap_err();
    assert_eq!(e.arg(), "dw");
    let mut short = nan_buf(need_bwd - 1);
    let e = plan
        .backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut short, par)
        .unwrap_err();
    assert_eq!(e.arg(), "workspace");
    assert!(untouched(dx.data()) && untouched(dw.data()) && untouched(db.data()));
    let mut bwd_ws = nan_buf(need_bwd);
    plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut bwd_ws, par)
        .unwrap();
    let (_, cache) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    let (ex, ew, eb) = conv_backward_fast(&dout, &cache).unwrap();
    assert_eq!((&dx, &dw, &db), (&ex, &ew, &eb));
}

#[test]
fn conv_plan_choice_is_stable_and_says_why() {
    // The same shape gives the same plan on every call, from any thread, and `Debug` names the
    // choice for each direction.
    let shapes = [
        ([16, 128, 16, 16], [128, 128, 3, 3], ConvParam::new(1, 1)),
        ([100, 3, 31, 31], [25, 3, 3, 3], ConvParam::new(2, 1)),
        (
            [2, 6, 9, 11],
            [4, 3, 5, 3],
            ConvParam::new(1, 2).with_groups(2),
        ),
    ];
    for (xs, ws, p) in shapes {
        let a = ConvPlan::<f32>::new(&xs, &ws, &p).unwrap();
        let d = format!("{a:?}");
        for _ in 0..3 {
            assert_eq!(
                format!("{:?}", ConvPlan::<f32>::new(&xs, &ws, &p).unwrap()),
                d
            );
        }
        let from_threads: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(move || format!("{:?}", ConvPlan::<f32>::new(&xs, &ws, &p).unwrap()))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            from_threads.iter().all(|t| *t == d),
            "{from_threads:?} vs {d}"
        );
        for dir in [
            ConvDirection::Forward,
            ConvDirection::DataGrad,
            ConvDirection::WeightGrad,
        ] {
            assert!(d.contains(&format!("{:?} (", a.algorithm(dir))), "{d}");
        }
    }
}

#[test]
fn conv_plan_refuses_an_algorithm_that_cannot_run() {
    // Winograd computes 3 x 3 stride-1 convolutions only; im2col runs everything.
    let plan = ConvPlan::<f64>::new(&[2, 3, 8, 8], &[4, 3, 5, 5], &ConvParam::new(2, 1)).unwrap();
    let e = plan
        .with_algorithm(ConvDirection::Forward, ConvAlgorithm::Winograd)
        .unwrap_err();
    assert_eq!(e.arg(), "algorithm");
    // dx runs direct only for stride 1.
    let e = plan
        .with_algorithm(ConvDirection::DataGrad, ConvAlgorithm::Direct)
        .unwrap_err();
    assert_eq!(e.arg(), "algorithm");
    for dir in [
        ConvDirection::Forward,
        ConvDirection::DataGrad,
        ConvDirection::WeightGrad,
    ] {
        let p = plan.with_algorithm(dir, ConvAlgorithm::Im2col).unwrap();
        assert_eq!(p.algorithm(dir), ConvAlgorithm::Im2col);
        assert!(format!("{p:?}").contains("forced"));
    }
}

#[test]
fn conv_cache_new_is_the_forwards_cache() {
    let mut rng = Rng::new(5);
    let p = ConvParam::new(2, 1).with_groups(2);
    let x: Tensor<f64> = rng.randn(&[2, 4, 7, 9], 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&[6, 2, 3, 3], 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[6], 1.0, 0.0);
    let (out, fwd) = conv_forward_naive(&x, &w, &b, &p).unwrap();
    let dout: Tensor<f64> = rng.randn(out.shape(), 1.0, 0.0);
    let made = ConvCache::new(&x, &w, &p).unwrap();
    assert_eq!(made.geom(), fwd.geom());
    assert_eq!(
        conv_backward_naive(&dout, &made).unwrap(),
        conv_backward_naive(&dout, &fwd).unwrap()
    );
    // Shapes are validated like the forward's: w's channels must be C / groups.
    let bad: Tensor<f64> = rng.randn(&[6, 4, 3, 3], 1.0, 0.0);
    let e = ConvCache::new(&x, &bad, &p).unwrap_err();
    assert_eq!(e.arg(), "w");
}

#[test]
fn pool_plan_checks_argmax_indices() {
    let mut rng = Rng::new(2);
    let x: Tensor<f64> = rng.randn(&[2, 2, 4, 4], 1.0, 0.0);
    let p = PoolParam::new(2, 2, 2);
    let par = Parallelism::Sequential;
    let plan = PoolPlan::<f64>::new(x.shape(), &p).unwrap();
    assert_eq!(plan.path(), PoolPath::TwoByTwo);
    let (mut out, mut idx) = (nan_t(&[2, 2, 2, 2]), vec![0u32; 16]);
    let mut short = nan_t(&[2, 2, 2, 1]);
    assert_eq!(
        plan.forward_into(&x, &mut short, &mut idx, &mut [], par)
            .unwrap_err()
            .arg(),
        "out"
    );
    assert!(untouched(short.data()));
    plan.forward_into(&x, &mut out, &mut idx, &mut [], par)
        .unwrap();
    let dout: Tensor<f64> = rng.randn(&[2, 2, 2, 2], 1.0, 0.0);
    let mut dx = nan_t(&[2, 2, 4, 4]);
    let mut corrupt = idx.clone();
    corrupt[5] = 16; // outside a 4x4 plane
    let e = plan
        .backward_into(&dout, &corrupt, &mut dx, &mut [], par)
        .unwrap_err();
    assert_eq!(e.arg(), "argmax");
    assert!(untouched(dx.data()));
    plan.backward_into(&dout, &idx, &mut dx, &mut [], par)
        .unwrap();
    let (_, cache) = max_pool_forward_naive(&x, &p).unwrap();
    assert_eq!(dx, max_pool_backward_naive(&dout, &cache).unwrap());
    // A path that does not apply is refused; the generic one always applies.
    let e = PoolPlan::<f64>::new(x.shape(), &PoolParam::new(3, 3, 1))
        .unwrap()
        .with_path(PoolPath::TwoByTwo)
        .unwrap_err();
    assert_eq!(e.arg(), "path");
    assert_eq!(
        plan.with_path(PoolPath::Generic).unwrap().path(),
        PoolPath::Generic
    );
}

#[test]
fn norm_plan_validates_and_matches() {
    let mut rng = Rng::new(3);
    let x: Tensor<f64> = rng.randn(&[3, 4, 2, 5], 2.0, 1.0);
    let g: Tensor<f64> = rng.randn(&[4], 1.0, 0.0);
    let par = Parallelism::Threads(2);
    let plan = NormPlan::<f64>::new(NormKind::SpatialBatchNorm, x.shape()).unwrap();
    let mut out = nan_t(x.shape());
    let mut bn = BnParam::train();
    let before = bn.clone();
    let mut short = nan_t(&[3, 4, 2, 4]);
    let e = plan
        .forward_into(&x, &g, &g, &mut bn, &mut short, &mut [], par)
        .unwrap_err();
    assert_eq!(e.arg(), "out");
    assert!(
        untouched(short.data()) && bn == before,
        "nothing written on error, bn_param included"
    );
    // The wrong kind of parameters for the layer.
    let e = plan
        .forward_into(&x, &g, &g, NormParam::default(), &mut out, &mut [], par)
        .unwrap_err();
    assert_eq!(e.arg(), "params");
    assert!(untouched(out.data()));
    let st = plan
        .forward_into(&x, &g, &g, &mut bn, &mut out, &mut [], par)
        .unwrap();
    let (want, cache) = spatial_batchnorm_forward(&x, &g, &g, &mut BnParam::train()).unwrap();
    assert_eq!(out, want);
    assert_eq!(st.mean(), cache.mean());
    assert_eq!(st.kind(), NormKind::SpatialBatchNorm);
    let dout: Tensor<f64> = rng.randn(x.shape(), 1.0, 0.0);
    let (mut dx, mut dg, mut db) = (nan_t(x.shape()), nan_t(&[4]), nan_t(&[4]));
    plan.backward_into(&x, &g, &st, &dout, &mut dx, &mut dg, &mut db, &mut [], par)
        .unwrap();
    let (ex, eg, eb) = spatial_batchnorm_backward(&dout, &cache).unwrap();
    assert_eq!((&dx, &dg, &db), (&ex, &eg, &eb));
}

#[test]
fn norm_stats_from_another_plan_are_refused() {
    // Formerly a caller could hand norm_backward_into hand-built statistics (group count 0
    // reached a division, a count not dividing C was accepted). Now only a forward builds
    // NormStats, and a backward accepts only its own plan's.
    let mut rng = Rng::new(4);
    let x: Tensor<f64> = rng.randn(&[2, 6, 3, 3], 1.0, 0.0);
    let g: Tensor<f64> = rng.randn(&[6], 1.0, 0.0);
    let par = Parallelism::Sequential;
    for groups in [0, 4] {
        let e = NormPlan::<f64>::new(NormKind::GroupNorm { groups }, x.shape()).unwrap_err();
        assert_eq!(e.arg(), "G");
    }
    let gn3 = NormPlan::<f64>::new(NormKind::GroupNorm { groups: 3 }, x.shape()).unwrap();
    let gn2 = NormPlan::<f64>::new(NormKind::GroupNorm { groups: 2 }, x.shape()).unwrap();
    let bn = NormPlan::<f64>::new(NormKind::SpatialBatchNorm, x.shape()).unwrap();
    let mut out = nan_t(x.shape());
    let st = gn3
        .forward_into(&x, &g, &g, NormParam::default(), &mut out, &mut [], par)
        .unwrap();
    let dout: Tensor<f64> = rng.randn(x.shape(), 1.0, 0.0);
    for other in [gn2, bn] {
        let (mut dx, mut dg, mut db) = (nan_t(x.shape()), nan_t(&[6]), nan_t(&[6]));
        let e = other
            .backward_into(&x, &g, &st, &dout, &mut dx, &mut dg, &mut db, &mut [], par)
            .unwrap_err();
        assert_eq!(e.arg(), "stats");
        assert!(untouched(dx.data()) && untouched(dg.data()) && untouched(db.data()));
    }
}

#[test]
fn conv_backward_weights_into_gives_backward_intos_dw_and_db() {
    // Every algorithm the plan can force for the weight gradient, on a shape each can run and
    // thread counts that take both the fused and the unfused dx schedule.
    let mut rng = Rng::new(41);
    // 24 x 24: 36 tiles of 4 x 4, a GEMM panel of them at every level (F(4x4, 3x3) runs).
    let (xs, ws_) = ([5, 16, 24, 24], [16, 16, 3, 3]);
    let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<f32> = rng.randn(&ws_, 0.3, 0.0);
    let p = ConvParam::new(1, 1);
    for alg in [
        ConvAlgorithm::Im2col,
        ConvAlgorithm::Direct,
        ConvAlgorithm::Winograd,
        ConvAlgorithm::Winograd4x4,
    ] {
        let Ok(plan) = ConvPlan::<f32>::new(&xs, &ws_, &p)
            .unwrap()
            .with_algorithm(ConvDirection::WeightGrad, alg)
        else {
            continue;
        };
        let dout: Tensor<f32> = rng.randn(&plan.geom().out_shape(), 1.0, 0.0);
        for threads in [1, 2, 3] {
            let par = Parallelism::Threads(threads);
            let mut ws = vec![0.0f32; plan.backward_workspace_len(par).unwrap()];
            let (mut dx, mut dw, mut db) = (
                Tensor::<f32>::zeros(&xs).unwrap(),
                Tensor::<f32>::zeros(&ws_).unwrap(),
                Tensor::<f32>::zeros(&[16]).unwrap(),
            );
            plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
                .unwrap();
            let (mut dw2, mut db2) = (
                Tensor::<f32>::full(&ws_, f32::NAN).unwrap(),
                Tensor::<f32>::full(&[16], f32::NAN).unwrap(),
            );
            plan.backward_weights_into(&x, &dout, &mut dw2, &mut db2, &mut ws, par)
                .unwrap();
            assert_eq!(dw.data(), dw2.data(), "{alg:?} threads {threads}");
            assert_eq!(db.data(), db2.data(), "{alg:?} threads {threads}");
            // A wrong dout shape is refused before anything is written.
            let bad = Tensor::<f32>::zeros(&[5, 16, 9, 8]).unwrap();
            let mut dw3 = Tensor::<f32>::full(&ws_, f32::NAN).unwrap();
            let e = plan
                .backward_weights_into(&x, &bad, &mut dw3, &mut db2, &mut ws, par)
                .unwrap_err();
            assert!(e.to_string().contains("dout"), "{e}");
            assert!(dw3.data().iter().all(|v| v.is_nan()));
        }
    }
}

/// Asserts bitwise equality (-0.0 differs from 0.0), naming the first element that differs.
fn same_bits<T: Float>(what: &str, a: &Tensor<T>, b: &Tensor<T>) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let first =
        (a.data().iter().zip(b.data())).position(|(u, v)| u.to_f().to_bits() != v.to_f().to_bits());
    if let Some(i) = first {
        panic!(
            "{what}: element {i} is {} against {}",
            a.data()[i],
            b.data()[i]
        );
    }
}

/// Plain plan + relu_forward / relu_backward + plain backward, against the fused plan: the
/// same bits for out, the mask, dx, dgamma, dbeta and the running statistics.
fn fused_relu_case<T: Float>(kind: NormKind, shape: &[usize], test_mode: bool, par: Parallelism) {
    let what = format!("{kind:?} {shape:?} test_mode={test_mode} {par:?}");
    let mut rng = Rng::new(shape.iter().product::<usize>() as u64);
    let x: Tensor<T> = rng.randn(shape, 1.5, 0.3);
    let c = shape[1];
    // beta shifts some channels mostly negative and some mostly positive: both sides of the
    // ReLU, and whole dead channels.
    let gamma: Tensor<T> = rng.randn(&[c], 1.0, 0.2);
    let beta: Tensor<T> = rng.randn(&[c], 1.5, 0.0);
    let dout: Tensor<T> = rng.randn(shape, 1.0, 0.0);
    let plain = NormPlan::<T>::new(kind, shape).unwrap();
    let fused = plain.with_relu();
    assert!(fused.relu() && !plain.relu());
    let mut bn_param = |()| {
        let mut p = BnParam::<T>::train();
        if test_mode {
            p.mode = Mode::Test;
            let rm: Tensor<T> = rng.randn(&[c], 0.3, 0.0);
            let rv: Tensor<T> = rng.randn(&[c], 0.2, 1.0);
            p.running_mean = Some(rm.into_vec());
            p.running_var = Some(rv.map(|v: &T| v.abs()).into_vec());
        }
        p
    };
    let (mut bp_plain, mut bp_fused) = (bn_param(()), bn_param(()));
    bp_fused.running_mean.clone_from(&bp_plain.running_mean);
    bp_fused.running_var.clone_from(&bp_plain.running_var);
    let run = |plan: &NormPlan<T>, bp: &mut BnParam<T>| {
        let mut out = Tensor::<T>::zeros(shape).unwrap();
        let st = if kind.is_batch() {
            plan.forward_into(&x, &gamma, &beta, bp, &mut out, &mut [], par)
        } else {
            plan.forward_into(
                &x,
                &gamma,
                &beta,
                NormParam::default(),
                &mut out,
                &mut [],
                par,
            )
        }
        .unwrap();
        (out, st)
    };
    let (y, st_plain) = run(&plain, &mut bp_plain);
    let (out, st) = run(&fused, &mut bp_fused);
    let (relu_out, relu_cache) = relu_forward(&y).unwrap();
    same_bits(&format!("{what}: out"), &out, &relu_out);
    assert!(st_plain.relu_mask().is_none());
    let mask = st.relu_mask().expect("a fused forward keeps its mask");
    let want: Vec<u8> = y.data().iter().map(|&v| u8::from(v > T::zero())).collect();
    assert!(mask == want.as_slice(), "{what}: mask");
    assert!(
        mask.contains(&0) && mask.contains(&1),
        "{what}: both sides of the ReLU"
    );
    assert_eq!(bp_plain, bp_fused, "{what}: running statistics");
    let grads = |plan: &NormPlan<T>, st: &NormStats, d: &Tensor<T>| {
        let mut dx = Tensor::<T>::zeros(shape).unwrap();
        let (mut dg, mut db) = (
            Tensor::<T>::zeros(&[c]).unwrap(),
            Tensor::zeros(&[c]).unwrap(),
        );
        plan.backward_into(&x, &gamma, st, d, &mut dx, &mut dg, &mut db, &mut [], par)
            .map(|()| (dx, dg, db))
    };
    let d_relu = relu_backward(&dout, &relu_cache).unwrap();
    let (ex, eg, eb) = grads(&plain, &st_plain, &d_relu).unwrap();
    let (dx, dg, db) = grads(&fused, &st, &dout).unwrap();
    same_bits(&format!("{what}: dx"), &dx, &ex);
    same_bits(&format!("{what}: dgamma"), &dg, &eg);
    same_bits(&format!("{what}: dbeta"), &db, &eb);
    // Statistics with a mask belong to the fused plan only, and the other way round.
    assert_eq!(grads(&plain, &st, &dout).unwrap_err().arg(), "stats");
    assert_eq!(grads(&fused, &st_plain, &dout).unwrap_err().arg(), "stats");
}

#[test]
fn fused_norm_relu_is_bitwise_the_unfused_pair() {
    // Per layout the paths of src/norm/fast.rs: short planes (one job per channel) and planes
    // of 64+ elements not a multiple of 64 (sample-major), (N, D) batch norm, layer norm and
    // group norm blocks; above NORM_PAR_MIN_ELEMS (32K) so that 2 threads split the work.
    let cases: [(NormKind, &[usize]); 6] = [
        (NormKind::SpatialBatchNorm, &[40, 8, 11, 11]),
        (NormKind::SpatialBatchNorm, &[6, 16, 19, 19]),
        (NormKind::BatchNorm, &[300, 130]),
        (NormKind::LayerNorm, &[50, 700]),
        (NormKind::GroupNorm { groups: 3 }, &[6, 12, 23, 23]),
        (NormKind::SpatialBatchNorm, &[2, 3, 4, 5]),
    ];
    for (kind, shape) in cases {
        for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
            for test_mode in [false, true] {
                if test_mode && !kind.is_batch() {
                    continue;
                }
                fused_relu_case::<f32>(kind, shape, test_mode, par);
                fused_relu_case::<f64>(kind, shape, test_mode, par);
            }
        }
    }
}

fn packed_forward_case<T: Float>(alg: ConvAlgorithm, groups: usize) {
    let mut rng = Rng::new(7 + groups as u64);
    // 24 x 23: 36 tiles of 4 x 4, a GEMM panel of them at every level (F(4x4, 3x3) runs).
    let (xs, ws_) = ([3, 8, 24, 23], [12, 8 / groups, 3, 3]);
    let p = ConvParam::new(1, 1).with_groups(groups);
    let base = ConvPlan::<T>::new(&xs, &ws_, &p).unwrap();
    let plan = match base.with_algorithm(ConvDirection::Forward, alg) {
        Ok(plan) => plan,
        // Only im2col runs without the explicit x86 kernels (FASTLAYERS_SIMD=portable).
        Err(_) if base.simd_level() == cpu::SimdLevel::Portable => return,
        Err(e) => panic!("{alg:?} groups {groups} is forcible here: {e}"),
    };
    assert_eq!(plan.algorithm(ConvDirection::Forward), alg);
    let w: Tensor<T> = rng.randn(&ws_, 0.3, 0.0);
    let b: Tensor<T> = rng.randn(&[12], 0.5, 0.0);
    let packed = plan.pack_weights(&w, &b).unwrap();
    let out_shape = plan.geom().out_shape();
    for threads in [1, 2] {
        let par = Parallelism::Threads(threads);
        let mut ws = vec![T::zero(); plan.forward_workspace_len(par).unwrap()];
        // Several inputs through the same packed weights, one with an infinity (Winograd's
        // fallback to im2col on non-finite data must see the same weights).
        for round in 0..3 {
            let mut x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
            if round == 2 {
                x.data_mut()[17] = T::infinity();
            }
            let mut want = Tensor::<T>::zeros(&out_shape).unwrap();
            plan.forward_into(&x, &w, &b, &mut want, &mut ws, par)
                .unwrap();
            let mut got = Tensor::<T>::full(&out_shape, T::nan()).unwrap();
            plan.forward_packed_into(&x, &packed, &mut got, &mut ws, par)
                .unwrap();
            let what = format!("{alg:?} groups {groups} threads {threads} round {round}");
            let same = want.data().iter().zip(got.data());
            assert!(
                same.clone()
                    .all(|(a, b)| a.to_f().to_bits() == b.to_f().to_bits()),
                "{what}: packed forward differs from forward_into"
            );
        }
    }
    // Weights packed by another plan (another algorithm, or another shape) are refused before
    // anything is written.
    let other = [ConvAlgorithm::Im2col, ConvAlgorithm::Direct]
        .into_iter()
        .find(|&o| o != alg)
        .unwrap();
    // At the portable level only im2col runs: then another shape (one more image) instead.
    let (plan2, xs2) = match base.with_algorithm(ConvDirection::Forward, other) {
        Ok(p2) => (p2, xs),
        Err(_) => {
            let xs2 = [xs[0] + 1, xs[1], xs[2], xs[3]];
            (ConvPlan::<T>::new(&xs2, &ws_, &p).unwrap(), xs2)
        }
    };
    let out_shape = plan2.geom().out_shape();
    let x: Tensor<T> = rng.randn(&xs2, 1.0, 0.0);
    let par = Parallelism::Sequential;
    let mut ws = vec![T::zero(); plan2.forward_workspace_len(par).unwrap()];
    let mut out = Tensor::<T>::full(&out_shape, T::nan()).unwrap();
    let e = plan2
        .forward_packed_into(&x, &packed, &mut out, &mut ws, par)
        .unwrap_err();
    assert_eq!(e.arg(), "weights");
    assert!(
        out.data().iter().all(|v| v.is_nan()),
        "nothing written on error"
    );
    let e = plan.pack_weights(&b, &b).unwrap_err();
    assert_eq!(e.arg(), "w");
}

#[test]
fn packed_weights_forward_is_bitwise_forward_into() {
    for alg in [
        ConvAlgorithm::Im2col,
        ConvAlgorithm::Direct,
        ConvAlgorithm::Winograd,
        ConvAlgorithm::Winograd4x4,
    ] {
        for groups in [1, 2] {
            packed_forward_case::<f32>(alg, groups);
            packed_forward_case::<f64>(alg, groups);
        }
    }
}

#[test]
fn affine_relu_dropout_and_loss_plans_match_the_notebook_functions() {
    let mut rng = Rng::new(77);
    // Affine on ThreeLayerConvNet's hidden layer shape, so that 2 threads split the products.
    let (xs, ws_) = ([50, 2, 16, 32], [1024, 100]);
    let x: Tensor<f64> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&ws_, 0.1, 0.0);
    let b: Tensor<f64> = rng.randn(&[100], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(&[50, 100], 1.0, 0.0);
    let plan = AffinePlan::<f64>::new(&xs, &ws_).unwrap();
    assert_eq!(plan.out_shape(), [50, 100]);
    assert_eq!(
        AffinePlan::<f64>::new(&xs, &[1023, 100]).unwrap_err().arg(),
        "w"
    );
    let (want, cache) = affine_forward(&x, &w, &b).unwrap();
    let (ex, ew, eb) = affine_backward(&dout, &cache).unwrap();
    for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
        let need = plan.workspace_len(par).unwrap();
        let (mut out, mut short) = (nan_t(&[50, 100]), nan_buf(need - 1));
        let e = plan
            .forward_into(&x, &w, &b, &mut out, &mut short, par)
            .unwrap_err();
        assert_eq!(e.arg(), "workspace");
        assert!(untouched(out.data()) && untouched(&short));
        let mut ws = nan_buf(need);
        plan.forward_into(&x, &w, &b, &mut out, &mut ws, par)
            .unwrap();
        assert_eq!(out, want, "{par:?}");
        let (mut dx, mut dw, mut db) = (nan_t(&xs), nan_t(&ws_), nan_t(&[100]));
        let e = plan
            .backward_into(
                &x,
                &w,
                &out,
                &mut dx,
                &mut dw,
                &mut nan_t(&[99]),
                &mut ws,
                par,
            )
            .unwrap_err();
        assert_eq!(e.arg(), "db");
        assert!(untouched(dx.data()) && untouched(dw.data()));
        plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
            .unwrap();
        assert_eq!((&dx, &dw, &db), (&ex, &ew, &eb), "{par:?}");
        let (mut dw2, mut db2) = (nan_t(&ws_), nan_t(&[100]));
        plan.backward_weights_into(&x, &dout, &mut dw2, &mut db2, &mut ws, par)
            .unwrap();
        assert_eq!((&dw2, &db2), (&ew, &eb));
    }
    // ReLU and dropout above the parallel threshold, NaN and signed zeros included.
    let shape = [4, 64, 33, 31];
    let mut x: Tensor<f64> = rng.randn(&shape, 1.0, 0.0);
    x.data_mut()[5] = f64::NAN;
    x.data_mut()[6] = -0.0;
    let d: Tensor<f64> = rng.randn(&shape, 1.0, 0.0);
    let relu_plan = ReluPlan::<f64>::new(&shape).unwrap();
    let (r, rc) = relu_forward(&x).unwrap();
    let rd = relu_backward(&d, &rc).unwrap();
    let dplan = DropoutPlan::<f64>::new(&shape).unwrap();
    let dp = DropoutParam::train(0.7, Some(9));
    let (dr, dc) = dropout_forward(&x, &dp).unwrap();
    let ddr = dropout_backward(&d, &dc).unwrap();
    let bits = |t: &Tensor<f64>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for par in [Parallelism::Sequential, Parallelism::Threads(2)] {
        let (mut out, mut dx) = (nan_t(&shape), nan_t(&shape));
        relu_plan.forward_into(&x, &mut out, &mut [], par).unwrap();
        relu_plan
            .backward_into(&x, &d, &mut dx, &mut [], par)
            .unwrap();
        assert_eq!(
            (bits(&out), bits(&dx)),
            (bits(&r), bits(&rd)),
            "relu {par:?}"
        );
        let mask = dplan.forward_into(&x, &dp, &mut out, &mut [], par).unwrap();
        assert_eq!(mask.seed(), Some(9));
        dplan
            .backward_into(&mask, &d, &mut dx, &mut [], par)
            .unwrap();
        assert_eq!(
            (bits(&out), bits(&dx)),
            (bits(&dr), bits(&ddr)),
            "dropout {par:?}"
        );
        let test = dplan
            .forward_into(&x, &DropoutParam::test(0.7), &mut out, &mut [], par)
            .unwrap();
        assert_eq!(bits(&out), bits(&x), "test mode is the identity");
        dplan
            .backward_into(&test, &d, &mut dx, &mut [], par)
            .unwrap();
        assert_eq!(bits(&dx), bits(&d));
    }
    let mut out = nan_t(&shape);
    let e = dplan
        .forward_into(
            &x,
            &DropoutParam::train(1.5, None),
            &mut out,
            &mut [],
            Parallelism::Sequential,
        )
        .unwrap_err();
    assert_eq!(e.arg(), "p");
    let e = relu_plan
        .forward_into(
            &x,
            &mut nan_t(&[4, 64, 33, 30]),
            &mut [],
            Parallelism::Sequential,
        )
        .unwrap_err();
    assert_eq!(e.arg(), "out");
    assert!(untouched(out.data()));
    // Losses: the notebook functions' values and dx; labels checked before dx is written.
    let scores: Tensor<f64> = rng.randn(&[20, 10], 2.0, 0.0);
    let y: Vec<usize> = (0..20).map(|i| (i * 7) % 10).collect();
    for kind in [LossKind::Softmax, LossKind::Svm] {
        let lp = LossPlan::<f64>::new(kind, scores.shape()).unwrap();
        let (want_loss, want_dx) = match kind {
            LossKind::Softmax => softmax_loss(&scores, &y),
            LossKind::Svm => svm_loss(&scores, &y),
        }
        .unwrap();
        let mut dx = nan_t(&[20, 10]);
        let mut bad = y.clone();
        bad[3] = 10;
        let e = lp
            .loss_into(&scores, &bad, &mut dx, &mut [], Parallelism::Sequential)
            .unwrap_err();
        assert_eq!(e.arg(), "y");
        assert!(untouched(dx.data()));
        let loss = lp
            .loss_into(&scores, &y, &mut dx, &mut [], Parallelism::Sequential)
            .unwrap();
        assert_eq!(loss.to_bits(), want_loss.to_bits(), "{kind:?}");
        assert_eq!(bits(&dx), bits(&want_dx), "{kind:?}");
    }
    assert_eq!(
        LossPlan::<f64>::new(LossKind::Svm, &[0, 10])
            .unwrap_err()
            .arg(),
        "x"
    );
}

/// `measure` only chooses: its plan's results are bitwise those of the same algorithms forced
/// with `with_algorithm`, every direction says it was measured, and F(4x4) Winograd is never an
/// f32 choice (as in the cost model).
fn measured_case<T: Float>() {
    let mut rng = Rng::new(77);
    // 3 x 3, stride 1, 16 channels, 16 x 16: every algorithm can run every direction.
    let (xs, ws_) = ([4, 16, 16, 16], [16, 16, 3, 3]);
    let p = ConvParam::new(1, 1);
    let plan = ConvPlan::<T>::new(&xs, &ws_, &p).unwrap();
    let par = Parallelism::Threads(2);
    let m = plan.measure(par).unwrap();
    let dirs = [
        ConvDirection::Forward,
        ConvDirection::DataGrad,
        ConvDirection::WeightGrad,
    ];
    let shown = format!("{m:?}");
    assert_eq!(shown.matches("measured").count(), 3, "{shown}");
    let forced = dirs
        .iter()
        .fold(plan, |pl, &d| pl.with_algorithm(d, m.algorithm(d)).unwrap());
    for d in dirs {
        assert_eq!(forced.algorithm(d), m.algorithm(d));
        if std::mem::size_of::<T>() == 4 {
            assert_ne!(m.algorithm(d), ConvAlgorithm::Winograd4x4, "{shown}");
        }
    }
    let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<T> = rng.randn(&ws_, 0.3, 0.0);
    let b: Tensor<T> = rng.randn(&[16], 0.5, 0.0);
    let dout: Tensor<T> = rng.randn(&plan.geom().out_shape(), 1.0, 0.0);
    let run = |pl: &ConvPlan<T>| {
        let mut ws = vec![T::zero(); pl.workspace_len(par).unwrap()];
        let mut out = Tensor::<T>::zeros(&pl.geom().out_shape()).unwrap();
        pl.forward_into(&x, &w, &b, &mut out, &mut ws, par).unwrap();
        let (mut dx, mut dw, mut db) = (
            Tensor::<T>::zeros(&xs).unwrap(),
            Tensor::<T>::zeros(&ws_).unwrap(),
            Tensor::<T>::zeros(&[16]).unwrap(),
        );
        pl.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
            .unwrap();
        [out, dx, dw, db].map(|t| {
            t.data()
                .iter()
                .map(|v| v.to_f().to_bits())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(&m), run(&forced), "{shown}");
}

#[test]
fn measured_plan_only_chooses() {
    measured_case::<f32>();
    measured_case::<f64>();
}
