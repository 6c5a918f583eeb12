//! Convolution: `conv_forward_naive`/`conv_backward_naive` (the reference) and
//! `conv_forward_fast`/`conv_backward_fast`, with one cache type both accept.

pub mod fast;
pub mod reference;
mod winograd;

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
        let geom = weights_geom(x.shape(), w.shape(), conv_param)?;
        Ok(ConvCache {
            x: x.to_owned(),
            w: w.to_owned(),
            geom,
        })
    }
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

/// Fast convolution forward (a GEMM reading the padded image in place, or im2col tiles + GEMM;
/// see kernels.md), same arguments and results as
/// [`conv_forward_naive`]; runs on the current rayon pool.
pub fn conv_forward_fast<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
    conv_param: &ConvParam,
) -> Result<(Tensor<T>, ConvCache<T>)> {
    let par = Parallelism::Current;
    forward_with(
        x.into(),
        w.into(),
        b.into(),
        conv_param,
        |g, x, w, b, out| {
            let mut ws = vec![T::zero(); fast::forward_workspace_len::<T>(g, par.threads())];
            fast::forward_into(g, x, w, b, out, &mut ws, par)
        },
    )
}

/// Fast convolution backward: (dx, dw, db), as [`conv_backward_naive`].
pub fn conv_backward_fast<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &ConvCache<T>,
) -> Result<Grads<T>> {
    let par = Parallelism::Current;
    backward_with(
        dout.into(),
        cache,
        Box::new(move |g, x, w, dout, dx, dw, db| {
            let mut ws = vec![T::zero(); fast::backward_workspace_len::<T>(g, par.threads())];
            fast::backward_into(g, x, w, dout, dx, dw, db, &mut ws, par)
        }),
    )
}

/// Workspace (elements of T) that [`conv_forward_into`] and [`conv_backward_into`] need for
/// these shapes when run with `par` at the SIMD level in force: enough for either direction
/// (the larger of [`conv_forward_workspace_len`] and [`conv_backward_workspace_len`]).
pub fn conv_workspace_len<T: Float>(
    x_shape: &[usize],
    w_shape: &[usize],
    conv_param: &ConvParam,
    par: Parallelism<'_>,
) -> Result<usize> {
    Ok(
        conv_forward_workspace_len::<T>(x_shape, w_shape, conv_param, par)?.max(
            conv_backward_workspace_len::<T>(x_shape, w_shape, conv_param, par)?,
        ),
    )
}

/// Exact workspace (elements of T) [`conv_forward_into`] needs for these shapes with `par` at
/// the SIMD level in force (an inference-only caller need not size for the backward).
pub fn conv_forward_workspace_len<T: Float>(
    x_shape: &[usize],
    w_shape: &[usize],
    conv_param: &ConvParam,
    par: Parallelism<'_>,
) -> Result<usize> {
    workspace_query(
        x_shape,
        w_shape,
        conv_param,
        par,
        fast::forward_workspace_len_checked::<T>,
    )
}

/// Exact workspace (elements of T) [`conv_backward_into`] needs for these shapes with `par` at
/// the SIMD level in force.
pub fn conv_backward_workspace_len<T: Float>(
    x_shape: &[usize],
    w_shape: &[usize],
    conv_param: &ConvParam,
    par: Parallelism<'_>,
) -> Result<usize> {
    workspace_query(
        x_shape,
        w_shape,
        conv_param,
        par,
        fast::backward_workspace_len_checked::<T>,
    )
}

/// A workspace query: `len` of the shapes' geometry and `par`'s thread count, an error when the
/// shapes are invalid or the length overflows.
fn workspace_query(
    x_shape: &[usize],
    w_shape: &[usize],
    conv_param: &ConvParam,
    par: Parallelism<'_>,
    len: fn(&ConvGeom, usize) -> Option<usize>,
) -> Result<usize> {
    len(&weights_geom(x_shape, w_shape, conv_param)?, par.threads())
        .ok_or_else(|| crate::error::overflow("workspace", "workspace length"))
}

/// The geometry of x and w with the bias taken as (F,).
fn weights_geom(x_shape: &[usize], w_shape: &[usize], p: &ConvParam) -> Result<ConvGeom> {
    let f = w_shape.first().copied().unwrap_or(0);
    ConvGeom::new(x_shape, w_shape, &[f], p)
}

fn check_buf<T>(arg: &'static str, buf: &[T], len: usize) -> Result<()> {
    expect_shape(arg, &[buf.len()], &[len])
}

fn check_ws<T>(ws: &[T], need: usize, query: &str) -> Result<()> {
    if ws.len() < need {
        return Err(crate::error::Error::shape(
            "workspace",
            format!("at least {need} elements ({query})"),
            format!("{} elements", ws.len()),
        ));
    }
    Ok(())
}

/// Framework entry point: forward into the caller's `out` (N*F*H'*W' elements) using the
/// caller's workspace (at least [`conv_workspace_len`]); allocates nothing proportional to the
/// data. Validates everything before writing.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
    conv_param: &ConvParam,
    out: &mut [T],
    workspace: &mut [T],
    par: Parallelism<'_>,
) -> Result<ConvGeom> {
    let (x, w, b) = (x.into(), w.into(), b.into());
    let g = check_forward(&x, &w, &b, conv_param)?;
    check_buf("out", out, g.out_shape().iter().product())?;
    check_ws(
        workspace,
        fast::forward_workspace_len::<T>(&g, par.threads()),
        "conv_forward_workspace_len",
    )?;
    fast::forward_into(&g, x.data(), w.data(), b.data(), out, workspace, par);
    Ok(g)
}

/// Framework entry point: backward into the caller's dx (like x), dw (like w), db (F).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    dout: impl Into<TensorView<'a, T>>,
    conv_param: &ConvParam,
    dx: &mut [T],
    dw: &mut [T],
    db: &mut [T],
    workspace: &mut [T],
    par: Parallelism<'_>,
) -> Result<()> {
    let (x, w, dout) = (x.into(), w.into(), dout.into());
    let f = w.shape().first().copied().unwrap_or(0);
    let g = ConvGeom::new(x.shape(), w.shape(), &[f], conv_param)?;
    check_backward(&dout, &g)?;
    check_buf("dx", dx, x.len())?;
    check_buf("dw", dw, w.len())?;
    check_buf("db", db, f)?;
    check_ws(
        workspace,
        fast::backward_workspace_len::<T>(&g, par.threads()),
        "conv_backward_workspace_len",
    )?;
    fast::backward_into(
        &g,
        x.data(),
        w.data(),
        dout.data(),
        dx,
        dw,
        db,
        workspace,
        par,
    );
    Ok(())
}
