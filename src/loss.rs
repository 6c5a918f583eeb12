//! Classification losses on scores x (N, C) and labels y (N,), averaged over N, with dx.

use crate::error::{Error, Result, expect_rank, fmt_shape};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

fn check(x: &TensorView<'_, impl Float>, y: &[usize]) -> Result<(usize, usize)> {
    expect_rank("x", x.shape(), 2, "(N, C)")?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    if y.len() != n {
        return Err(Error::shape("y", fmt_shape(&[n]), fmt_shape(&[y.len()])));
    }
    if n == 0 {
        return Err(Error::shape(
            "x",
            "N >= 1 rows to average over",
            fmt_shape(x.shape()),
        ));
    }
    if let Some((index, &label)) = y.iter().enumerate().find(|&(_, &l)| l >= c) {
        return Err(Error::Label {
            arg: "y",
            index,
            label,
            classes: c,
        });
    }
    Ok((n, c))
}

/// Softmax (cross-entropy) loss: mean over rows of `-log softmax(x_i)[y_i]`;
/// dx = (softmax(x) - onehot(y)) / N. Computed in f64 with the row maximum subtracted first.
///
/// Non-finite scores follow the formula's IEEE arithmetic, as PyTorch's `cross_entropy`: a NaN
/// or a +inf in a row makes the loss and that row's dx NaN (inf - inf in the shift by the row
/// maximum); a -inf score is a probability of 0 (the loss is +inf if it is the label's score),
/// unless the whole row is -inf (NaN). Nothing is rejected: a training loop sees the NaN or inf
/// loss (the Solver stops on it).
pub fn softmax_loss<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    y: &[usize],
) -> Result<(f64, Tensor<T>)> {
    let x = x.into();
    let (n, c) = check(&x, y)?;
    let mut dx = Tensor::zeros(x.shape())?;
    let mut loss = 0.0;
    for i in 0..n {
        let row = &x.data()[i * c..(i + 1) * c];
        let mx = row
            .iter()
            .map(|v| v.to_f())
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v.to_f() - mx).exp()).sum();
        let log_z = z.ln();
        loss -= row[y[i]].to_f() - mx - log_z;
        for (j, d) in dx.data_mut()[i * c..(i + 1) * c].iter_mut().enumerate() {
            let p = (row[j].to_f() - mx - log_z).exp();
            let t = if j == y[i] { 1.0 } else { 0.0 };
            *d = T::from_f((p - t) / n as f64);
        }
    }
    Ok((loss / n as f64, dx))
}

/// Multiclass SVM (hinge) loss with margin 1: mean over rows of
/// `sum_{j != y_i} max(0, x_ij - x_iy + 1)`; `dx[i][j] = 1[margin_ij > 0] / N` for j != y_i and
/// `dx[i][y_i] = -(number of positive margins) / N`.
pub fn svm_loss<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    y: &[usize],
) -> Result<(f64, Tensor<T>)> {
    let x = x.into();
    let (n, c) = check(&x, y)?;
    let mut dx = Tensor::zeros(x.shape())?;
    let mut loss = 0.0;
    let inv_n = 1.0 / n as f64;
    for i in 0..n {
        let row = &x.data()[i * c..(i + 1) * c];
        let correct = row[y[i]].to_f();
        let mut positive = 0usize;
        for j in 0..c {
            if j == y[i] {
                continue;
            }
            let margin = row[j].to_f() - correct + 1.0;
            if margin > 0.0 {
                loss += margin;
                positive += 1;
                dx.data_mut()[i * c + j] = T::from_f(inv_n);
            }
        }
        dx.data_mut()[i * c + y[i]] = T::from_f(-(positive as f64) * inv_n);
    }
    Ok((loss * inv_n, dx))
}
