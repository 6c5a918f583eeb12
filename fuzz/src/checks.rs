//! Fuzz checks: each decodes bytes into a call of the public API (shapes, parameters, dtype,
//! thread count, data with NaN, infinities, subnormals and large values), runs the fast kernel
//! and the reference, and asserts what the library promises:
//! - no panic (a panic is the finding libFuzzer reports);
//! - the fast kernel accepts exactly what the reference accepts;
//! - Ok results agree with the reference: NaN in the same places, infinities equal, finite
//!   values within the documented bound (convolution and affine: 4 (K + 2) u S + (K + 2) eta,
//!   S the same product on absolute values, eta the smallest subnormal; pooling bit for bit;
//!   norms relative to the values' scale);
//! - an Err from a `_into` entry point leaves the caller's buffers as they were.
//!
//! Large finite inputs are kept at 1e9 (f32) / 1e50 (f64) so that no sum of products (and no
//! norm's moments or gradient, up to fourth powers) overflows in one summation order and not in
//! another: overflow depends on the order, which the fast kernels choose differently.

use fastlayers::*;

/// Reads the fuzz input; past its end, a fixed pseudo-random stream (so short inputs still
/// give full tensors).
pub struct Bytes<'a> {
    d: &'a [u8],
    i: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Bytes { d, i: 0 }
    }
    pub fn u8(&mut self) -> u8 {
        let v = match self.d.get(self.i) {
            Some(&v) => v,
            None => ((self.i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8,
        };
        self.i += 1;
        v
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.u8() as usize % n.max(1)
    }
    pub fn flag(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// A value; with `specials`, one in eight is NaN, an infinity, a subnormal, a large value
    /// or a signed zero.
    pub fn value<T: Float>(&mut self, specials: bool) -> T {
        let big = if T::NAME == "f32" { 1e9 } else { 1e50 };
        let tiny = if T::NAME == "f32" { 1e-45 } else { 5e-324 };
        let b = self.u8();
        let v = if specials && b < 32 {
            match b % 8 {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                3 => tiny,
                4 => big,
                5 => -big,
                6 => 0.0,
                _ => -0.0,
            }
        } else {
            (f64::from(b) - 128.0) / 32.0 + f64::from(self.u8()) / 4096.0
        };
        T::from_f(v)
    }
    pub fn tensor<T: Float>(&mut self, shape: &[usize], specials: bool) -> Tensor<T> {
        Tensor::from_fn(shape, |_| self.value(specials)).expect("small fuzz shapes")
    }
}

fn threads(b: &mut Bytes<'_>) -> Parallelism<'static> {
    match b.below(5) {
        0 => Parallelism::Sequential,
        1 => Parallelism::Threads(2),
        2 => Parallelism::Threads(3),
        3 => Parallelism::Current,
        _ => Parallelism::Threads(usize::MAX),
    }
}

/// A value no kernel produces from these inputs, to see whether a buffer was touched.
fn sentinel<T: Float>() -> T {
    T::from_f(-12345.0625)
}

fn untouched<T: Float>(v: &[T]) -> bool {
    v.iter().all(|&x| x.to_bits_eq(sentinel()))
}

trait BitsEq {
    fn to_bits_eq(self, o: Self) -> bool;
}
impl<T: Float> BitsEq for T {
    fn to_bits_eq(self, o: Self) -> bool {
        self.to_f().to_bits() == o.to_f().to_bits()
    }
}

/// `fast` against `reference` with the dot-product bound: |f - r| <= 4 (k + 2) u s + (k + 2) eta
/// per element, where s is the same computation on absolute values and eta the smallest
/// subnormal. Non-finite references must match.
fn agree<T: Float>(what: &str, fast: &[T], reference: &[T], scale: &[T], k: usize) {
    assert_eq!(fast.len(), reference.len(), "{what}: lengths");
    let u = T::UNIT_ROUNDOFF;
    let eta = if T::NAME == "f32" {
        f64::from(f32::from_bits(1))
    } else {
        f64::from_bits(1)
    };
    for i in 0..fast.len() {
        let (f, r, s) = (fast[i].to_f(), reference[i].to_f(), scale[i].to_f());
        if r.is_nan() || !s.is_finite() {
            // A NaN or an infinity among the terms: the result's class must agree (a NaN stays
            // NaN in any order; +inf and -inf give NaN in any order).
            assert_eq!(
                f.is_nan(),
                r.is_nan(),
                "{what}[{i}]: fast {f} vs reference {r}"
            );
            if !r.is_nan() {
                assert_eq!(f, r, "{what}[{i}]: fast {f} vs reference {r}");
            }
            continue;
        }
        // Higham's bound with gradual underflow: each product may also lose up to half the
        // smallest subnormal eta (additions of subnormals are exact), so k terms add k eta / 2.
        let tol = 4.0 * (k as f64 + 2.0) * u * s + (k as f64 + 2.0) * eta;
        assert!(
            (f - r).abs() <= tol,
            "{what}[{i}]: fast {f} vs reference {r} (bound {tol:e}, scale {s:e})"
        );
    }
}

fn abs_t<T: Float>(t: &Tensor<T>) -> Tensor<T> {
    t.map(|v| v.abs())
}

pub fn conv(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.flag() {
        conv_t::<f64>(&mut b)
    } else {
        conv_t::<f32>(&mut b)
    }
}

fn conv_t<T: Float>(b: &mut Bytes<'_>) {
    let specials = b.below(4) == 0;
    let g = 1 + b.below(3);
    let (cg, fg) = (b.below(4), b.below(4));
    let (n, h, w) = (b.below(4), b.below(10), b.below(10));
    let (kh, kw) = (1 + b.below(4), 1 + b.below(4));
    let p = ConvParam::new(1, 0)
        .with_stride(b.below(4), b.below(4))
        .with_pad(b.below(4), b.below(4))
        .with_dilation(b.below(3), b.below(3))
        .with_groups(g);
    let (xs, ws) = ([n, g * cg, h, w], [g * fg, cg, kh, kw]);
    let par = threads(b);
    let x: Tensor<T> = b.tensor(&xs, specials);
    let wt: Tensor<T> = b.tensor(&ws, specials);
    let bias: Tensor<T> = b.tensor(&[g * fg], specials);
    let naive = conv_forward_naive(&x, &wt, &bias, &p);
    let plan = ConvPlan::<T>::new(&xs, &ws, &p);
    let (mut plan, (out_n, cache_n)) = match (plan, naive) {
        (Err(e), Err(en)) => {
            assert_eq!(e, en);
            return;
        }
        (Ok(pl), Ok(r)) => (pl, r),
        (pl, r) => panic!("plan {:?} vs reference {:?}", pl.err(), r.err()),
    };
    let mut winograd = [false; 3];
    for (d, dir) in [
        ConvDirection::Forward,
        ConvDirection::DataGrad,
        ConvDirection::WeightGrad,
    ]
    .into_iter()
    .enumerate()
    {
        let alg = [
            None,
            Some(ConvAlgorithm::Im2col),
            Some(ConvAlgorithm::Direct),
            Some(ConvAlgorithm::Winograd),
            Some(ConvAlgorithm::Winograd4x4),
        ][b.below(5)];
        if let Some(a) = alg
            && let Ok(forced) = plan.with_algorithm(dir, a)
        {
            plan = forced;
        }
        winograd[d] = matches!(
            plan.algorithm(dir),
            ConvAlgorithm::Winograd | ConvAlgorithm::Winograd4x4
        );
    }
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!(
            "conv {} x {xs:?} w {ws:?} {p:?} {par:?} specials {specials} {plan:?}",
            T::NAME
        );
        eprintln!("x {:?}\nw {:?}\nb {:?}", x.data(), wt.data(), bias.data());
    }
    let need = plan.workspace_len(par).expect("validated plan");
    let need_fwd = plan.forward_workspace_len(par).expect("validated plan");
    let mut out = Tensor::full(out_n.shape(), sentinel::<T>()).unwrap();
    if need_fwd > 0 {
        let mut short = vec![T::zero(); need_fwd - 1];
        assert!(
            plan.forward_into(&x, &wt, &bias, &mut out, &mut short, par)
                .is_err()
        );
        assert!(untouched(out.data()), "a refused forward wrote into out");
    }
    let mut wsb = vec![T::zero(); need];
    plan.forward_into(&x, &wt, &bias, &mut out, &mut wsb, par)
        .expect("validated call");
    let (ax, aw, ab) = (abs_t(&x), abs_t(&wt), abs_t(&bias));
    let (scale_out, cache_abs) = conv_forward_naive(&ax, &aw, &ab, &p).expect("same shapes");
    let k = cg * kh * kw + fg * kh * kw + n * out_n.len() + 2;
    // Winograd's error bound is the tile product's, not the dot product's
    // (tests/fast_vs_reference.rs): on finite data a Winograd direction is checked for finite
    // results only. On data with a NaN or an infinity it runs im2col, so it must agree.
    let finite = |ts: &[&Tensor<T>]| ts.iter().all(|t| t.data().iter().all(|v| v.is_finite()));
    if winograd[0] && finite(&[&x, &wt]) {
        assert!(
            out.data().iter().all(|v| v.is_finite()) || !finite(&[&bias]),
            "Winograd: non-finite out on finite input"
        );
    } else {
        agree("out", out.data(), out_n.data(), scale_out.data(), k);
    }
    let dout: Tensor<T> = b.tensor(out_n.shape(), specials);
    let (dxn, dwn, dbn) = conv_backward_naive(&dout, &cache_n).expect("reference backward");
    let (sdx, sdw, sdb) = conv_backward_naive(&abs_t(&dout), &cache_abs).expect("same shapes");
    let mut dx = Tensor::full(&xs, sentinel::<T>()).unwrap();
    let mut dw = Tensor::full(&ws, sentinel::<T>()).unwrap();
    let mut db = Tensor::full(&[g * fg], sentinel::<T>()).unwrap();
    let bad = Tensor::<T>::zeros(&[n + 1, g * fg, 1, 1]).unwrap();
    assert!(
        plan.backward_into(&x, &wt, &bad, &mut dx, &mut dw, &mut db, &mut wsb, par)
            .is_err()
    );
    assert!(untouched(dx.data()) && untouched(dw.data()) && untouched(db.data()));
    plan.backward_into(&x, &wt, &dout, &mut dx, &mut dw, &mut db, &mut wsb, par)
        .expect("validated call");
    if winograd[1] && finite(&[&wt, &dout]) {
        assert!(dx.data().iter().all(|v| v.is_finite()), "Winograd dx");
    } else {
        agree("dx", dx.data(), dxn.data(), sdx.data(), k);
    }
    if winograd[2] && finite(&[&x, &dout]) {
        assert!(dw.data().iter().all(|v| v.is_finite()), "Winograd dw");
    } else {
        agree("dw", dw.data(), dwn.data(), sdw.data(), k);
    }
    agree("db", db.data(), dbn.data(), sdb.data(), k);
    let (mut dw2, mut db2) = (dw.clone(), db.clone());
    plan.backward_weights_into(&x, &dout, &mut dw2, &mut db2, &mut wsb, par)
        .expect("validated call");
    assert_eq!(
        bits(&dw2),
        bits(&dw),
        "backward_weights_into's dw differs from backward_into's"
    );
    assert_eq!(bits(&db2), bits(&db));
}

fn bits<T: Float>(t: &Tensor<T>) -> Vec<u64> {
    t.data().iter().map(|v| v.to_f().to_bits()).collect()
}

pub fn pool(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.flag() {
        pool_t::<f64>(&mut b)
    } else {
        pool_t::<f32>(&mut b)
    }
}

fn pool_t<T: Float>(b: &mut Bytes<'_>) {
    let specials = b.below(3) == 0;
    let xs = [b.below(4), b.below(4), b.below(11), b.below(11)];
    let pp = PoolParam::new(b.below(5), b.below(5), 1)
        .with_stride(b.below(4), b.below(4))
        .with_pad(b.below(3), b.below(3))
        .with_ceil_mode(b.flag());
    let par = threads(b);
    // Ties are where pooling's semantics live: draw from few values.
    let x: Tensor<T> = if b.flag() {
        Tensor::from_fn(&xs, |_| T::from_f(f64::from(b.u8() % 3))).unwrap()
    } else {
        b.tensor(&xs, specials)
    };
    let naive = max_pool_forward_naive(&x, &pp);
    let plan = PoolPlan::<T>::new(&xs, &pp);
    let (mut plan, (out_n, cache_n)) = match (plan, naive) {
        (Err(e), Err(en)) => {
            assert_eq!(e, en);
            return;
        }
        (Ok(pl), Ok(r)) => (pl, r),
        (pl, r) => panic!("plan {:?} vs reference {:?}", pl.err(), r.err()),
    };
    let path = [
        None,
        Some(PoolPath::TwoByTwo),
        Some(PoolPath::PhaseSplit),
        Some(PoolPath::Generic),
    ][b.below(4)];
    if let Some(pa) = path
        && let Ok(forced) = plan.with_path(pa)
    {
        plan = forced;
    }
    let mut out = Tensor::full(out_n.shape(), sentinel::<T>()).unwrap();
    let mut idx = vec![u32::MAX; out.len()];
    if !idx.is_empty() {
        let mut short = vec![0u32; idx.len() - 1];
        assert!(
            plan.forward_into(&x, &mut out, &mut short, &mut [], par)
                .is_err()
        );
        assert!(untouched(out.data()));
    }
    plan.forward_into(&x, &mut out, &mut idx, &mut [], par)
        .expect("validated call");
    assert_eq!(
        bits(&out),
        bits(&out_n),
        "pool forward is bit for bit the reference's"
    );
    let dout: Tensor<T> = b.tensor(out_n.shape(), specials);
    let dxn = max_pool_backward_naive(&dout, &cache_n).expect("reference backward");
    let mut dx = Tensor::full(&xs, sentinel::<T>()).unwrap();
    let mut corrupt = idx.clone();
    if let Some(c) = corrupt.first_mut() {
        *c = u32::MAX;
        assert!(
            plan.backward_into(&dout, &corrupt, &mut dx, &mut [], par)
                .is_err()
        );
        assert!(untouched(dx.data()));
    }
    plan.backward_into(&dout, &idx, &mut dx, &mut [], par)
        .expect("validated call");
    assert_eq!(
        bits(&dx),
        bits(&dxn),
        "pool backward is bit for bit the reference's"
    );
    // The allocating API agrees with the plan.
    let (o2, c2) = max_pool_forward_fast(&x, &pp).expect("validated");
    assert_eq!(bits(&o2), bits(&out));
    assert_eq!(
        bits(&max_pool_backward_fast(&dout, &c2).expect("validated")),
        bits(&dx)
    );
}

pub fn norm(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.flag() {
        norm_t::<f64>(&mut b)
    } else {
        norm_t::<f32>(&mut b)
    }
}

fn norm_t<T: Float>(b: &mut Bytes<'_>) {
    let specials = b.below(4) == 0;
    let kind = match b.below(4) {
        0 => NormKind::BatchNorm,
        1 => NormKind::SpatialBatchNorm,
        2 => NormKind::LayerNorm,
        _ => NormKind::GroupNorm { groups: b.below(5) },
    };
    let shape: Vec<usize> = match kind {
        NormKind::BatchNorm | NormKind::LayerNorm => vec![b.below(6), b.below(9)],
        _ => vec![b.below(4), b.below(7), b.below(5), b.below(5)],
    };
    let eps = [1e-5, 0.0, 1e-300, -1.0, f64::NAN, f64::INFINITY][b.below(6)];
    let momentum = [0.9, 0.0, 1.0, 1.5, f64::NAN][b.below(5)];
    let mode = if b.flag() { Mode::Train } else { Mode::Test };
    let pytorch = b.flag();
    let par = threads(b);
    let c = match kind {
        NormKind::LayerNorm => shape[1],
        _ => shape.get(1).copied().unwrap_or(0),
    };
    let x: Tensor<T> = if b.below(5) == 0 {
        Tensor::full(&shape, T::from_f(3.0)).unwrap() // constant input: variance 0
    } else {
        b.tensor(&shape, specials)
    };
    let gamma: Tensor<T> = b.tensor(&[c], specials);
    let beta: Tensor<T> = b.tensor(&[c], specials);
    let dout: Tensor<T> = b.tensor(&shape, specials);
    let running = b.flag();
    let mut bp = if pytorch {
        BnParam::pytorch(mode)
    } else {
        BnParam::train()
    };
    bp.mode = mode;
    bp.eps = eps;
    bp.momentum = momentum;
    if running {
        bp.running_mean = Some((0..c).map(|_| b.value(false)).collect());
        bp.running_var = Some((0..c).map(|_| b.value::<T>(false).abs()).collect());
    }
    let np = NormParam { eps };
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!(
            "norm {} {kind:?} {shape:?} eps {eps} {bp:?} {par:?}\nx {:?}\ngamma {:?}\nbeta {:?}\ndout {:?}",
            T::NAME,
            x.data(),
            gamma.data(),
            beta.data(),
            dout.data()
        );
    }
    let mut bp_n = bp.clone();
    let naive = match kind {
        NormKind::BatchNorm => batchnorm_forward_naive(&x, &gamma, &beta, &mut bp_n),
        NormKind::SpatialBatchNorm => spatial_batchnorm_forward_naive(&x, &gamma, &beta, &mut bp_n),
        NormKind::LayerNorm => layernorm_forward_naive(&x, &gamma, &beta, &np),
        NormKind::GroupNorm { groups } => {
            spatial_groupnorm_forward_naive(&x, &gamma, &beta, groups, &np)
        }
    };
    let plan = NormPlan::<T>::new(kind, &shape);
    let mut out = Tensor::full(&shape, sentinel::<T>()).unwrap();
    let mut bp_f = bp.clone();
    let fast = plan.and_then(|pl| {
        let st = if kind.is_batch() {
            pl.forward_into(&x, &gamma, &beta, &mut bp_f, &mut out, &mut [], par)
        } else {
            pl.forward_into(&x, &gamma, &beta, np, &mut out, &mut [], par)
        }?;
        Ok((pl, st))
    });
    let ((plan, stats), (out_n, cache_n)) = match (fast, naive) {
        (Err(e), Err(en)) => {
            assert_eq!(e, en);
            assert!(
                untouched(out.data()),
                "a refused norm forward wrote into out"
            );
            // Debug, not ==: a NaN eps is not equal to itself.
            assert_eq!(
                format!("{bp_f:?}"),
                format!("{bp:?}"),
                "a refused norm forward changed bn_param"
            );
            return;
        }
        (Ok(f), Ok(r)) => (f, r),
        (f, r) => panic!("{kind:?}: fast {:?} vs reference {:?}", f.err(), r.err()),
    };
    let tol = if T::NAME == "f32" { 1e-3 } else { 1e-9 };
    // `noise`: how far the reference's own f64 rounding may reach. Where that is past T's
    // range, a non-finite reference value may be rounding noise (dx of a constant batch with
    // eps = 1e-300 and a constant dout: the exact dx is 0, the fast closed form gives 0, the
    // reference's graph cancels two 1e150 terms and rounds the 1e134 remainder to inf in f32),
    // so the fast value is not held to it.
    let close_noisy = |what: &str, f: &[T], r: &[T], scale: f64, noise: f64| {
        for (i, (&f, &r)) in f.iter().zip(r).enumerate() {
            let (f, r) = (f.to_f(), r.to_f());
            if !r.is_finite() && noise.is_finite() && noise > T::max_value().to_f() {
                continue;
            }
            if !r.is_finite() || !scale.is_finite() {
                // Past the range (a zero-variance group with a tiny eps: 1 / sqrt(eps) = 1e150,
                // cubed in dx) the reference's f64 graph and the fast closed form overflow in
                // different places: one may give inf where the other gives NaN.
                // With an infinite input the reference's graph and the fast closed form give
                // inf - inf in different places too. So: a non-finite reference needs a
                // non-finite fast value, of either kind.
                if !r.is_finite() {
                    assert!(!f.is_finite(), "{kind:?} {what}[{i}]: {f} vs {r}");
                }
                continue;
            }
            if !f.is_finite() {
                // The reference is finite with a finite scale: the fast kernel must be too.
                // unless the bound itself lies past T's range (a cancellation scaled by
                // 1 / sqrt(eps) = 1e150 in f32 rounds to inf).
                assert!(
                    scale * tol > T::max_value().to_f(),
                    "{kind:?} {what}[{i}]: {f} vs {r} (scale {scale:e})"
                );
                continue;
            }
            assert!(
                (f - r).abs() <= tol * scale,
                "{kind:?} {what}[{i}]: {f} vs {r} (scale {scale:e})"
            );
        }
    };
    let close = |what: &str, f: &[T], r: &[T], scale: f64| close_noisy(what, f, r, scale, 0.0);
    let maxabs = |t: &[T]| t.iter().fold(0.0f64, |m, v| m.max(v.to_f().abs()));
    let gmax = maxabs(gamma.data());
    let finite_max = |v: &[f64]| {
        v.iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()))
    };
    let inv_both = finite_max(cache_n.inv_std()).max(finite_max(stats.inv_std()));
    let count = shape.iter().product::<usize>().max(1) as f64;
    // The reference's f64 mean is off by up to ~count u max|x| (a naive sum), and inv_std
    // amplifies that into x_hat: a constant channel of -1e50 gets variance (1 ulp)^2 in the
    // reference, so x_hat = +-1 and out = -+gamma, where the exact (and the fast, shifted-sum)
    // answer is beta. That much is the reference's own error, not the fast kernel's.
    let xs: Vec<f64> = x.data().iter().map(|v| v.to_f()).collect();
    let ds: Vec<f64> = dout.data().iter().map(|v| v.to_f()).collect();
    let gs: Vec<f64> = gamma.data().iter().map(|v| v.to_f()).collect();
    let mean_noise = 4.0 * count * f64::EPSILON * finite_max(&gs) * finite_max(&xs) * inv_both;
    let mean_noise = if mean_noise.is_finite() {
        mean_noise / tol
    } else {
        0.0
    };
    // dx and dgamma scale with inv_std, which the reference cannot know for a group whose
    // variance lies below its own rounding noise (its naive mean is off by ~count u max|x|:
    // a constant channel of 1e50 gets variance (1 ulp)^2 = 1e68, inv_std 1e-34, where the
    // exact value, the fast kernel's, is 1/sqrt(eps)). There the two kernels' inv_std differ
    // by any factor and dx and dgamma are not comparable; nor is out when eps = 0 (the exact
    // answer for a constant group is 0 * inf = NaN, as documented; the reference's is
    // finite), otherwise out is (x_hat is bounded by sqrt(count) either way). dbeta does not
    // depend on the statistics.
    let var_noise = (4.0 * count * f64::EPSILON * finite_max(&xs)).powi(2);
    let stats_noisy = eps < var_noise
        && cache_n
            .inv_std()
            .iter()
            .any(|&i| i.is_finite() && i > 0.0 && 1.0 / (i * i) < 2.0 * var_noise + eps);
    if !(stats_noisy && eps == 0.0) {
        close(
            "out",
            out.data(),
            out_n.data(),
            maxabs(out_n.data()) + gmax + maxabs(beta.data()) + 1.0 + mean_noise,
        );
    }
    // Running statistics, NaN and infinities included (the fast variance of a group holding an
    // infinity is NaN, as the reference's; it was clamped to 0 before, a finite update).
    if kind.is_batch() {
        for (f, r) in [
            (&bp_f.running_mean, &bp_n.running_mean),
            (&bp_f.running_var, &bp_n.running_var),
        ] {
            if let (Some(f), Some(r)) = (f, r) {
                close(
                    "running",
                    f,
                    r,
                    maxabs(r) + maxabs(x.data()) * maxabs(x.data()) + 1.0,
                );
            }
        }
    }
    let grads_n = match kind {
        NormKind::BatchNorm => batchnorm_backward_naive(&dout, &cache_n),
        NormKind::SpatialBatchNorm => spatial_batchnorm_backward_naive(&dout, &cache_n),
        NormKind::LayerNorm => layernorm_backward_naive(&dout, &cache_n),
        NormKind::GroupNorm { .. } => spatial_groupnorm_backward_naive(&dout, &cache_n),
    }
    .expect("reference backward");
    let mut dx = Tensor::full(&shape, sentinel::<T>()).unwrap();
    let mut dg = Tensor::full(&[c], sentinel::<T>()).unwrap();
    let mut dbt = Tensor::full(&[c], sentinel::<T>()).unwrap();
    let bad = Tensor::<T>::zeros(&[c + 1]).unwrap();
    assert!(
        plan.backward_into(
            &x,
            &bad,
            &stats,
            &dout,
            &mut dx,
            &mut dg,
            &mut dbt,
            &mut [],
            par
        )
        .is_err()
    );
    assert!(untouched(dx.data()) && untouched(dg.data()) && untouched(dbt.data()));
    plan.backward_into(
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
    .expect("validated call");
    let inv = cache_n.inv_std().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let dmax = maxabs(dout.data());
    let xmax = maxabs(x.data());
    if stats_noisy {
        close("dbeta", dbt.data(), grads_n.2.data(), count * dmax + 1.0);
        return;
    }
    close_noisy(
        "dx",
        dx.data(),
        grads_n.0.data(),
        maxabs(grads_n.0.data()) + 4.0 * inv * gmax * dmax + 1.0,
        // a few ulps of f64 per term of the graph's sums over the group (finite values: an
        // infinite dout in one channel does not make another channel's noise infinite)
        16.0 * count
            * f64::EPSILON
            * 4.0
            * finite_max(cache_n.inv_std())
            * finite_max(&gs)
            * finite_max(&ds),
    );
    close(
        "dgamma",
        dg.data(),
        grads_n.1.data(),
        count * dmax * (inv * xmax + 1.0) + 1.0,
    );
    close("dbeta", dbt.data(), grads_n.2.data(), count * dmax + 1.0);
}

pub fn dense(data: &[u8]) {
    let mut b = Bytes::new(data);
    if b.flag() {
        dense_t::<f64>(&mut b)
    } else {
        dense_t::<f32>(&mut b)
    }
}

fn dense_t<T: Float>(b: &mut Bytes<'_>) {
    let specials = b.below(4) == 0;
    let (n, d1, d2, m) = (b.below(6), b.below(5), b.below(5), b.below(7));
    let par = threads(b);
    let xs = [n, d1, d2];
    let x: Tensor<T> = b.tensor(&xs, specials);
    let w_rows = if b.below(8) == 0 {
        d1 * d2 + 1
    } else {
        d1 * d2
    };
    let w: Tensor<T> = b.tensor(&[w_rows, m], specials);
    let bias: Tensor<T> = b.tensor(&[m], specials);
    let mut out = Tensor::full(&[n, m], sentinel::<T>()).unwrap();
    let naive = affine_forward_naive(&x, &w, &bias);
    let plan = AffinePlan::<T>::new(&xs, w.shape());
    let mut ws: Vec<T> = Vec::new();
    let fast = plan.as_ref().map_err(|e| e.clone()).and_then(|p| {
        ws = vec![T::zero(); p.workspace_len(par)?];
        p.forward_into(&x, &w, &bias, &mut out, &mut ws, par)
    });
    match (fast, &naive) {
        (Err(e), Err(en)) => {
            assert_eq!(&e, en);
            assert!(untouched(out.data()));
        }
        (Ok(()), Ok((out_n, cache))) => {
            let k = d1 * d2 + n + 2;
            let (so, cache_abs) =
                affine_forward_naive(&abs_t(&x), &abs_t(&w), &abs_t(&bias)).unwrap();
            agree("affine out", out.data(), out_n.data(), so.data(), k);
            let (o2, c2) = affine_forward(&x, &w, &bias).unwrap();
            assert_eq!(
                bits(&o2),
                bits(&out),
                "affine_forward vs AffinePlan::forward_into"
            );
            let dout: Tensor<T> = b.tensor(&[n, m], specials);
            let (dxn, dwn, dbn) = affine_backward_naive(&dout, cache).unwrap();
            let (sdx, sdw, sdb) = affine_backward_naive(&abs_t(&dout), &cache_abs).unwrap();
            let (dx, dw, db) = affine_backward(&dout, &c2).unwrap();
            agree("affine dx", dx.data(), dxn.data(), sdx.data(), k + m);
            agree("affine dw", dw.data(), dwn.data(), sdw.data(), k + m);
            agree("affine db", db.data(), dbn.data(), sdb.data(), k + m);
            let (mut dx2, mut dw2, mut db2) = (
                Tensor::full(&xs, sentinel::<T>()).unwrap(),
                Tensor::full(w.shape(), sentinel::<T>()).unwrap(),
                Tensor::full(&[m], sentinel::<T>()).unwrap(),
            );
            let bad = Tensor::<T>::zeros(&[n + 1, m]).unwrap();
            let plan = plan.expect("the forward ran");
            assert!(
                plan.backward_into(&x, &w, &bad, &mut dx2, &mut dw2, &mut db2, &mut ws, par)
                    .is_err()
            );
            assert!(untouched(dx2.data()) && untouched(dw2.data()) && untouched(db2.data()));
            plan.backward_into(&x, &w, &dout, &mut dx2, &mut dw2, &mut db2, &mut ws, par)
                .unwrap();
            assert_eq!(bits(&dx2), bits(&dx));
            assert_eq!(bits(&dw2), bits(&dw));
            assert_eq!(bits(&db2), bits(&db));
        }
        (f, r) => panic!("affine: fast {f:?} vs reference {:?}", r.as_ref().err()),
    }
    // ReLU: max(x, 0), NaN kept; its gradient passes where x > 0.
    let (r, rc) = relu_forward(&x).unwrap();
    for (&o, &i) in r.data().iter().zip(x.data()) {
        assert!(if i.is_nan() {
            o.is_nan()
        } else {
            o == i.max(T::zero())
        });
    }
    let dr = relu_backward(&x, &rc).unwrap();
    for (&g, &i) in dr.data().iter().zip(x.data()) {
        assert!(g.to_bits_eq(if i > T::zero() { i } else { T::zero() }));
    }
    // Dropout: every output is x * 0 or x / p (inverted dropout); p outside (0, 1] refused.
    let p = [0.5, 1.0, 0.0, 1.5, f64::NAN, 1e-300][b.below(6)];
    let dp = DropoutParam::train(p, Some(u64::from(b.u8())));
    match dropout_forward(&x, &dp) {
        Ok((o, c)) => {
            let mask = c.mask().expect("train mode keeps its mask");
            for ((&o, &i), &mk) in o.data().iter().zip(x.data()).zip(mask) {
                assert!(mk == T::zero() || mk == T::from_f(1.0 / p));
                assert!(o.to_bits_eq(i * mk));
            }
            assert_eq!(bits(&dropout_backward(&x, &c).unwrap()), bits(&o));
        }
        Err(e) => assert!(!(p > 0.0 && p <= 1.0), "dropout refused p = {p}: {e}"),
    }
    // Losses: labels in range are accepted, any other refused; the gradient's rows sum to 0
    // for finite scores (softmax) and every loss is >= 0.
    let cls = b.below(5);
    let scores: Tensor<T> = b.tensor(&[n, cls], specials);
    let y: Vec<usize> = (0..n).map(|_| b.below(cls + 2)).collect();
    let valid = y.iter().all(|&l| l < cls);
    for (name, r) in [
        ("softmax", softmax_loss(&scores, &y)),
        ("svm", svm_loss(&scores, &y)),
    ] {
        match r {
            Ok((loss, dx)) => {
                assert!(
                    valid || n == 0,
                    "{name} accepted labels {y:?} for {cls} classes"
                );
                let finite = scores.data().iter().all(|v| v.is_finite());
                if finite && n > 0 {
                    assert!(loss >= 0.0 && loss.is_finite(), "{name} loss {loss}");
                    if name == "softmax" {
                        for row in dx.data().chunks(cls.max(1)) {
                            let s: f64 = row.iter().map(|v| v.to_f()).sum();
                            assert!(s.abs() <= 1e-5, "softmax dx row sums to {s}");
                        }
                    }
                }
            }
            // An empty batch has no mean loss, and no class means no label is valid: refused.
            Err(_) => assert!(
                !valid || cls == 0 || n == 0,
                "{name} refused valid labels {y:?} for {cls} classes"
            ),
        }
    }
}
