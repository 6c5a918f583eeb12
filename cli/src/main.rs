//! The `fastlayers` command: `bench` (the default) times naive against fast kernels and the
//! named shapes shared with the PyTorch anchors; `check` runs the notebooks' check cells;
//! `train` runs the notebooks' training cells.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "fastlayers",
    version,
    about = "CPU kernels for CNN layers: checks and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every check cell of the notebooks and print it as the notebook does; exits non-zero
    /// if any check misses its tolerance.
    Check {
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 231)]
        seed: u64,
    },
    /// Time the notebook's timing cells (naive vs fast) and the named shapes: median ms,
    /// GFLOP/s and % of the measured peak.
    Bench(BenchArgs),
    /// Train a model with the Solver (embedded Fashion-MNIST slice by default, or CIFAR-10):
    /// progress, a checkpoint every epoch, then params.safetensors, curves.png, filters.png.
    Train(Box<TrainArgs>),
}

#[derive(clap::Args)]
struct TrainArgs {
    /// tlcn (ThreeLayerConvNet), fc (FullyConnectedNet) or two-layer (TwoLayerNet).
    #[arg(long, default_value = "tlcn", value_parser = ["tlcn", "fc", "two-layer"])]
    model: String,
    /// Directory of CIFAR-10's binary files (data_batch_1.bin .. 5, test_batch.bin); split
    /// 49000 / 1000 / 1000 as get_CIFAR10_data. Default: the embedded Fashion-MNIST slice.
    #[arg(long, value_name = "DIR")]
    cifar10: Option<std::path::PathBuf>,
    /// With --cifar10: training, validation and test images, comma-separated.
    #[arg(
        long,
        default_value = "49000,1000,1000",
        value_name = "NTRAIN,NVAL,NTEST"
    )]
    cifar10_split: String,
    /// Train on the first N training images only (the notebook's small data).
    #[arg(long, value_name = "N")]
    num_train: Option<usize>,
    /// sgd, sgd_momentum, rmsprop or adam.
    #[arg(long, default_value = "adam")]
    update_rule: String,
    /// Learning rate (default: the rule's, 1e-3 for adam, 1e-2 otherwise).
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate factor per epoch.
    #[arg(long, default_value_t = 1.0)]
    lr_decay: f64,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    #[arg(long, default_value = "f32", value_parser = ["f32", "f64"])]
    dtype: String,
    /// Threads (default: RAYON_NUM_THREADS or the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed of the initial weights and of every random choice; the same seed gives the same
    /// run bit for bit on any thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Standard deviation of the initial weights (default: tlcn 1e-3, fc 1e-2, two-layer 1e-3).
    #[arg(long)]
    weight_scale: Option<f64>,
    /// L2 regularisation strength.
    #[arg(long, default_value_t = 0.0)]
    reg: f64,
    /// Hidden size of tlcn and two-layer.
    #[arg(long, default_value_t = 100)]
    hidden_dim: usize,
    /// Hidden sizes of fc, comma-separated.
    #[arg(long, default_value = "100,100")]
    hidden_dims: String,
    /// tlcn's number of filters.
    #[arg(long, default_value_t = 32)]
    num_filters: usize,
    /// tlcn's filter size (odd).
    #[arg(long, default_value_t = 7)]
    filter_size: usize,
    /// fc's normalization: none, batchnorm or layernorm.
    #[arg(long, default_value = "none", value_parser = ["none", "batchnorm", "layernorm"])]
    normalization: String,
    /// fc's dropout keep probability (1: no dropout).
    #[arg(long, default_value_t = 1.0)]
    dropout: f64,
    /// Log the loss every this many iterations (when there is no progress bar).
    #[arg(long, default_value_t = 10)]
    print_every: usize,
    /// Run the reference kernels instead of the fast ones (slow; for checking).
    #[arg(long)]
    reference: bool,
    /// Output directory: checkpoint.safetensors (every epoch), params.safetensors,
    /// curves.png, filters.png.
    #[arg(long, default_value = "train-out")]
    out: std::path::PathBuf,
    /// Continue from a checkpoint (same model, data, rule, batch size and dtype).
    #[arg(long, value_name = "FILE")]
    resume: Option<std::path::PathBuf>,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

fn run_train(a: TrainArgs) -> ExitCode {
    let rule = match a.update_rule.parse() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let parsed = fastlayers_cli::train::parse_dims(&a.hidden_dims)
        .and_then(|d| fastlayers_cli::train::parse_norm(&a.normalization).map(|n| (d, n)));
    let split = match fastlayers_cli::train::parse_dims(&a.cifar10_split) {
        Ok(v) if v.len() == 3 => fastlayers_nn::data::Split {
            num_training: v[0],
            num_validation: v[1],
            num_test: v[2],
        },
        Ok(v) => {
            eprintln!("error: cifar10-split: expected NTRAIN,NVAL,NTEST, found {v:?}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("error: cifar10-split: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (hidden_dims, normalization) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let o = fastlayers_cli::train::TrainOptions {
        model: a.model,
        cifar10: a.cifar10,
        split,
        num_train: a.num_train,
        dtype: a.dtype,
        update_rule: rule,
        learning_rate: a.lr,
        lr_decay: a.lr_decay,
        epochs: a.epochs,
        batch_size: a.batch_size,
        weight_scale: a.weight_scale,
        reg: a.reg,
        hidden_dim: a.hidden_dim,
        hidden_dims,
        num_filters: a.num_filters,
        filter_size: a.filter_size,
        normalization,
        dropout: a.dropout,
        seed: a.seed,
        print_every: a.print_every,
        kernels: if a.reference {
            fastlayers_nn::Kernels::Reference
        } else {
            fastlayers_nn::Kernels::Fast
        },
        out: a.out,
        resume: a.resume,
        no_progress: a.no_progress,
    };
    let run = || fastlayers_cli::train::run(&o);
    let res = match a.threads {
        Some(n) => match rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
        {
            Ok(pool) => pool.install(run),
            Err(e) => {
                eprintln!("error: threads: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => run(),
    };
    match res {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args, Default)]
struct BenchArgs {
    /// One JSON line per measurement: {"op", "shape", "dtype", "threads", "impl", "ms"}.
    #[arg(long)]
    json: bool,
    /// Threads (default: RAYON_NUM_THREADS or the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// f32 or f64 (default: both).
    #[arg(long, value_parser = ["f32", "f64"])]
    dtype: Option<String>,
    /// Also time the reference kernels on the named shapes (one run each; slow).
    #[arg(long)]
    naive: bool,
    /// Seconds of timed calls per measurement.
    #[arg(long, default_value_t = 1.0)]
    budget: f64,
    /// Only ops or shapes whose name contains this (e.g. conv_fwd, res_conv); comma-separated
    /// terms must all match (conv_fwd,res2).
    #[arg(long)]
    filter: Option<String>,
    /// Skip the notebook timing cells.
    #[arg(long)]
    no_cells: bool,
    /// Compare with PyTorch: run the anchor script with this Python (one with torch installed)
    /// in alternating rounds with ours, and print the ratio table with the targets.
    #[arg(long, value_name = "PYTHON")]
    torch: Option<String>,
    /// The anchor script for --torch (default: ../shared/anchors/torch_layers.py).
    #[arg(long, value_name = "PATH")]
    torch_script: Option<std::path::PathBuf>,
    /// Alternating rounds per side for --torch.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn run_bench(a: BenchArgs) -> ExitCode {
    let threads = a.threads.unwrap_or_else(rayon::current_num_threads).max(1);
    let dtypes = match a.dtype {
        Some(d) => vec![d],
        None => vec!["f32".to_string(), "f64".to_string()],
    };
    let o = fastlayers_cli::bench::Options {
        threads,
        dtypes,
        json: a.json,
        naive: a.naive,
        budget: if a.budget > 0.0 { a.budget } else { 1.0 },
        filter: a.filter,
        skip_cells: a.no_cells,
    };
    if let Some(python) = a.torch {
        let script = a
            .torch_script
            .unwrap_or_else(fastlayers_cli::compare::default_script);
        return match fastlayers_cli::compare::run(&o, &python, &script, a.rounds) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match fastlayers_cli::bench::run(&o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_check(seed: u64) -> ExitCode {
    let cells = match fastlayers_cli::check::reference_checks(seed) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = 0;
    for c in &cells {
        println!("{}", c.render());
        failed += usize::from(!c.passed());
    }
    let passed = cells.len() - failed;
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `fastlayers bench | head` closes stdout early, and `println!` then panics: stop quietly
/// instead, as Unix tools do when their reader goes away. Any other panic reports as usual.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Bench(BenchArgs::default())) {
        Cmd::Check { seed } => run_check(seed),
        Cmd::Bench(a) => run_bench(a),
        Cmd::Train(a) => run_train(*a),
    }
}
