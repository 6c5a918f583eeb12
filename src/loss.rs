//! Classification losses on scores x (N, C) and labels y (N,), averaged over N, with dx.

use std::marker::PhantomData;

use crate::error::{Error, Result, expect_rank, expect_shape, fmt_shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView, TensorViewMut};

/// (N, C) of scores with at least one row to average over.
fn check_x(shape: &[usize]) -> Result<(usize, usize)> {
    expect_rank("x", shape, 2, "(N, C)")?;
    let (n, c) = (shape[0], shape[1]);
    if n == 0 {
        return Err(Error::shape(
            "x",
            "N >= 1 rows to average over",
            fmt_shape(shape),
        ));
    }
    Ok((n, c))
}

/// N labels, each a class index below C.
fn check_y(y: &[usize], n: usize, c: usize) -> Result<()> {
    if y.len() != n {
        return Err(Error::shape("y", fmt_shape(&[n]), fmt_shape(&[y.len()])));
    }
    if let Some((index, &label)) = y.iter().enumerate().find(|&(_, &l)| l >= c) {
        return Err(Error::Label {
            arg: "y",
            index,
            label,
            classes: c,
        });
    }
    Ok(())
}

/// The notebook functions' checks, in their order: x's rank, y's length, N >= 1, the labels.
fn check(x: &TensorView<'_, impl Float>, y: &[usize]) -> Result<(usize, usize)> {
    expect_rank("x", x.shape(), 2, "(N, C)")?;
    let (n, c) = (x.shape()[0], x.shape()[1]);
    if y.len() != n {
        return Err(Error::shape("y", fmt_shape(&[n]), fmt_shape(&[y.len()])));
    }
    check_x(x.shape())?;
    check_y(y, n, c)?;
    Ok((n, c))
}

/// The softmax loss of validated rows, dx into `dx` (N * C).
fn softmax_rows<T: Float>(x: &[T], y: &[usize], c: usize, dx: &mut [T]) -> f64 {
    let n = y.len();
    let mut loss = 0.0;
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let mx = row
            .iter()
            .map(|v| v.to_f())
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v.to_f() - mx).exp()).sum();
        let log_z = z.ln();
        loss -= row[y[i]].to_f() - mx - log_z;
        for (j, d) in dx[i * c..(i + 1) * c].iter_mut().enumerate() {
            let p = (row[j].to_f() - mx - log_z).exp();
            let t = if j == y[i] { 1.0 } else { 0.0 };
            *d = T::from_f((p - t) / n as f64);
        }
    }
    loss / n as f64
}

/// The SVM loss of validated rows, dx into `dx` (N * C).
fn svm_rows<T: Float>(x: &[T], y: &[usize], c: usize, dx: &mut [T]) -> f64 {
    let n = y.len();
    let mut loss = 0.0;
    let inv_n = 1.0 / n as f64;
    for i in 0..n {
        let row = &x[i * c..(i + 1) * c];
        let drow = &mut dx[i * c..(i + 1) * c];
        let correct = row[y[i]].to_f();
        let mut positive = 0usize;
        for j in 0..c {
            drow[j] = T::zero();
            if j == y[i] {
                continue;
            }
            let margin = row[j].to_f() - correct + 1.0;
            if margin > 0.0 {
                loss += margin;
                positive += 1;
                drow[j] = T::from_f(inv_n);
            }
        }
        drow[y[i]] = T::from_f(-(positive as f64) * inv_n);
    }
    loss * inv_n
}

/// The notebook functions' shared part: checks, dx allocated, the loss's rows.
fn with_rows<T: Float>(
    x: TensorView<'_, T>,
    y: &[usize],
    rows: fn(&[T], &[usize], usize, &mut [T]) -> f64,
) -> Result<(f64, Tensor<T>)> {
    let (_, c) = check(&x, y)?;
    let mut dx = Tensor::zeros(x.shape())?;
    let loss = rows(x.data(), y, c, dx.data_mut());
    Ok((loss, dx))
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
    with_rows(x.into(), y, softmax_rows)
}

/// Multiclass SVM (hinge) loss with margin 1: mean over rows of
/// `sum_{j != y_i} max(0, x_ij - x_iy + 1)`; `dx[i][j] = 1[margin_ij > 0] / N` for j != y_i and
/// `dx[i][y_i] = -(number of positive margins) / N`.
pub fn svm_loss<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    y: &[usize],
) -> Result<(f64, Tensor<T>)> {
    with_rows(x.into(), y, svm_rows)
}

/// Which classification loss a [`LossPlan`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LossKind {
    /// [`softmax_loss`].
    Softmax,
    /// [`svm_loss`].
    Svm,
}

/// A classification loss planned once for scores x (N, C): the loss and dx into the caller's
/// buffer, the same values as [`softmax_loss`] / [`svm_loss`]. Rows are summed in order on
/// the calling thread (N * C is a batch's scores: far below what a thread team pays for).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LossPlan<T> {
    kind: LossKind,
    n: usize,
    c: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: Float> LossPlan<T> {
    /// Validates x's shape: (N, C) with N >= 1.
    pub fn new(kind: LossKind, x_shape: &[usize]) -> Result<Self> {
        let (n, c) = check_x(x_shape)?;
        Ok(LossPlan {
            kind,
            n,
            c,
            _t: PhantomData,
        })
    }
    /// The loss.
    pub fn kind(&self) -> LossKind {
        self.kind
    }
    /// x's and dx's shape (N, C).
    pub fn x_shape(&self) -> [usize; 2] {
        [self.n, self.c]
    }
    /// Workspace (elements of T): none; there so that every plan has the same call shape.
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        Ok(0)
    }
    /// The mean loss over the N rows, and dx (N, C) into the caller's buffer. Labels are
    /// checked (N of them, each below C) before anything is written.
    pub fn loss_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        y: &[usize],
        dx: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        _par: Parallelism<'_>,
    ) -> Result<f64>
    where
        T: 'a + 'o,
    {
        let (x, mut dx) = (x.into(), dx.into());
        expect_shape("x", x.shape(), &self.x_shape())?;
        check_y(y, self.n, self.c)?;
        expect_shape("dx", dx.shape(), &self.x_shape())?;
        Ok(match self.kind {
            LossKind::Softmax => softmax_rows(x.data(), y, self.c, dx.data_mut()),
            LossKind::Svm => svm_rows(x.data(), y, self.c, dx.data_mut()),
        })
    }
}
