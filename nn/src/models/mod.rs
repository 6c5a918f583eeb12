//! The notebook's classifiers: [`TwoLayerNet`], [`FullyConnectedNet`], [`ThreeLayerConvNet`].
//!
//! Every model keeps its parameters in a [`Params`] map under the notebook's names (W1, b1,
//! gamma1, ...), computes the softmax loss with L2 regularisation `0.5 * reg * sum(W^2)` on the
//! weights only, and leaves the gradient of every parameter, under the same name, in its
//! gradient map. Test mode ([`Model::scores`]) needs no labels, uses batch norm's running
//! statistics and skips dropout.

mod cnn;
mod fc_net;
mod two_layer;

use std::collections::BTreeMap;

pub use cnn::{CnnConfig, ThreeLayerConvNet};
pub use fc_net::{FcNetConfig, FullyConnectedNet, Normalization};
pub use two_layer::TwoLayerNet;

use fastlayers::{Float, Rng, Tensor, TensorView};

use crate::Result;

/// Named tensors: a model's parameters, their gradients, or its other state.
pub type Params<T> = BTreeMap<String, Tensor<T>>;

/// What the Solver needs of a model.
pub trait Model<T: Float>: Send {
    /// The learnable parameters by name.
    fn params(&self) -> &Params<T>;
    /// The parameters and, beside them, the gradients of the last [`Model::loss`] (same names
    /// and shapes), for an update rule.
    fn params_and_grads(&mut self) -> (&mut Params<T>, &Params<T>);
    /// Train mode: the loss on (x, y), with the gradients of every parameter kept in the model.
    fn loss(&mut self, x: TensorView<'_, T>, y: &[usize]) -> Result<f64>;
    /// Test mode: class scores (N, classes).
    fn scores(&mut self, x: TensorView<'_, T>) -> Result<Tensor<T>>;
    /// State that is not learned but must be saved (batch norm's running statistics), by name.
    fn state(&self) -> Params<T> {
        Params::new()
    }
    /// Restores [`Model::state`].
    fn load_state(&mut self, _state: &Params<T>) -> Result<()> {
        Ok(())
    }
    /// The seed of the next train-mode forward's dropout masks (the Solver sets one per
    /// iteration so that runs repeat).
    fn set_dropout_seed(&mut self, _seed: u64) {}
    /// The shape of one sample, e.g. [3, 32, 32].
    fn sample_shape(&self) -> Vec<usize>;
    /// Number of classes.
    fn num_classes(&self) -> usize;
}

/// `weight_scale * randn(shape)` from `rng`.
pub(crate) fn randn<T: Float>(rng: &mut Rng, shape: &[usize], scale: f64) -> Tensor<T> {
    rng.randn(shape, scale, 0.0)
}

pub(crate) fn zeros<T: Float>(shape: &[usize]) -> Tensor<T> {
    Tensor::full(shape, T::zero()).expect("a parameter's shape is small")
}

pub(crate) fn ones<T: Float>(shape: &[usize]) -> Tensor<T> {
    Tensor::full(shape, T::one()).expect("a parameter's shape is small")
}

/// Adds `0.5 * reg * sum(W^2)` over the weights (names starting with 'W') to the loss and
/// `reg * W` to their gradients; the sum is accumulated in f64.
pub(crate) fn add_l2<T: Float>(params: &Params<T>, grads: &mut Params<T>, reg: f64) -> f64 {
    if reg == 0.0 {
        return 0.0;
    }
    let mut loss = 0.0;
    for (name, w) in params.iter().filter(|(n, _)| n.starts_with('W')) {
        loss += 0.5 * reg * w.data().iter().map(|v| v.to_f() * v.to_f()).sum::<f64>();
        if let Some(g) = grads.get_mut(name) {
            let r = T::from_f(reg);
            for (g, &w) in g.data_mut().iter_mut().zip(w.data()) {
                *g += r * w;
            }
        }
    }
    loss
}

/// N, checking that x is (N, d_1, ..., d_k) with d_1 * ... * d_k = d (an affine layer's
/// input, flattened as the notebook's reshape does) and y, when given, has N labels.
pub(crate) fn check_rows<T>(x: &TensorView<'_, T>, d: usize, y: Option<&[usize]>) -> Result<usize> {
    let s = x.shape();
    if s.is_empty() || s[1..].iter().product::<usize>() != d {
        return Err(fastlayers::Error::Shape {
            arg: "X",
            expected: format!("(N, d_1, ..., d_k) with d_1 * ... * d_k = {d}"),
            found: format!("{s:?}"),
        }
        .into());
    }
    check_labels(s[0], y)?;
    Ok(s[0])
}

fn check_labels(n: usize, y: Option<&[usize]>) -> Result<()> {
    if let Some(y) = y
        && y.len() != n
    {
        return Err(fastlayers::Error::Shape {
            arg: "y",
            expected: format!("({n},)"),
            found: format!("({},)", y.len()),
        }
        .into());
    }
    Ok(())
}

/// N, checking that x is (N, sample...) and y, when given, has N labels.
pub(crate) fn check_batch<T>(
    x: &TensorView<'_, T>,
    sample: &[usize],
    y: Option<&[usize]>,
) -> Result<usize> {
    let s = x.shape();
    if s.len() != sample.len() + 1 || &s[1..] != sample {
        return Err(fastlayers::Error::Shape {
            arg: "X",
            expected: format!("(N, {sample:?})"),
            found: format!("{s:?}"),
        }
        .into());
    }
    check_labels(s[0], y)?;
    Ok(s[0])
}

pub(crate) fn name(p: &str, i: usize) -> String {
    format!("{p}{i}")
}
