//! The layers' common driver: validated arguments, running statistics, and the forward and
//! backward passes with either set of kernels (reference or fast).

use super::layout::*;
use super::{BnParam, Convention, Mode, NormCache, NormKind, NormParam, fast, reference};
use crate::error::{Error, Result, expect_shape, fmt_shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

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
    /// The fused ReLU's mask (1 where the forward's output was positive): dout counts only
    /// there. None for a plain norm.
    pub mask: Option<&'a [u8]>,
}

/// What a norm backward writes.
pub(crate) struct BwdOut<'a, T> {
    pub dx: &'a mut [T],
    pub dgamma: &'a mut [T],
    pub dbeta: &'a mut [T],
}

/// The kernels a norm layer runs: the reference or the fast ones.
pub(crate) trait NormKernels {
    /// Normalises x into out with batch statistics; returns per-group (mean, var). With
    /// `relu`, then clamps out at 0 and writes the mask (1 where out was positive) into it.
    #[allow(clippy::too_many_arguments)]
    fn train_forward<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        eps: f64,
        out: &mut [T],
        relu: Option<&mut [u8]>,
        par: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>);
    /// Normalises x into out with fixed per-group statistics (and the ReLU as above).
    #[allow(clippy::too_many_arguments)]
    fn normalize<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        mean: &[f64],
        inv_std: &[f64],
        out: &mut [T],
        relu: Option<&mut [u8]>,
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
        relu: Option<&mut [u8]>,
        _: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (mean, var) = reference::stats(l, x);
        reference::normalize(l, x, gamma, beta, &mean, &inv_std_of(&var, eps), out);
        relu_after(out, relu);
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
        relu: Option<&mut [u8]>,
        _: Parallelism<'_>,
    ) {
        reference::normalize(l, x, gamma, beta, mean, inv_std, out);
        relu_after(out, relu);
    }
    fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, _: Parallelism<'_>) {
        let Some(mask) = a.mask else {
            return reference::backward(a, o);
        };
        // The ReLU's backward first, as the unfused pair runs it.
        let d: Vec<T> = a
            .dout
            .iter()
            .zip(mask)
            .map(|(&d, &m)| if m != 0 { d } else { T::zero() })
            .collect();
        reference::backward(
            BwdIn {
                dout: &d,
                mask: None,
                ..a
            },
            o,
        )
    }
}

/// The ReLU after a reference norm: the fast path's `relu_run` (the ReLU is not what the
/// reference checks; `relu_forward` is its own reference in the tests).
fn relu_after<T: Float>(out: &mut [T], relu: Option<&mut [u8]>) {
    if let Some(mask) = relu {
        fast::relu_run(out, mask);
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
        relu: Option<&mut [u8]>,
        par: Parallelism<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        fast::train_forward(l, x, gamma, beta, eps, out, relu, par)
    }
    fn normalize<T: Float>(
        l: &NormLayout,
        x: &[T],
        gamma: &[T],
        beta: &[T],
        mean: &[f64],
        inv_std: &[f64],
        out: &mut [T],
        relu: Option<&mut [u8]>,
        par: Parallelism<'_>,
    ) {
        fast::normalize(l, x, gamma, beta, mean, inv_std, out, relu, par)
    }
    fn backward<T: Float>(a: BwdIn<'_, T>, o: BwdOut<'_, T>, par: Parallelism<'_>) {
        fast::backward(a, o, par)
    }
}

pub(crate) fn prepare<'a, T>(
    kind: NormKind,
    x: TensorView<'a, T>,
    gamma: TensorView<'a, T>,
    beta: TensorView<'a, T>,
) -> Result<Prepared<'a, T>> {
    let layout = layout_of(kind, x.shape())?;
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
pub(crate) fn running_stats<T: Float>(p: &BnParam<T>, l: &NormLayout) -> Result<(Vec<T>, Vec<T>)> {
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
/// on error neither `out` nor `p` is touched), then the fused ReLU if `relu` (its mask, out's
/// length) is given. Returns the cache's statistics.
pub(crate) fn bn_forward_into<T: Float, K: NormKernels>(
    pr: &Prepared<'_, T>,
    p: &mut BnParam<T>,
    out: &mut [T],
    relu: Option<&mut [u8]>,
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
            let (mean, var) = K::train_forward(&l, pr.x, pr.gamma, pr.beta, p.eps, out, relu, par);
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
            K::normalize(&l, pr.x, pr.gamma, pr.beta, &mean, &inv, out, relu, par);
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
    let (mean, inv_std, batch_stats) = bn_forward_into::<T, K>(&pr, p, out.data_mut(), None, par)?;
    Ok((out, make_cache(pr, mean, inv_std, batch_stats)?))
}

pub(crate) fn make_cache<T: Float>(
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
    relu: Option<&mut [u8]>,
    par: Parallelism<'_>,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let l = pr.layout;
    check_eps(p.eps)?;
    check_batch_stats(&l)?;
    expect_shape("out", &[out.len()], &[l.numel()])?;
    let (mean, var) = K::train_forward(&l, pr.x, pr.gamma, pr.beta, p.eps, out, relu, par);
    Ok((mean, inv_std_of(&var, p.eps)))
}

pub(crate) fn per_sample_forward<T: Float, K: NormKernels>(
    pr: Prepared<'_, T>,
    p: &NormParam,
    par: Parallelism<'_>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let mut out = Tensor::zeros(&pr.layout.shape())?;
    let (mean, inv_std) = per_sample_forward_into::<T, K>(&pr, p, out.data_mut(), None, par)?;
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

pub(crate) fn kernel_backward<T: Float, K: NormKernels>(
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
        mask: None,
    };
    let o = BwdOut {
        dx: dx.data_mut(),
        dgamma: dg.data_mut(),
        dbeta: db.data_mut(),
    };
    K::backward(a, o, par);
    Ok((dx, dg, db))
}

pub(crate) fn reference_backward<T: Float>(
    kind: &'static str,
    dout: TensorView<'_, T>,
    cache: &NormCache<T>,
) -> Result<NormGrads<T>> {
    kernel_backward::<T, Reference>(kind, dout, cache, Parallelism::Sequential)
}
