//! The notebooks' training stack on fastlayers' kernels.
//!
//! - [`layers`]: the sandwich layers (`layer_utils.py`), fast or reference ([`Kernels`]).
//! - [`models`]: `TwoLayerNet`, `FullyConnectedNet`, `ThreeLayerConvNet` (`classifiers/`).
//! - [`optim`]: sgd, sgd_momentum, rmsprop, adam with per-parameter state (`optim.py`).
//! - [`solver`]: the `Solver` (`solver.py`), seeded so that runs repeat bit for bit.
//! - [`data`]: CIFAR-10's binary files preprocessed as `get_CIFAR10_data`, and an embedded
//!   Fashion-MNIST slice that needs no download.
//! - [`checkpoint`]: safetensors checkpoints written atomically, for `--resume`.
//! - [`plot`]: the loss/accuracy curves and the first-layer filter grid as PNG files.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod data;
mod error;
pub mod layers;
pub mod models;
pub mod optim;
pub mod plot;
pub mod solver;

pub use error::{Error, Result};
pub use layers::Kernels;
pub use models::{
    CnnConfig, FcNetConfig, FullyConnectedNet, Model, Normalization, Params, ThreeLayerConvNet,
    TwoLayerNet,
};
pub use optim::{OptimConfig, UpdateRule};
pub use solver::{Solver, SolverConfig};
