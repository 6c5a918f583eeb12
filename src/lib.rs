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

// Kernels index several arrays with one loop counter; iterator chains would hide the index
// contracts the comments state.
#![allow(clippy::needless_range_loop)]

pub mod affine;
pub mod bench;
pub mod check;
pub mod conv;
pub mod dropout;
pub mod error;
pub mod gemm;
pub mod gradcheck;
pub mod loss;
pub mod norm;
pub mod packed_gemm;
pub mod parallel;
pub mod params;
pub mod peak;
pub mod pool;
pub mod rng;
pub mod scalar;
pub mod simd;
pub mod tensor;

pub use affine::{
    AffineCache, ReluCache, affine_backward, affine_backward_naive, affine_forward,
    affine_forward_naive, relu_backward, relu_forward,
};
pub use conv::{
    ConvCache, conv_backward_fast, conv_backward_into, conv_backward_naive,
    conv_backward_workspace_len, conv_forward_fast, conv_forward_into, conv_forward_naive,
    conv_forward_workspace_len, conv_workspace_len,
};
pub use dropout::{DropoutCache, DropoutParam, dropout_backward, dropout_forward};
pub use error::{Error, Result};
pub use gradcheck::{eval_numerical_gradient, eval_numerical_gradient_array, rel_error};
pub use loss::{softmax_loss, svm_loss};
pub use norm::{
    BnParam, Convention, Mode, NormCache, NormLayout, NormParam, NormStats, batchnorm_backward,
    batchnorm_backward_alt, batchnorm_backward_alt_naive, batchnorm_backward_naive,
    batchnorm_forward, batchnorm_forward_into, batchnorm_forward_naive, layernorm_backward,
    layernorm_backward_naive, layernorm_forward, layernorm_forward_into, layernorm_forward_naive,
    norm_backward_into, spatial_batchnorm_backward, spatial_batchnorm_backward_naive,
    spatial_batchnorm_forward, spatial_batchnorm_forward_naive, spatial_groupnorm_backward,
    spatial_groupnorm_backward_naive, spatial_groupnorm_forward, spatial_groupnorm_forward_into,
    spatial_groupnorm_forward_naive,
};
pub use parallel::Parallelism;
pub use params::{ConvGeom, ConvParam, PoolGeom, PoolParam};
pub use pool::{
    PoolCache, max_pool_backward_fast, max_pool_backward_into, max_pool_backward_naive,
    max_pool_forward_fast, max_pool_forward_into, max_pool_forward_naive,
};
pub use rng::Rng;
pub use scalar::Float;
pub use tensor::{Tensor, TensorView, TensorViewMut};
