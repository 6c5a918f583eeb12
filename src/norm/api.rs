//! The notebook's functions: `*_naive` the reference, the bare names the fast kernels.

use super::driver::*;
use super::layout::*;
use super::{BnParam, NormKind, NormParam, reference};
use crate::error::Result;
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

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
    /// The layer the cache came from and its input shape.
    pub fn kind(&self) -> NormKind {
        self.layout.kind()
    }
    /// The forward's input shape.
    pub fn x_shape(&self) -> Vec<usize> {
        self.layout.shape()
    }
    /// Per statistic group: the mean the forward normalised with (f64 whatever T is).
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// Per statistic group: 1 / sqrt(var + eps).
    pub fn inv_std(&self) -> &[f64] {
        &self.inv_std
    }
}

/// Reference batch norm forward on (N, D); updates bn_param's running statistics in train mode.
pub fn batchnorm_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    gamma: impl Into<TensorView<'a, T>>,
    beta: impl Into<TensorView<'a, T>>,
    bn_param: &mut BnParam<T>,
) -> Result<(Tensor<T>, NormCache<T>)> {
    let pr = prepare(NormKind::BatchNorm, x.into(), gamma.into(), beta.into())?;
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
    let pr = prepare(
        NormKind::SpatialBatchNorm,
        x.into(),
        gamma.into(),
        beta.into(),
    )?;
    bn_forward::<T, Reference>(pr, bn_param, Parallelism::Sequential)
}

/// Reference spatial batch norm backward (closed form).
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
    let pr = prepare(NormKind::LayerNorm, x.into(), gamma.into(), beta.into())?;
    per_sample_forward::<T, Reference>(pr, ln_param, Parallelism::Sequential)
}

/// Reference layer norm backward (closed form).
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
    let pr = prepare(
        NormKind::GroupNorm { groups: g },
        x.into(),
        gamma.into(),
        beta.into(),
    )?;
    per_sample_forward::<T, Reference>(pr, gn_param, Parallelism::Sequential)
}

/// Reference spatial group norm backward (closed form).
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
    ($fwd:ident, $bwd:ident, $kind:expr, $name:literal, $doc:literal) => {
        #[doc = $doc]
        pub fn $fwd<'a, T: Float>(
            x: impl Into<TensorView<'a, T>>,
            gamma: impl Into<TensorView<'a, T>>,
            beta: impl Into<TensorView<'a, T>>,
            bn_param: &mut BnParam<T>,
        ) -> Result<(Tensor<T>, NormCache<T>)> {
            let pr = prepare($kind, x.into(), gamma.into(), beta.into())?;
            bn_forward::<T, Fast>(pr, bn_param, Parallelism::Current)
        }
        /// Fast backward (closed form) for the matching forward's cache.
        pub fn $bwd<'a, T: Float>(
            dout: impl Into<TensorView<'a, T>>,
            cache: &NormCache<T>,
        ) -> Result<NormGrads<T>> {
            kernel_backward::<T, Fast>($name, dout.into(), cache, Parallelism::Current)
        }
    };
}

fast_bn!(
    batchnorm_forward,
    batchnorm_backward,
    NormKind::BatchNorm,
    "batchnorm",
    "Fast batch norm forward on (N, D)."
);
fast_bn!(
    spatial_batchnorm_forward,
    spatial_batchnorm_backward,
    NormKind::SpatialBatchNorm,
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
    let pr = prepare(NormKind::LayerNorm, x.into(), gamma.into(), beta.into())?;
    per_sample_forward::<T, Fast>(pr, ln_param, Parallelism::Current)
}

/// Fast layer norm backward for [`layernorm_forward`]'s cache.
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
    let pr = prepare(
        NormKind::GroupNorm { groups: g },
        x.into(),
        gamma.into(),
        beta.into(),
    )?;
    per_sample_forward::<T, Fast>(pr, gn_param, Parallelism::Current)
}

/// Fast spatial group norm backward for [`spatial_groupnorm_forward`]'s cache.
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
