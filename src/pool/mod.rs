//! Max pooling: `max_pool_forward_naive`/`max_pool_backward_naive` (the reference) and the fast
//! strided-window kernels, with one cache type both accept.

pub mod fast;
pub mod reference;

use crate::error::{Error, Result, expect_shape};
use crate::parallel::Parallelism;
use crate::params::{PoolGeom, PoolParam};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

/// What the backward pass needs: the forward's input (the notebook's `(x, pool_param)`) and/or
/// the argmax index of every output (what the fast forward stores instead of x).
#[derive(Clone, Debug)]
pub struct PoolCache<T> {
    pub(crate) geom: PoolGeom,
    pub(crate) x: Option<Tensor<T>>,
    pub(crate) argmax: Option<Vec<u32>>,
}

impl<T> PoolCache<T> {
    pub fn geom(&self) -> &PoolGeom {
        &self.geom
    }
    /// Argmax offsets into each input plane (`ih * W + iw`), one per output, when cached.
    pub fn argmax(&self) -> Option<&[u32]> {
        self.argmax.as_deref()
    }
}

pub(crate) fn check_backward<T>(dout: &TensorView<'_, T>, cache: &PoolCache<T>) -> Result<()> {
    expect_shape("dout", dout.shape(), &cache.geom.out_shape())?;
    if cache.x.is_none() && cache.argmax.is_none() {
        return Err(Error::cache(
            "cache",
            "the input or the argmax indices of a max-pool forward",
            "neither",
        ));
    }
    Ok(())
}

/// Reference max-pool forward: x (N, C, H, W) -> out (N, C, H', W') and the cache (x).
pub fn max_pool_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    pool_param: &PoolParam,
) -> Result<(Tensor<T>, PoolCache<T>)> {
    let x = x.into();
    let g = PoolGeom::new(x.shape(), pool_param)?;
    let mut out = Tensor::zeros(&g.out_shape())?;
    reference::forward(&g, x.data(), out.data_mut(), None);
    Ok((
        out,
        PoolCache {
            geom: g,
            x: Some(x.to_owned()),
            argmax: None,
        },
    ))
}

/// Reference max-pool backward: dx (N, C, H, W) from dout (N, C, H', W').
pub fn max_pool_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &PoolCache<T>,
) -> Result<Tensor<T>> {
    let dout = dout.into();
    check_backward(&dout, cache)?;
    let g = &cache.geom;
    let mut dx = Tensor::zeros(&g.x_shape())?;
    match (&cache.x, &cache.argmax) {
        (Some(x), _) => reference::backward(g, x.data(), dout.data(), dx.data_mut()),
        (None, Some(idx)) => {
            // A cache from the fast forward: scatter through its indices.
            let (plane, oplane) = (g.h * g.w, g.ho * g.wo);
            for (o, (&d, &i)) in dout.data().iter().zip(idx).enumerate() {
                dx.data_mut()[(o / oplane) * plane + i as usize] += d;
            }
        }
        (None, None) => unreachable!("check_backward rejects an empty cache"),
    }
    Ok(dx)
}

/// Fast max-pool forward: out and a cache holding the argmax of every output (not x).
pub fn max_pool_forward_fast<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    pool_param: &PoolParam,
) -> Result<(Tensor<T>, PoolCache<T>)> {
    let x = x.into();
    let g = PoolGeom::new(x.shape(), pool_param)?;
    let mut out = Tensor::zeros(&g.out_shape())?;
    let mut argmax = vec![0u32; out.len()];
    fast::forward_into(
        &g,
        x.data(),
        out.data_mut(),
        &mut argmax,
        Parallelism::Current,
    );
    Ok((
        out,
        PoolCache {
            geom: g,
            x: None,
            argmax: Some(argmax),
        },
    ))
}

/// Fast max-pool backward: scatters dout through the cached argmax (computing it from the
/// cached x first when the cache came from the naive forward).
pub fn max_pool_backward_fast<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &PoolCache<T>,
) -> Result<Tensor<T>> {
    let dout = dout.into();
    check_backward(&dout, cache)?;
    let g = &cache.geom;
    let par = Parallelism::Current;
    let computed;
    let idx: &[u32] = match (&cache.argmax, &cache.x) {
        (Some(a), _) => a,
        (None, Some(x)) => {
            let mut out = vec![T::zero(); dout.len()];
            let mut a = vec![0u32; dout.len()];
            fast::forward_into(g, x.data(), &mut out, &mut a, par);
            computed = a;
            &computed
        }
        (None, None) => unreachable!("check_backward rejects an empty cache"),
    };
    let mut dx = Tensor::zeros(&g.x_shape())?;
    fast::backward_into(g, dout.data(), idx, dx.data_mut(), par);
    Ok(dx)
}

/// Framework entry point: forward into the caller's `out` and `argmax` (both N*C*H'*W').
pub fn max_pool_forward_into<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    pool_param: &PoolParam,
    out: &mut [T],
    argmax: &mut [u32],
    par: Parallelism<'_>,
) -> Result<PoolGeom> {
    let x = x.into();
    let g = PoolGeom::new(x.shape(), pool_param)?;
    let n: usize = g.out_shape().iter().product();
    expect_shape("out", &[out.len()], &[n])?;
    expect_shape("argmax", &[argmax.len()], &[n])?;
    fast::forward_into(&g, x.data(), out, argmax, par);
    Ok(g)
}

/// Framework entry point: dx (N*C*H*W) from dout and the argmax of [`max_pool_forward_into`].
/// Every index is checked against the plane size before anything is written.
pub fn max_pool_backward_into<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    argmax: &[u32],
    x_shape: &[usize],
    pool_param: &PoolParam,
    dx: &mut [T],
    par: Parallelism<'_>,
) -> Result<()> {
    let dout = dout.into();
    let g = PoolGeom::new(x_shape, pool_param)?;
    expect_shape("dout", dout.shape(), &g.out_shape())?;
    expect_shape("argmax", &[argmax.len()], &[dout.len()])?;
    expect_shape("dx", &[dx.len()], &[x_shape.iter().product()])?;
    let plane = g.h * g.w;
    // Every offset is checked before anything is written. A max-reduction vectorises (the
    // early-exit search did not, and cost 0.1 ms of a 0.5 ms backward); the position is
    // searched for only to name it in the error.
    let max = argmax.iter().fold(0u32, |m, &v| m.max(v));
    if max as usize >= plane
        && let Some((i, &v)) = argmax
            .iter()
            .enumerate()
            .find(|&(_, &v)| v as usize >= plane)
    {
        return Err(Error::param(
            "argmax",
            format!("offsets into an input plane, all < H*W = {plane}"),
            format!("{v} at index {i}"),
        ));
    }
    fast::backward_into(&g, dout.data(), argmax, dx, par);
    Ok(())
}
