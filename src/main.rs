//! The `fastlayers` command: `check` runs the notebooks' check cells.

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
}

fn run_check(seed: u64) -> ExitCode {
    let cells = match fastlayers::check::reference_checks(seed) {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Check { seed: 231 }) {
        Cmd::Check { seed } => run_check(seed),
    }
}
