//! The notebook's update rules (`optim.py`) with per-parameter state, as element-wise kernels
//! over the caller's buffers: no allocation per step. Each element's update is a fixed
//! sequence of operations in the parameter's type, so the result does not depend on how the
//! elements are split over threads.

use std::str::FromStr;

use fastlayers::Float;
use rayon::prelude::*;

use crate::{Error, Result};

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateRule {
    /// `w -= learning_rate * dw`.
    Sgd,
    /// `v = momentum * v - learning_rate * dw; w += v`.
    SgdMomentum,
    /// `cache = decay_rate * cache + (1 - decay_rate) * dw^2;
    /// w -= learning_rate * dw / (sqrt(cache) + epsilon)`.
    RmsProp,
    /// Adam with bias correction: `t += 1; m = beta1 m + (1 - beta1) dw;
    /// v = beta2 v + (1 - beta2) dw^2; w -= learning_rate * m / (1 - beta1^t) /
    /// (sqrt(v / (1 - beta2^t)) + epsilon)`.
    Adam,
}

impl UpdateRule {
    /// The notebook's name: "sgd", "sgd_momentum", "rmsprop", "adam".
    pub fn name(self) -> &'static str {
        match self {
            UpdateRule::Sgd => "sgd",
            UpdateRule::SgdMomentum => "sgd_momentum",
            UpdateRule::RmsProp => "rmsprop",
            UpdateRule::Adam => "adam",
        }
    }
    /// How many state buffers the rule keeps per parameter.
    pub fn state_buffers(self) -> usize {
        match self {
            UpdateRule::Sgd => 0,
            UpdateRule::SgdMomentum | UpdateRule::RmsProp => 1,
            UpdateRule::Adam => 2,
        }
    }
    /// The state buffers' names as the notebook's configs name them.
    pub fn state_names(self) -> &'static [&'static str] {
        match self {
            UpdateRule::Sgd => &[],
            UpdateRule::SgdMomentum => &["velocity"],
            UpdateRule::RmsProp => &["cache"],
            UpdateRule::Adam => &["m", "v"],
        }
    }
}

impl FromStr for UpdateRule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "sgd" => UpdateRule::Sgd,
            "sgd_momentum" => UpdateRule::SgdMomentum,
            "rmsprop" => UpdateRule::RmsProp,
            "adam" => UpdateRule::Adam,
            _ => {
                return Err(Error::config(
                    "update_rule",
                    "one of sgd, sgd_momentum, rmsprop, adam",
                    format!("{s:?}"),
                ));
            }
        })
    }
}

/// The hyper-parameters of every rule; a rule reads only its own.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// Step size (the notebook's default: 1e-2, Adam 1e-3).
    pub learning_rate: f64,
    /// sgd_momentum's momentum (0.9).
    pub momentum: f64,
    /// rmsprop's decay rate (0.99).
    pub decay_rate: f64,
    /// rmsprop's and Adam's epsilon (1e-8).
    pub epsilon: f64,
    /// Adam's beta1 (0.9).
    pub beta1: f64,
    /// Adam's beta2 (0.999).
    pub beta2: f64,
}

impl OptimConfig {
    /// The notebook's defaults for `rule`.
    pub fn defaults(rule: UpdateRule) -> Self {
        OptimConfig {
            learning_rate: if rule == UpdateRule::Adam { 1e-3 } else { 1e-2 },
            momentum: 0.9,
            decay_rate: 0.99,
            epsilon: 1e-8,
            beta1: 0.9,
            beta2: 0.999,
        }
    }

    /// Checks the rule's hyper-parameters.
    pub fn validate(&self, rule: UpdateRule) -> Result<()> {
        let unit = |arg: &'static str, v: f64| {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::config(arg, "a value in [0, 1)", v))
            }
        };
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return Err(Error::config(
                "learning_rate",
                "a finite value >= 0",
                self.learning_rate,
            ));
        }
        match rule {
            UpdateRule::Sgd => Ok(()),
            UpdateRule::SgdMomentum => unit("momentum", self.momentum),
            UpdateRule::RmsProp => {
                unit("decay_rate", self.decay_rate)?;
                positive("epsilon", self.epsilon)
            }
            UpdateRule::Adam => {
                unit("beta1", self.beta1)?;
                unit("beta2", self.beta2)?;
                positive("epsilon", self.epsilon)
            }
        }
    }
}

fn positive(arg: &'static str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::config(arg, "a finite value > 0", v))
    }
}

/// One parameter's optimiser state: the rule's buffers (zeros at first) and Adam's step count.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimState<T> {
    /// velocity (sgd_momentum), cache (rmsprop) or m (Adam); empty for sgd.
    pub s1: Vec<T>,
    /// v (Adam); empty otherwise.
    pub s2: Vec<T>,
    /// Adam's t: steps taken.
    pub t: u64,
}

/// Elements per parallel task: below this an update runs on the calling thread.
const CHUNK: usize = 1 << 15;

impl<T: Float> OptimState<T> {
    /// Zero state for a parameter of `len` elements.
    pub fn new(rule: UpdateRule, len: usize) -> Self {
        let n = rule.state_buffers();
        OptimState {
            s1: if n >= 1 {
                vec![T::zero(); len]
            } else {
                Vec::new()
            },
            s2: if n >= 2 {
                vec![T::zero(); len]
            } else {
                Vec::new()
            },
            t: 0,
        }
    }

    /// One update of `w` with gradient `dw` (same length as the state).
    pub fn step(&mut self, rule: UpdateRule, c: &OptimConfig, w: &mut [T], dw: &[T]) -> Result<()> {
        let len = w.len();
        let want = match rule.state_buffers() {
            0 => (0, 0),
            1 => (len, 0),
            _ => (len, len),
        };
        if dw.len() != len || (self.s1.len(), self.s2.len()) != want {
            return Err(Error::config(
                "dw",
                format!("gradient and {} state of {len} elements", rule.name()),
                format!(
                    "gradient {}, state {} and {}",
                    dw.len(),
                    self.s1.len(),
                    self.s2.len()
                ),
            ));
        }
        let lr = T::from_f(c.learning_rate);
        match rule {
            UpdateRule::Sgd => each2(w, dw, |w, d| *w -= lr * d),
            UpdateRule::SgdMomentum => {
                let mu = T::from_f(c.momentum);
                each3(w, dw, &mut self.s1, |w, d, v| {
                    *v = mu * *v - lr * d;
                    *w += *v;
                })
            }
            UpdateRule::RmsProp => {
                let (r, r1, eps) = (
                    T::from_f(c.decay_rate),
                    T::from_f(1.0 - c.decay_rate),
                    T::from_f(c.epsilon),
                );
                each3(w, dw, &mut self.s1, |w, d, s| {
                    *s = r * *s + r1 * d * d;
                    *w -= lr * d / (s.sqrt() + eps);
                })
            }
            UpdateRule::Adam => {
                self.t += 1;
                let t = self.t as f64;
                let (b1, b2) = (c.beta1, c.beta2);
                let (tb1, tb1c, tb2, tb2c, eps) = (
                    T::from_f(b1),
                    T::from_f(1.0 - b1),
                    T::from_f(b2),
                    T::from_f(1.0 - b2),
                    T::from_f(c.epsilon),
                );
                // The bias corrections, in f64 then rounded once.
                let (c1, c2) = (
                    T::from_f(1.0 / (1.0 - b1.powf(t))),
                    T::from_f(1.0 / (1.0 - b2.powf(t))),
                );
                let f = |w: &mut [T], dw: &[T], m: &mut [T], v: &mut [T]| {
                    // Zipped so that the loop has no bounds checks and vectorises.
                    for (((w, &d), m), v) in
                        w.iter_mut().zip(dw).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        *m = tb1 * *m + tb1c * d;
                        *v = tb2 * *v + tb2c * d * d;
                        *w -= lr * (*m * c1) / ((*v * c2).sqrt() + eps);
                    }
                };
                let (s1, s2) = (&mut self.s1[..], &mut self.s2[..]);
                if len < CHUNK {
                    f(w, dw, s1, s2);
                } else {
                    w.par_chunks_mut(CHUNK)
                        .zip(dw.par_chunks(CHUNK))
                        .zip(s1.par_chunks_mut(CHUNK).zip(s2.par_chunks_mut(CHUNK)))
                        .for_each(|((w, dw), (m, v))| f(w, dw, m, v));
                }
            }
        }
        Ok(())
    }
}

fn each2<T: Float>(w: &mut [T], dw: &[T], f: impl Fn(&mut T, T) + Sync) {
    if w.len() < CHUNK {
        w.iter_mut().zip(dw).for_each(|(w, &d)| f(w, d));
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(dw.par_chunks(CHUNK))
            .for_each(|(w, dw)| w.iter_mut().zip(dw).for_each(|(w, &d)| f(w, d)));
    }
}

fn each3<T: Float>(w: &mut [T], dw: &[T], s: &mut [T], f: impl Fn(&mut T, T, &mut T) + Sync) {
    let g = |w: &mut [T], dw: &[T], s: &mut [T]| {
        for ((w, &d), s) in w.iter_mut().zip(dw).zip(s.iter_mut()) {
            f(w, d, s);
        }
    };
    if w.len() < CHUNK {
        g(w, dw, s);
    } else {
        w.par_chunks_mut(CHUNK)
            .zip(dw.par_chunks(CHUNK))
            .zip(s.par_chunks_mut(CHUNK))
            .for_each(|((w, dw), s)| g(w, dw, s));
    }
}
