//! The notebook's `TwoLayerNet`: affine - relu - affine - softmax.

use fastlayers::{Float, Rng, Tensor, TensorView, softmax_loss};

use super::{Model, Params, add_l2, check_rows, randn, zeros};
use crate::{Kernels, Result};

/// affine - relu - affine - softmax, with parameters W1 (D, H), b1 (H), W2 (H, C), b2 (C).
#[derive(Clone, Debug)]
pub struct TwoLayerNet<T> {
    /// W1, b1, W2, b2.
    pub params: Params<T>,
    grads: Params<T>,
    /// L2 regularisation strength.
    pub reg: f64,
    /// Which kernels the layers run.
    pub kernels: Kernels,
    input_dim: usize,
    num_classes: usize,
}

impl<T: Float> TwoLayerNet<T> {
    /// The notebook's `TwoLayerNet(input_dim, hidden_dim, num_classes, weight_scale, reg)`
    /// (defaults 3*32*32, 100, 10, 1e-3, 0.0): weights from `weight_scale * N(0, 1)` drawn
    /// from `seed`, biases zero.
    pub fn new(
        input_dim: usize,
        hidden_dim: usize,
        num_classes: usize,
        weight_scale: f64,
        reg: f64,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut params = Params::new();
        params.insert(
            "W1".into(),
            randn(&mut rng, &[input_dim, hidden_dim], weight_scale),
        );
        params.insert("b1".into(), zeros(&[hidden_dim]));
        params.insert(
            "W2".into(),
            randn(&mut rng, &[hidden_dim, num_classes], weight_scale),
        );
        params.insert("b2".into(), zeros(&[num_classes]));
        let grads = params.clone();
        TwoLayerNet {
            params,
            grads,
            reg,
            kernels: Kernels::Fast,
            input_dim,
            num_classes,
        }
    }

    fn forward(&self, x: TensorView<'_, T>) -> Result<(Tensor<T>, Caches<T>)> {
        let n = check_rows(&x, self.input_dim, None)?;
        let shape = [n, self.input_dim];
        let x = TensorView::new(x.data(), &shape)?;
        let k = self.kernels;
        let p = &self.params;
        let (h, c1) = k.affine_relu_forward(x, p["W1"].view(), p["b1"].view())?;
        let (s, c2) = k.affine_forward(h.view(), p["W2"].view(), p["b2"].view())?;
        Ok((s, (c1, c2)))
    }
}

type Caches<T> = (
    crate::layers::AffineReluCache<T>,
    fastlayers::AffineCache<T>,
);

impl<T: Float> Model<T> for TwoLayerNet<T> {
    fn params(&self) -> &Params<T> {
        &self.params
    }
    fn params_and_grads(&mut self) -> (&mut Params<T>, &Params<T>) {
        (&mut self.params, &self.grads)
    }
    fn loss(&mut self, x: TensorView<'_, T>, y: &[usize]) -> Result<f64> {
        check_rows(&x, self.input_dim, Some(y))?;
        let (scores, (c1, c2)) = self.forward(x)?;
        let (loss, ds) = softmax_loss(&scores, y)?;
        let k = self.kernels;
        let (dh, dw2, db2) = k.affine_backward(ds.view(), &c2)?;
        let (_, dw1, db1) = k.affine_relu_backward(dh.view(), &c1)?;
        for (n, g) in [("W1", dw1), ("b1", db1), ("W2", dw2), ("b2", db2)] {
            self.grads.insert(n.into(), g);
        }
        Ok(loss + add_l2(&self.params, &mut self.grads, self.reg))
    }
    fn scores(&mut self, x: TensorView<'_, T>) -> Result<Tensor<T>> {
        Ok(self.forward(x)?.0)
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.input_dim]
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
}
