//! Bitwise determinism under any thread count, and algebraic identities that need no reference.

#![allow(clippy::needless_range_loop)]

mod common;

use fastlayers::*;

fn bits<T: Float>(v: &[T]) -> Vec<u64> {
    v.iter().map(|x| x.to_f().to_bits()).collect()
}

/// A convolution's forward and backward outputs (random x, w, b, dout) computed with `par`.
fn conv_bits<T: Float>(
    rng: &mut Rng,
    (xs, ws, p): ([usize; 4], [usize; 4], ConvParam),
    par: Parallelism<'_>,
) -> [Vec<u64>; 4] {
    conv_bits_with::<T>(rng, (xs, ws, p), None, par)
}

/// `conv_bits` with every direction forced to `alg` (where it can run).
fn conv_bits_with<T: Float>(
    rng: &mut Rng,
    (xs, ws, p): ([usize; 4], [usize; 4], ConvParam),
    alg: Option<ConvAlgorithm>,
    par: Parallelism<'_>,
) -> [Vec<u64>; 4] {
    let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
    let w: Tensor<T> = rng.randn(&ws, 1.0, 0.0);
    let b: Tensor<T> = rng.randn(&[ws[0]], 1.0, 0.0);
    let mut plan = ConvPlan::<T>::new(&xs, &ws, &p).unwrap();
    if let Some(alg) = alg {
        for dir in [
            ConvDirection::Forward,
            ConvDirection::DataGrad,
            ConvDirection::WeightGrad,
        ] {
            plan = plan.with_algorithm(dir, alg).unwrap_or(plan);
        }
    }
    let mut wsb = vec![T::zero(); plan.workspace_len(par).unwrap()];
    let g = *plan.geom();
    let mut out = Tensor::zeros(&g.out_shape()).unwrap();
    plan.forward_into(&x, &w, &b, &mut out, &mut wsb, par)
        .unwrap();
    let dout: Tensor<T> = rng.randn(&g.out_shape(), 1.0, 0.0);
    let (mut dx, mut dw, mut db) = (
        Tensor::zeros(&xs).unwrap(),
        Tensor::zeros(&ws).unwrap(),
        Tensor::zeros(&[ws[0]]).unwrap(),
    );
    plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut wsb, par)
        .unwrap();
    [
        bits(out.data()),
        bits(dx.data()),
        bits(dw.data()),
        bits(db.data()),
    ]
}

/// A max pool's forward and backward outputs (random x, dout) computed with `par`.
fn pool_bits<T: Float>(
    rng: &mut Rng,
    xs: [usize; 4],
    pp: PoolParam,
    par: Parallelism<'_>,
) -> [Vec<u64>; 2] {
    let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
    let plan = PoolPlan::<T>::new(x.shape(), &pp).unwrap();
    let gp = *plan.geom();
    let n: usize = gp.out_shape().iter().product();
    let (mut o, mut idx) = (Tensor::zeros(&gp.out_shape()).unwrap(), vec![0u32; n]);
    plan.forward_into(&x, &mut o, &mut idx, &mut [], par)
        .unwrap();
    let dout: Tensor<T> = rng.randn(&gp.out_shape(), 1.0, 0.0);
    let mut dxp = Tensor::zeros(x.shape()).unwrap();
    plan.backward_into(&dout, &idx, &mut dxp, &mut [], par)
        .unwrap();
    [bits(o.data()), bits(dxp.data())]
}

/// Every fast kernel's outputs, computed with `par`.
fn run_all<T: Float>(par: Parallelism<'_>) -> Vec<Vec<u64>> {
    let mut rng = Rng::new(77);
    let mut outs = Vec::new();
    // Convolution with groups, stride and padding; N not a multiple of any thread count.
    let p = ConvParam::new(2, 1).with_groups(2);
    outs.extend(conv_bits::<T>(
        &mut rng,
        ([5, 6, 11, 9], [8, 3, 3, 3], p),
        par,
    ));
    // A conv on the direct path at the AVX2 level (stride 1, 16-wide rows, 16 channels: direct
    // forward, dx and dw), with N = 3 chunks: fused into one phase at 1 and 3 threads, not at 2,
    // 7 or 16.
    let p = ConvParam::new(1, 1);
    outs.extend(conv_bits::<T>(
        &mut rng,
        ([3, 16, 6, 16], [4, 16, 3, 3], p),
        par,
    ));
    // A conv on the Winograd path (3 x 3, stride 1, 96 channels and filters, 8 x 8 tiles),
    // forward and dx, with N = 5.
    outs.extend(conv_bits::<T>(
        &mut rng,
        ([5, 96, 16, 16], [96, 96, 3, 3], p),
        par,
    ));
    // Winograd on small images (8 x 8: 16 tiles, so blocks of 4 whole images) with N = 5: a
    // last block of one image, dw chunks of 1, 1, 1 and 2 images.
    outs.extend(conv_bits::<T>(
        &mut rng,
        ([5, 96, 8, 8], [96, 96, 3, 3], p),
        par,
    ));
    // F(4x4, 3x3) on every direction (the f64 cost model's choice from 64 channels and 64
    // tiles; forced for f32), N = 3.
    outs.extend(conv_bits_with::<T>(
        &mut rng,
        ([3, 16, 32, 32], [16, 16, 3, 3], p),
        Some(ConvAlgorithm::Winograd4x4),
        par,
    ));
    // Pooling, overlapping.
    let pp = PoolParam::new(3, 3, 2).with_pad(1, 1);
    outs.extend(pool_bits::<T>(&mut rng, [3, 5, 9, 10], pp, par));
    // Pooling large enough to run on several threads (above the sequential cut-off of 512K
    // elements, and many jobs of planes), 2x2 stride 2.
    outs.extend(pool_bits::<T>(
        &mut rng,
        [2, 80, 64, 64],
        PoolParam::new(2, 2, 2),
        par,
    ));
    // Norms: spatial batch norm, group norm, layer norm, batch norm (N, D). Above
    // NORM_PAR_MIN_ELEMS (32K), below which a norm call runs on the calling thread.
    let x: Tensor<T> = rng.randn(&[7, 6, 25, 33], 3.0, 5.0);
    let gm: Tensor<T> = rng.randn(&[6], 1.0, 0.0);
    let bt: Tensor<T> = rng.randn(&[6], 1.0, 0.0);
    let dout: Tensor<T> = rng.randn(x.shape(), 1.0, 0.0);
    // One forward and backward through a NormPlan; the outputs' and statistics' bits.
    let norm = |kind: NormKind,
                x: &Tensor<T>,
                g: &Tensor<T>,
                b: &Tensor<T>,
                dout: &Tensor<T>,
                params: NormParams<'_, T>|
     -> Vec<Vec<u64>> {
        let plan = NormPlan::<T>::new(kind, x.shape()).unwrap();
        let c = plan.channels();
        let mut o = Tensor::zeros(x.shape()).unwrap();
        let mut dx = Tensor::zeros(x.shape()).unwrap();
        let (mut dg, mut db) = (Tensor::zeros(&[c]).unwrap(), Tensor::zeros(&[c]).unwrap());
        let st = plan
            .forward_into(x, g, b, params, &mut o, &mut [], par)
            .unwrap();
        plan.backward_into(x, g, &st, dout, &mut dx, &mut dg, &mut db, &mut [], par)
            .unwrap();
        vec![
            bits(o.data()),
            bits(dx.data()),
            bits(dg.data()),
            bits(db.data()),
            bits(st.mean()),
            bits(st.inv_std()),
        ]
    };
    outs.extend(norm(
        NormKind::SpatialBatchNorm,
        &x,
        &gm,
        &bt,
        &dout,
        (&mut BnParam::train()).into(),
    ));
    outs.extend(norm(
        NormKind::GroupNorm { groups: 3 },
        &x,
        &gm,
        &bt,
        &dout,
        NormParam::default().into(),
    ));
    let x2 = x.clone().reshape(&[7, 4950]).unwrap();
    let d2 = dout.clone().reshape(&[7, 4950]).unwrap();
    let g2: Tensor<T> = rng.randn(&[4950], 1.0, 0.0);
    outs.extend(norm(
        NormKind::LayerNorm,
        &x2,
        &g2,
        &g2,
        &d2,
        NormParam::default().into(),
    ));
    outs.extend(norm(
        NormKind::BatchNorm,
        &x2,
        &g2,
        &g2,
        &d2,
        (&mut BnParam::train()).into(),
    ));
    // Affine: ThreeLayerConvNet's hidden layer shape (the products split over the threads).
    let (n, d, m) = (50, 2048, 100);
    let x: Tensor<T> = rng.randn(&[n, 2, 32, 32], 1.0, 0.0);
    let w: Tensor<T> = rng.randn(&[d, m], 1.0, 0.0);
    let b: Tensor<T> = rng.randn(&[m], 1.0, 0.0);
    let dout: Tensor<T> = rng.randn(&[n, m], 1.0, 0.0);
    let mut out = Tensor::zeros(&[n, m]).unwrap();
    let plan = AffinePlan::<T>::new(x.shape(), w.shape()).unwrap();
    let mut ws = vec![T::zero(); plan.workspace_len(par).unwrap()];
    plan.forward_into(&x, &w, &b, &mut out, &mut ws, par)
        .unwrap();
    let (mut dx, mut dw, mut db) = (
        Tensor::zeros(x.shape()).unwrap(),
        Tensor::zeros(&[d, m]).unwrap(),
        Tensor::zeros(&[m]).unwrap(),
    );
    plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws, par)
        .unwrap();
    outs.extend([
        bits(out.data()),
        bits(dx.data()),
        bits(dw.data()),
        bits(db.data()),
    ]);
    outs
}

fn check_threads<T: Float>() {
    let base = run_all::<T>(Parallelism::Sequential);
    for n in [1, 2, 7, 16] {
        assert!(
            run_all::<T>(Parallelism::Threads(n)) == base,
            "{} differs with {n} threads",
            T::NAME
        );
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    assert!(
        run_all::<T>(Parallelism::Pool(&pool)) == base,
        "differs in a caller's pool"
    );
    assert!(
        pool.install(|| run_all::<T>(Parallelism::Current)) == base,
        "differs in Current"
    );
    assert!(
        pool.install(|| run_all::<T>(Parallelism::Pool(&pool))) == base,
        "differs in a caller's pool, called from one of its threads"
    );
    assert!(
        run_all::<T>(Parallelism::Current) == base,
        "differs in Current, called from outside any pool"
    );
}

#[test]
fn bitwise_identical_for_any_thread_count_f32() {
    check_threads::<f32>();
}

#[test]
fn bitwise_identical_for_any_thread_count_f64() {
    check_threads::<f64>();
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn conv_adjoint_identities() {
    // <conv(x, w), dy> = <x, dx(dy)> = <w, dw(dy)> (bias zero): the backward is the adjoint of the
    // forward in each argument. Independent of any reference implementation.
    let mut rng = Rng::new(3);
    for (xs, ws, p) in [
        (
            [2, 4, 9, 8],
            [6, 2, 3, 3],
            ConvParam::new(2, 1).with_groups(2),
        ),
        (
            [3, 3, 7, 7],
            [5, 3, 2, 3],
            ConvParam::new(1, 2).with_dilation(2, 1).with_stride(1, 2),
        ),
        ([4, 64, 8, 8], [32, 64, 3, 3], ConvParam::new(1, 1)),
    ] {
        let x: Tensor<f64> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<f64> = rng.randn(&ws, 1.0, 0.0);
        let b = Tensor::<f64>::zeros(&[ws[0]]).unwrap();
        let (y, cache) = conv_forward_fast(&x, &w, &b, &p).unwrap();
        let dy: Tensor<f64> = rng.randn(y.shape(), 1.0, 0.0);
        let (dx, dw, db) = conv_backward_fast(&dy, &cache).unwrap();
        let lhs = dot(y.data(), dy.data());
        let scale: f64 = y
            .data()
            .iter()
            .zip(dy.data())
            .map(|(a, b)| (a * b).abs())
            .sum();
        assert!(
            (lhs - dot(x.data(), dx.data())).abs() <= 1e-12 * scale,
            "dx adjoint"
        );
        assert!(
            (lhs - dot(w.data(), dw.data())).abs() <= 1e-12 * scale,
            "dw adjoint"
        );
        // db is the adjoint of adding the bias: <1_f broadcast, dy> = db[f].
        let per_f = y.shape()[2] * y.shape()[3];
        for f in 0..ws[0] {
            let s: f64 = (0..xs[0])
                .map(|n| {
                    dy.data()[(n * ws[0] + f) * per_f..(n * ws[0] + f + 1) * per_f]
                        .iter()
                        .sum::<f64>()
                })
                .sum();
            assert!((s - db.data()[f]).abs() <= 1e-12 * s.abs().max(1.0));
        }
    }
}

#[test]
fn pool_backward_conserves_the_sum_of_dout() {
    let mut rng = Rng::new(4);
    for p in [
        PoolParam::new(2, 2, 2),
        PoolParam::new(3, 3, 2).with_pad(1, 1).with_ceil_mode(true),
        PoolParam::new(3, 2, 1),
    ] {
        let x: Tensor<f64> = rng.randn(&[2, 3, 11, 9], 1.0, 0.0);
        let (y, cache) = max_pool_forward_fast(&x, &p).unwrap();
        let dy: Tensor<f64> = rng.randn(y.shape(), 1.0, 0.0);
        let dx = max_pool_backward_fast(&dy, &cache).unwrap();
        let (a, b): (f64, f64) = (dx.data().iter().sum(), dy.data().iter().sum());
        assert!((a - b).abs() < 1e-12 * dy.len() as f64);
        // Nonzero dx only at positions some window picked, each an element of x.
        let (out, _) = max_pool_forward_fast(&x, &p).unwrap();
        for (i, &v) in dx.data().iter().enumerate() {
            if v != 0.0 {
                assert!(out.data().contains(&x.data()[i]));
            }
        }
    }
}

#[test]
fn norm_gradient_sums() {
    // dbeta sums dout over everything but the channel: summing dbeta over channels gives the sum
    // of dout; and for batch statistics dx sums to zero within every statistic group.
    let mut rng = Rng::new(5);
    let x: Tensor<f64> = rng.randn(&[4, 6, 3, 5], 2.0, 1.0);
    let g: Tensor<f64> = rng.randn(&[6], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(x.shape(), 1.0, 0.0);
    let (_, c) = spatial_batchnorm_forward(&x, &g, &g, &mut BnParam::train()).unwrap();
    let (dx, _, dbeta) = spatial_batchnorm_backward(&dout, &c).unwrap();
    let total: f64 = dout.data().iter().sum();
    assert!((dbeta.data().iter().sum::<f64>() - total).abs() < 1e-12 * dout.len() as f64);
    for ch in 0..6 {
        let s: f64 = (0..4)
            .map(|n| {
                dx.data()[(n * 6 + ch) * 15..(n * 6 + ch + 1) * 15]
                    .iter()
                    .sum::<f64>()
            })
            .sum();
        assert!(s.abs() < 1e-12, "channel {ch}: {s}");
    }
    let (_, c) = spatial_groupnorm_forward(&x, &g, &g, 2, &NormParam::default()).unwrap();
    let (dx, _, dbeta) = spatial_groupnorm_backward(&dout, &c).unwrap();
    assert!((dbeta.data().iter().sum::<f64>() - total).abs() < 1e-12 * dout.len() as f64);
    for grp in dx.data().chunks(3 * 15) {
        assert!(grp.iter().sum::<f64>().abs() < 1e-12);
    }
}

/// Concurrent calls: OS threads at once, each running every kernel with its own kind of
/// parallelism (sequential, the kept teams of 2 and 16 threads, the caller-works team of
/// `Current`, pools of 1 and 16 threads, two threads sharing one pool, calls from inside a
/// pool), all against one sequential run. A deadlock fails the test by timeout instead of
/// hanging it.
#[test]
fn concurrent_calls_from_os_threads_and_pools_give_the_same_bits() {
    use std::sync::mpsc;
    use std::time::Duration;
    let base = std::sync::Arc::new(run_all::<f32>(Parallelism::Sequential));
    let pool1 = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let pool16 = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let kinds = [
        "sequential",
        "threads2",
        "threads16",
        "current",
        "pool1",
        "pool16",
        "pool16-again",
        "inside-pool16",
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let (tx, base, pool1, pool16) = (tx.clone(), base.clone(), pool1.clone(), pool16.clone());
        std::thread::spawn(move || {
            let got = match kind {
                "sequential" => run_all::<f32>(Parallelism::Sequential),
                "threads2" => run_all::<f32>(Parallelism::Threads(2)),
                "threads16" => run_all::<f32>(Parallelism::Threads(16)),
                "current" => run_all::<f32>(Parallelism::Current),
                "pool1" => run_all::<f32>(Parallelism::Pool(&pool1)),
                "pool16" | "pool16-again" => run_all::<f32>(Parallelism::Pool(&pool16)),
                _ => pool16.install(|| run_all::<f32>(Parallelism::Current)),
            };
            tx.send((i, kind, got == *base)).unwrap();
        });
    }
    drop(tx);
    let mut done = vec![false; kinds.len()];
    for _ in 0..kinds.len() {
        let (i, kind, same) = rx
            .recv_timeout(Duration::from_secs(600))
            .expect("a concurrent call panicked or did not finish within 10 minutes (deadlock)");
        assert!(
            same,
            "{kind}: bits differ from the sequential run when run concurrently"
        );
        done[i] = true;
    }
    assert!(done.iter().all(|&d| d), "a thread panicked");
}
