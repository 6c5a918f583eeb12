//! Criterion benchmarks: naive vs fast on the notebook's timing-cell shapes, fast on the named
//! shapes shared with ../shared/anchors/torch_layers.py. Run: `cargo bench` (or
//! `cargo bench -- conv` for one family). CI compiles these but does not run them.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fastlayers::bench::{CONV_SHAPES, GN_GROUPS, NORM_SHAPE, POOL_SHAPES};
use fastlayers::*;
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
        let geom = ConvGeom::new(&xs, &ws, &[ws[0]], &p).unwrap();
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<f32> = rng.randn(&ws, 1.0, 0.0);
        let b: Tensor<f32> = rng.randn(&[ws[0]], 1.0, 0.0);
        let dout: Tensor<f32> = rng.randn(&geom.out_shape(), 1.0, 0.0);
        let mut wsb = vec![0f32; conv_workspace_len::<f32>(&xs, &ws, &p, par).unwrap()];
        let mut out = vec![0f32; geom.out_shape().iter().product()];
        let (mut dx, mut dw, mut db) =
            (vec![0f32; x.len()], vec![0f32; w.len()], vec![0f32; ws[0]]);
        g.throughput(Throughput::Elements(geom.flops() as u64));
        g.bench_function(BenchmarkId::new("forward", name), |bch| {
            bch.iter(|| {
                conv_forward_into(black_box(&x), &w, &b, &p, &mut out, &mut wsb, par).unwrap()
            })
        });
        g.throughput(Throughput::Elements(2 * geom.flops() as u64));
        g.bench_function(BenchmarkId::new("backward", name), |bch| {
            bch.iter(|| {
                conv_backward_into(
                    black_box(&x),
                    &w,
                    &dout,
                    &p,
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
        let geom = PoolGeom::new(&xs, &p).unwrap();
        let n: usize = geom.out_shape().iter().product();
        let x: Tensor<f32> = rng.randn(&xs, 1.0, 0.0);
        let dout: Tensor<f32> = rng.randn(&geom.out_shape(), 1.0, 0.0);
        let (mut out, mut idx, mut dx) = (vec![0f32; n], vec![0u32; n], vec![0f32; x.len()]);
        g.bench_function(BenchmarkId::new("forward", name), |bch| {
            bch.iter(|| max_pool_forward_into(black_box(&x), &p, &mut out, &mut idx, par).unwrap())
        });
        g.bench_function(BenchmarkId::new("backward", name), |bch| {
            bch.iter(|| {
                max_pool_backward_into(black_box(&dout), &idx, &xs, &p, &mut dx, par).unwrap()
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
        vec![0f32; x.len()],
        vec![0f32; x.len()],
        vec![0f32; ch],
        vec![0f32; ch],
    );
    let mut bn = BnParam::train();
    let st = batchnorm_forward_into(true, &x, &gm, &bt, &mut bn, &mut out, par).unwrap();
    g.bench_function("bn_forward/naive", |bch| {
        bch.iter(|| {
            spatial_batchnorm_forward_naive(black_box(&x), &gm, &bt, &mut BnParam::train()).unwrap()
        })
    });
    g.bench_function("bn_forward/fast", |bch| {
        bch.iter(|| {
            batchnorm_forward_into(true, black_box(&x), &gm, &bt, &mut bn, &mut out, par).unwrap()
        })
    });
    g.bench_function("bn_backward/fast", |bch| {
        bch.iter(|| {
            norm_backward_into(
                black_box(&x),
                &gm,
                &st,
                &dout,
                &mut dx,
                &mut dg,
                &mut db,
                par,
            )
            .unwrap()
        })
    });
    let gp = NormParam::default();
    let st = spatial_groupnorm_forward_into(&x, &gm, &bt, GN_GROUPS, &gp, &mut out, par).unwrap();
    g.bench_function("gn_forward/naive", |bch| {
        bch.iter(|| {
            spatial_groupnorm_forward_naive(black_box(&x), &gm, &bt, GN_GROUPS, &gp).unwrap()
        })
    });
    g.bench_function("gn_forward/fast", |bch| {
        bch.iter(|| {
            spatial_groupnorm_forward_into(black_box(&x), &gm, &bt, GN_GROUPS, &gp, &mut out, par)
                .unwrap()
        })
    });
    g.bench_function("gn_backward/fast", |bch| {
        bch.iter(|| {
            norm_backward_into(
                black_box(&x),
                &gm,
                &st,
                &dout,
                &mut dx,
                &mut dg,
                &mut db,
                par,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, conv, pool, norm);
criterion_main!(benches);
