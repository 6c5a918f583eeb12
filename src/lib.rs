//! # fastlayers
//!
//! CPU kernels for the layers of convolutional networks, forward and backward, on flat
//! contiguous NCHW buffers of f32 or f64: convolution, max pooling, batch/layer/group norm,
//! affine, ReLU, dropout, softmax and SVM losses.
//!
//! Every layer has a plain reference kernel (the `*_naive` functions: obvious loops accumulated
//! in f64, the ground truth) and, where it matters, a fast kernel of the same signature. The
//! user-facing names are the cs231n notebooks' (`conv_forward_naive`, `batchnorm_backward_alt`,
//! ...): a forward returns `(out, cache)`, a backward takes `(dout, &cache)`.
//!
//! ```
//! use fastlayers::{ConvParam, Tensor, conv_forward_naive, conv_backward_naive};
//! let x = Tensor::<f64>::linspace(-0.1, 0.5, &[2, 3, 4, 4])?;
//! let w = Tensor::<f64>::linspace(-0.2, 0.3, &[3, 3, 4, 4])?;
//! let b = Tensor::<f64>::linspace(-0.1, 0.2, &[3])?;
//! let (out, cache) = conv_forward_naive(&x, &w, &b, &ConvParam::new(2, 1))?;
//! assert_eq!(out.shape(), &[2, 3, 2, 2]);
//! let (dx, dw, db) = conv_backward_naive(&out, &cache)?;
//! assert_eq!((dx.shape(), dw.shape(), db.shape()), (x.shape(), w.shape(), b.shape()));
//! # Ok::<(), fastlayers::Error>(())
//! ```
//!
//! Bad input never panics: every entry point returns an [`Error`] naming the argument, what was
//! expected and what was found.
//!
//! ## Naming
//!
//! - `*_naive`: the reference kernel (obvious loops, accumulated in f64).
//! - The notebook's bare name (`conv_forward_fast`, `batchnorm_forward`, `affine_forward`, ...):
//!   the fast kernel, allocating its outputs and returning `(out, cache)` / the gradients. Where
//!   the notebook itself has no `_fast` twin (batch norm, affine, ...) the bare name is the fast
//!   kernel and `*_naive` the reference.
//! - Plans ([`ConvPlan`], [`PoolPlan`], [`NormPlan`]): the framework API. Built once from shapes
//!   and parameters, they validate once, choose the algorithm once (ask them which and why with
//!   `{:?}`), and run `forward_into` / `backward_into` with one argument order everywhere:
//!   inputs, parameters, outputs (typed views), workspace, [`Parallelism`]. Nothing is written
//!   into an output when a call returns `Err`.
//!
//! ## Invariants no caller can break
//!
//! Every value a kernel trusts is built by validation, never by hand. These do not compile:
//!
//! ```compile_fail,E0451
//! // A geometry the validation never saw (its fields are private; ConvGeom::new validates).
//! let g = fastlayers::ConvGeom { n: 1, c: 0, h: 1, w: 1, f: 1, kh: 1, kw: 1, ho: 1, wo: 1,
//!     p: fastlayers::ConvParam::new(1, 0) };
//! ```
//!
//! ```compile_fail,E0451
//! // Statistics for a backward: only a forward builds them (a group count of 0 once reached
//! // a division here).
//! let s = fastlayers::NormStats { batch_stats: true, mean: vec![], inv_std: vec![] };
//! ```
//!
//! ```compile_fail,E0603
//! // The GEMM's block shape, which names the SIMD level its kernels run, is crate-private: a
//! // hand-built one once ran AVX-512 instructions on a CPU without them.
//! use fastlayers::gemm::Shape;
//! ```
//!
//! ```compile_fail,E0603
//! // The proof that the CPU has a level's features: only detection builds one.
//! use fastlayers::cpu::Isa;
//! ```

// Kernels index several arrays with one loop counter; iterator chains would hide the index
// contracts the comments state.
#![allow(clippy::needless_range_loop)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

// The public surface is what `pub use` below names, plus `cpu`; every module is private.
mod affine;
mod conv;
pub mod cpu;
mod dropout;
mod error;
mod gemm;
mod gradcheck;
mod loss;
mod norm;
mod parallel;
mod params;
mod peak;
mod pool;
mod rng;
mod scalar;
mod tensor;
mod tuning;

pub use affine::{
    AffineCache, AffinePlan, ReluCache, ReluPlan, affine_backward, affine_backward_naive,
    affine_forward, affine_forward_naive, relu, relu_backward, relu_forward, relu_grad,
};
pub use conv::{
    ConvAlgorithm, ConvCache, ConvDirection, ConvPlan, ConvWeights, conv_backward_fast,
    conv_backward_naive, conv_forward_fast, conv_forward_naive,
};
pub use dropout::{
    DropoutCache, DropoutMask, DropoutParam, DropoutPlan, dropout_backward, dropout_forward,
};
pub use error::{Error, Result};
pub use gradcheck::{eval_numerical_gradient, eval_numerical_gradient_array, rel_error};
pub use loss::{LossKind, LossPlan, softmax_loss, svm_loss};
pub use norm::{
    BnParam, Convention, Mode, NormCache, NormKind, NormParam, NormParams, NormPlan, NormStats,
    batchnorm_backward, batchnorm_backward_alt, batchnorm_backward_alt_naive,
    batchnorm_backward_naive, batchnorm_forward, batchnorm_forward_naive, layernorm_backward,
    layernorm_backward_naive, layernorm_forward, layernorm_forward_naive,
    spatial_batchnorm_backward, spatial_batchnorm_backward_naive, spatial_batchnorm_forward,
    spatial_batchnorm_forward_naive, spatial_groupnorm_backward, spatial_groupnorm_backward_naive,
    spatial_groupnorm_forward, spatial_groupnorm_forward_naive,
};
pub use parallel::{MAX_THREADS, Parallelism};
pub use params::{ConvGeom, ConvParam, PoolGeom, PoolParam};
pub use pool::{
    PoolCache, PoolPath, PoolPlan, max_pool_backward_fast, max_pool_backward_naive,
    max_pool_forward_fast, max_pool_forward_naive,
};
pub use rng::Rng;
pub use scalar::Float;
pub use tensor::{Tensor, TensorView, TensorViewMut};

/// Hooks for the benchmark and the crate's own tests: not part of the API, no stability promise.
#[doc(hidden)]
pub mod hooks {
    pub use crate::peak::measure_gflops;
    pub use crate::tuning::{set_streaming_threshold, streaming_threshold};
}
