//! The notebook's `Solver` (`solver.py`): minibatch training with an update rule, learning-rate
//! decay per epoch, accuracy checks on samples, loss and accuracy histories, and the best
//! validation parameters restored at the end.
//!
//! Every random choice is a function of the seed and the iteration (`Rng::new` of a mix of
//! both): the minibatch (drawn with replacement, as `np.random.choice` does), the dropout
//! masks, the accuracy subsamples. Together with kernels whose bits do not depend on the
//! thread count, the same seed gives the same loss history bit for bit on any number of
//! threads, and a run resumed from an epoch's checkpoint continues exactly as the
//! uninterrupted run would have.

use std::collections::BTreeMap;

use fastlayers::{Float, Rng, TensorView};

use crate::data::Dataset;
use crate::models::{Model, Params};
use crate::optim::{OptimConfig, OptimState, UpdateRule};
use crate::{Error, Result};

/// The Solver's options, with the notebook's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SolverConfig {
    /// sgd (the default), sgd_momentum, rmsprop or adam.
    pub update_rule: UpdateRule,
    /// The rule's hyper-parameters (the rule's defaults).
    pub optim_config: OptimConfig,
    /// The learning rate is multiplied by this after every epoch (1.0).
    pub lr_decay: f64,
    /// Minibatch size (100).
    pub batch_size: usize,
    /// Epochs to train (10).
    pub num_epochs: usize,
    /// Training samples the accuracy checks use (1000); None: all.
    pub num_train_samples: Option<usize>,
    /// Validation samples the accuracy checks use (None: all).
    pub num_val_samples: Option<usize>,
    /// Print the loss every this many iterations (10).
    pub print_every: usize,
    /// Print progress lines like the notebook (true).
    pub verbose: bool,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            update_rule: UpdateRule::Sgd,
            optim_config: OptimConfig::defaults(UpdateRule::Sgd),
            lr_decay: 1.0,
            batch_size: 100,
            num_epochs: 10,
            num_train_samples: Some(1000),
            num_val_samples: None,
            print_every: 10,
            verbose: true,
            seed: 0,
        }
    }
}

/// What [`Solver::train_with`] reports as it goes.
pub trait Observer<T: Float, M: Model<T>> {
    /// After iteration `t` (0-based) with its loss.
    fn iteration(&mut self, _solver: &Solver<T, M>, _t: usize, _loss: f64) {}
    /// After an accuracy check (first iteration, every epoch's end, last iteration).
    fn accuracy(&mut self, _solver: &Solver<T, M>, _train_acc: f64, _val_acc: f64) {}
    /// At the end of every epoch, after its accuracy check: the solver's state is complete
    /// here (the place to write a checkpoint). An error stops training.
    fn epoch_end(&mut self, _solver: &Solver<T, M>) -> Result<()> {
        Ok(())
    }
}

/// Prints what the notebook's Solver prints when `verbose`.
pub struct NotebookLog;

impl<T: Float, M: Model<T>> Observer<T, M> for NotebookLog {
    fn iteration(&mut self, s: &Solver<T, M>, t: usize, loss: f64) {
        if s.config.verbose && t.is_multiple_of(s.config.print_every.max(1)) {
            println!(
                "(Iteration {} / {}) loss: {loss:.6}",
                t + 1,
                s.num_iterations()
            );
        }
    }
    fn accuracy(&mut self, s: &Solver<T, M>, train_acc: f64, val_acc: f64) {
        if s.config.verbose {
            println!(
                "(Epoch {} / {}) train acc: {train_acc:.6}; val_acc: {val_acc:.6}",
                s.epoch, s.config.num_epochs
            );
        }
    }
}

/// Trains a model on a dataset.
pub struct Solver<T, M> {
    /// The model; after [`Solver::train`] it holds the best validation parameters.
    pub model: M,
    /// The options.
    pub config: SolverConfig,
    /// The current learning rate (decayed every epoch).
    pub learning_rate: f64,
    /// Each parameter's optimiser state.
    pub optim_state: BTreeMap<String, OptimState<T>>,
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
    pub iteration: usize,
    /// Every iteration's loss.
    pub loss_history: Vec<f64>,
    /// Training accuracy at every check.
    pub train_acc_history: Vec<f64>,
    /// Validation accuracy at every check.
    pub val_acc_history: Vec<f64>,
    /// The best validation accuracy so far.
    pub best_val_acc: f64,
    /// The parameters (and model state) that reached it.
    pub best_params: Params<T>,
    /// The model state (running statistics) that went with them.
    pub best_state: Params<T>,
    iterations_per_epoch: usize,
    batch_x: Vec<T>,
    batch_y: Vec<usize>,
}

/// A 64-bit seed for stream `what` of iteration `t`.
fn stream(seed: u64, t: u64, what: u64) -> Rng {
    let mut r = Rng::new(seed ^ what.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let s = r.next_u64() ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Rng::new(s)
}

impl<T: Float, M: Model<T>> Solver<T, M> {
    /// A solver for `model` on a training set of `num_train` samples.
    pub fn new(model: M, config: SolverConfig, num_train: usize) -> Result<Self> {
        config.optim_config.validate(config.update_rule)?;
        if config.batch_size == 0 {
            return Err(Error::config("batch_size", "at least 1", 0));
        }
        if !(config.lr_decay.is_finite() && config.lr_decay > 0.0) {
            return Err(Error::config(
                "lr_decay",
                "a finite value > 0",
                config.lr_decay,
            ));
        }
        if num_train == 0 {
            return Err(Error::config("X_train", "at least one sample", 0));
        }
        let optim_state = model
            .params()
            .iter()
            .map(|(k, v)| (k.clone(), OptimState::new(config.update_rule, v.len())))
            .collect();
        let best_params = model.params().clone();
        let best_state = model.state();
        Ok(Solver {
            learning_rate: config.optim_config.learning_rate,
            iterations_per_epoch: (num_train / config.batch_size).max(1),
            model,
            config,
            optim_state,
            epoch: 0,
            iteration: 0,
            loss_history: Vec::new(),
            train_acc_history: Vec::new(),
            val_acc_history: Vec::new(),
            best_val_acc: 0.0,
            best_params,
            best_state,
            batch_x: Vec::new(),
            batch_y: Vec::new(),
        })
    }

    /// Iterations in one epoch: max(num_train / batch_size, 1).
    pub fn iterations_per_epoch(&self) -> usize {
        self.iterations_per_epoch
    }

    /// Iterations in the whole run.
    pub fn num_iterations(&self) -> usize {
        self.config.num_epochs * self.iterations_per_epoch
    }

    /// One iteration (`_step`): a minibatch drawn with replacement, the loss and gradients,
    /// and every parameter's update. A non-finite loss is an error and changes nothing.
    pub fn step(&mut self, data: &Dataset<T>) -> Result<f64> {
        let t = self.iteration;
        let (x, y) = (data.x_train.view(), &data.y_train);
        let n = y.len();
        let sample = x.len() / n.max(1);
        let bs = self.config.batch_size;
        let mut rng = stream(self.config.seed, t as u64, 1);
        self.batch_x.resize(bs * sample, T::zero());
        self.batch_y.resize(bs, 0);
        for i in 0..bs {
            let j = rng.below(n);
            self.batch_x[i * sample..(i + 1) * sample]
                .copy_from_slice(&x.data()[j * sample..(j + 1) * sample]);
            self.batch_y[i] = y[j];
        }
        let mut shape = x.shape().to_vec();
        shape[0] = bs;
        self.model
            .set_dropout_seed(stream(self.config.seed, t as u64, 2).next_u64());
        let xb = TensorView::new(&self.batch_x, &shape)?;
        let loss = self.model.loss(xb, &self.batch_y)?;
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                iteration: t + 1,
                epoch: self.epoch,
                loss,
            });
        }
        let config = OptimConfig {
            learning_rate: self.learning_rate,
            ..self.config.optim_config
        };
        let rule = self.config.update_rule;
        let (params, grads) = self.model.params_and_grads();
        for (name, w) in params.iter_mut() {
            let dw = grads
                .get(name)
                .ok_or_else(|| Error::config("grads", format!("a gradient for {name}"), "none"))?;
            let st = self
                .optim_state
                .get_mut(name)
                .ok_or_else(|| Error::config("optim_state", format!("state for {name}"), "none"))?;
            st.step(rule, &config, w.data_mut(), dw.data())?;
        }
        self.loss_history.push(loss);
        self.iteration += 1;
        Ok(loss)
    }

    /// The fraction of `num_samples` samples (all when None; drawn with `draw` seeding the
    /// choice) that the model classifies right, in test mode, `batch_size` at a time.
    pub fn check_accuracy(
        &mut self,
        x: TensorView<'_, T>,
        y: &[usize],
        num_samples: Option<usize>,
        batch_size: usize,
        draw: u64,
    ) -> Result<f64> {
        let n = y.len();
        if n == 0 {
            return Ok(0.0);
        }
        let sample = x.len() / n;
        let idx: Vec<usize> = match num_samples {
            Some(m) if n > m => {
                let mut rng = stream(self.config.seed, draw, 3);
                (0..m).map(|_| rng.below(n)).collect()
            }
            _ => (0..n).collect(),
        };
        let mut right = 0usize;
        let mut buf = Vec::new();
        for chunk in idx.chunks(batch_size.max(1)) {
            buf.clear();
            for &j in chunk {
                buf.extend_from_slice(&x.data()[j * sample..(j + 1) * sample]);
            }
            let mut shape = x.shape().to_vec();
            shape[0] = chunk.len();
            let scores = self.model.scores(TensorView::new(&buf, &shape)?)?;
            let c = scores.shape()[1];
            for (row, &j) in scores.data().chunks_exact(c).zip(chunk) {
                // The first maximum, as np.argmax.
                let pred = (0..c).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                right += usize::from(pred == y[j]);
            }
        }
        Ok(right as f64 / idx.len() as f64)
    }

    /// The notebook's `train()`, printing as it does when verbose.
    pub fn train(&mut self, data: &Dataset<T>) -> Result<()> {
        self.train_with(data, &mut NotebookLog)
    }

    /// `train()` from the current iteration (0, or where a checkpoint left off), reporting to
    /// `obs`. At the end the model holds the best validation parameters.
    pub fn train_with(&mut self, data: &Dataset<T>, obs: &mut dyn Observer<T, M>) -> Result<()> {
        let total = self.num_iterations();
        let ipe = self.iterations_per_epoch;
        while self.iteration < total {
            let t = self.iteration;
            let loss = self.step(data)?;
            obs.iteration(self, t, loss);
            let epoch_end = (t + 1).is_multiple_of(ipe);
            if epoch_end {
                self.epoch += 1;
                self.learning_rate *= self.config.lr_decay;
            }
            if t == 0 || t + 1 == total || epoch_end {
                let train_acc = self.check_accuracy(
                    data.x_train.view(),
                    &data.y_train,
                    self.config.num_train_samples,
                    100,
                    t as u64,
                )?;
                let val_acc = self.check_accuracy(
                    data.x_val.view(),
                    &data.y_val,
                    self.config.num_val_samples,
                    100,
                    t as u64 ^ (1 << 63),
                )?;
                self.train_acc_history.push(train_acc);
                self.val_acc_history.push(val_acc);
                obs.accuracy(self, train_acc, val_acc);
                if val_acc > self.best_val_acc {
                    self.best_val_acc = val_acc;
                    self.best_params = self.model.params().clone();
                    self.best_state = self.model.state();
                }
            }
            if epoch_end {
                obs.epoch_end(self)?;
            }
        }
        let (params, _) = self.model.params_and_grads();
        *params = self.best_params.clone();
        self.model.load_state(&self.best_state.clone())?;
        Ok(())
    }
}
