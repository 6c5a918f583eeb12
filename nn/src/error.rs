//! The training stack's error: a kernel's error, or a file, a dataset, a checkpoint or a
//! configuration value that is not what it should be. Every variant names what is at fault.

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A kernel refused its arguments (shapes, parameters, labels).
    #[error(transparent)]
    Kernel(#[from] fastlayers::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A dataset file is not what its format says (size, label byte).
    #[error("{path}: {what}")]
    Data {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// A checkpoint cannot be read back into this model and solver.
    #[error("checkpoint {path}: {what}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What does not match.
        what: String,
    },
    /// A configuration value is out of its domain.
    #[error("{arg}: expected {expected}, found {found}")]
    Config {
        /// The option or argument at fault.
        arg: &'static str,
        /// What is accepted.
        expected: String,
        /// What was given.
        found: String,
    },
    /// The loss became NaN or infinite: training stops and the last checkpoint is kept.
    #[error(
        "loss is {loss} at iteration {iteration} (epoch {epoch}): training stopped; the last checkpoint written (if any) is untouched. Lower the learning rate or the weight scale"
    )]
    NonFinite {
        /// The 1-based iteration whose loss was not finite.
        iteration: usize,
        /// The epoch it belongs to (0-based).
        epoch: usize,
        /// The loss.
        loss: f64,
    },
    /// A plot could not be drawn.
    #[error("plot {path}: {what}")]
    Plot {
        /// The image file.
        path: PathBuf,
        /// The drawing backend's message.
        what: String,
    },
}

impl Error {
    pub(crate) fn config(
        arg: &'static str,
        expected: impl Into<String>,
        found: impl std::fmt::Display,
    ) -> Self {
        Error::Config {
            arg,
            expected: expected.into(),
            found: found.to_string(),
        }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with the training stack's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
