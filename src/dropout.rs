//! Inverted dropout: in train mode each unit is kept with probability `p` and scaled by 1/p, so
//! the expected output equals the input; in test mode the layer is the identity.
//!
//! Unit `i`'s keep decision is `uniform(seed, i) < p` from a counter-based generator, so a seeded
//! call is reproducible and independent of threading.

use crate::error::{Error, Result, expect_shape};
use crate::norm::Mode;
use crate::rng::{Rng, uniform_at};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

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
