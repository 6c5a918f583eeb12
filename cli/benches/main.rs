//! Criterion benchmarks: naive vs fast on the notebook's timing-cell shapes, fast on the named
//! shapes shared with ../shared/anchors/torch_layers.py. Run: `cargo bench` (or
//! `cargo bench -- conv` for one family). CI compiles these but does not run them.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastlayers::*;
use fastlayers_cli::bench::{CONV_SHAPES, GN_GROUPS, NORM_SHAPE, POOL_SHAPES};
use std::hint::black_box;
use std::time::Duration;

fn conv(c: &mut Criterion) {
    let mut rng = Rng::new(231);
    // The notebook's timing cell, f64: naive against fast.
    let mut g = c.benchmark_group("conv_notebook_cell_f64");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let x: Tensor<f64> = rng.randn(&[100, 3, 31, 31], 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&[25, 3, 3, 3], 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[25], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(&[100, 25, 16, 16], 1.0, 0.0);
    let p = ConvParam::new(2, 1);
    let geom = ConvGeom::new(x.shape(), w.shape(), b.shape(), &p).unwrap();
    g.throughput(Throughput::Elements(geom.flops() as u64));
    g.bench_function("forward/naive", |bch| {
        bch.iter(|| conv_forward_naive(black_box(&x), &w, &b, &p).unwrap())
    });
    g.bench_function("forward/fast", |bch| {
        bch.iter(|| conv_forward_fast(black_box(&x), &w, &b, &p).unwrap())
    });
    let (_, cn) = conv_forward_naive(&x, &w, &b, &p).unwrap();
    let (_, cf) = conv_forward_fast(&x, &w, &b, &p).unwrap();
    g.bench_function("backward/naive", |bch| {
        bch.iter(|| conv_backward_naive(black_box(&dout), &cn).unwrap())
    });
    g.bench_function("backward/fast", |bch| {
        bch.iter(|| conv_backward_fast(black_box(&dout), &cf).unwrap())
    });
    g.finish();

    // Named shapes, f32, framework entry points (buffers allocated once).
    let mut g = c.benchmark_group("conv_named_f32");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let par = Parallelism::Current;
    for (name, xs, ws, s, pad) in CONV_SHAPES {
        let p = ConvParam::new(s, pad);
        let plan = ConvPlan::<f32>::new(&xs, &ws, &p).unwrap();
        let geom = *plan.geom();
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<f32> = rng.randn(&ws, 1.0, 0.0);
        let b: Tensor<f32> = rng.randn(&[ws[0]], 1.0, 0.0);
        let dout: Tensor<f32> = rng.randn(&geom.out_shape(), 1.0, 0.0);
        let mut wsb = vec![0f32; plan.workspace_len(par).unwrap()];
        let mut out = Tensor::zeros(&geom.out_shape()).unwrap();
        let (mut dx, mut dw, mut db) = (
            Tensor::zeros(&xs).unwrap(),
            Tensor::zeros(&ws).unwrap(),
            Tensor::zeros(&[ws[0]]).unwrap(),
        );
        g.throughput(Throughput::Elements(geom.flops() as u64));
        g.bench_function(BenchmarkId::new("forward", name), |bch| {
            bch.iter(|| {
                plan.forward_into(black_box(&x), &w, &b, &mut out, &mut wsb, par)
                    .unwrap()
            })
        });
        g.throughput(Throughput::Elements(2 * geom.flops() as u64));
        g.bench_function(BenchmarkId::new("backward", name), |bch| {
            bch.iter(|| {
                plan.backward_into(
                    black_box(&x),
                    &w,
                    &dout,
                    &mut dx,
                    &mut dw,
                    &mut db,
                    &mut wsb,
                    par,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

fn pool(c: &mut Criterion) {
    let mut rng = Rng::new(231);
    let mut g = c.benchmark_group("pool_notebook_cell_f64");
    let x: Tensor<f64> = rng.randn(&[100, 3, 32, 32], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(&[100, 3, 16, 16], 1.0, 0.0);
    let p = PoolParam::new(2, 2, 2);
    g.bench_function("forward/naive", |bch| {
        bch.iter(|| max_pool_forward_naive(black_box(&x), &p).unwrap())
    });
    g.bench_function("forward/fast", |bch| {
        bch.iter(|| max_pool_forward_fast(black_box(&x), &p).unwrap())
    });
    let (_, cn) = max_pool_forward_naive(&x, &p).unwrap();
    let (_, cf) = max_pool_forward_fast(&x, &p).unwrap();
    g.bench_function("backward/naive", |bch| {
        bch.iter(|| max_pool_backward_naive(black_box(&dout), &cn).unwrap())
    });
    g.bench_function("backward/fast", |bch| {
        bch.iter(|| max_pool_backward_fast(black_box(&dout), &cf).unwrap())
    });
    g.finish();

    let mut g = c.benchmark_group("pool_named_f32");
    let par = Parallelism::Current;
    for (name, xs, k, s) in POOL_SHAPES {
        let p = PoolParam::new(k, k, s);
        let plan = PoolPlan::<f32>::new(&xs, &p).unwrap();
        let geom = *plan.geom();
        let n: usize = geom.out_shape().iter().product();
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let dout: Tensor<f32> = rng.randn(&geom.out_shape(), 1.0, 0.0);
        let (mut out, mut idx, mut dx) = (
            Tensor::zeros(&geom.out_shape()).unwrap(),
            vec![0u32; n],
            Tensor::zeros(&xs).unwrap(),
        );
        g.bench_function(BenchmarkId::new("forward", name), |bch| {
            bch.iter(|| {
                plan.forward_into(black_box(&x), &mut out, &mut idx, &mut [], par)
                    .unwrap()
            })
        });
        g.bench_function(BenchmarkId::new("backward", name), |bch| {
            bch.iter(|| {
                plan.backward_into(black_box(&dout), &idx, &mut dx, &mut [], par)
                    .unwrap()
            })
        });
    }
    g.finish();
}

fn norm(c: &mut Criterion) {
    let mut rng = Rng::new(231);
    let mut g = c.benchmark_group("norm_named_f32");
    let par = Parallelism::Current;
    let xs = NORM_SHAPE;
    let ch = xs[1];
    let x: Tensor<f32> = rng.randn(&xs, 4.0, 10.0);
    let gm: Tensor<f32> = rng.randn(&[ch], 1.0, 0.0);
    let bt: Tensor<f32> = rng.randn(&[ch], 1.0, 0.0);
    let dout: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
    let (mut out, mut dx, mut dg, mut db) = (
        Tensor::zeros(&xs).unwrap(),
        Tensor::zeros(&xs).unwrap(),
        Tensor::zeros(&[ch]).unwrap(),
        Tensor::zeros(&[ch]).unwrap(),
    );
    let mut bn = BnParam::train();
    let bnp = NormPlan::<f32>::new(NormKind::SpatialBatchNorm, &xs).unwrap();
    let st = bnp
        .forward_into(&x, &gm, &bt, &mut bn, &mut out, &mut [], par)
        .unwrap();
    g.bench_function("bn_forward/naive", |bch| {
        bch.iter(|| {
            spatial_batchnorm_forward_naive(black_box(&x), &gm, &bt, &mut BnParam::train()).unwrap()
        })
    });
    g.bench_function("bn_forward/fast", |bch| {
        bch.iter(|| {
            bnp.forward_into(black_box(&x), &gm, &bt, &mut bn, &mut out, &mut [], par)
                .unwrap()
        })
    });
    g.bench_function("bn_backward/fast", |bch| {
        bch.iter(|| {
            bnp.backward_into(
                black_box(&x),
                &gm,
                &st,
                &dout,
                &mut dx,
                &mut dg,
                &mut db,
                &mut [],
                par,
            )
            .unwrap()
        })
    });
    let gp = NormParam::default();
    let gnp = NormPlan::<f32>::new(NormKind::GroupNorm { groups: GN_GROUPS }, &xs).unwrap();
    let st = gnp
        .forward_into(&x, &gm, &bt, gp, &mut out, &mut [], par)
        .unwrap();
    g.bench_function("gn_forward/naive", |bch| {
        bch.iter(|| {
            spatial_groupnorm_forward_naive(black_box(&x), &gm, &bt, GN_GROUPS, &gp).unwrap()
        })
    });
    g.bench_function("gn_forward/fast", |bch| {
        bch.iter(|| {
            gnp.forward_into(black_box(&x), &gm, &bt, gp, &mut out, &mut [], par)
                .unwrap()
        })
    });
    g.bench_function("gn_backward/fast", |bch| {
        bch.iter(|| {
            gnp.backward_into(
                black_box(&x),
                &gm,
                &st,
                &dout,
                &mut dx,
                &mut dg,
                &mut db,
                &mut [],
                par,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, conv, pool, norm);
criterion_main!(benches);
