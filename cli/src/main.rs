//! The `fastlayers` command: `bench` (the default) times naive against fast kernels and the
//! named shapes shared with the PyTorch anchors; `check` runs the notebooks' check cells.

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
    }
}
