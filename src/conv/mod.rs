//! Convolution: `conv_forward_naive`/`conv_backward_naive` (the reference, `reference.rs`) and
//! the fast kernels behind [`ConvPlan`] (`plan.rs` chooses, `forward.rs` / `backward.rs` run,
//! `im2col.rs` moves data, `winograd.rs` transforms), with one cache type both accept.
//!
//! The fast kernels: one packed GEMM engine fed three ways, with bounded workspace (kernels.md has
//! the full map and the measurements).
//!
//! - **Direct** (`ConvAlgorithm::Direct`, AVX2 or AVX-512): B is read in place from a
//!   zero-padded, stride-phase-split copy of the image (`Pad`), through a per-KC-block table of
//!   tap offsets; forward `out = bias + W B`, and for stride 1 dx as the correlation of padded
//!   dout with the flipped, transposed weights.
//! - **Winograd F(2x2, 3x3) and F(4x4, 3x3)** (`ConvAlgorithm::Winograd`, `Winograd4x4`,
//!   `winograd.rs`): 3 x 3 stride-1 convolutions, forward, dx and dw, 16 or 36 GEMMs on
//!   transformed tiles (F(2x2) chosen from 48 channels per group; F(4x4) for f64 from 48
//!   channels and 64 tiles per image).
//! - **im2col** (everything else): the column matrix of one image and group,
//!
//!   ```text
//!   col[(c*KH + i)*KW + j][oh*WO + ow] <- x[n][g*C/G + c][oh*sh + i*dh - ph][ow*sw + j*dw - pw]
//!   ```
//!
//!   (0 in the padding), built tile by tile and packed one KC block at a time while in L2:
//!   forward `out = [W | b] [col; 1]`; dx = col2im(W^T dout), dout read in place where that
//!   pays (`dcol_in_place_pays`), col2im storing each dx row once at column stride 2 when one
//!   tile covers the image (`col2im_2_store`).
//! - dw (both): per chunk of images (`DW_CHUNKS` chunks, a function of N only; parallel over
//!   chunks) `part (F x K) += dout_tile * col_tile^T`, A (dout) read in place at the AVX2 and
//!   AVX-512 levels, B's tap panels packed just in time from the padded copy or the im2col tile
//!   by register transposes; dw = `part[0] + part[1] + ...` in chunk order. Fixed partition,
//!   fixed combine order: bitwise identical for any thread count.
//! - db: f64 partial sums per chunk, inside the dw jobs, added in chunk order.
//!
//! Workspace: the packed weights, per thread the larger of what a path needs (padded copy, or a
//! KC block / tile of columns and a packed B block), and `min(N, DW_CHUNKS)` partial copies of
//! dw; all of it the caller's (`*_workspace_len` gives the exact size). The kernels allocate only
//! O(threads) bookkeeping.

mod backward;
mod forward;
mod im2col;
mod plan;
pub(crate) mod reference;
mod winograd;

pub use plan::{ConvAlgorithm, ConvPlan, ConvWeights, Direction as ConvDirection};

use crate::error::{Result, expect_shape};
use crate::parallel::Parallelism;
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

impl<T: Float> ConvCache<T> {
    /// The cache a forward on `x` and `w` with `conv_param` leaves (both are copied), for a
    /// caller that ran the forward elsewhere (`conv_forward_into`, its own kernel) and wants
    /// the allocating backward. Validates the shapes like the forward (b is taken as (F,)).
    pub fn new<'a>(
        x: impl Into<TensorView<'a, T>>,
        w: impl Into<TensorView<'a, T>>,
        conv_param: &ConvParam,
    ) -> Result<Self> {
        let (x, w) = (x.into(), w.into());
        let f = w.shape().first().copied().unwrap_or(0);
        let geom = ConvGeom::new(x.shape(), w.shape(), &[f], conv_param)?;
        Ok(ConvCache {
            x: x.to_owned(),
            w: w.to_owned(),
            geom,
        })
    }
}

impl<T> ConvCache<T> {
    /// The forward's validated geometry.
    pub fn geom(&self) -> &ConvGeom {
        &self.geom
    }
    /// The forward's input.
    pub fn x(&self) -> &Tensor<T> {
        &self.x
    }
    /// The forward's weights.
    pub fn w(&self) -> &Tensor<T> {
        &self.w
    }
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
    let g = ConvGeom::new(x.shape(), w.shape(), b.shape(), p)?;
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

/// Fast convolution forward (the algorithm [`ConvPlan::new`] chooses for the shape; see
/// kernels.md), same arguments and results as [`conv_forward_naive`]; runs on the current rayon
/// pool.
pub fn conv_forward_fast<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
    conv_param: &ConvParam,
) -> Result<(Tensor<T>, ConvCache<T>)> {
    let (x, w, b) = (x.into(), w.into(), b.into());
    let g = ConvGeom::new(x.shape(), w.shape(), b.shape(), conv_param)?;
    let plan = ConvPlan::<T>::from_geom(g);
    let par = Parallelism::Current;
    let mut ws =
        crate::error::try_filled("workspace", plan.forward_workspace_len(par)?, T::zero())?;
    let mut out = Tensor::zeros(&g.out_shape())?;
    plan.forward_into(x, w, b, &mut out, &mut ws, par)?;
    let cache = ConvCache {
        x: x.to_owned(),
        w: w.to_owned(),
        geom: g,
    };
    Ok((out, cache))
}

/// Fast convolution backward: (dx, dw, db), as [`conv_backward_naive`].
pub fn conv_backward_fast<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &ConvCache<T>,
) -> Result<Grads<T>> {
    let dout = dout.into();
    let g = cache.geom;
    check_backward(&dout, &g)?;
    let plan = ConvPlan::<T>::from_geom(g);
    let par = Parallelism::Current;
    let mut ws =
        crate::error::try_filled("workspace", plan.backward_workspace_len(par)?, T::zero())?;
    let mut dx = Tensor::zeros(&g.x_shape())?;
    let mut dw = Tensor::zeros(&g.w_shape())?;
    let mut db = Tensor::zeros(&[g.f])?;
    plan.backward_into(
        &cache.x, &cache.w, dout, &mut dx, &mut dw, &mut db, &mut ws, par,
    )?;
    Ok((dx, dw, db))
}
