//! Inverted dropout: in train mode each unit is kept with probability `p` and scaled by 1/p, so
//! the expected output equals the input; in test mode the layer is the identity.
//!
//! Unit `i`'s keep decision is `uniform(seed, i) < p` from a counter-based generator, so a seeded
//! call is reproducible and independent of threading.

use crate::error::{Error, Result, expect_shape};
use crate::norm::Mode;
use crate::parallel::Parallelism;
use crate::rng::{Rng, uniform_at};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView, TensorViewMut};

/// The notebook's `dropout_param`: `p` = probability of KEEPING a unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutParam {
    /// Probability of keeping a unit, in (0, 1] (inverted dropout: kept units are scaled by
    /// 1/p at train time; test mode is the identity).
    pub p: f64,
    /// Train (drop and rescale) or test (identity).
    pub mode: Mode,
    /// Fixes the mask (gradient checks); None draws a fresh seed per call.
    pub seed: Option<u64>,
}

impl DropoutParam {
    /// Train mode keeping units with probability `p`.
    pub fn train(p: f64, seed: Option<u64>) -> Self {
        DropoutParam {
            p,
            mode: Mode::Train,
            seed,
        }
    }
    /// Test mode (the identity).
    pub fn test(p: f64) -> Self {
        DropoutParam {
            p,
            mode: Mode::Test,
            seed: None,
        }
    }
}

/// The mask the forward applied: 1/p where kept, 0 where dropped (None in test mode).
#[derive(Clone, Debug)]
pub struct DropoutCache<T> {
    pub(crate) shape: Vec<usize>,
    pub(crate) mask: Option<Vec<T>>,
}

impl<T> DropoutCache<T> {
    /// The mask: 1/p where a unit was kept, 0 where dropped; None in test mode.
    pub fn mask(&self) -> Option<&[T]> {
        self.mask.as_deref()
    }
}

pub(crate) fn check_p(p: f64) -> Result<()> {
    if p > 0.0 && p <= 1.0 {
        Ok(())
    } else {
        Err(Error::param("p", "a keep probability in (0, 1]", p))
    }
}

/// Mask value of unit `i`: 1/p if kept, else 0.
#[inline(always)]
pub fn mask_value<T: Float>(seed: u64, i: usize, p: f64) -> T {
    if uniform_at(seed, i as u64) < p {
        T::from_f(1.0 / p)
    } else {
        T::zero()
    }
}

/// Inverted dropout forward: out = x * mask (train), out = x (test), and the cache.
pub fn dropout_forward<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    dropout_param: &DropoutParam,
) -> Result<(Tensor<T>, DropoutCache<T>)> {
    let x = x.into();
    check_p(dropout_param.p)?;
    match dropout_param.mode {
        Mode::Test => Ok((
            x.to_owned(),
            DropoutCache {
                shape: x.shape().to_vec(),
                mask: None,
            },
        )),
        Mode::Train => {
            let seed = dropout_param
                .seed
                .unwrap_or_else(|| Rng::from_entropy().next_u64());
            let mask: Vec<T> = (0..x.len())
                .map(|i| mask_value(seed, i, dropout_param.p))
                .collect();
            let out = x.data().iter().zip(&mask).map(|(&v, &m)| v * m).collect();
            Ok((
                Tensor::new(out, x.shape())?,
                DropoutCache {
                    shape: x.shape().to_vec(),
                    mask: Some(mask),
                },
            ))
        }
    }
}

/// Dropout backward: dx = dout * mask (train), dx = dout (test).
pub fn dropout_backward<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &DropoutCache<T>,
) -> Result<Tensor<T>> {
    let dout = dout.into();
    expect_shape("dout", dout.shape(), &cache.shape)?;
    match &cache.mask {
        None => Ok(dout.to_owned()),
        Some(mask) => Tensor::new(
            dout.data().iter().zip(mask).map(|(&d, &m)| d * m).collect(),
            dout.shape(),
        ),
    }
}

/// What a dropout forward drew, for its backward: the seed and keep probability in train mode
/// (the backward recomputes the mask from them, unit by unit, as the forward did), nothing in
/// test mode. Only [`DropoutPlan::forward_into`] builds one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DropoutMask {
    len: usize,
    draw: Option<(u64, f64)>,
}

impl DropoutMask {
    /// The seed the mask was drawn with (train mode), None in test mode.
    pub fn seed(&self) -> Option<u64> {
        self.draw.map(|(s, _)| s)
    }
}

/// Dropout planned once for its shape: [`dropout_forward`] / [`dropout_backward`] into the
/// caller's buffers on `par`'s threads, with no mask stored (the mask is a function of the seed
/// and the unit's index). The same bits as the notebook functions for any thread count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropoutPlan<T> {
    shape: Vec<usize>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Float> DropoutPlan<T> {
    /// Any shape whose element count fits in memory's address range.
    pub fn new(shape: &[usize]) -> Result<Self> {
        crate::error::checked_numel("x", shape)?;
        Ok(DropoutPlan {
            shape: shape.to_vec(),
            _t: std::marker::PhantomData,
        })
    }
    /// x's, out's, dout's and dx's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Workspace (elements of T): none; there so that every plan has the same call shape.
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        Ok(0)
    }

    /// out = x * mask (train: mask 1/p where `uniform(seed, i) < p`, else 0; a seed of None
    /// draws a fresh one), out = x (test). Validated before anything is written.
    pub fn forward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        dropout_param: &DropoutParam,
        out: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<DropoutMask>
    where
        T: 'a + 'o,
    {
        let (x, mut out) = (x.into(), out.into());
        check_p(dropout_param.p)?;
        expect_shape("x", x.shape(), &self.shape)?;
        expect_shape("out", out.shape(), &self.shape)?;
        let draw = match dropout_param.mode {
            Mode::Test => None,
            Mode::Train => Some((
                dropout_param
                    .seed
                    .unwrap_or_else(|| Rng::from_entropy().next_u64()),
                dropout_param.p,
            )),
        };
        apply(x.data(), draw, out.data_mut(), par);
        Ok(DropoutMask { len: x.len(), draw })
    }

    /// dx = dout * mask (train), dx = dout (test), with the forward's mask. Validated before
    /// anything is written.
    pub fn backward_into<'a, 'o>(
        &self,
        mask: &DropoutMask,
        dout: impl Into<TensorView<'a, T>>,
        dx: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (dout, mut dx) = (dout.into(), dx.into());
        expect_shape("dout", dout.shape(), &self.shape)?;
        expect_shape("dx", dx.shape(), &self.shape)?;
        if mask.len != dout.len() {
            return Err(Error::cache(
                "mask",
                format!("the mask of a forward on {} elements", dout.len()),
                format!("one of {} elements", mask.len),
            ));
        }
        apply(dout.data(), mask.draw, dx.data_mut(), par);
        Ok(())
    }
}

/// out[i] = v[i] * mask_value(seed, i, p), or v[i] without a draw, in parallel chunks.
fn apply<T: Float>(v: &[T], draw: Option<(u64, f64)>, out: &mut [T], par: Parallelism<'_>) {
    const CHUNK: usize = crate::affine::ELEMENTWISE_CHUNK;
    let par = par.for_bytes(std::mem::size_of_val(v));
    par.for_each_chunk(out, CHUNK, &|c, o, _| {
        let base = c * CHUNK;
        let vs = &v[base..base + o.len()];
        match draw {
            None => o.copy_from_slice(vs),
            Some((seed, p)) => {
                for (i, (o, &x)) in o.iter_mut().zip(vs).enumerate() {
                    *o = x * mask_value(seed, base + i, p);
                }
            }
        }
    });
}
