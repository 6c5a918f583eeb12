//! The notebook's sandwich layers (`layer_utils.py`): forward/backward pairs of the kernels
//! chained, with one cache per pair. [`Kernels`] picks the fast kernels (the default) or the
//! references, so a model can be run on the ground truth to check it.
//!
//! The norm–ReLU pairs are fused: with the fast kernels they run the kernels crate's
//! [`NormPlan::with_relu`], whose forward clamps in its output pass and keeps a byte mask of
//! where the output was positive (as oneDNN's `fuse_norm_relu` keeps a mask in its workspace),
//! and whose backward applies the mask to dout inside both of its passes. The unfused pair
//! allocates a second activation-sized tensor in the forward, keeps a full copy of the norm's
//! output in the ReLU's cache, and writes and re-reads a masked dout in the backward. With the
//! reference kernels the pair runs unfused (the reference norm, then the ReLU).

use fastlayers::{
    self as fl, AffineCache, BnParam, ConvCache, ConvParam, Float, NormCache, NormKind, NormParam,
    NormParams, NormPlan, NormStats, Parallelism, PoolCache, PoolParam, ReluCache, Tensor,
    TensorView,
};

use rayon::prelude::*;

use crate::Result;

/// Which kernels a layer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// The fast kernels (GEMM affine, planned convolution, strided-window pooling, fused norms).
    #[default]
    Fast,
    /// The reference kernels (the obvious loops), for checking a model against the ground truth.
    Reference,
}

/// Affine then ReLU.
#[derive(Clone, Debug)]
pub struct AffineReluCache<T> {
    fc: AffineCache<T>,
    relu: ReluCache<T>,
}

/// Affine, batch or layer norm, ReLU (the norm and the ReLU fused).
#[derive(Clone, Debug)]
pub struct AffineNormReluCache<T> {
    fc: AffineCache<T>,
    norm: NormReluCache<T>,
}

/// Convolution then ReLU.
#[derive(Clone, Debug)]
pub struct ConvReluCache<T> {
    conv: ConvCache<T>,
    relu: ReluCache<T>,
}

/// Convolution, ReLU, max pool.
#[derive(Clone, Debug)]
pub struct ConvReluPoolCache<T> {
    conv: ConvCache<T>,
    relu: ReluCache<T>,
    pool: PoolCache<T>,
}

/// Convolution, spatial batch norm, ReLU (fused), and optionally max pool.
#[derive(Clone, Debug)]
pub struct ConvBnReluPoolCache<T> {
    conv: ConvCache<T>,
    norm: NormReluCache<T>,
    pool: Option<PoolCache<T>>,
}

/// A norm fused with the ReLU after it.
#[derive(Clone, Debug)]
pub struct NormReluCache<T> {
    inner: NormReluInner<T>,
}

#[derive(Clone, Debug)]
enum NormReluInner<T> {
    /// The kernels crate's fused plan ([`NormPlan::with_relu`]): its statistics hold the mask.
    Fused {
        plan: NormPlan<T>,
        x: Tensor<T>,
        gamma: Tensor<T>,
        stats: NormStats,
    },
    /// The reference norm's cache and the ReLU's mask (bit i of word i / 64: output i was
    /// positive), applied between the two reference kernels.
    Reference {
        norm: NormCache<T>,
        mask: Vec<u64>,
        shape: Vec<usize>,
        which: NormWhich,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NormWhich {
    Batch,
    Spatial,
    Layer,
}

/// The norm a fused norm-ReLU layer runs, with its parameters.
pub enum NormArg<'p, T> {
    /// Batch norm on (N, D) with the notebook's `bn_param` (running statistics updated in
    /// train mode).
    Batch(&'p mut BnParam<T>),
    /// Spatial batch norm on (N, C, H, W).
    Spatial(&'p mut BnParam<T>),
    /// Layer norm on (N, D) with `ln_param`.
    Layer(&'p NormParam),
}

/// Elements per parallel task of the mask passes (a multiple of 64: whole mask words).
const MASK_CHUNK: usize = 1 << 16;

/// Clamps v at 0 (NaN stays NaN) and returns the bits of where it was positive, in one pass
/// over v split over the current pool's threads (element-wise: the same bits on any count).
fn relu_in_place<T: Float>(v: &mut [T]) -> Vec<u64> {
    let mut mask = vec![0u64; v.len().div_ceil(64)];
    v.par_chunks_mut(MASK_CHUNK)
        .zip(mask.par_chunks_mut(MASK_CHUNK / 64))
        .for_each(|(v, mask)| {
            for (word, chunk) in mask.iter_mut().zip(v.chunks_mut(64)) {
                let mut bits = 0u64;
                for (i, x) in chunk.iter_mut().enumerate() {
                    bits |= u64::from(*x > T::zero()) << i;
                    *x = fl::relu(*x);
                }
                *word = bits;
            }
        });
    mask
}

/// d where the mask bit is set, else 0 (the ReLU's backward), written into a new buffer in
/// one pass over d.
fn masked<T: Float>(d: &[T], mask: &[u64]) -> Vec<T> {
    let mut out = vec![T::zero(); d.len()];
    out.par_chunks_mut(MASK_CHUNK)
        .zip(d.par_chunks(MASK_CHUNK))
        .zip(mask.par_chunks(MASK_CHUNK / 64))
        .for_each(|((o, d), mask)| {
            for ((o, d), &bits) in o.chunks_mut(64).zip(d.chunks(64)).zip(mask) {
                for (i, (o, &d)) in o.iter_mut().zip(d).enumerate() {
                    *o = T::select(bits >> i & 1 == 1, d, T::zero());
                }
            }
        });
    out
}

impl Kernels {
    /// `affine_forward`.
    pub fn affine_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
    ) -> Result<(Tensor<T>, AffineCache<T>)> {
        Ok(match self {
            Kernels::Fast => fl::affine_forward(x, w, b)?,
            Kernels::Reference => fl::affine_forward_naive(x, w, b)?,
        })
    }

    /// `affine_backward`: (dx, dw, db).
    pub fn affine_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &AffineCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        Ok(match self {
            Kernels::Fast => fl::affine_backward(dout, cache)?,
            Kernels::Reference => fl::affine_backward_naive(dout, cache)?,
        })
    }

    /// `conv_forward_fast` / `conv_forward_naive`.
    pub fn conv_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
        p: &ConvParam,
    ) -> Result<(Tensor<T>, ConvCache<T>)> {
        Ok(match self {
            Kernels::Fast => fl::conv_forward_fast(x, w, b, p)?,
            Kernels::Reference => fl::conv_forward_naive(x, w, b, p)?,
        })
    }

    /// `conv_backward_fast` / `conv_backward_naive`: (dx, dw, db).
    pub fn conv_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &ConvCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        Ok(match self {
            Kernels::Fast => fl::conv_backward_fast(dout, cache)?,
            Kernels::Reference => fl::conv_backward_naive(dout, cache)?,
        })
    }

    /// `max_pool_forward_fast` / `max_pool_forward_naive`.
    pub fn max_pool_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        p: &PoolParam,
    ) -> Result<(Tensor<T>, PoolCache<T>)> {
        Ok(match self {
            Kernels::Fast => fl::max_pool_forward_fast(x, p)?,
            Kernels::Reference => fl::max_pool_forward_naive(x, p)?,
        })
    }

    /// `max_pool_backward_fast` / `max_pool_backward_naive`.
    pub fn max_pool_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &PoolCache<T>,
    ) -> Result<Tensor<T>> {
        Ok(match self {
            Kernels::Fast => fl::max_pool_backward_fast(dout, cache)?,
            Kernels::Reference => fl::max_pool_backward_naive(dout, cache)?,
        })
    }

    /// A norm then ReLU, fused: out = max(norm(x), 0) and the cache. The fast kernels run the
    /// kernels crate's fused plan; the references run the reference norm, then the ReLU.
    pub fn norm_relu_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        gamma: TensorView<'_, T>,
        beta: TensorView<'_, T>,
        norm: NormArg<'_, T>,
    ) -> Result<(Tensor<T>, NormReluCache<T>)> {
        if self == Kernels::Fast {
            let (kind, params): (NormKind, NormParams<'_, T>) = match norm {
                NormArg::Batch(p) => (NormKind::BatchNorm, p.into()),
                NormArg::Spatial(p) => (NormKind::SpatialBatchNorm, p.into()),
                NormArg::Layer(p) => (NormKind::LayerNorm, p.into()),
            };
            let plan = NormPlan::<T>::new(kind, x.shape())?.with_relu();
            let mut out = Tensor::zeros(x.shape())?;
            let par = Parallelism::Current;
            let stats = plan.forward_into(x, gamma, beta, params, &mut out, &mut [], par)?;
            let inner = NormReluInner::Fused {
                plan,
                x: x.to_owned(),
                gamma: gamma.to_owned(),
                stats,
            };
            return Ok((out, NormReluCache { inner }));
        }
        let (mut out, norm, which) = match norm {
            NormArg::Batch(p) => {
                let (o, c) = fl::batchnorm_forward_naive(x, gamma, beta, p)?;
                (o, c, NormWhich::Batch)
            }
            NormArg::Spatial(p) => {
                let (o, c) = fl::spatial_batchnorm_forward_naive(x, gamma, beta, p)?;
                (o, c, NormWhich::Spatial)
            }
            NormArg::Layer(p) => {
                let (o, c) = fl::layernorm_forward_naive(x, gamma, beta, p)?;
                (o, c, NormWhich::Layer)
            }
        };
        let mask = relu_in_place(out.data_mut());
        let shape = out.shape().to_vec();
        let inner = NormReluInner::Reference {
            norm,
            mask,
            shape,
            which,
        };
        Ok((out, NormReluCache { inner }))
    }

    /// The fused norm-ReLU backward: (dx, dgamma, dbeta). Runs the kernels the cache's forward
    /// ran (a cache holds one or the other).
    pub fn norm_relu_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &NormReluCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        let (norm, mask, shape, which) = match &cache.inner {
            NormReluInner::Fused {
                plan,
                x,
                gamma,
                stats,
            } => {
                let mut dx = Tensor::zeros(x.shape())?;
                let mut dgamma = Tensor::zeros(gamma.shape())?;
                let mut dbeta = Tensor::zeros(gamma.shape())?;
                plan.backward_into(
                    x,
                    gamma,
                    stats,
                    dout,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                    &mut [],
                    Parallelism::Current,
                )?;
                return Ok((dx, dgamma, dbeta));
            }
            NormReluInner::Reference {
                norm,
                mask,
                shape,
                which,
            } => (norm, mask, shape, *which),
        };
        if dout.shape() != shape.as_slice() {
            return Err(fl::Error::Shape {
                arg: "dout",
                expected: format!("{shape:?}"),
                found: format!("{:?}", dout.shape()),
            }
            .into());
        }
        let d = Tensor::new(masked(dout.data(), mask), dout.shape())?;
        Ok(match which {
            NormWhich::Batch => fl::batchnorm_backward_naive(&d, norm)?,
            NormWhich::Spatial => fl::spatial_batchnorm_backward_naive(&d, norm)?,
            NormWhich::Layer => fl::layernorm_backward_naive(&d, norm)?,
        })
    }

    /// `affine_relu_forward`.
    pub fn affine_relu_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
    ) -> Result<(Tensor<T>, AffineReluCache<T>)> {
        let (a, fc) = self.affine_forward(x, w, b)?;
        let (out, relu) = fl::relu_forward(&a)?;
        Ok((out, AffineReluCache { fc, relu }))
    }

    /// `affine_relu_backward`: (dx, dw, db).
    pub fn affine_relu_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &AffineReluCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        let da = fl::relu_backward(dout, &cache.relu)?;
        self.affine_backward(da.view(), &cache.fc)
    }

    /// `affine_bn_relu_forward` (with [`NormArg::Batch`]) and `affine_ln_relu_forward` (with
    /// [`NormArg::Layer`]).
    pub fn affine_norm_relu_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
        gamma: TensorView<'_, T>,
        beta: TensorView<'_, T>,
        norm: NormArg<'_, T>,
    ) -> Result<(Tensor<T>, AffineNormReluCache<T>)> {
        let (a, fc) = self.affine_forward(x, w, b)?;
        let (out, norm) = self.norm_relu_forward(a.view(), gamma, beta, norm)?;
        Ok((out, AffineNormReluCache { fc, norm }))
    }

    /// The backward of [`Kernels::affine_norm_relu_forward`]: (dx, dw, db, dgamma, dbeta).
    #[allow(clippy::type_complexity)]
    pub fn affine_norm_relu_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &AffineNormReluCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>, Tensor<T>, Tensor<T>)> {
        let (da, dgamma, dbeta) = self.norm_relu_backward(dout, &cache.norm)?;
        let (dx, dw, db) = self.affine_backward(da.view(), &cache.fc)?;
        Ok((dx, dw, db, dgamma, dbeta))
    }

    /// `conv_relu_forward`.
    pub fn conv_relu_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
        p: &ConvParam,
    ) -> Result<(Tensor<T>, ConvReluCache<T>)> {
        let (a, conv) = self.conv_forward(x, w, b, p)?;
        let (out, relu) = fl::relu_forward(&a)?;
        Ok((out, ConvReluCache { conv, relu }))
    }

    /// `conv_relu_backward`: (dx, dw, db).
    pub fn conv_relu_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &ConvReluCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        let da = fl::relu_backward(dout, &cache.relu)?;
        self.conv_backward(da.view(), &cache.conv)
    }

    /// `conv_relu_pool_forward`.
    pub fn conv_relu_pool_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
        cp: &ConvParam,
        pp: &PoolParam,
    ) -> Result<(Tensor<T>, ConvReluPoolCache<T>)> {
        let (a, conv) = self.conv_forward(x, w, b, cp)?;
        let (s, relu) = fl::relu_forward(&a)?;
        let (out, pool) = self.max_pool_forward(s.view(), pp)?;
        Ok((out, ConvReluPoolCache { conv, relu, pool }))
    }

    /// `conv_relu_pool_backward`: (dx, dw, db).
    pub fn conv_relu_pool_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &ConvReluPoolCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>)> {
        let ds = self.max_pool_backward(dout, &cache.pool)?;
        let da = fl::relu_backward(&ds, &cache.relu)?;
        self.conv_backward(da.view(), &cache.conv)
    }

    /// `conv_bn_relu_forward` (`pp` None) and `conv_bn_relu_pool_forward`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn_relu_pool_forward<T: Float>(
        self,
        x: TensorView<'_, T>,
        w: TensorView<'_, T>,
        b: TensorView<'_, T>,
        gamma: TensorView<'_, T>,
        beta: TensorView<'_, T>,
        cp: &ConvParam,
        bn_param: &mut BnParam<T>,
        pp: Option<&PoolParam>,
    ) -> Result<(Tensor<T>, ConvBnReluPoolCache<T>)> {
        let (a, conv) = self.conv_forward(x, w, b, cp)?;
        let (s, norm) =
            self.norm_relu_forward(a.view(), gamma, beta, NormArg::Spatial(bn_param))?;
        let (out, pool) = match pp {
            Some(pp) => {
                let (o, c) = self.max_pool_forward(s.view(), pp)?;
                (o, Some(c))
            }
            None => (s, None),
        };
        Ok((out, ConvBnReluPoolCache { conv, norm, pool }))
    }

    /// The backward of [`Kernels::conv_bn_relu_pool_forward`]: (dx, dw, db, dgamma, dbeta).
    #[allow(clippy::type_complexity)]
    pub fn conv_bn_relu_pool_backward<T: Float>(
        self,
        dout: TensorView<'_, T>,
        cache: &ConvBnReluPoolCache<T>,
    ) -> Result<(Tensor<T>, Tensor<T>, Tensor<T>, Tensor<T>, Tensor<T>)> {
        let ds = match &cache.pool {
            Some(p) => self.max_pool_backward(dout, p)?,
            None => dout.to_owned(),
        };
        let (da, dgamma, dbeta) = self.norm_relu_backward(ds.view(), &cache.norm)?;
        let (dx, dw, db) = self.conv_backward(da.view(), &cache.conv)?;
        Ok((dx, dw, db, dgamma, dbeta))
    }
}
