//! The notebooks' numerical tools: `rel_error` and central-difference numeric gradients.

use crate::error::{Result, expect_shape};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

/// Maximum over elements of `|x - y| / max(1e-8, |x| + |y|)`, the notebooks' `rel_error`.
/// A NaN in either input makes the result NaN (so a check never passes on NaN).
pub fn rel_error<'a, 'b, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    y: impl Into<TensorView<'b, T>>,
) -> Result<f64> {
    let (x, y) = (x.into(), y.into());
    expect_shape("y", y.shape(), x.shape())?;
    Ok(rel_error_slices(x.data(), y.data()))
}

/// `rel_error` on two equally long slices (the caller guarantees the lengths).
pub fn rel_error_slices<T: Float>(x: &[T], y: &[T]) -> f64 {
    debug_assert_eq!(x.len(), y.len());
    let mut worst = 0.0f64;
    for (&a, &b) in x.iter().zip(y) {
        let (a, b) = (a.to_f(), b.to_f());
        let e = (a - b).abs() / (a.abs() + b.abs()).max(1e-8);
        if e.is_nan() {
            return f64::NAN;
        }
        worst = worst.max(e);
    }
    worst
}

/// Numeric gradient of an array function: for each element `i` of `x`,
/// `sum((f(x + h e_i) - f(x - h e_i)) * df) / (2h)`, the notebook's
/// `eval_numerical_gradient_array`. `f` receives the perturbed input.
pub fn eval_numerical_gradient_array<T: Float, F>(
    mut f: F,
    x: &Tensor<T>,
    df: &Tensor<T>,
    h: f64,
) -> Result<Tensor<T>>
where
    F: FnMut(&Tensor<T>) -> Result<Tensor<T>>,
{
    let mut xp = x.clone();
    let mut grad = Tensor::zeros(x.shape())?;
    for i in 0..x.len() {
        let old = xp.data()[i];
        xp.data_mut()[i] = T::from_f(old.to_f() + h);
        let pos = f(&xp)?;
        xp.data_mut()[i] = T::from_f(old.to_f() - h);
        let neg = f(&xp)?;
        xp.data_mut()[i] = old;
        expect_shape("df", df.shape(), pos.shape())?;
        expect_shape("f(x)", neg.shape(), pos.shape())?;
        let s: f64 = pos
            .data()
            .iter()
            .zip(neg.data())
            .zip(df.data())
            .map(|((&p, &n), &d)| (p.to_f() - n.to_f()) * d.to_f())
            .sum();
        grad.data_mut()[i] = T::from_f(s / (2.0 * h));
    }
    Ok(grad)
}

/// Numeric gradient of a scalar function (`eval_numerical_gradient`): `(f(x+h) - f(x-h)) / 2h`
/// per element.
pub fn eval_numerical_gradient<T: Float, F>(mut f: F, x: &Tensor<T>, h: f64) -> Result<Tensor<T>>
where
    F: FnMut(&Tensor<T>) -> Result<f64>,
{
    let mut xp = x.clone();
    let mut grad = Tensor::zeros(x.shape())?;
    for i in 0..x.len() {
        let old = xp.data()[i];
        xp.data_mut()[i] = T::from_f(old.to_f() + h);
        let pos = f(&xp)?;
        xp.data_mut()[i] = T::from_f(old.to_f() - h);
        let neg = f(&xp)?;
        xp.data_mut()[i] = old;
        grad.data_mut()[i] = T::from_f((pos - neg) / (2.0 * h));
    }
    Ok(grad)
}
