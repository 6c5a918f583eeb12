//! Affine (fully connected) layer and ReLU.
//!
//! affine: x (N, d1, ..., dk) is read as (N, D) with D = d1*...*dk; out = x w + b, w (D, M), b (M,).

use crate::error::{Error, Result, checked_numel, expect_shape, fmt_shape};
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView};

/// The forward's input and weights (the notebook's `(x, w, b)`; b is not needed backward).
#[derive(Clone, Debug)]
pub struct AffineCache<T> {
    pub(crate) x: Tensor<T>,
    pub(crate) w: Tensor<T>,
}

/// (N, D, M) of a validated affine call.
pub(crate) fn affine_dims(x: &[usize], w: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    if x.is_empty() {
        return Err(Error::shape("x", "rank >= 1 (N, d1, ..., dk)", "rank 0 ()"));
    }
    let n = x[0];
    let d = checked_numel("x", &x[1..])?;
    checked_numel("x", x)?;
    if w.len() != 2 || w[0] != d {
        return Err(Error::shape(
            "w",
            format!("({d}, M) for x of shape {}", fmt_shape(x)),
            fmt_shape(w),
        ));
    }
    let m = w[1];
    checked_numel("out", &[n, m])?;
    expect_shape("b", b, &[m])?;
    Ok((n, d, m))
}

/// Reference: `out[i][j] = b[j] + sum_k x[i][k] w[k][j]`, accumulated in f64.
pub mod reference {
    use crate::scalar::Float;

    pub fn forward<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        out: &mut [T],
    ) {
        for i in 0..n {
            for j in 0..m {
                let mut acc = b[j].to_f();
                for k in 0..d {
                    acc += x[i * d + k].to_f() * w[k * m + j].to_f();
                }
                out[i * m + j] = T::from_f(acc);
            }
        }
    }

    /// dx = dout w^T, dw = x^T dout, db = sum over rows of dout.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        dout: &[T],
        dx: &mut [T],
        dw: &mut [T],
        db: &mut [T],
    ) {
        for i in 0..n {
            for k in 0..d {
                let s: f64 = (0..m)
                    .map(|j| dout[i * m + j].to_f() * w[k * m + j].to_f())
                    .sum();
                dx[i * d + k] = T::from_f(s);
            }
        }
        for k in 0..d {
            for j in 0..m {
                let s: f64 = (0..n)
                    .map(|i| x[i * d + k].to_f() * dout[i * m + j].to_f())
                    .sum();
                dw[k * m + j] = T::from_f(s);
            }
        }
        for j in 0..m {
            db[j] = T::from_f((0..n).map(|i| dout[i * m + j].to_f()).sum());
        }
    }
}

/// Fast affine: GEMM (matrixmultiply) with f64-accumulated bias gradient.
pub mod fast {
    use crate::gemm::matmul::{gemm, rm, tr};
    use crate::scalar::Float;

    /// out (N x M) = x (N x D) * w (D x M) + b.
    pub fn forward<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        out: &mut [T],
    ) {
        for row in out.chunks_mut(m.max(1)).take(n) {
            row.copy_from_slice(&b[..m]);
        }
        gemm(n, d, m, T::one(), rm(x, d), rm(w, m), T::one(), out, m);
    }

    /// dx = dout w^T, dw = x^T dout, db = column sums of dout (f64).
    #[allow(clippy::too_many_arguments)]
    pub fn backward<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        dout: &[T],
        dx: &mut [T],
        dw: &mut [T],
        db: &mut [T],
    ) {
        gemm(n, m, d, T::one(), rm(dout, m), tr(w, m), T::zero(), dx, d);
        gemm(d, n, m, T::one(), tr(x, d), rm(dout, m), T::zero(), dw, m);
        let mut acc = vec![0.0f64; m];
        for row in dout.chunks(m.max(1)).take(n) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v.to_f();
            }
        }
        for (o, a) in db.iter_mut().zip(acc) {
            *o = T::from_f(a);
        }
    }
}

type Grads<T> = (Tensor<T>, Tensor<T>, Tensor<T>);

type ForwardKernel<T> = fn(usize, usize, usize, &[T], &[T], &[T], &mut [T]);
type BackwardKernel<T> = fn(usize, usize, usize, &[T], &[T], &[T], &mut [T], &mut [T], &mut [T]);

/// Validation, allocation and caching shared by both forwards; `kernel` does the arithmetic.
fn forward_with<'a, T: Float>(
    x: TensorView<'a, T>,
    w: TensorView<'a, T>,
    b: TensorView<'a, T>,
    kernel: ForwardKernel<T>,
) -> Result<(Tensor<T>, AffineCache<T>)> {
    let (n, d, m) = affine_dims(x.shape(), w.shape(), b.shape())?;
    let mut out = Tensor::zeros(&[n, m])?;
    kernel(n, d, m, x.data(), w.data(), b.data(), out.data_mut());
    Ok((
        out,
        AffineCache {
            x: x.to_owned(),
            w: w.to_owned(),
        },
    ))
}

/// Validation and allocation shared by both backwards.
fn backward_with<T: Float>(
    dout: TensorView<'_, T>,
    cache: &AffineCache<T>,
    kernel: BackwardKernel<T>,
) -> Result<Grads<T>> {
    let (n, d, m) = check_affine_backward(&dout, cache)?;
    let mut dx = Tensor::zeros(cache.x.shape())?;
    let mut dw = Tensor::zeros(&[d, m])?;
    let mut db = Tensor::zeros(&[m])?;
    kernel(
        n,
        d,
        m,
        cache.x.data(),
        cache.w.data(),
        dout.data(),
        dx.data_mut(),
        dw.data_mut(),
        db.data_mut(),
    );
    Ok((dx, dw, db))
}

pub(crate) fn check_affine_backward<T: Copy>(
    dout: &TensorView<'_, T>,
    cache: &AffineCache<T>,
) -> Result<(usize, usize, usize)> {
    let (n, d, m) = (cache.x.shape()[0], cache.w.shape()[0], cache.w.shape()[1]);
    expect_shape("dout", dout.shape(), &[n, m])?;
    Ok((n, d, m))
}

/// Reference affine forward: out (N, M) and the cache.
pub fn affine_forward_naive<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
) -> Result<(Tensor<T>, AffineCache<T>)> {
    forward_with(x.into(), w.into(), b.into(), reference::forward)
}

/// Reference affine backward: dx (shape of x), dw (D, M), db (M,).
pub fn affine_backward_naive<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &AffineCache<T>,
) -> Result<Grads<T>> {
    backward_with(dout.into(), cache, reference::backward)
}

/// Fast affine forward (GEMM): same arguments and results as [`affine_forward_naive`].
pub fn affine_forward<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
    w: impl Into<TensorView<'a, T>>,
    b: impl Into<TensorView<'a, T>>,
) -> Result<(Tensor<T>, AffineCache<T>)> {
    forward_with(x.into(), w.into(), b.into(), fast::forward)
}

/// Fast affine backward (GEMM): dx (shape of x), dw (D, M), db (M,).
pub fn affine_backward<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &AffineCache<T>,
) -> Result<Grads<T>> {
    backward_with(dout.into(), cache, fast::backward)
}

/// ReLU's cache: its input.
#[derive(Clone, Debug)]
pub struct ReluCache<T> {
    pub(crate) x: Tensor<T>,
}

/// max(x, 0) element-wise. NaN stays NaN (as `np.maximum` and `torch.relu`).
#[inline(always)]
pub fn relu<T: Float>(v: T) -> T {
    if v > T::zero() || v.is_nan() {
        v
    } else {
        T::zero()
    }
}

/// Gradient passes where x > 0 (not at 0, not at NaN).
#[inline(always)]
pub fn relu_grad<T: Float>(x: T, d: T) -> T {
    if x > T::zero() { d } else { T::zero() }
}

/// ReLU forward: out = max(x, 0) (NaN propagates), and the cache (x).
pub fn relu_forward<'a, T: Float>(
    x: impl Into<TensorView<'a, T>>,
) -> Result<(Tensor<T>, ReluCache<T>)> {
    let x = x.into();
    let out = Tensor::new(x.data().iter().map(|&v| relu(v)).collect(), x.shape())?;
    Ok((out, ReluCache { x: x.to_owned() }))
}

/// ReLU backward: dx = dout where x > 0, else 0.
pub fn relu_backward<'a, T: Float>(
    dout: impl Into<TensorView<'a, T>>,
    cache: &ReluCache<T>,
) -> Result<Tensor<T>> {
    let dout = dout.into();
    expect_shape("dout", dout.shape(), cache.x.shape())?;
    let dx = dout
        .data()
        .iter()
        .zip(cache.x.data())
        .map(|(&d, &x)| relu_grad(x, d))
        .collect();
    Tensor::new(dx, dout.shape())
}
