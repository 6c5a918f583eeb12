//! `fastlayers train`: the notebooks' training cells as a command. Picks a model and data,
//! trains with the Solver (a progress bar on a terminal, the notebook's log lines otherwise),
//! writes a checkpoint every epoch (atomically; `--resume` continues from one bit for bit),
//! and at the end the best parameters, the loss/accuracy curves and the first-layer filters.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use fastlayers::{Float, Tensor};
use fastlayers_nn::data::{self, Dataset, Split};
use fastlayers_nn::solver::Observer;
use fastlayers_nn::{
    CnnConfig, Error, FcNetConfig, FullyConnectedNet, Kernels, Model, Normalization, OptimConfig,
    Result, Solver, SolverConfig, ThreeLayerConvNet, TwoLayerNet, UpdateRule, checkpoint, plot,
};
use indicatif::{ProgressBar, ProgressStyle};

/// What to train, on what, how.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// "tlcn", "fc" or "two-layer".
    pub model: String,
    /// CIFAR-10's binary directory; None: the embedded Fashion-MNIST slice.
    pub cifar10: Option<PathBuf>,
    /// The CIFAR-10 split (49000 / 1000 / 1000).
    pub split: Split,
    /// Use only the first this many training samples (the notebook's small_data).
    pub num_train: Option<usize>,
    /// "f32" or "f64".
    pub dtype: String,
    /// sgd, sgd_momentum, rmsprop, adam.
    pub update_rule: UpdateRule,
    /// None: the rule's default.
    pub learning_rate: Option<f64>,
    /// Per-epoch learning-rate factor.
    pub lr_decay: f64,
    /// Epochs.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// None: the model's default (tlcn 1e-3, fc 1e-2, two-layer 1e-3).
    pub weight_scale: Option<f64>,
    /// L2 strength.
    pub reg: f64,
    /// tlcn / two-layer hidden size.
    pub hidden_dim: usize,
    /// fc hidden sizes.
    pub hidden_dims: Vec<usize>,
    /// tlcn filters.
    pub num_filters: usize,
    /// tlcn filter size.
    pub filter_size: usize,
    /// fc norm.
    pub normalization: Option<Normalization>,
    /// fc dropout keep probability.
    pub dropout: f64,
    /// Seed of the weights and of every random choice of the Solver.
    pub seed: u64,
    /// Print the loss every this many iterations (log lines).
    pub print_every: usize,
    /// Fast or reference kernels.
    pub kernels: Kernels,
    /// Output directory.
    pub out: PathBuf,
    /// Continue from this checkpoint.
    pub resume: Option<PathBuf>,
    /// No progress bar even on a terminal.
    pub no_progress: bool,
}

impl TrainOptions {
    /// The checkpoint written every epoch.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.out.join("checkpoint.safetensors")
    }
}

/// Runs the command; returns the best validation accuracy.
pub fn run(o: &TrainOptions) -> Result<f64> {
    match o.dtype.as_str() {
        "f32" => run_typed::<f32>(o),
        "f64" => run_typed::<f64>(o),
        d => Err(Error::Config {
            arg: "dtype",
            expected: "f32 or f64".into(),
            found: d.into(),
        }),
    }
}

fn run_typed<T: Float>(o: &TrainOptions) -> Result<f64> {
    let mut d: Dataset<T> = match &o.cifar10 {
        Some(dir) => data::load_cifar10(dir, o.split)?,
        None => data::embedded(),
    };
    if let Some(n) = o.num_train {
        d = d.small(n);
    }
    let [c, h, w] = [
        d.x_train.shape()[1],
        d.x_train.shape()[2],
        d.x_train.shape()[3],
    ];
    let classes = d.classes.len();
    match o.model.as_str() {
        "tlcn" => {
            let mut m = ThreeLayerConvNet::<T>::new(CnnConfig {
                input_dim: [c, h, w],
                num_filters: o.num_filters,
                filter_size: o.filter_size,
                hidden_dim: o.hidden_dim,
                num_classes: classes,
                weight_scale: o.weight_scale.unwrap_or(1e-3),
                reg: o.reg,
                seed: o.seed,
            })?;
            m.kernels = o.kernels;
            train_model(o, m, &d)
        }
        "fc" => {
            let mut m = FullyConnectedNet::<T>::new(FcNetConfig {
                hidden_dims: o.hidden_dims.clone(),
                input_dim: c * h * w,
                num_classes: classes,
                dropout: o.dropout,
                normalization: o.normalization,
                reg: o.reg,
                weight_scale: o.weight_scale.unwrap_or(1e-2),
                seed: o.seed,
                dropout_seed: None,
            })?;
            m.kernels = o.kernels;
            train_model(o, m, &d)
        }
        "two-layer" => {
            let mut m = TwoLayerNet::<T>::new(
                c * h * w,
                o.hidden_dim,
                classes,
                o.weight_scale.unwrap_or(1e-3),
                o.reg,
                o.seed,
            );
            m.kernels = o.kernels;
            train_model(o, m, &d)
        }
        other => Err(Error::Config {
            arg: "model",
            expected: "tlcn, fc or two-layer".into(),
            found: other.into(),
        }),
    }
}

/// Reports progress and writes the checkpoint at every epoch's end.
struct Report {
    bar: Option<ProgressBar>,
    print_every: usize,
    checkpoint: PathBuf,
    batch: usize,
    start: Instant,
    first: usize,
}

impl<T: Float, M: Model<T>> Observer<T, M> for Report {
    fn iteration(&mut self, s: &Solver<T, M>, t: usize, loss: f64) {
        let done = (t + 1 - self.first) as f64;
        let rate = done * self.batch as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(b) => {
                b.set_position(t as u64 + 1);
                b.set_message(format!(
                    "epoch {}/{} loss {loss:.4} {rate:.0} img/s",
                    s.epoch + 1,
                    s.config.num_epochs
                ));
            }
            None => {
                if t.is_multiple_of(self.print_every.max(1)) {
                    println!(
                        "(Iteration {} / {}) loss: {loss:.6} ({rate:.0} img/s)",
                        t + 1,
                        s.num_iterations()
                    );
                }
            }
        }
    }
    fn accuracy(&mut self, s: &Solver<T, M>, train_acc: f64, val_acc: f64) {
        let line = format!(
            "(Epoch {} / {}) train acc: {train_acc:.6}; val_acc: {val_acc:.6}",
            s.epoch, s.config.num_epochs
        );
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }
    fn epoch_end(&mut self, s: &Solver<T, M>) -> Result<()> {
        checkpoint::save(s, &self.checkpoint)
    }
}

fn train_model<T: Float, M: Model<T>>(o: &TrainOptions, model: M, d: &Dataset<T>) -> Result<f64> {
    let lr = o
        .learning_rate
        .unwrap_or(OptimConfig::defaults(o.update_rule).learning_rate);
    let cfg = SolverConfig {
        update_rule: o.update_rule,
        optim_config: OptimConfig {
            learning_rate: lr,
            ..OptimConfig::defaults(o.update_rule)
        },
        lr_decay: o.lr_decay,
        batch_size: o.batch_size,
        num_epochs: o.epochs,
        print_every: o.print_every,
        verbose: true,
        seed: o.seed,
        ..SolverConfig::default()
    };
    std::fs::create_dir_all(&o.out).map_err(|e| Error::Io {
        path: o.out.clone(),
        source: e,
    })?;
    let mut s = Solver::new(model, cfg, d.y_train.len())?;
    if let Some(r) = &o.resume {
        checkpoint::load(&mut s, r)?;
        println!(
            "resumed from {} at epoch {}, iteration {}",
            r.display(),
            s.epoch,
            s.iteration
        );
    }
    println!(
        "{} on {}: {} train / {} val images, {} {}, {} iterations of batch {}",
        o.model,
        d.name,
        d.y_train.len(),
        d.y_val.len(),
        T::NAME,
        o.update_rule.name(),
        s.num_iterations(),
        o.batch_size
    );
    let bar = (std::io::stderr().is_terminal() && !o.no_progress).then(|| {
        let b = ProgressBar::new(s.num_iterations() as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
            )
            .expect("a valid template"),
        );
        b.set_position(s.iteration as u64);
        b
    });
    let mut rep = Report {
        bar,
        print_every: o.print_every,
        checkpoint: o.checkpoint_path(),
        batch: o.batch_size,
        start: Instant::now(),
        first: s.iteration,
    };
    let t0 = Instant::now();
    let res = s.train_with(d, &mut rep);
    if let Some(b) = &rep.bar {
        b.finish_and_clear();
    }
    res?;
    let secs = t0.elapsed().as_secs_f64();
    let test_acc = s.check_accuracy(d.x_test.view(), &d.y_test, None, 100, u64::MAX)?;
    println!(
        "best val acc {:.4}, test acc {test_acc:.4} ({} test images), {secs:.1} s",
        s.best_val_acc,
        d.y_test.len()
    );
    let mut meta = HashMap::new();
    meta.insert("model".into(), o.model.clone());
    meta.insert("data".into(), d.name.clone());
    meta.insert("best_val_acc".into(), format!("{:?}", s.best_val_acc));
    meta.insert("test_acc".into(), format!("{test_acc:?}"));
    let params_path = o.out.join("params.safetensors");
    let mut all = s.model.params().clone();
    all.extend(s.model.state());
    checkpoint::save_params(&all, meta, &params_path)?;
    let curves = o.out.join("curves.png");
    plot::training_curves(
        &curves,
        &format!("{} on {}", o.model, d.name),
        &s.loss_history,
        &s.train_acc_history,
        &s.val_acc_history,
    )?;
    let filters = o.out.join("filters.png");
    let w1 = first_layer_images(&s.model.params()["W1"], &d.x_train.shape()[1..]);
    plot::filter_grid(&filters, &w1, if o.model == "tlcn" { 8 } else { 2 })?;
    println!(
        "wrote {}, {}, {}, {}",
        params_path.display(),
        o.checkpoint_path().display(),
        curves.display(),
        filters.display()
    );
    Ok(s.best_val_acc)
}

/// W1 as (F, C, k, k) images: a conv net's filters as they are, an affine layer's (D, H)
/// columns reshaped to the input's (C, H, W) (the notebook's show_net_weights).
fn first_layer_images<T: Float>(w1: &Tensor<T>, sample: &[usize]) -> Tensor<T> {
    if w1.shape().len() == 4 {
        return w1.clone();
    }
    let (d, h) = (w1.shape()[0], w1.shape()[1]);
    let mut s = vec![h];
    s.extend(sample);
    Tensor::from_fn(&s, |i| {
        let (j, k) = (i / d, i % d);
        w1.data()[k * h + j]
    })
    .expect("the first layer's size")
}

/// Parses "100,100" into hidden sizes.
pub fn parse_dims(s: &str) -> std::result::Result<Vec<usize>, String> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.trim().parse::<usize>().map_err(|e| format!("{t:?}: {e}")))
        .collect()
}

/// Parses a normalization name.
pub fn parse_norm(s: &str) -> std::result::Result<Option<Normalization>, String> {
    match s {
        "none" => Ok(None),
        "batchnorm" => Ok(Some(Normalization::BatchNorm)),
        "layernorm" => Ok(Some(Normalization::LayerNorm)),
        _ => Err(format!("{s:?}: expected none, batchnorm or layernorm")),
    }
}
