//! Max pooling: `max_pool_forward_naive`/`max_pool_backward_naive` (the reference) and the fast
//! strided-window kernels, with one cache type both accept.

mod fast;
pub(crate) mod reference;

use crate::error::{Error, Result, expect_shape};
use crate::parallel::Parallelism;
use crate::params::{PoolGeom, PoolParam};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView, TensorViewMut};
use std::marker::PhantomData;

/// What the backward pass needs: the forward's input (the notebook's `(x, pool_param)`) and/or
/// the argmax index of every output (what the fast forward stores instead of x).
#[derive(Clone, Debug)]
pub struct PoolCache<T> {
    pub(crate) geom: PoolGeom,
    pub(crate) x: Option<Tensor<T>>,
    pub(crate) argmax: Option<Vec<u32>>,
}

impl<T> PoolCache<T> {
    /// The forward's validated geometry.
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
    let mut argmax = crate::error::try_filled("argmax", out.len(), 0u32)?;
    fast::forward_into(
        &g,
        PoolPath::choose(&g),
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
            let mut out = crate::error::try_filled("out", dout.len(), T::zero())?;
            let mut a = crate::error::try_filled("argmax", dout.len(), 0u32)?;
            fast::forward_into(g, PoolPath::choose(g), x.data(), &mut out, &mut a, par);
            computed = a;
            &computed
        }
        (None, None) => unreachable!("check_backward rejects an empty cache"),
    };
    let mut dx = Tensor::zeros(&g.x_shape())?;
    fast::backward_into(g, PoolPath::choose(g), dout.data(), idx, dx.data_mut(), par);
    Ok(dx)
}

/// Which kernel a max pool runs. All give the same bits (a max and its first index are exact);
/// they differ in speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolPath {
    /// 2 x 2 windows at stride 2, no padding: two input rows per output row, vector compares.
    TwoByTwo,
    /// Every window inside the input (no padding, short enough rows): the rows split into
    /// stride phases so that each window tap is a contiguous vector.
    PhaseSplit,
    /// Any shape: each window clipped to the input, scanned in order.
    Generic,
}

impl PoolPath {
    /// The fastest path that applies.
    fn choose(g: &PoolGeom) -> PoolPath {
        if fast::is_2x2(g) {
            PoolPath::TwoByTwo
        } else if fast::is_unclipped(g) {
            PoolPath::PhaseSplit
        } else {
            PoolPath::Generic
        }
    }
    fn can_run(self, g: &PoolGeom) -> bool {
        match self {
            PoolPath::TwoByTwo => fast::is_2x2(g),
            PoolPath::PhaseSplit => fast::is_unclipped(g),
            PoolPath::Generic => true,
        }
    }
}

/// A max pool planned once for its input shape and parameters: validated, its kernel chosen.
/// The forward writes the output and the argmax offset of every window (`ih * W + iw` within
/// its plane, the first maximum in window order); the backward scatters dout through them.
#[derive(Clone, Copy, Debug)]
pub struct PoolPlan<T> {
    geom: PoolGeom,
    path: PoolPath,
    _t: PhantomData<fn() -> T>,
}

impl<T: Float> PoolPlan<T> {
    /// Validates x (N, C, H, W) against `pool_param` and chooses the kernel.
    pub fn new(x_shape: &[usize], pool_param: &PoolParam) -> Result<Self> {
        let geom = PoolGeom::new(x_shape, pool_param)?;
        Ok(PoolPlan {
            geom,
            path: PoolPath::choose(&geom),
            _t: PhantomData,
        })
    }
    /// This plan running `path` instead of the chosen one (for tests that cover every path); an
    /// error (argument `path`) where it does not apply.
    pub fn with_path(mut self, path: PoolPath) -> Result<Self> {
        if !path.can_run(&self.geom) {
            return Err(Error::param(
                "path",
                "a pooling path that applies to this shape",
                format!("{path:?}"),
            ));
        }
        self.path = path;
        Ok(self)
    }
    /// The validated geometry.
    pub fn geom(&self) -> &PoolGeom {
        &self.geom
    }
    /// The kernel this plan runs.
    pub fn path(&self) -> PoolPath {
        self.path
    }
    /// Workspace (elements of T) either direction needs: none (the argument is there so that
    /// every plan has the same call shape).
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        Ok(0)
    }
    /// Forward into the caller's `out` and `argmax` (both N*C*H'*W'; `out` shaped
    /// (N, C, H', W')). Everything is validated before anything is written.
    pub fn forward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        out: impl Into<TensorViewMut<'o, T>>,
        argmax: &mut [u32],
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, mut out) = (x.into(), out.into());
        let g = &self.geom;
        expect_shape("x", x.shape(), &g.x_shape())?;
        expect_shape("out", out.shape(), &g.out_shape())?;
        expect_shape("argmax", &[argmax.len()], &[out.len()])?;
        fast::forward_into(g, self.path, x.data(), out.data_mut(), argmax, par);
        Ok(())
    }
    /// dx (N, C, H, W) from dout and the argmax of [`PoolPlan::forward_into`]; overlapping
    /// windows add up in output order. Every index is checked against the plane size before
    /// anything is written.
    pub fn backward_into<'a, 'o>(
        &self,
        dout: impl Into<TensorView<'a, T>>,
        argmax: &[u32],
        dx: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (dout, mut dx) = (dout.into(), dx.into());
        let g = &self.geom;
        expect_shape("dout", dout.shape(), &g.out_shape())?;
        expect_shape("argmax", &[argmax.len()], &[dout.len()])?;
        expect_shape("dx", dx.shape(), &g.x_shape())?;
        check_argmax(argmax, g.h * g.w, par)?;
        fast::backward_into(g, self.path, dout.data(), argmax, dx.data_mut(), par);
        Ok(())
    }
}

/// Every offset of `argmax` lies inside a plane of `plane` elements.
fn check_argmax(argmax: &[u32], plane: usize, par: Parallelism<'_>) -> Result<()> {
    // A max-reduction vectorises (the early-exit search did not, and cost 0.1 ms of a 0.5 ms
    // backward); the position is searched for only to name it in the error.
    let max = fast::argmax_max(argmax, par);
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
    Ok(())
}
