//! Convolution: `conv_forward_naive`/`conv_backward_naive` (the reference) and
//! `conv_forward_fast`/`conv_backward_fast`, with one cache type both accept.

pub mod reference;

use crate::error::{Result, expect_shape};
use crate::params::{ConvGeom, ConvParam};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

/// What the backward pass needs: the forward's input, weights and geometry (the notebook's
/// `(x, w, b, conv_param)`; b itself is not needed, only its length).
#[derive(Clone, Debug)]
pub struct ConvCache<T> {
    pub(crate) x: Tensor<T>,
    pub(crate) w: Tensor<T>,
    pub(crate) geom: ConvGeom,
}

impl<T> ConvCache<T> {
    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }
    pub fn x(&self) -> &Tensor<T> {
        &self.x
    }
    pub fn w(&self) -> &Tensor<T> {
        &self.w
    }
}

/// Validates the forward arguments and returns the geometry.
pub(crate) fn check_forward<T>(
    x: &TensorView<'_, T>,
    w: &TensorView<'_, T>,
    b: &TensorView<'_, T>,
    p: &ConvParam,
) -> Result<ConvGeom> {
    ConvGeom::new(x.shape(), w.shape(), b.shape(), p)
}

/// dout must have the shape the cached forward produced.
pub(crate) fn check_backward<T>(dout: &TensorView<'_, T>, geom: &ConvGeom) -> Result<()> {
    expect_shape("dout", dout.shape(), &geom.out_shape())
}

type Grads<T> = (Tensor<T>, Tensor<T>, Tensor<T>);

fn forward_with<'a, T: Float>(
    x: TensorView<'a, T>,
    w: TensorView<'a, T>,
    b: TensorView<'a, T>,
    p: &ConvParam,
    kernel: impl FnOnce(&ConvGeom, &[T], &[T], &[T], &mut [T]),
) -> Result<(Tensor<T>, ConvCache<T>)> {
    let g = check_forward(&x, &w, &b, p)?;
    let mut out = Tensor::zeros(&g.out_shape())?;
    kernel(&g, x.data(), w.data(), b.data(), out.data_mut());
    let cache = ConvCache {
        x: x.to_owned(),
        w: w.to_owned(),
        geom: g,
    };
    Ok((out, cache))
}

type BackwardKernel<'k, T> =
    dyn FnOnce(&ConvGeom, &[T], &[T], &[T], &mut [T], &mut [T], &mut [T]) + 'k;

fn backward_with<T: Float>(
    dout: TensorView<'_, T>,
    cache: &ConvCache<T>,
    kernel: Box<BackwardKernel<'_, T>>,
) -> Result<Grads<T>> {
    let g = &cache.geom;
    check_backward(&dout, g)?;
    let mut dx = Tensor::zeros(&g.x_shape())?;
    let mut dw = Tensor::zeros(&g.w_shape())?;
    let mut db = Tensor::zeros(&[g.f])?;
    kernel(
        g,
        cache.x.data(),
        cache.w.data(),
        dout.data(),
        dx.data_mut(),
        dw.data_mut(),
        db.data_mut(),
    );
    Ok((dx, dw, db))
}

/// Reference convolution forward: x (N, C, H, W), w (F, C/groups, HH, WW), b (F,) ->
/// out (N, F, H', W') and the cache.
pub fn conv_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
    conv_param: &ConvParam,
) -> Result<(Tensor<T>, ConvCache<T>)> {
    forward_with(x.into(), w.into(), b.into(), conv_param, reference::forward)
}

/// Reference convolution backward: (dx, dw, db) from dout (N, F, H', W').
pub fn conv_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &ConvCache<T>,
) -> Result<Grads<T>> {
    backward_with(dout.into(), cache, Box::new(reference::backward))
}
