//! Normalisation layers: batch norm (N, D) and spatial (N, C, H, W), layer norm (N, D) and
//! spatial group norm (N, C, H, W), forward and backward.
//!
//! All four standardise x within a statistic group and then scale and shift per channel; a
//! layout (crate-private) names the layer and its shape, and says which group and channel each element
//! belongs to. The cache records the layout, so a backward pass handed another layer's (or
//! another shape's) cache says so instead of computing nonsense.

mod api;
mod driver;
pub(crate) mod fast;
mod layout;
mod params;
mod plan;
pub(crate) mod reference;

pub use api::*;
pub use params::{BnParam, Convention, Mode, NormParam};
pub use plan::{NormKind, NormParams, NormPlan, NormStats};

pub(crate) use driver::{BwdIn, BwdOut};
pub(crate) use layout::NormLayout;
