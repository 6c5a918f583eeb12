//! The notebook's `FullyConnectedNet`:
//! {affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax.

use fastlayers::{
    AffineCache, BnParam, DropoutCache, DropoutParam, Float, Mode, NormParam, Rng, Tensor,
    TensorView, dropout_backward, dropout_forward, softmax_loss,
};

use super::{Model, Params, add_l2, check_rows, name, ones, randn, zeros};
use crate::layers::{AffineNormReluCache, AffineReluCache, NormArg};
use crate::{Error, Kernels, Result};

/// The norm after each hidden affine layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// Batch norm (running statistics kept, test mode uses them).
    BatchNorm,
    /// Layer norm (the same in train and test mode).
    LayerNorm,
}

/// The notebook's constructor arguments, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct FcNetConfig {
    /// Sizes of the hidden layers.
    pub hidden_dims: Vec<usize>,
    /// Size of one (flattened) sample: 3*32*32.
    pub input_dim: usize,
    /// 10.
    pub num_classes: usize,
    /// Keep probability of the dropout after every ReLU; 1 (the default) means no dropout.
    pub dropout: f64,
    /// None (the default), batch norm or layer norm.
    pub normalization: Option<Normalization>,
    /// L2 regularisation strength (0).
    pub reg: f64,
    /// Standard deviation of the initial weights (1e-2).
    pub weight_scale: f64,
    /// Seed of the initial weights.
    pub seed: u64,
    /// Seed of the dropout masks, fixed for gradient checks (the notebook's `seed`); None
    /// draws fresh masks (the Solver sets one per iteration).
    pub dropout_seed: Option<u64>,
}

impl Default for FcNetConfig {
    fn default() -> Self {
        FcNetConfig {
            hidden_dims: vec![100, 100],
            input_dim: 3 * 32 * 32,
            num_classes: 10,
            dropout: 1.0,
            normalization: None,
            reg: 0.0,
            weight_scale: 1e-2,
            seed: 0,
            dropout_seed: None,
        }
    }
}

enum Hidden<T> {
    Plain(AffineReluCache<T>),
    Norm(Box<AffineNormReluCache<T>>),
}

/// A fully connected net of any depth; parameters W1..WL, b1..bL and, with a norm, gamma1..,
/// beta1.. for the L - 1 hidden layers.
pub struct FullyConnectedNet<T> {
    /// W1, b1, gamma1, beta1, ...
    pub params: Params<T>,
    grads: Params<T>,
    /// The constructor's arguments.
    pub config: FcNetConfig,
    /// Which kernels the layers run.
    pub kernels: Kernels,
    bn_params: Vec<BnParam<T>>,
    dropout_seed: Option<u64>,
}

impl<T: Float> FullyConnectedNet<T> {
    /// Builds the net: weights `weight_scale * N(0, 1)` from `config.seed`, biases and betas
    /// zero, gammas one.
    pub fn new(config: FcNetConfig) -> Result<Self> {
        if !(config.dropout > 0.0 && config.dropout <= 1.0) {
            return Err(Error::config(
                "dropout",
                "a keep probability in (0, 1]",
                config.dropout,
            ));
        }
        if config.input_dim == 0 || config.num_classes == 0 || config.hidden_dims.contains(&0) {
            return Err(Error::config(
                "hidden_dims",
                "positive input_dim, hidden dims and num_classes",
                format!(
                    "input_dim {}, hidden_dims {:?}, num_classes {}",
                    config.input_dim, config.hidden_dims, config.num_classes
                ),
            ));
        }
        let mut rng = Rng::new(config.seed);
        let mut params = Params::new();
        let mut dims = vec![config.input_dim];
        dims.extend(&config.hidden_dims);
        dims.push(config.num_classes);
        let layers = dims.len() - 1;
        for l in 0..layers {
            let (i, o) = (dims[l], dims[l + 1]);
            params.insert(
                name("W", l + 1),
                randn(&mut rng, &[i, o], config.weight_scale),
            );
            params.insert(name("b", l + 1), zeros(&[o]));
            if l + 1 < layers && config.normalization.is_some() {
                params.insert(name("gamma", l + 1), ones(&[o]));
                params.insert(name("beta", l + 1), zeros(&[o]));
            }
        }
        let bn_params = match config.normalization {
            Some(Normalization::BatchNorm) => vec![BnParam::train(); layers - 1],
            _ => Vec::new(),
        };
        let grads = params.clone();
        Ok(FullyConnectedNet {
            params,
            grads,
            dropout_seed: config.dropout_seed,
            config,
            kernels: Kernels::Fast,
            bn_params,
        })
    }

    fn num_layers(&self) -> usize {
        self.config.hidden_dims.len() + 1
    }

    #[allow(clippy::type_complexity)]
    fn forward(
        &mut self,
        x: TensorView<'_, T>,
        mode: Mode,
    ) -> Result<(
        Tensor<T>,
        Vec<(Hidden<T>, Option<DropoutCache<T>>)>,
        AffineCache<T>,
    )> {
        let n = check_rows(&x, self.config.input_dim, None)?;
        let shape = [n, self.config.input_dim];
        let mut h = TensorView::new(x.data(), &shape)?.to_owned();
        let k = self.kernels;
        let mut caches = Vec::new();
        for bp in &mut self.bn_params {
            bp.mode = mode;
        }
        let ln = NormParam::default();
        for l in 1..self.num_layers() {
            let p = &self.params;
            let (w, b) = (p[&name("W", l)].view(), p[&name("b", l)].view());
            let (out, c) = match self.config.normalization {
                None => {
                    let (o, c) = k.affine_relu_forward(h.view(), w, b)?;
                    (o, Hidden::Plain(c))
                }
                Some(norm) => {
                    let (g, be) = (p[&name("gamma", l)].view(), p[&name("beta", l)].view());
                    let arg = match norm {
                        Normalization::BatchNorm => NormArg::Batch(&mut self.bn_params[l - 1]),
                        Normalization::LayerNorm => NormArg::Layer(&ln),
                    };
                    let (o, c) = k.affine_norm_relu_forward(h.view(), w, b, g, be, arg)?;
                    (o, Hidden::Norm(Box::new(c)))
                }
            };
            let (out, dc) = if self.config.dropout < 1.0 {
                let dp = DropoutParam {
                    p: self.config.dropout,
                    mode,
                    seed: self.dropout_seed.map(|s| fastlayers_seed(s, l as u64)),
                };
                let (o, c) = dropout_forward(&out, &dp)?;
                (o, Some(c))
            } else {
                (out, None)
            };
            caches.push((c, dc));
            h = out;
        }
        let l = self.num_layers();
        let p = &self.params;
        let (scores, last) =
            k.affine_forward(h.view(), p[&name("W", l)].view(), p[&name("b", l)].view())?;
        Ok((scores, caches, last))
    }
}

/// The seed of layer `l`'s dropout mask in an iteration seeded `s`.
fn fastlayers_seed(s: u64, l: u64) -> u64 {
    Rng::new(s ^ l.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
}

impl<T: Float> Model<T> for FullyConnectedNet<T> {
    fn params(&self) -> &Params<T> {
        &self.params
    }
    fn params_and_grads(&mut self) -> (&mut Params<T>, &Params<T>) {
        (&mut self.params, &self.grads)
    }
    fn loss(&mut self, x: TensorView<'_, T>, y: &[usize]) -> Result<f64> {
        check_rows(&x, self.config.input_dim, Some(y))?;
        let (scores, caches, last) = self.forward(x, Mode::Train)?;
        let (loss, ds) = softmax_loss(&scores, y)?;
        let k = self.kernels;
        let l = self.num_layers();
        let (mut dh, dw, db) = k.affine_backward(ds.view(), &last)?;
        self.grads.insert(name("W", l), dw);
        self.grads.insert(name("b", l), db);
        for (i, (c, dc)) in caches.iter().enumerate().rev() {
            let l = i + 1;
            if let Some(dc) = dc {
                dh = dropout_backward(&dh, dc)?;
            }
            let (dx, dw, db) = match c {
                Hidden::Plain(c) => k.affine_relu_backward(dh.view(), c)?,
                Hidden::Norm(c) => {
                    let (dx, dw, db, dg, dbe) = k.affine_norm_relu_backward(dh.view(), c)?;
                    self.grads.insert(name("gamma", l), dg);
                    self.grads.insert(name("beta", l), dbe);
                    (dx, dw, db)
                }
            };
            self.grads.insert(name("W", l), dw);
            self.grads.insert(name("b", l), db);
            dh = dx;
        }
        Ok(loss + add_l2(&self.params, &mut self.grads, self.config.reg))
    }
    fn scores(&mut self, x: TensorView<'_, T>) -> Result<Tensor<T>> {
        Ok(self.forward(x, Mode::Test)?.0)
    }
    fn state(&self) -> Params<T> {
        let mut s = Params::new();
        for (i, bp) in self.bn_params.iter().enumerate() {
            if let (Some(m), Some(v)) = (&bp.running_mean, &bp.running_var) {
                let d = [m.len()];
                s.insert(
                    format!("running_mean{}", i + 1),
                    Tensor::new(m.clone(), &d).unwrap(),
                );
                s.insert(
                    format!("running_var{}", i + 1),
                    Tensor::new(v.clone(), &d).unwrap(),
                );
            }
        }
        s
    }
    fn load_state(&mut self, state: &Params<T>) -> Result<()> {
        for (i, bp) in self.bn_params.iter_mut().enumerate() {
            let d = self.config.hidden_dims[i];
            for (key, slot) in [
                (format!("running_mean{}", i + 1), &mut bp.running_mean),
                (format!("running_var{}", i + 1), &mut bp.running_var),
            ] {
                match state.get(&key) {
                    Some(t) if t.shape() == [d] => *slot = Some(t.data().to_vec()),
                    Some(t) => {
                        return Err(Error::config(
                            "state",
                            format!("{key} of shape [{d}]"),
                            format!("{:?}", t.shape()),
                        ));
                    }
                    None => *slot = None,
                }
            }
        }
        Ok(())
    }
    fn set_dropout_seed(&mut self, seed: u64) {
        self.dropout_seed = Some(seed);
    }
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.config.input_dim]
    }
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
}
