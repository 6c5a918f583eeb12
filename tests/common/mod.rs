//! Helpers shared by the integration tests.
#![allow(dead_code)]

use fastlayers::{Float, Rng, Tensor, eval_numerical_gradient_array};

/// Error relative to the reference's largest entry: `max|a - b| / max|b|`. Unlike the notebook's
/// `rel_error` (a max of per-element ratios) it does not blow up at near-zero entries, so it is
/// the right measure for checks over many random seeds.
pub fn norm_error<T: Float, U: Float>(a: &[T], b: &[U]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b
        .iter()
        .map(|v| v.to_f().abs())
        .fold(0.0, f64::max)
        .max(1e-300);
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.to_f() - y.to_f()).abs())
        .fold(0.0, f64::max);
    if a.iter().any(|v| v.to_f().is_nan()) || b.iter().any(|v| v.to_f().is_nan()) {
        return f64::NAN;
    }
    err / scale
}

#[track_caller]
pub fn assert_close<T: Float, U: Float>(what: &str, a: &Tensor<T>, b: &Tensor<U>, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let e = norm_error(a.data(), b.data());
    assert!(e <= tol, "{what}: error {e:e} > {tol:e}");
}

/// Numeric gradient with the notebook's h = 1e-5 (f64).
pub fn num_grad(
    f: impl FnMut(&Tensor<f64>) -> fastlayers::Result<Tensor<f64>>,
    x: &Tensor<f64>,
    dout: &Tensor<f64>,
) -> Tensor<f64> {
    eval_numerical_gradient_array(f, x, dout, 1e-5).unwrap()
}

pub fn randn(rng: &mut Rng, shape: &[usize]) -> Tensor<f64> {
    rng.randn(shape, 1.0, 0.0)
}

pub fn to32(t: &Tensor<f64>) -> Tensor<f32> {
    Tensor::from_f64(t)
}
