//! The framework API of the norms: a plan per layer and input shape, the statistics a forward
//! leaves for its backward.

use super::driver::{
    BwdIn, BwdOut, Fast, NormKernels, bn_forward_into, per_sample_forward_into, prepare,
};
use super::layout::{NormLayout, check_affine, layout_of};
use super::{BnParam, NormParam};
use crate::error::{Error, Result, expect_shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{TensorView, TensorViewMut};
use std::marker::PhantomData;

/// Which normalisation layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormKind {
    /// Batch norm on (N, D): statistics per feature over the batch.
    BatchNorm,
    /// Spatial batch norm on (N, C, H, W): statistics per channel over N * H * W.
    SpatialBatchNorm,
    /// Layer norm on (N, D): statistics per sample over its D features.
    LayerNorm,
    /// Spatial group norm on (N, C, H, W): statistics per sample and group of C / groups
    /// channels.
    GroupNorm {
        /// Number of channel groups G (a divisor of C).
        groups: usize,
    },
}

impl NormKind {
    /// Whether the layer keeps running statistics (batch norm) and so takes a [`BnParam`].
    pub fn is_batch(self) -> bool {
        matches!(self, NormKind::BatchNorm | NormKind::SpatialBatchNorm)
    }
}

/// The parameters of one norm forward: batch norm's `bn_param` (mode, eps, momentum, running
/// statistics, updated in train mode) or layer/group norm's `ln_param` / `gn_param` (eps).
#[derive(Debug)]
pub enum NormParams<'p, T> {
    /// For [`NormKind::BatchNorm`] and [`NormKind::SpatialBatchNorm`].
    Batch(&'p mut BnParam<T>),
    /// For [`NormKind::LayerNorm`] and [`NormKind::GroupNorm`].
    PerSample(NormParam),
}

impl<'p, T> From<&'p mut BnParam<T>> for NormParams<'p, T> {
    fn from(p: &'p mut BnParam<T>) -> Self {
        NormParams::Batch(p)
    }
}

impl<T> From<NormParam> for NormParams<'_, T> {
    fn from(p: NormParam) -> Self {
        NormParams::PerSample(p)
    }
}

impl<T> From<&NormParam> for NormParams<'_, T> {
    fn from(p: &NormParam) -> Self {
        NormParams::PerSample(*p)
    }
}

/// The statistics a norm forward normalised with (batch statistics, or batch norm's running ones
/// in test mode), as its backward needs them. Only a forward builds one; a backward checks it
/// against its own plan.
#[derive(Clone, PartialEq)]
pub struct NormStats {
    layout: NormLayout,
    batch_stats: bool,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    /// A fused ReLU's mask (1 where the output was positive), None for a plain norm.
    relu_mask: Option<Vec<u8>>,
}

impl std::fmt::Debug for NormStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NormStats")
            .field("layout", &self.layout)
            .field("batch_stats", &self.batch_stats)
            .field("mean", &self.mean)
            .field("inv_std", &self.inv_std)
            .field("relu_mask_len", &self.relu_mask.as_ref().map(Vec::len))
            .finish()
    }
}

impl NormStats {
    /// The layer that computed them.
    pub fn kind(&self) -> NormKind {
        self.layout.kind()
    }
    /// Whether they are the batch's statistics (train mode, layer and group norm) rather than
    /// fixed running statistics (batch norm in test mode).
    pub fn batch_stats(&self) -> bool {
        self.batch_stats
    }
    /// Per statistic group: the mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// Per statistic group: 1 / sqrt(var + eps).
    pub fn inv_std(&self) -> &[f64] {
        &self.inv_std
    }
    /// A fused ReLU's mask (see [`NormPlan::with_relu`]): element i is 1 where the forward's
    /// output i was positive, else 0. None for a plain norm.
    pub fn relu_mask(&self) -> Option<&[u8]> {
        self.relu_mask.as_deref()
    }
}

/// A normalisation layer planned once for its kind and input shape.
///
/// ```
/// use fastlayers::{BnParam, NormKind, NormPlan, Parallelism, Tensor};
/// let x = Tensor::<f32>::linspace(-1.0, 2.0, &[4, 3, 2, 2])?;
/// let (gamma, beta) = (Tensor::full(&[3], 1.0f32)?, Tensor::zeros(&[3])?);
/// let plan = NormPlan::<f32>::new(NormKind::SpatialBatchNorm, x.shape())?;
/// let mut bn = BnParam::train();
/// let mut out = Tensor::zeros(x.shape())?;
/// let stats = plan.forward_into(&x, &gamma, &beta, &mut bn, &mut out, &mut [], Parallelism::Current)?;
/// assert_eq!(stats.mean().len(), 3);
/// # Ok::<(), fastlayers::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct NormPlan<T> {
    layout: NormLayout,
    relu: bool,
    _t: PhantomData<fn() -> T>,
}

impl<T: Float> NormPlan<T> {
    /// Validates x's shape for `kind` ((N, D) or (N, C, H, W); for group norm G divides C).
    pub fn new(kind: NormKind, x_shape: &[usize]) -> Result<Self> {
        Ok(NormPlan {
            layout: layout_of(kind, x_shape)?,
            relu: false,
            _t: PhantomData,
        })
    }
    /// The same norm with the ReLU after it fused in, as oneDNN's `fuse_norm_relu`: the
    /// forward writes max(norm(x), 0) in its output pass and keeps a byte mask of where the
    /// output was positive in the [`NormStats`]; the backward applies the mask to dout inside
    /// both of its passes. Bitwise the unfused pair's results (`relu_forward` after the norm,
    /// `relu_backward` before its backward), one pass over the tensors fewer each way.
    pub fn with_relu(mut self) -> Self {
        self.relu = true;
        self
    }
    /// Whether the ReLU is fused in.
    pub fn relu(&self) -> bool {
        self.relu
    }
    /// The layer.
    pub fn kind(&self) -> NormKind {
        self.layout.kind()
    }
    /// x's (and out's, dx's) shape.
    pub fn x_shape(&self) -> Vec<usize> {
        self.layout.shape()
    }
    /// Length of gamma, beta, dgamma and dbeta.
    pub fn channels(&self) -> usize {
        self.layout.channels()
    }
    /// Workspace (elements of T) either direction needs: none (the kernels keep their O(groups)
    /// statistics themselves); the argument is there so that every plan has the same call shape.
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        Ok(0)
    }

    /// Forward into the caller's `out` (x's shape), with batch norm's [`BnParam`] (updated in
    /// train mode) or layer/group norm's [`NormParam`]. On error neither `out` nor the
    /// parameters are touched.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into<'a, 'o, 'p>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        gamma: impl Into<TensorView<'a, T>>,
        beta: impl Into<TensorView<'a, T>>,
        params: impl Into<NormParams<'p, T>>,
        out: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<NormStats>
    where
        T: 'a + 'o + 'p,
    {
        let (x, mut out) = (x.into(), out.into());
        let kind = self.kind();
        expect_shape("x", x.shape(), &self.layout.shape())?;
        expect_shape("out", out.shape(), &self.layout.shape())?;
        let pr = prepare(kind, x, gamma.into(), beta.into())?;
        let mut relu_mask = self.relu.then(|| vec![0u8; self.layout.numel()]);
        let relu = relu_mask.as_deref_mut();
        let (mean, inv_std, batch_stats) = match (params.into(), kind.is_batch()) {
            (NormParams::Batch(bp), true) => {
                bn_forward_into::<T, Fast>(&pr, bp, out.data_mut(), relu, par)?
            }
            (NormParams::PerSample(np), false) => {
                let (m, s) =
                    per_sample_forward_into::<T, Fast>(&pr, &np, out.data_mut(), relu, par)?;
                (m, s, true)
            }
            (NormParams::Batch(_), false) => {
                return Err(Error::param(
                    "params",
                    format!("a NormParam (eps) for {kind:?}"),
                    "a BnParam",
                ));
            }
            (NormParams::PerSample(_), true) => {
                return Err(Error::param(
                    "params",
                    format!("a BnParam (mode, running statistics) for {kind:?}"),
                    "a NormParam",
                ));
            }
        };
        Ok(NormStats {
            layout: self.layout,
            batch_stats,
            mean,
            inv_std,
            relu_mask,
        })
    }

    /// Backward into the caller's dx (x's shape), dgamma and dbeta (C or D), from the forward's
    /// x and gamma and the statistics it returned. Nothing is written on error.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        gamma: impl Into<TensorView<'a, T>>,
        stats: &NormStats,
        dout: impl Into<TensorView<'a, T>>,
        dx: impl Into<TensorViewMut<'o, T>>,
        dgamma: impl Into<TensorViewMut<'o, T>>,
        dbeta: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, gamma, dout) = (x.into(), gamma.into(), dout.into());
        let (mut dx, mut dgamma, mut dbeta) = (dx.into(), dgamma.into(), dbeta.into());
        let l = self.layout;
        if stats.layout != l {
            return Err(Error::cache(
                "stats",
                format!("statistics of a {:?} forward on {:?}", l.kind(), l.shape()),
                format!(
                    "those of {:?} on {:?}",
                    stats.layout.kind(),
                    stats.layout.shape()
                ),
            ));
        }
        if stats.relu_mask.is_some() != self.relu {
            let with = |r: bool| {
                if r {
                    "with the fused ReLU"
                } else {
                    "without a ReLU"
                }
            };
            return Err(Error::cache(
                "stats",
                format!("statistics of a forward {}", with(self.relu)),
                format!("those of a forward {}", with(stats.relu_mask.is_some())),
            ));
        }
        expect_shape("x", x.shape(), &l.shape())?;
        check_affine("gamma", &gamma, &l)?;
        expect_shape("dout", dout.shape(), &l.shape())?;
        expect_shape("dx", dx.shape(), &l.shape())?;
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
            mask: stats.relu_mask.as_deref(),
        };
        let o = BwdOut {
            dx: dx.data_mut(),
            dgamma: dgamma.data_mut(),
            dbeta: dbeta.data_mut(),
        };
        Fast::backward(a, o, par);
        Ok(())
    }
}
