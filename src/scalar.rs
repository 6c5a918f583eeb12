//! The element types the kernels run on: f32 and f64.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point element type of the crate (implemented for `f32` and `f64` only).
///
/// `to_f()`/`from_f()` widen to and narrow from f64: references and statistics accumulate in f64
/// whatever the storage type, so f32 results lose nothing to accumulation order.
pub trait Float:
    num_traits::Float
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + 'static
    + private::Sealed
{
    /// "f32" or "f64", as the benchmarks and messages print it.
    const NAME: &'static str;
    /// Unit roundoff of the type (2^-24 for f32, 2^-53 for f64).
    const UNIT_ROUNDOFF: f64;
    /// The nearest value of the type (f64 -> f32 rounds to nearest).
    fn from_f(v: f64) -> Self;
    /// The value as f64 (exact).
    fn to_f(self) -> f64;
    /// `if c { a } else { b }` as a bit-mask blend: no branch, so the compiler cannot turn a
    /// data-dependent choice into a mispredicted jump.
    fn select(c: bool, a: Self, b: Self) -> Self;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    const UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8;
    #[inline(always)]
    fn from_f(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn to_f(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn select(c: bool, a: Self, b: Self) -> Self {
        let m = (c as u32).wrapping_neg();
        f32::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    const UNIT_ROUNDOFF: f64 = 1.110_223_024_625_156_5e-16;
    #[inline(always)]
    fn from_f(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn to_f(self) -> f64 {
        self
    }
    #[inline(always)]
    fn select(c: bool, a: Self, b: Self) -> Self {
        let m = (c as u64).wrapping_neg();
        f64::from_bits((a.to_bits() & m) | (b.to_bits() & !m))
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}
