//! The notebook's `ThreeLayerConvNet`: conv - relu - 2x2 max pool - affine - relu - affine -
//! softmax.
//!
//! The fast path runs the convolution and the pool through their plans into buffers kept
//! between calls of the same batch size (no per-call workspace or activation allocation for
//! them), applies the ReLU after the pool on a quarter of the elements (exactly equivalent,
//! see `fast_conv_forward`), and computes only dw and db for the convolution
//! (`backward_weights_into`: the input needs no gradient). The reference path chains the
//! notebook's sandwich layers on the reference kernels.

use fastlayers::{
    AffinePlan, ConvParam, ConvPlan, Float, Parallelism, PoolParam, PoolPlan, Rng, Tensor,
    TensorView, relu, relu_grad, softmax_loss,
};

use super::{Model, Params, add_l2, check_batch, randn, zeros};
use crate::{Error, Kernels, Result};

/// The notebook's constructor arguments, with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CnnConfig {
    /// (C, H, W) of one sample: (3, 32, 32).
    pub input_dim: [usize; 3],
    /// 32.
    pub num_filters: usize,
    /// Odd filter size (7); the convolution pads (size - 1) / 2 to keep H and W.
    pub filter_size: usize,
    /// 100.
    pub hidden_dim: usize,
    /// 10.
    pub num_classes: usize,
    /// 1e-3.
    pub weight_scale: f64,
    /// 0.
    pub reg: f64,
    /// Seed of the initial weights.
    pub seed: u64,
}

impl Default for CnnConfig {
    fn default() -> Self {
        CnnConfig {
            input_dim: [3, 32, 32],
            num_filters: 32,
            filter_size: 7,
            hidden_dim: 100,
            num_classes: 10,
            weight_scale: 1e-3,
            reg: 0.0,
            seed: 0,
        }
    }
}

/// Plans and activations of the fast path for one batch size.
struct Fast<T> {
    n: usize,
    conv: ConvPlan<T>,
    pool: PoolPlan<T>,
    fc2: AffinePlan<T>,
    fc3: AffinePlan<T>,
    /// Workspace enough for every plan above.
    ws: Vec<T>,
    /// The convolution's output (N, F, H, W).
    a: Tensor<T>,
    /// relu(pool(a)) (N, F, H/2, W/2).
    pooled: Tensor<T>,
    argmax: Vec<u32>,
    da: Tensor<T>,
    /// relu(pooled W2 + b2) (N, hidden), its gradient, and the pooled values' gradient.
    h: Tensor<T>,
    dh: Tensor<T>,
    dpooled: Tensor<T>,
    scores: Tensor<T>,
}

/// conv - relu - 2x2 max pool - affine - relu - affine - softmax; parameters W1 (F, C, k, k),
/// b1 (F), W2 (F*H/2*W/2, hidden), b2, W3 (hidden, classes), b3.
pub struct ThreeLayerConvNet<T> {
    /// W1, b1, W2, b2, W3, b3.
    pub params: Params<T>,
    grads: Params<T>,
    /// The constructor's arguments.
    pub config: CnnConfig,
    /// Which kernels the layers run.
    pub kernels: Kernels,
    fast: Option<Fast<T>>,
}

impl<T: Float> ThreeLayerConvNet<T> {
    /// Builds the net: weights `weight_scale * N(0, 1)` from `config.seed`, biases zero.
    pub fn new(config: CnnConfig) -> Result<Self> {
        let [c, h, w] = config.input_dim;
        let k = config.filter_size;
        if k.is_multiple_of(2) || !h.is_multiple_of(2) || !w.is_multiple_of(2) || c == 0 || h == 0 {
            return Err(Error::config(
                "filter_size",
                "an odd filter size and an even, non-empty input height and width",
                format!("filter size {k}, input {:?}", config.input_dim),
            ));
        }
        let f = config.num_filters;
        let pooled = f * (h / 2) * (w / 2);
        let mut rng = Rng::new(config.seed);
        let s = config.weight_scale;
        let mut params = Params::new();
        params.insert("W1".into(), randn(&mut rng, &[f, c, k, k], s));
        params.insert("b1".into(), zeros(&[f]));
        params.insert(
            "W2".into(),
            randn(&mut rng, &[pooled, config.hidden_dim], s),
        );
        params.insert("b2".into(), zeros(&[config.hidden_dim]));
        params.insert(
            "W3".into(),
            randn(&mut rng, &[config.hidden_dim, config.num_classes], s),
        );
        params.insert("b3".into(), zeros(&[config.num_classes]));
        let grads = params.clone();
        Ok(ThreeLayerConvNet {
            params,
            grads,
            config,
            kernels: Kernels::Fast,
            fast: None,
        })
    }

    fn conv_param(&self) -> ConvParam {
        ConvParam::new(1, (self.config.filter_size - 1) / 2)
    }

    fn pool_param() -> PoolParam {
        PoolParam::new(2, 2, 2)
    }

    fn fast_state(&mut self, n: usize) -> Result<&mut Fast<T>> {
        if self.fast.as_ref().is_none_or(|f| f.n != n) {
            let [c, h, w] = self.config.input_dim;
            let xs = [n, c, h, w];
            let conv = ConvPlan::new(&xs, self.params["W1"].shape(), &self.conv_param())?;
            let a_shape = conv.geom().out_shape();
            let pool = PoolPlan::new(&a_shape, &Self::pool_param())?;
            let par = Parallelism::Current;
            let p_shape = pool.geom().out_shape();
            let p_len: usize = p_shape.iter().product();
            let fc2 = AffinePlan::new(&[n, p_len / n.max(1)], self.params["W2"].shape())?;
            let fc3 = AffinePlan::new(&fc2.out_shape(), self.params["W3"].shape())?;
            let ws_len = conv
                .workspace_len(par)?
                .max(fc2.workspace_len(par)?)
                .max(fc3.workspace_len(par)?);
            self.fast = Some(Fast {
                n,
                ws: vec![T::zero(); ws_len],
                a: Tensor::zeros(&a_shape)?,
                da: Tensor::zeros(&a_shape)?,
                pooled: Tensor::zeros(&p_shape)?,
                argmax: vec![0; p_len],
                h: Tensor::zeros(&[n, self.config.hidden_dim])?,
                dh: Tensor::zeros(&[n, self.config.hidden_dim])?,
                dpooled: Tensor::zeros(&[n, p_len / n.max(1)])?,
                scores: Tensor::zeros(&[n, self.config.num_classes])?,
                conv,
                pool,
                fc2,
                fc3,
            });
        }
        Ok(self.fast.as_mut().expect("just built"))
    }

    /// The fast forward up to the pooled activations (kept in `self.fast`).
    fn fast_conv_forward(&mut self, x: TensorView<'_, T>) -> Result<()> {
        let n = x.shape()[0];
        let (w1, b1) = (self.params["W1"].clone(), self.params["b1"].clone());
        let f = self.fast_state(n)?;
        // The workspace query is per call: the current pool's thread count can change.
        let par = Parallelism::Current;
        let need = f.conv.workspace_len(par)?;
        if f.ws.len() < need {
            f.ws.resize(need, T::zero());
        }
        f.conv.forward_into(x, &w1, &b1, &mut f.a, &mut f.ws, par)?;
        // pool(relu(a)) = relu(pool(a)): max commutes with the monotone ReLU, and where the
        // pooled maximum is positive its first position is the same in a and in relu(a) (where
        // it is not, the gradient is zero either way). So the ReLU and its mask run on the
        // pooled quarter of the activations, with the same bits.
        f.pool
            .forward_into(&f.a, &mut f.pooled, &mut f.argmax, &mut [], par)?;
        for v in f.pooled.data_mut() {
            *v = relu(*v);
        }
        Ok(())
    }

    /// The fast path: plans and the no-allocation affine entry points into the kept buffers,
    /// gradients written in place into `self.grads`.
    fn loss_fast(&mut self, x: TensorView<'_, T>, y: Option<&[usize]>) -> Result<(f64, Tensor<T>)> {
        let n = x.shape()[0];
        self.fast_conv_forward(x)?;
        let par = Parallelism::Current;
        let ThreeLayerConvNet {
            params: p,
            grads: g,
            fast,
            ..
        } = self;
        let f = fast.as_mut().expect("built by the forward");
        let flat = [n, f.pooled.len() / n.max(1)];
        let pooled = TensorView::new(f.pooled.data(), &flat)?;
        f.fc2
            .forward_into(pooled, &p["W2"], &p["b2"], &mut f.h, &mut f.ws, par)?;
        for v in f.h.data_mut() {
            *v = relu(*v);
        }
        f.fc3
            .forward_into(&f.h, &p["W3"], &p["b3"], &mut f.scores, &mut f.ws, par)?;
        let Some(y) = y else {
            return Ok((0.0, f.scores.clone()));
        };
        let (loss, ds) = softmax_loss(&f.scores, y)?;
        let mut grad = |name: &str| g.remove(name).expect("grads hold every parameter");
        let (mut dw3, mut db3, mut dw2, mut db2, mut dw1, mut db1) = (
            grad("W3"),
            grad("b3"),
            grad("W2"),
            grad("b2"),
            grad("W1"),
            grad("b1"),
        );
        let res = (|| -> Result<()> {
            f.fc3.backward_into(
                &f.h, &p["W3"], &ds, &mut f.dh, &mut dw3, &mut db3, &mut f.ws, par,
            )?;
            for (d, &h) in f.dh.data_mut().iter_mut().zip(f.h.data()) {
                *d = relu_grad(h, *d);
            }
            f.fc2.backward_into(
                pooled,
                &p["W2"],
                &f.dh,
                &mut f.dpooled,
                &mut dw2,
                &mut db2,
                &mut f.ws,
                par,
            )?;
            // The ReLU's gradient on the pooled values (see the forward), then the scatter.
            for (d, &v) in f.dpooled.data_mut().iter_mut().zip(f.pooled.data()) {
                *d = relu_grad(v, *d);
            }
            let pshape = f.pool.geom().out_shape();
            let dp = TensorView::new(f.dpooled.data(), &pshape)?;
            f.pool
                .backward_into(dp, &f.argmax, &mut f.da, &mut [], par)?;
            f.conv
                .backward_weights_into(x, &f.da, &mut dw1, &mut db1, &mut f.ws, par)?;
            Ok(())
        })();
        for (name, t) in [
            ("W1", dw1),
            ("b1", db1),
            ("W2", dw2),
            ("b2", db2),
            ("W3", dw3),
            ("b3", db3),
        ] {
            g.insert(name.into(), t);
        }
        res?;
        Ok((loss, f.scores.clone()))
    }

    fn loss_reference(
        &mut self,
        x: TensorView<'_, T>,
        y: Option<&[usize]>,
    ) -> Result<(f64, Tensor<T>)> {
        let k = Kernels::Reference;
        let p = &self.params;
        let (a, c1) = k.conv_relu_pool_forward(
            x,
            p["W1"].view(),
            p["b1"].view(),
            &self.conv_param(),
            &Self::pool_param(),
        )?;
        let n = x.shape()[0];
        let flat = [n, a.len() / n.max(1)];
        let av = TensorView::new(a.data(), &flat)?;
        let (h, c2) = k.affine_relu_forward(av, p["W2"].view(), p["b2"].view())?;
        let (scores, c3) = k.affine_forward(h.view(), p["W3"].view(), p["b3"].view())?;
        let Some(y) = y else {
            return Ok((0.0, scores));
        };
        let (loss, ds) = softmax_loss(&scores, y)?;
        let (dh, dw3, db3) = k.affine_backward(ds.view(), &c3)?;
        let (dp, dw2, db2) = k.affine_relu_backward(dh.view(), &c2)?;
        let dp = TensorView::new(dp.data(), a.shape())?;
        let (_, dw1, db1) = k.conv_relu_pool_backward(dp, &c1)?;
        for (name, t) in [
            ("W1", dw1),
            ("b1", db1),
            ("W2", dw2),
            ("b2", db2),
            ("W3", dw3),
            ("b3", db3),
        ] {
            self.grads.insert(name.into(), t);
        }
        Ok((loss, scores))
    }
}

impl<T: Float> Model<T> for ThreeLayerConvNet<T> {
    fn params(&self) -> &Params<T> {
        &self.params
    }
    fn params_and_grads(&mut self) -> (&mut Params<T>, &Params<T>) {
        (&mut self.params, &self.grads)
    }
    fn loss(&mut self, x: TensorView<'_, T>, y: &[usize]) -> Result<f64> {
        check_batch(&x, &self.config.input_dim, Some(y))?;
        let (loss, _) = match self.kernels {
            Kernels::Fast => self.loss_fast(x, Some(y))?,
            Kernels::Reference => self.loss_reference(x, Some(y))?,
        };
        Ok(loss + add_l2(&self.params, &mut self.grads, self.config.reg))
    }
    fn scores(&mut self, x: TensorView<'_, T>) -> Result<Tensor<T>> {
        check_batch(&x, &self.config.input_dim, None)?;
        Ok(match self.kernels {
            Kernels::Fast => self.loss_fast(x, None)?.1,
            Kernels::Reference => self.loss_reference(x, None)?.1,
        })
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.config.input_dim.to_vec()
    }
    fn num_classes(&self) -> usize {
        self.config.num_classes
    }
}
