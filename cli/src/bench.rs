//! `fastlayers bench`: the notebooks' timing cells for real, then the named shapes shared with
//! ../shared/anchors/torch_layers.py, timed as medians.
//!
//! The fast kernels are timed through the framework entry points (`*_into`, buffers allocated
//! once outside the timed region), as a framework calling us as its backend would run them; the
//! notebook cells time the notebook-style allocating API (naive against fast), as the notebook
//! does.

use fastlayers::*;
use std::time::Instant;

/// Median milliseconds of `f`: one warm-up call, then as many timed calls as fit `budget`
/// seconds (at least 3, at most 50).
pub fn median_ms(budget: f64, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64();
    let reps = ((budget / one.max(1e-6)) as usize).clamp(3, 50);
    let mut ts: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

/// Seconds of one call.
fn once(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Median seconds of `f` (warm-up call, then at least 3 timed calls within about 0.5 s).
fn median_s(f: impl FnMut()) -> f64 {
    median_ms(0.5, f) / 1e3
}

/// (name, x shape, w shape, stride, pad).
pub type ConvShape = (&'static str, [usize; 4], [usize; 4], usize, usize);

pub const CONV_SHAPES: [ConvShape; 4] = [
    ("nb_conv", [100, 3, 31, 31], [25, 3, 3, 3], 2, 1),
    ("tlcn_conv", [50, 3, 32, 32], [32, 3, 7, 7], 1, 3),
    ("res_conv", [32, 64, 32, 32], [64, 64, 3, 3], 1, 1),
    ("res2_conv", [16, 128, 16, 16], [128, 128, 3, 3], 1, 1),
];
pub const POOL_SHAPES: [(&str, [usize; 4], usize, usize); 3] = [
    ("nb_pool", [100, 3, 32, 32], 2, 2),
    ("tlcn_pool", [50, 32, 32, 32], 2, 2),
    ("ovl_pool", [32, 64, 32, 32], 3, 2),
];
pub const NORM_SHAPE: [usize; 4] = [32, 64, 32, 32];
pub const GN_GROUPS: usize = 8;

/// The norm rows' inputs on `NORM_SHAPE`: (x with mean 10 and spread 4, gamma, beta, dout), drawn
/// in that order from `rng`.
pub fn norm_inputs<T: Float>(rng: &mut Rng) -> (Tensor<T>, Tensor<T>, Tensor<T>, Tensor<T>) {
    let c = NORM_SHAPE[1];
    let x = rng.randn(&NORM_SHAPE, 4.0, 10.0);
    let gamma = rng.randn(&[c], 1.0, 0.0);
    let beta = rng.randn(&[c], 1.0, 0.0);
    let dout = rng.randn(&NORM_SHAPE, 1.0, 0.0);
    (x, gamma, beta, dout)
}

/// Options of `fastlayers bench`.
#[derive(Clone, Debug)]
pub struct Options {
    pub threads: usize,
    pub dtypes: Vec<String>,
    pub json: bool,
    /// Also time the reference kernels on the named shapes (one run each: slow).
    pub naive: bool,
    /// Seconds of timed calls per measurement.
    pub budget: f64,
    /// Only ops or shapes whose name contains this (comma-separated terms must all match).
    pub filter: Option<String>,
    /// Skip the notebook timing cells.
    pub skip_cells: bool,
}

/// One measurement of a named shape.
#[derive(Clone, Debug)]
pub struct Row {
    pub op: &'static str,
    pub shape: &'static str,
    pub dtype: &'static str,
    pub threads: usize,
    pub fast_ms: f64,
    pub naive_ms: Option<f64>,
    pub flops: Option<f64>,
}

impl Row {
    pub fn json(&self) -> String {
        let mut s = format!(
            "{{\"op\": \"{}\", \"shape\": \"{}\", \"dtype\": \"{}\", \"threads\": {}, \"impl\": \"fast\", \"ms\": {:.4}",
            self.op, self.shape, self.dtype, self.threads, self.fast_ms
        );
        if let Some(f) = self.flops {
            s += &format!(", \"gflops\": {:.2}", f / self.fast_ms / 1e6);
        }
        s += "}";
        if let Some(n) = self.naive_ms {
            s += &format!(
                "\n{{\"op\": \"{}\", \"shape\": \"{}\", \"dtype\": \"{}\", \"threads\": 1, \"impl\": \"naive\", \"ms\": {:.4}}}",
                self.op, self.shape, self.dtype, n
            );
        }
        s
    }
}

/// The notebook's two timing cells (conv, then pool), f64, printed as the notebook prints them.
/// Unlike the notebook's single `time()` around one call, each figure is the median of repeated
/// calls after a warm-up, so thread-pool start-up and first-touch page faults do not count.
pub fn notebook_cells(seed: u64) -> Result<String> {
    let mut rng = Rng::new(seed);
    let mut s = String::new();
    let x: Tensor<f64> = rng.randn(&[100, 3, 31, 31], 1.0, 0.0);
    let w: Tensor<f64> = rng.randn(&[25, 3, 3, 3], 1.0, 0.0);
    let b: Tensor<f64> = rng.randn(&[25], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(&[100, 25, 16, 16], 1.0, 0.0);
    let p = ConvParam::new(2, 1);
    let tn = median_s(|| drop(conv_forward_naive(&x, &w, &b, &p)));
    let tf = median_s(|| drop(conv_forward_fast(&x, &w, &b, &p)));
    let (out_naive, cache_naive) = conv_forward_naive(&x, &w, &b, &p)?;
    let (out_fast, cache_fast) = conv_forward_fast(&x, &w, &b, &p)?;
    s += &format!(
        "Testing conv_forward_fast:\nNaive: {tn:.6}s\nFast: {tf:.6}s\nSpeedup: {:.6}x\nDifference: {:e}\n\n",
        tn / tf,
        rel_error(&out_naive, &out_fast)?
    );
    let tn = median_s(|| drop(conv_backward_naive(&dout, &cache_naive)));
    let tf = median_s(|| drop(conv_backward_fast(&dout, &cache_fast)));
    let (dxn, dwn, dbn) = conv_backward_naive(&dout, &cache_naive)?;
    let (dxf, dwf, dbf) = conv_backward_fast(&dout, &cache_fast)?;
    s += &format!(
        "Testing conv_backward_fast:\nNaive: {tn:.6}s\nFast: {tf:.6}s\nSpeedup: {:.6}x\ndx difference: {:e}\ndw difference: {:e}\ndb difference: {:e}\n\n",
        tn / tf,
        rel_error(&dxn, &dxf)?,
        rel_error(&dwn, &dwf)?,
        rel_error(&dbn, &dbf)?
    );

    let x: Tensor<f64> = rng.randn(&[100, 3, 32, 32], 1.0, 0.0);
    let dout: Tensor<f64> = rng.randn(&[100, 3, 16, 16], 1.0, 0.0);
    let p = PoolParam::new(2, 2, 2);
    let tn = median_s(|| drop(max_pool_forward_naive(&x, &p)));
    let tf = median_s(|| drop(max_pool_forward_fast(&x, &p)));
    let (out_naive, cache_naive) = max_pool_forward_naive(&x, &p)?;
    let (out_fast, cache_fast) = max_pool_forward_fast(&x, &p)?;
    s += &format!(
        "Testing pool_forward_fast:\nNaive: {tn:.6}s\nfast: {tf:.6}s\nspeedup: {:.6}x\ndifference: {:e}\n\n",
        tn / tf,
        rel_error(&out_naive, &out_fast)?
    );
    let tn = median_s(|| drop(max_pool_backward_naive(&dout, &cache_naive)));
    let tf = median_s(|| drop(max_pool_backward_fast(&dout, &cache_fast)));
    let dxn = max_pool_backward_naive(&dout, &cache_naive)?;
    let dxf = max_pool_backward_fast(&dout, &cache_fast)?;
    s += &format!(
        "Testing pool_backward_fast:\nNaive: {tn:.6}s\nfast: {tf:.6}s\nspeedup: {:.6}x\ndx difference: {:e}\n",
        tn / tf,
        rel_error(&dxn, &dxf)?
    );
    Ok(s)
}

/// Whether (op, shape) passes the filter: every comma-separated term must occur in the op or the
/// shape name (`conv_fwd,res2` selects one op on one shape).
fn wanted(o: &Options, op: &str, shape: &str) -> bool {
    o.filter.as_deref().is_none_or(|f| {
        f.split(',')
            .all(|t| op.contains(t.trim()) || shape.contains(t.trim()))
    })
}

/// "L1d 48K, L2 2048K, L3 491520K" as CPUID reports them (the blocking scales with the L2).
pub fn cache_summary() -> String {
    let kb = |l: usize| {
        fastlayers::cpu::data_cache_bytes(l).map_or("?".to_string(), |b| format!("{}K", b >> 10))
    };
    format!("L1d {}, L2 {}, L3 {}", kb(1), kb(2), kb(3))
}

/// Times every named shape for dtype T; `emit` receives each row as soon as it is measured.
pub fn named_shapes<T: Float>(o: &Options, emit: &mut dyn FnMut(Row)) -> Result<()> {
    let par = Parallelism::Threads(o.threads);
    let mut rng = Rng::new(0);
    let row = |op, shape, ms, naive, flops| Row {
        op,
        shape,
        dtype: T::NAME,
        threads: o.threads,
        fast_ms: ms,
        naive_ms: naive,
        flops,
    };
    for (name, xs, ws, s, p) in CONV_SHAPES {
        let cp = ConvParam::new(s, p);
        let plan = ConvPlan::<T>::new(&xs, &ws, &cp)?;
        let g = *plan.geom();
        let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
        let w: Tensor<T> = rng.randn(&ws, 1.0, 0.0);
        let b: Tensor<T> = rng.randn(&[ws[0]], 1.0, 0.0);
        let dout: Tensor<T> = rng.randn(&g.out_shape(), 1.0, 0.0);
        let mut ws_buf = vec![T::zero(); plan.workspace_len(par)?];
        let mut out = Tensor::zeros(&g.out_shape())?;
        let (mut dx, mut dw, mut db) = (
            Tensor::zeros(&xs)?,
            Tensor::zeros(&ws)?,
            Tensor::zeros(&[ws[0]])?,
        );
        if wanted(o, "conv_fwd", name) {
            let ms = median_ms(o.budget, || {
                plan.forward_into(&x, &w, &b, &mut out, &mut ws_buf, par)
                    .expect("validated");
            });
            let naive = o
                .naive
                .then(|| once(|| drop(conv_forward_naive(&x, &w, &b, &cp))) * 1e3);
            emit(row("conv_fwd", name, ms, naive, Some(g.flops())));
        }
        // Weights packed once (inference): only when the filter names it, as it is not one of
        // the anchors' ops.
        let asked = o.filter.as_deref().is_some_and(|f| f.contains("packed"));
        if asked && wanted(o, "conv_fwd_packed", name) {
            let packed = plan.pack_weights(&w, &b)?;
            let ms = median_ms(o.budget, || {
                plan.forward_packed_into(&x, &packed, &mut out, &mut ws_buf, par)
                    .expect("validated");
            });
            emit(row("conv_fwd_packed", name, ms, None, Some(g.flops())));
        }
        if wanted(o, "conv_bwd", name) {
            let ms = median_ms(o.budget, || {
                plan.backward_into(&x, &w, &dout, &mut dx, &mut dw, &mut db, &mut ws_buf, par)
                    .expect("validated");
            });
            let naive = if o.naive {
                let (_, cache) = conv_forward_naive(&x, &w, &b, &cp)?;
                Some(once(|| drop(conv_backward_naive(&dout, &cache))) * 1e3)
            } else {
                None
            };
            emit(row("conv_bwd", name, ms, naive, Some(2.0 * g.flops())));
        }
    }
    for (name, xs, k, s) in POOL_SHAPES {
        let pp = PoolParam::new(k, k, s);
        let plan = PoolPlan::<T>::new(&xs, &pp)?;
        let g = *plan.geom();
        let x: Tensor<T> = rng.randn(&xs, 1.0, 0.0);
        let n: usize = g.out_shape().iter().product();
        let dout: Tensor<T> = rng.randn(&g.out_shape(), 1.0, 0.0);
        let (mut out, mut idx, mut dx) = (
            Tensor::zeros(&g.out_shape())?,
            vec![0u32; n],
            Tensor::zeros(&xs)?,
        );
        plan.forward_into(&x, &mut out, &mut idx, &mut [], par)?;
        if wanted(o, "pool_fwd", name) {
            let ms = median_ms(o.budget, || {
                plan.forward_into(&x, &mut out, &mut idx, &mut [], par)
                    .expect("validated");
            });
            let naive = o
                .naive
                .then(|| once(|| drop(max_pool_forward_naive(&x, &pp))) * 1e3);
            emit(row("pool_fwd", name, ms, naive, None));
        }
        if wanted(o, "pool_bwd", name) {
            let ms = median_ms(o.budget, || {
                plan.backward_into(&dout, &idx, &mut dx, &mut [], par)
                    .expect("validated");
            });
            let naive = if o.naive {
                let (_, cache) = max_pool_forward_naive(&x, &pp)?;
                Some(once(|| drop(max_pool_backward_naive(&dout, &cache))) * 1e3)
            } else {
                None
            };
            emit(row("pool_bwd", name, ms, naive, None));
        }
    }
    let c = NORM_SHAPE[1];
    let (x, gamma, beta, dout) = norm_inputs::<T>(&mut rng);
    let (mut out, mut dx) = (Tensor::zeros(x.shape())?, Tensor::zeros(x.shape())?);
    let (mut dg, mut dbt) = (Tensor::zeros(&[c])?, Tensor::zeros(&[c])?);
    let mut bn = BnParam::train();
    let bnp = NormPlan::<T>::new(NormKind::SpatialBatchNorm, x.shape())?;
    let stats = bnp.forward_into(&x, &gamma, &beta, &mut bn, &mut out, &mut [], par)?;
    if wanted(o, "bn_fwd", "bn") {
        let ms = median_ms(o.budget, || {
            bnp.forward_into(&x, &gamma, &beta, &mut bn, &mut out, &mut [], par)
                .expect("validated");
        });
        let naive = o.naive.then(|| {
            once(|| {
                drop(spatial_batchnorm_forward_naive(
                    &x,
                    &gamma,
                    &beta,
                    &mut BnParam::train(),
                ))
            }) * 1e3
        });
        emit(row("bn_fwd", "bn", ms, naive, None));
    }
    if wanted(o, "bn_bwd", "bn") {
        let ms = median_ms(o.budget, || {
            bnp.backward_into(
                &x,
                &gamma,
                &stats,
                &dout,
                &mut dx,
                &mut dg,
                &mut dbt,
                &mut [],
                par,
            )
            .expect("validated");
        });
        let naive = if o.naive {
            let (_, cache) =
                spatial_batchnorm_forward_naive(&x, &gamma, &beta, &mut BnParam::train())?;
            Some(once(|| drop(spatial_batchnorm_backward_naive(&dout, &cache))) * 1e3)
        } else {
            None
        };
        emit(row("bn_bwd", "bn", ms, naive, None));
    }
    if wanted(o, "bn_relu", "fused,unfused") {
        let (f, u) = bn_relu_pair(o, &x, &gamma, &beta, &dout);
        emit(row("bn_relu_fwd", "fused", f.0, None, None));
        emit(row("bn_relu_fwd", "unfused", u.0, None, None));
        emit(row("bn_relu_bwd", "fused", f.1, None, None));
        emit(row("bn_relu_bwd", "unfused", u.1, None, None));
    }
    let gp = NormParam::default();
    let gnp = NormPlan::<T>::new(NormKind::GroupNorm { groups: GN_GROUPS }, x.shape())?;
    let stats = gnp.forward_into(&x, &gamma, &beta, gp, &mut out, &mut [], par)?;
    if wanted(o, "gn_fwd", "gn") {
        let ms = median_ms(o.budget, || {
            gnp.forward_into(&x, &gamma, &beta, gp, &mut out, &mut [], par)
                .expect("validated");
        });
        let naive = o.naive.then(|| {
            once(|| {
                drop(spatial_groupnorm_forward_naive(
                    &x, &gamma, &beta, GN_GROUPS, &gp,
                ))
            }) * 1e3
        });
        emit(row("gn_fwd", "gn", ms, naive, None));
    }
    if wanted(o, "gn_bwd", "gn") {
        let ms = median_ms(o.budget, || {
            gnp.backward_into(
                &x,
                &gamma,
                &stats,
                &dout,
                &mut dx,
                &mut dg,
                &mut dbt,
                &mut [],
                par,
            )
            .expect("validated");
        });
        let naive = if o.naive {
            let (_, cache) = spatial_groupnorm_forward_naive(&x, &gamma, &beta, GN_GROUPS, &gp)?;
            Some(once(|| drop(spatial_groupnorm_backward_naive(&dout, &cache))) * 1e3)
        } else {
            None
        };
        emit(row("gn_bwd", "gn", ms, naive, None));
    }
    if wanted(o, "tlcn_train_iter", "b50") {
        let (ms, flops) = tlcn_train_iter::<T>(o, &mut rng);
        emit(row("tlcn_train_iter", "b50", ms, None, Some(flops)));
    }
    Ok(())
}

/// Spatial batch norm then ReLU on the norm rows' shape, through the notebook-style API (each
/// call allocates its outputs and caches, as a model's layers do): the fused pair of
/// fastlayers-nn against spatial_batchnorm_forward + relu_forward and their backwards. Returns
/// ((fused forward, fused backward), (unfused forward, unfused backward)) median ms.
fn bn_relu_pair<T: Float>(
    o: &Options,
    x: &Tensor<T>,
    gamma: &Tensor<T>,
    beta: &Tensor<T>,
    dout: &Tensor<T>,
) -> ((f64, f64), (f64, f64)) {
    use fastlayers_nn::Kernels;
    use fastlayers_nn::layers::NormArg;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        let k = Kernels::Fast;
        let mut bp = BnParam::train();
        let ff = median_ms(o.budget, || {
            drop(k.norm_relu_forward(
                x.view(),
                gamma.view(),
                beta.view(),
                NormArg::Spatial(&mut bp),
            ));
        });
        let (_, fc) = k
            .norm_relu_forward(
                x.view(),
                gamma.view(),
                beta.view(),
                NormArg::Spatial(&mut bp),
            )
            .expect("valid shapes");
        let fb = median_ms(o.budget, || drop(k.norm_relu_backward(dout.view(), &fc)));
        let uf = median_ms(o.budget, || {
            let (a, c) = spatial_batchnorm_forward(x, gamma, beta, &mut bp).expect("valid");
            drop((relu_forward(&a), c));
        });
        let (a, nc) = spatial_batchnorm_forward(x, gamma, beta, &mut bp).expect("valid");
        let (_, rc) = relu_forward(&a).expect("valid");
        let ub = median_ms(o.budget, || {
            let d = relu_backward(dout, &rc).expect("valid");
            drop(spatial_batchnorm_backward(&d, &nc));
        });
        ((ff, fb), (uf, ub))
    })
}

/// One training iteration of the notebook's ThreeLayerConvNet (defaults: 32 filters of 7x7,
/// hidden 100) on a batch of 50 3x32x32 images, with Adam: the loss and every gradient, then
/// every parameter's update, as ../shared/anchors/torch_train.py times PyTorch. Returns the
/// median ms and the iteration's multiply-add FLOPs (convolution forward and weight gradient,
/// the three affine GEMMs of both affine layers).
fn tlcn_train_iter<T: Float>(o: &Options, rng: &mut Rng) -> (f64, f64) {
    use fastlayers_nn::optim::OptimState;
    use fastlayers_nn::{CnnConfig, Model, OptimConfig, ThreeLayerConvNet, UpdateRule};
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(o.threads)
        .build()
        .expect("a thread pool");
    let cfg = CnnConfig::default();
    let mut model = ThreeLayerConvNet::<T>::new(cfg.clone()).expect("the notebook's defaults");
    let x: Tensor<T> = rng.randn(&[50, 3, 32, 32], 1.0, 0.0);
    let y: Vec<usize> = (0..50).map(|_| rng.below(10)).collect();
    let rule = UpdateRule::Adam;
    let oc = OptimConfig::defaults(rule);
    let mut states: Vec<OptimState<T>> = model
        .params()
        .values()
        .map(|p| OptimState::new(rule, p.len()))
        .collect();
    let ms = pool.install(|| {
        median_ms(o.budget, || {
            model.loss(x.view(), &y).expect("valid batch");
            let (params, grads) = model.params_and_grads();
            for ((k, w), st) in params.iter_mut().zip(&mut states) {
                st.step(rule, &oc, w.data_mut(), grads[k].data())
                    .expect("matching state");
            }
        })
    });
    let (f, k, h) = (cfg.num_filters, cfg.filter_size, cfg.hidden_dim);
    let conv = 2.0 * 50.0 * (f * 32 * 32) as f64 * (3 * k * k) as f64;
    let affine = 2.0 * 50.0 * ((f * 16 * 16 * h) + h * 10) as f64;
    (ms, 2.0 * conv + 3.0 * affine)
}

/// Runs the whole benchmark and prints it (human table, or JSON lines with `o.json`).
pub fn run(o: &Options) -> Result<()> {
    let peak32 = fastlayers::hooks::measure_gflops(false, o.threads);
    let peak64 = fastlayers::hooks::measure_gflops(true, o.threads);
    if o.json {
        println!(
            "{{\"op\": \"peak\", \"threads\": {}, \"gflops_f32\": {peak32:.1}, \"gflops_f64\": {peak64:.1}, \"simd\": \"{:?}\", \"caches\": \"{}\"}}",
            o.threads,
            fastlayers::cpu::simd_level(),
            cache_summary()
        );
    } else {
        println!(
            "fastlayers bench: {} threads, SIMD {:?}, caches {}; measured peak {peak32:.1} GFLOP/s f32, {peak64:.1} GFLOP/s f64\n",
            o.threads,
            fastlayers::cpu::simd_level(),
            cache_summary()
        );
        if !o.skip_cells {
            print!("{}", notebook_cells(231)?);
            println!();
        }
        println!(
            "{:<9} {:<10} {:<5} {:>10} {:>9} {:>7} {:>11} {:>9}",
            "op", "shape", "dtype", "fast ms", "GFLOP/s", "% peak", "naive ms", "speedup"
        );
    }
    for dt in &o.dtypes {
        let peak = if dt == "f64" { peak64 } else { peak32 };
        let mut emit = |r: Row| {
            if o.json {
                println!("{}", r.json());
            } else {
                let (gf, pct) = match r.flops {
                    Some(f) => {
                        let gf = f / r.fast_ms / 1e6;
                        (format!("{gf:.1}"), format!("{:.0}%", 100.0 * gf / peak))
                    }
                    None => (String::new(), String::new()),
                };
                let (nv, sp) = match r.naive_ms {
                    Some(n) => (format!("{n:.2}"), format!("{:.1}x", n / r.fast_ms)),
                    None => (String::new(), String::new()),
                };
                println!(
                    "{:<9} {:<10} {:<5} {:>10.3} {:>9} {:>7} {:>11} {:>9}",
                    r.op, r.shape, r.dtype, r.fast_ms, gf, pct, nv, sp
                );
            }
        };
        match dt.as_str() {
            "f64" => named_shapes::<f64>(o, &mut emit)?,
            _ => named_shapes::<f32>(o, &mut emit)?,
        }
    }
    Ok(())
}
