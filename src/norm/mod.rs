//! Normalisation layers: batch norm (N, D) and spatial (N, C, H, W), layer norm (N, D) and
//! spatial group norm (N, C, H, W), forward and backward.
//!
//! All four standardise x within a statistic group and then scale and shift per channel; a
//! [`NormLayout`] names the layer and its shape, and says which group and channel each element
//! belongs to. The cache records the layout, so a backward pass handed another layer's (or
//! another shape's) cache says so instead of computing nonsense.

pub mod fast;
pub mod reference;

use crate::error::{Error, Result, expect_rank, expect_shape, fmt_shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

/// Train mode normalises with batch statistics (and updates the running ones); test mode
/// normalises with the running statistics only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Train,
    Test,
}

/// How running statistics are kept.
///
/// | | Notebook (default) | PyTorch |
/// |---|---|---|
/// | update | `running = momentum * running + (1 - momentum) * batch` | `running = (1 - momentum) * running + momentum * batch` |
/// | default momentum | 0.9 | 0.1 |
/// | running variance | uncorrected batch variance | unbiased: batch variance * n / (n - 1) |
/// | running stats when absent | mean 0, var 0 | mean 0, var 1 |
///
/// In both, train mode normalises with the uncorrected batch variance. With `PyTorch`, running
/// statistics can be exchanged with a PyTorch checkpoint's `running_mean`/`running_var`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Convention {
    #[default]
    Notebook,
    PyTorch,
}

/// The notebook's `bn_param`. `forward` stores the updated running statistics back into it.
#[derive(Clone, Debug, PartialEq)]
pub struct BnParam<T> {
    pub mode: Mode,
    pub eps: f64,
    pub momentum: f64,
    pub running_mean: Option<Vec<T>>,
    pub running_var: Option<Vec<T>>,
    pub convention: Convention,
}

impl<T> BnParam<T> {
    /// `{'mode': 'train'}`: eps 1e-5, momentum 0.9, notebook convention.
    pub fn train() -> Self {
        BnParam {
            mode: Mode::Train,
            eps: 1e-5,
            momentum: 0.9,
            running_mean: None,
            running_var: None,
            convention: Convention::Notebook,
        }
    }
    /// `{'mode': 'test'}`.
    pub fn test() -> Self {
        BnParam {
            mode: Mode::Test,
            ..Self::train()
        }
    }
    /// PyTorch's `BatchNorm` conventions: momentum 0.1 weighting the new batch, unbiased
    /// running variance, running variance starting at 1.
    pub fn pytorch(mode: Mode) -> Self {
        BnParam {
            mode,
            momentum: 0.1,
            convention: Convention::PyTorch,
            ..Self::train()
        }
    }
}

/// `ln_param` / `gn_param`: only eps (default 1e-5). These layers behave the same in train
/// and test mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormParam {
    pub eps: f64,
}

impl Default for NormParam {
    fn default() -> Self {
        NormParam { eps: 1e-5 }
    }
}

/// Which layer, on which shape. Element `i` of the flat input belongs to statistic group
/// `group_of(i)` and is scaled by `gamma[channel_of(i)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormLayout {
    /// (N, D): statistics per feature d over N.
    BatchNorm { n: usize, d: usize },
    /// (N, C, H, W): statistics per channel over N * H * W.
    SpatialBatchNorm {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    },
    /// (N, D): statistics per sample over D.
    LayerNorm { n: usize, d: usize },
    /// (N, C, H, W): statistics per (sample, group of C/G channels) over C/G * H * W.
    GroupNorm {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        g: usize,
    },
}

impl NormLayout {
    pub fn name(&self) -> &'static str {
        match self {
            NormLayout::BatchNorm { .. } => "batchnorm",
            NormLayout::SpatialBatchNorm { .. } => "spatial_batchnorm",
            NormLayout::LayerNorm { .. } => "layernorm",
            NormLayout::GroupNorm { .. } => "spatial_groupnorm",
        }
    }
    pub fn shape(&self) -> Vec<usize> {
        match *self {
            NormLayout::BatchNorm { n, d } | NormLayout::LayerNorm { n, d } => vec![n, d],
            NormLayout::SpatialBatchNorm { n, c, h, w }
            | NormLayout::GroupNorm { n, c, h, w, .. } => {
                vec![n, c, h, w]
            }
        }
    }
    pub fn numel(&self) -> usize {
        self.shape().iter().product()
    }
    /// Length of gamma and beta.
    pub fn channels(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } | NormLayout::LayerNorm { d, .. } => d,
            NormLayout::SpatialBatchNorm { c, .. } | NormLayout::GroupNorm { c, .. } => c,
        }
    }
    /// Number of statistic groups.
    pub fn groups(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } => d,
            NormLayout::SpatialBatchNorm { c, .. } => c,
            NormLayout::LayerNorm { n, .. } => n,
            NormLayout::GroupNorm { n, g, .. } => n * g,
        }
    }
    /// Elements per statistic group.
    pub fn group_size(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { n, .. } => n,
            NormLayout::SpatialBatchNorm { n, h, w, .. } => n * h * w,
            NormLayout::LayerNorm { d, .. } => d,
            NormLayout::GroupNorm { c, h, w, g, .. } => c / g * h * w,
        }
    }
    #[inline(always)]
    pub fn group_of(&self, i: usize) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } => i % d,
            NormLayout::SpatialBatchNorm { c, h, w, .. } => (i / (h * w)) % c,
            NormLayout::LayerNorm { d, .. } => i / d,
            NormLayout::GroupNorm { c, h, w, g, .. } => {
                let (n, ch) = (i / (c * h * w), (i / (h * w)) % c);
                n * g + ch / (c / g)
            }
        }
    }
    #[inline(always)]
    pub fn channel_of(&self, i: usize) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } | NormLayout::LayerNorm { d, .. } => i % d,
            NormLayout::SpatialBatchNorm { c, h, w, .. }
            | NormLayout::GroupNorm { c, h, w, .. } => (i / (h * w)) % c,
        }
    }
    fn is_spatial(&self) -> bool {
        matches!(
            self,
            NormLayout::SpatialBatchNorm { .. } | NormLayout::GroupNorm { .. }
        )
    }
}

/// What a norm backward needs: the layout, the input, gamma, and per-group mean and 1/std
/// (f64 whatever T is). Not a copy of x_hat: the backward recomputes it.
#[derive(Clone, Debug)]
pub struct NormCache<T> {
    pub(crate) layout: NormLayout,
    /// Whether the statistics came from the batch (train) or were fixed (test).
    pub(crate) batch_stats: bool,
    pub(crate) x: Tensor<T>,
    pub(crate) gamma: Vec<T>,
    pub(crate) gamma_shape: Vec<usize>,
    pub(crate) mean: Vec<f64>,
    pub(crate) inv_std: Vec<f64>,
}

impl<T> NormCache<T> {
    pub fn layout(&self) -> &NormLayout {
        &self.layout
    }
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    pub fn inv_std(&self) -> &[f64] {
        &self.inv_std
    }
}

/// Checks x against the layer's rank and returns the layout.
fn layout_of(kind: &'static str, x: &[usize], groups: usize) -> Result<NormLayout> {
    let l = match kind {
        "batchnorm" | "layernorm" => {
            expect_rank("x", x, 2, "(N, D)")?;
            if kind == "batchnorm" {
                NormLayout::BatchNorm { n: x[0], d: x[1] }
            } else {
                NormLayout::LayerNorm { n: x[0], d: x[1] }
            }
        }
        _ => {
            expect_rank("x", x, 4, "(N, C, H, W)")?;
            let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
            if kind == "spatial_batchnorm" {
                NormLayout::SpatialBatchNorm { n, c, h, w }
            } else {
                if groups == 0 || c % groups != 0 {
                    return Err(Error::param("G", format!("a divisor of C = {c}"), groups));
                }
                NormLayout::GroupNorm {
                    n,
                    c,
                    h,
                    w,
                    g: groups,
                }
            }
        }
    };
    crate::error::checked_numel("x", x)?;
    Ok(l)
}

/// gamma/beta: (C,) or, for the spatial layers, also (1, C, 1, 1) as the notebook passes them.
fn check_affine<T>(arg: &'static str, p: &TensorView<'_, T>, l: &NormLayout) -> Result<()> {
    let c = l.channels();
    let ok = p.shape() == [c] || (l.is_spatial() && p.shape() == [1, c, 1, 1]);
    if ok {
        Ok(())
    } else {
        let expected = if l.is_spatial() {
            format!("({c},) or (1, {c}, 1, 1)")
        } else {
            format!("({c},)")
        };
        Err(Error::shape(arg, expected, fmt_shape(p.shape())))
    }
}

fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::param("eps", "a finite value >= 0", eps))
    }
}

fn check_batch_stats(l: &NormLayout) -> Result<()> {
    if l.group_size() == 0 {
        return Err(Error::shape(
            "x",
            format!("at least one element per {} statistic", l.name()),
            fmt_shape(&l.shape()),
        ));
    }
    Ok(())
}

/// Everything a forward kernel needs once arguments are validated.
pub(crate) struct Prepared<'a, T> {
    pub layout: NormLayout,
    pub x: &'a [T],
    pub gamma: &'a [T],
    pub beta: &'a [T],
    pub gamma_shape: Vec<usize>,
}

/// What a norm backward reads: the layout, whether the statistics came from the batch, the
/// forward's input and gamma, per-group mean and 1/std, and dout.
#[derive(Clone, Copy)]
pub(crate) struct BwdIn<'a, T> {
    pub l: &'a NormLayout,
    pub batch_stats: bool,
    pub x: &'a [T],
    pub gamma: &'a [T],
    pub mean: &'a [f64],
    pub inv_std: &'a [f64],
    pub dout: &'a [T],
}

/// What a norm backward writes.
pub(crate) struct BwdOut<'a, T> {
    pub dx: &'a mut [T],
    pub dgamma: &'a mut [T],
    pub dbeta: &'a mut [T],
}

/// The kernels a norm layer runs: the reference or the fast ones.
pub(crate) trait NormKernels {
    /// Normalises x into out with batch statistics; returns per-group (mean, var).
    #[allow(clippy::too_many_arguments)]
    fn train_forward<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        out: &mut [T],
        par: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>);
    /// Normalises x into out with fixed per-group statistics.
    #[allow(clippy::too_many_arguments)]
    fn normalize<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        mean: &[f64],
        inv_std: &[f64],
        out: &mut [T],
        par: Parallelism<'_>,
    );
    /// dx, dgamma, dbeta (closed form).
    fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, par: Parallelism<'_>);
}

pub(crate) struct Reference;
impl NormKernels for Reference {
    fn train_forward<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        out: &mut [T],
        _: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mean, var) = reference::stats(l, x);
        reference::normalize(l, x, gamma, beta, &mean, &inv_std_of(&var, eps), out);
        (mean, var)
    }
    fn normalize<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        mean: &[f64],
        inv_std: &[f64],
        out: &mut [T],
        _: Parallelism<'_>,
    ) {
        reference::normalize(l, x, gamma, beta, mean, inv_std, out)
    }
    fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, _: Parallelism<'_>) {
        reference::backward(a, o)
    }
}

pub(crate) struct Fast;
impl NormKernels for Fast {
    fn train_forward<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        out: &mut [T],
        par: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        fast::train_forward(l, x, gamma, beta, eps, out, par)
    }
    fn normalize<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        mean: &[f64],
        inv_std: &[f64],
        out: &mut [T],
        par: Parallelism<'_>,
    ) {
        fast::normalize(l, x, gamma, beta, mean, inv_std, out, par)
    }
    fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, par: Parallelism<'_>) {
        fast::backward(a, o, par)
    }
}

pub(crate) fn prepare<'a, T>(
    kind: &'static str,
    x: TensorView<'a, T>,
    gamma: TensorView<'a, T>,
    beta: TensorView<'a, T>,
    groups: usize,
) -> Result<Prepared<'a, T>> {
    let layout = layout_of(kind, x.shape(), groups)?;
    check_affine("gamma", &gamma, &layout)?;
    check_affine("beta", &beta, &layout)?;
    Ok(Prepared {
        layout,
        x: x.data(),
        gamma: gamma.data(),
        beta: beta.data(),
        gamma_shape: gamma.shape().to_vec(),
    })
}

/// Validates bn_param against the layout; returns the running statistics to use (defaults
/// filled in) without touching bn_param yet.
fn running_stats<T: Float>(p: &BnParam<T>, l: &NormLayout) -> Result<(Vec<T>, Vec<T>)> {
    check_eps(p.eps)?;
    if !(0.0..=1.0).contains(&p.momentum) {
        return Err(Error::param("momentum", "a value in [0, 1]", p.momentum));
    }
    let c = l.channels();
    let var0 = match p.convention {
        Convention::Notebook => T::zero(),
        Convention::PyTorch => T::one(),
    };
    let rm = match &p.running_mean {
        Some(v) if v.len() != c => {
            return Err(Error::shape(
                "running_mean",
                fmt_shape(&[c]),
                fmt_shape(&[v.len()]),
            ));
        }
        Some(v) => v.clone(),
        None => vec![T::zero(); c],
    };
    let rv = match &p.running_var {
        Some(v) if v.len() != c => {
            return Err(Error::shape(
                "running_var",
                fmt_shape(&[c]),
                fmt_shape(&[v.len()]),
            ));
        }
        Some(v) => v.clone(),
        None => vec![var0; c],
    };
    Ok((rm, rv))
}

pub(crate) fn inv_std_of(var: &[f64], eps: f64) -> Vec<f64> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

/// Batch norm forward (plain or spatial) with the given kernels, into `out` (validated first:
/// on error neither `out` nor `p` is touched). Returns the cache's statistics.
pub(crate) fn bn_forward_into<T: Float, K: NormKernels>(
    pr: &Prepared<'_, T>,
    p: &mut BnParam<T>,
    out: &mut [T],
    par: Parallelism<'_>,
) -> Result<(Vec<f64>, Vec<f64>, bool)> {
    let l = pr.layout;
    let (mut rm, mut rv) = running_stats(p, &l)?;
    expect_shape("out", &[out.len()], &[l.numel()])?;
    let count = l.group_size();
    if p.mode == Mode::Train {
        check_batch_stats(&l)?;
        if p.convention == Convention::PyTorch && count < 2 {
            return Err(Error::shape(
                "x",
                "more than 1 value per channel in train mode (PyTorch convention)",
                fmt_shape(&l.shape()),
            ));
        }
    }
    let (mean, inv_std, batch_stats) = match p.mode {
        Mode::Train => {
            let (mean, var) = K::train_forward(&l, pr.x, pr.gamma, pr.beta, p.eps, out, par);
            let m = p.momentum;
            for ch in 0..l.channels() {
                let (old_m, old_v) = (rm[ch].to_f(), rv[ch].to_f());
                let (new_m, new_v) = match p.convention {
                    Convention::Notebook => (
                        m * old_m + (1.0 - m) * mean[ch],
                        m * old_v + (1.0 - m) * var[ch],
                    ),
                    Convention::PyTorch => {
                        let unbiased = var[ch] * count as f64 / (count - 1) as f64;
                        (
                            (1.0 - m) * old_m + m * mean[ch],
                            (1.0 - m) * old_v + m * unbiased,
                        )
                    }
                };
                rm[ch] = T::from_f(new_m);
                rv[ch] = T::from_f(new_v);
            }
            (mean, inv_std_of(&var, p.eps), true)
        }
        Mode::Test => {
            let mean: Vec<f64> = rm.iter().map(|v| v.to_f()).collect();
            let var: Vec<f64> = rv.iter().map(|v| v.to_f()).collect();
            let inv = inv_std_of(&var, p.eps);
            K::normalize(&l, pr.x, pr.gamma, pr.beta, &mean, &inv, out, par);
            (mean, inv, false)
        }
    };
    p.running_mean = Some(rm);
    p.running_var = Some(rv);
    Ok((mean, inv_std, batch_stats))
}

/// Batch norm forward (plain or spatial) with the given kernels, allocating out and the cache.
pub(crate) fn bn_forward<T: Float, K: NormKernels>(
    pr: Prepared<'_, T>,
    p: &mut BnParam<T>,
    par: Parallelism<'_>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let mut out = Tensor::zeros(&pr.layout.shape())?;
    let (mean, inv_std, batch_stats) = bn_forward_into::<T, K>(&pr, p, out.data_mut(), par)?;
    Ok((out, make_cache(pr, mean, inv_std, batch_stats)?))
}

fn make_cache<T: Float>(
    pr: Prepared<'_, T>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    batch_stats: bool,
) -> Result<NormCache<T>> {
    Ok(NormCache {
        layout: pr.layout,
        batch_stats,
        x: Tensor::new(pr.x.to_vec(), &pr.layout.shape())?,
        gamma: pr.gamma.to_vec(),
        gamma_shape: pr.gamma_shape,
        mean,
        inv_std,
    })
}

/// Layer/group norm forward with the given kernels into `out` (always batch statistics).
pub(crate) fn per_sample_forward_into<T: Float, K: NormKernels>(
    pr: &Prepared<'_, T>,
    p: &NormParam,
    out: &mut [T],
    par: Parallelism<'_>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let l = pr.layout;
    check_eps(p.eps)?;
    check_batch_stats(&l)?;
    expect_shape("out", &[out.len()], &[l.numel()])?;
    let (mean, var) = K::train_forward(&l, pr.x, pr.gamma, pr.beta, p.eps, out, par);
    Ok((mean, inv_std_of(&var, p.eps)))
}

pub(crate) fn per_sample_forward<T: Float, K: NormKernels>(
    pr: Prepared<'_, T>,
    p: &NormParam,
    par: Parallelism<'_>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let mut out = Tensor::zeros(&pr.layout.shape())?;
    let (mean, inv_std) = per_sample_forward_into::<T, K>(&pr, p, out.data_mut(), par)?;
    Ok((out, make_cache(pr, mean, inv_std, true)?))
}

/// Checks that `cache` came from layer `kind` and that dout has its shape.
pub(crate) fn check_backward<T>(
    kind: &'static str,
    dout: &TensorView<'_, T>,
    cache: &NormCache<T>,
) -> Result<()> {
    if cache.layout.name() != kind {
        return Err(Error::cache(
            "cache",
            format!("a cache from {kind}_forward"),
            format!("a cache from {}_forward", cache.layout.name()),
        ));
    }
    expect_shape("dout", dout.shape(), &cache.layout.shape())
}

pub(crate) type NormGrads<T> = (Tensor<T>, Tensor<T>, Tensor<T>);

pub(crate) fn alloc_grads<T: Float>(cache: &NormCache<T>) -> Result<NormGrads<T>> {
    Ok((
        Tensor::zeros(&cache.layout.shape())?,
        Tensor::zeros(&cache.gamma_shape)?,
        Tensor::zeros(&cache.gamma_shape)?,
    ))
}

fn kernel_backward<T: Float, K: NormKernels>(
    kind: &'static str,
    dout: TensorView<'_, T>,
    cache: &NormCache<T>,
    par: Parallelism<'_>,
) -> Result<NormGrads<T>> {
    check_backward(kind, &dout, cache)?;
    let (mut dx, mut dg, mut db) = alloc_grads(cache)?;
    let a = BwdIn {
        l: &cache.layout,
        batch_stats: cache.batch_stats,
        x: cache.x.data(),
        gamma: &cache.gamma,
        mean: &cache.mean,
        inv_std: &cache.inv_std,
        dout: dout.data(),
    };
    let o = BwdOut {
        dx: dx.data_mut(),
        dgamma: dg.data_mut(),
        dbeta: db.data_mut(),
    };
    K::backward(a, o, par);
    Ok((dx, dg, db))
}

fn reference_backward<T: Float>(
    kind: &'static str,
    dout: TensorView<'_, T>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    kernel_backward::<T, Reference>(kind, dout, cache, Parallelism::Sequential)
}

/// Reference batch norm forward on (N, D); updates bn_param's running statistics in train mode.
pub fn batchnorm_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    bn_param: &mut BnParam<T>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("batchnorm", x.into(), gamma.into(), beta.into(), 0)?;
    bn_forward::<T, Reference>(pr, bn_param, Parallelism::Sequential)
}

/// Batch norm backward through the computation graph (the notebook's `batchnorm_backward`).
pub fn batchnorm_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    let dout = dout.into();
    check_backward("batchnorm", &dout, cache)?;
    if !cache.batch_stats {
        return reference_backward("batchnorm", dout, cache);
    }
    let NormLayout::BatchNorm { n, d } = cache.layout else {
        unreachable!("check_backward accepted a batchnorm layout")
    };
    let (mut dx, mut dg, mut db) = alloc_grads(cache)?;
    reference::backward_graph(
        n,
        d,
        cache.x.data(),
        &cache.gamma,
        &cache.mean,
        &cache.inv_std,
        dout.data(),
        dx.data_mut(),
        dg.data_mut(),
        db.data_mut(),
    );
    Ok((dx, dg, db))
}

/// Batch norm backward by the simplified closed form (the notebook's `batchnorm_backward_alt`).
pub fn batchnorm_backward_alt_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    reference_backward("batchnorm", dout.into(), cache)
}

/// Reference spatial batch norm forward on (N, C, H, W): per-channel statistics over N*H*W.
pub fn spatial_batchnorm_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    bn_param: &mut BnParam<T>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("spatial_batchnorm", x.into(), gamma.into(), beta.into(), 0)?;
    bn_forward::<T, Reference>(pr, bn_param, Parallelism::Sequential)
}

pub fn spatial_batchnorm_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    reference_backward("spatial_batchnorm", dout.into(), cache)
}

/// Reference layer norm forward on (N, D): per-sample statistics, gamma/beta per feature.
pub fn layernorm_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    ln_param: &NormParam,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("layernorm", x.into(), gamma.into(), beta.into(), 0)?;
    per_sample_forward::<T, Reference>(pr, ln_param, Parallelism::Sequential)
}

pub fn layernorm_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    reference_backward("layernorm", dout.into(), cache)
}

/// Reference spatial group norm forward on (N, C, H, W) with `g` groups of C/g channels.
pub fn spatial_groupnorm_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    g: usize,
    gn_param: &NormParam,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("spatial_groupnorm", x.into(), gamma.into(), beta.into(), g)?;
    per_sample_forward::<T, Reference>(pr, gn_param, Parallelism::Sequential)
}

pub fn spatial_groupnorm_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    reference_backward("spatial_groupnorm", dout.into(), cache)
}

// ---------------------------------------------------------------------------------------------
// Fast kernels: the notebook's names without `_naive`. Both batch-norm backward names run the
// fast closed form; `batchnorm_backward_naive` is the computation-graph reference.

macro_rules! fast_bn {
    ($fwd:ident, $bwd:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        pub fn $fwd<'a, T: Float>(
            x: impl Into<TensorView<'a, T>>,
            gamma: impl Into<TensorView<'a, T>>,
            beta: impl Into<TensorView<'a, T>>,
            bn_param: &mut BnParam<T>,
        ) -> Result<(Tensor<T>, NormCache<T>)> {
            let pr = prepare($kind, x.into(), gamma.into(), beta.into(), 0)?;
            bn_forward::<T, Fast>(pr, bn_param, Parallelism::Current)
        }
        /// Fast backward (closed form) for the matching forward's cache.
        pub fn $bwd<'a, T: Float>(
            dout: impl Into<TensorView<'a, T>>,
            cache: &NormCache<T>,
        ) -> Result<NormGrads<T>> {
            kernel_backward::<T, Fast>($kind, dout.into(), cache, Parallelism::Current)
        }
    };
}

fast_bn!(
    batchnorm_forward,
    batchnorm_backward,
    "batchnorm",
    "Fast batch norm forward on (N, D)."
);
fast_bn!(
    spatial_batchnorm_forward,
    spatial_batchnorm_backward,
    "spatial_batchnorm",
    "Fast spatial batch norm forward on (N, C, H, W)."
);

/// Fast batch norm backward, closed form (the same kernel as `batchnorm_backward`).
pub fn batchnorm_backward_alt<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    batchnorm_backward(dout, cache)
}

/// Fast layer norm forward on (N, D).
pub fn layernorm_forward<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    ln_param: &NormParam,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("layernorm", x.into(), gamma.into(), beta.into(), 0)?;
    per_sample_forward::<T, Fast>(pr, ln_param, Parallelism::Current)
}

pub fn layernorm_backward<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    kernel_backward::<T, Fast>("layernorm", dout.into(), cache, Parallelism::Current)
}

/// Fast spatial group norm forward on (N, C, H, W) with `g` groups.
pub fn spatial_groupnorm_forward<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    g: usize,
    gn_param: &NormParam,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare("spatial_groupnorm", x.into(), gamma.into(), beta.into(), g)?;
    per_sample_forward::<T, Fast>(pr, gn_param, Parallelism::Current)
}

pub fn spatial_groupnorm_backward<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    kernel_backward::<T, Fast>(
        "spatial_groupnorm",
        dout.into(),
        cache,
        Parallelism::Current,
    )
}

// ---------------------------------------------------------------------------------------------
// Framework entry points: caller-provided output and gradient buffers.

/// Statistics a norm forward computed (or, in batch-norm test mode, used), as its backward needs
/// them.
#[derive(Clone, Debug, PartialEq)]
pub struct NormStats {
    pub layout: NormLayout,
    pub batch_stats: bool,
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
}

/// Batch norm (kind "batchnorm" on (N, D) or "spatial_batchnorm" on (N, C, H, W)) forward
/// into `out`; updates `bn_param` in train mode. Nothing is written on error.
pub fn batchnorm_forward_into<'a, T: Float>(
    spatial: bool,
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    bn_param: &mut BnParam<T>,
    out: &mut [T],
    par: Parallelism<'_>,
) -> Result<NormStats> {
    let kind = if spatial {
        "spatial_batchnorm"
    } else {
        "batchnorm"
    };
    let pr = prepare(kind, x.into(), gamma.into(), beta.into(), 0)?;
    let (mean, inv_std, batch_stats) = bn_forward_into::<T, Fast>(&pr, bn_param, out, par)?;
    Ok(NormStats {
        layout: pr.layout,
        batch_stats,
        mean,
        inv_std,
    })
}

/// Layer norm forward into `out`.
pub fn layernorm_forward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    ln_param: &NormParam,
    out: &mut [T],
    par: Parallelism<'_>,
) -> Result<NormStats> {
    let pr = prepare("layernorm", x.into(), gamma.into(), beta.into(), 0)?;
    let (mean, inv_std) = per_sample_forward_into::<T, Fast>(&pr, ln_param, out, par)?;
    Ok(NormStats {
        layout: pr.layout,
        batch_stats: true,
        mean,
        inv_std,
    })
}

/// Spatial group norm forward into `out`.
#[allow(clippy::too_many_arguments)]
pub fn spatial_groupnorm_forward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    g: usize,
    gn_param: &NormParam,
    out: &mut [T],
    par: Parallelism<'_>,
) -> Result<NormStats> {
    let pr = prepare("spatial_groupnorm", x.into(), gamma.into(), beta.into(), g)?;
    let (mean, inv_std) = per_sample_forward_into::<T, Fast>(&pr, gn_param, out, par)?;
    Ok(NormStats {
        layout: pr.layout,
        batch_stats: true,
        mean,
        inv_std,
    })
}

/// Backward of any norm forward into the caller's dx, dgamma, dbeta, from the forward's input,
/// gamma and statistics. Nothing is written on error.
#[allow(clippy::too_many_arguments)]
pub fn norm_backward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    stats: &NormStats,
    dout: impl Into<TensorView<'a, T>>,
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
    par: Parallelism<'_>,
) -> Result<()> {
    let (x, gamma, dout) = (x.into(), gamma.into(), dout.into());
    let l = stats.layout;
    expect_shape("x", x.shape(), &l.shape())?;
    check_affine("gamma", &gamma, &l)?;
    expect_shape("dout", dout.shape(), &l.shape())?;
    if stats.mean.len() != l.groups() || stats.inv_std.len() != l.groups() {
        return Err(Error::cache(
            "stats",
            format!("{} mean and inv_std values for {}", l.groups(), l.name()),
            format!("{} and {}", stats.mean.len(), stats.inv_std.len()),
        ));
    }
    expect_shape("dx", &[dx.len()], &[l.numel()])?;
    expect_shape("dgamma", &[dgamma.len()], &[l.channels()])?;
    expect_shape("dbeta", &[dbeta.len()], &[l.channels()])?;
    let a = BwdIn {
        l: &l,
        batch_stats: stats.batch_stats,
        x: x.data(),
        gamma: gamma.data(),
        mean: &stats.mean,
        inv_std: &stats.inv_std,
        dout: dout.data(),
    };
    Fast::backward(a, BwdOut { dx, dgamma, dbeta }, par);
    Ok(())
}
