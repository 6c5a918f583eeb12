//! The `fastlayers` command's library: the benchmark (`bench`) and the notebooks' check cells
//! (`check`), kept apart from the kernels crate so that a framework linking the kernels gets no
//! command-line, timing or report code in its dependency tree.

pub mod bench;
pub mod check;
pub mod compare;
pub mod train;
