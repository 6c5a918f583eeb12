//! Affine (fully connected) layer and ReLU.
//!
//! affine: x (N, d1, ..., dk) is read as (N, D) with D = d1*...*dk; out = x w + b, w (D, M), b (M,).

use crate::error::{Error, Result, check_workspace, checked_numel, expect_shape, fmt_shape};
use crate::parallel::Parallelism;
use crate::scalar::Float;
use crate::tensor::{Tensor, TensorView, TensorViewMut};

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

/// Fast affine: GEMM (matrixmultiply, one thread per block of output rows) with f64-accumulated
/// bias gradient.
///
/// Each product is split over the current pool's threads by blocks of rows of a row-major
/// result, so the blocks are contiguous: out^T = w^T x^T and dx^T = w dout^T are computed
/// transposed and transposed back, dw = x^T dout directly. matrixmultiply sums every element
/// of C over k in the same order whatever block of rows it lies in, so the bits do not depend
/// on the thread count (tests/determinism.rs checks it); the transposed forms are used for
/// every thread count, one thread included, for the same reason.
pub mod fast {
    use crate::gemm::matmul::{Mat, gemm, rm, tr};
    use crate::parallel::Parallelism;
    use crate::scalar::Float;

    /// Rows of each thread's block of an `rows`-row product (a multiple of 8, the widest
    /// micro-kernel's rows, so that blocks do not split a tile).
    fn block_rows(rows: usize, threads: usize) -> usize {
        rows.div_ceil(threads.max(1)).next_multiple_of(8).max(8)
    }

    /// C (rows x n, row-major) = A (rows x k) B (k x n), split by blocks of C's rows; `a(r0)`
    /// is A from row r0 on.
    fn par_gemm<'a, T: Float>(
        rows: usize,
        k: usize,
        n: usize,
        a: &(dyn Fn(usize) -> Mat<'a, T> + Sync),
        b: Mat<'a, T>,
        c: &mut [T],
        par: Parallelism<'_>,
    ) {
        let par = par.for_work(rows * k * n / 64);
        let br = block_rows(rows, par.threads());
        par.for_each_chunk(&mut c[..rows * n], br * n, &|i, ci, _| {
            gemm(
                ci.len() / n.max(1),
                k,
                n,
                T::one(),
                a(i * br),
                b,
                T::zero(),
                ci,
                n,
            );
        });
    }

    /// dst (c x r) = src (r x c)^T, in 32 x 32 tiles.
    fn transpose<T: Float>(r: usize, c: usize, src: &[T], dst: &mut [T]) {
        const B: usize = 32;
        for i0 in (0..r).step_by(B) {
            for j0 in (0..c).step_by(B) {
                for i in i0..(i0 + B).min(r) {
                    for j in j0..(j0 + B).min(c) {
                        dst[j * r + i] = src[i * c + j];
                    }
                }
            }
        }
    }

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
        forward_par(n, d, m, x, w, b, out, Parallelism::Current)
    }

    /// [`forward`] on `par`'s threads.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_par<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        out: &mut [T],
        par: Parallelism<'_>,
    ) {
        let mut out_t = vec![T::zero(); m * n];
        forward_ws(n, d, m, x, w, b, out, &mut out_t, par)
    }

    /// [`forward_par`] with the caller's M x N buffer for out^T.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_ws<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        b: &[T],
        out: &mut [T],
        out_t: &mut [T],
        par: Parallelism<'_>,
    ) {
        let out_t = &mut out_t[..m * n];
        // out^T (M x N) = w^T (M x D) x^T (D x N); rows r0.. of w^T start at column r0 of w.
        par_gemm(
            m,
            d,
            n,
            &|r0| tr(&w[r0.min(w.len())..], m),
            tr(x, d),
            out_t,
            par,
        );
        transpose(m, n, out_t, out);
        for row in out.chunks_mut(m.max(1)).take(n) {
            for (o, &bj) in row.iter_mut().zip(b) {
                *o += bj;
            }
        }
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
        backward_par(n, d, m, x, w, dout, Some(dx), dw, db, Parallelism::Current)
    }

    /// [`backward`] on `par`'s threads; dx skipped when None.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_par<T: Float>(
        n: usize,
        d: usize,
        m: usize,
        x: &[T],
        w: &[T],
        dout: &[T],
        dx: Option<&mut [T]>,
        dw: &mut [T],
        db: &mut [T],
        par: Parallelism<'_>,
    ) {
        if let Some(dx) = dx {
            // dx (N x D) = dout (N x M) w^T (M x D), by blocks of dx's rows.
            par_gemm(
                n,
                m,
                d,
                &|r0| rm(&dout[(r0 * m).min(dout.len())..], m),
                tr(w, m),
                dx,
                par,
            );
        }
        // dw (D x M) = x^T (D x N) dout (N x M); rows r0.. of x^T start at column r0 of x.
        par_gemm(
            d,
            n,
            m,
            &|r0| tr(&x[r0.min(x.len())..], d),
            rm(dout, m),
            dw,
            par,
        );
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

/// An affine layer planned once for x (N, d1, ..., dk) read as (N, D) and w (D, M), b (M,):
/// the framework API, validated once, with the forward's workspace (out^T, M x N, for the
/// transposed GEMM that splits over threads by contiguous blocks) supplied by the caller, so no
/// call allocates. Same bits as [`affine_forward`] / [`affine_backward`] for any thread count.
///
/// ```
/// use fastlayers::{AffinePlan, Parallelism, Tensor};
/// let x = Tensor::<f32>::linspace(-1.0, 1.0, &[4, 2, 3])?;
/// let w = Tensor::<f32>::linspace(-0.5, 0.5, &[6, 5])?;
/// let b = Tensor::<f32>::zeros(&[5])?;
/// let plan = AffinePlan::<f32>::new(x.shape(), w.shape())?;
/// let par = Parallelism::Sequential;
/// let mut out = Tensor::zeros(&plan.out_shape())?;
/// let mut ws = vec![0.0; plan.workspace_len(par)?];
/// plan.forward_into(&x, &w, &b, &mut out, &mut ws, par)?;
/// # Ok::<(), fastlayers::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffinePlan<T> {
    x_shape: Vec<usize>,
    n: usize,
    d: usize,
    m: usize,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Float> AffinePlan<T> {
    /// Validates x (N, d1, ..., dk) against w (D, M) with D = d1 * ... * dk.
    pub fn new(x_shape: &[usize], w_shape: &[usize]) -> Result<Self> {
        let m = if w_shape.len() == 2 { w_shape[1] } else { 0 };
        let (n, d, m) = affine_dims(x_shape, w_shape, &[m])?;
        Ok(AffinePlan {
            x_shape: x_shape.to_vec(),
            n,
            d,
            m,
            _t: std::marker::PhantomData,
        })
    }
    /// x's (and dx's) shape.
    pub fn x_shape(&self) -> &[usize] {
        &self.x_shape
    }
    /// w's (and dw's) shape (D, M).
    pub fn w_shape(&self) -> [usize; 2] {
        [self.d, self.m]
    }
    /// out's (and dout's) shape (N, M).
    pub fn out_shape(&self) -> [usize; 2] {
        [self.n, self.m]
    }
    /// Workspace (elements of T) the forward needs: out^T (M x N); the backward needs none.
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        // N * M was checked not to overflow when the plan was built.
        Ok(self.n * self.m)
    }

    fn check_inputs(&self, x: &TensorView<'_, T>, w: Option<&TensorView<'_, T>>) -> Result<()> {
        expect_shape("x", x.shape(), &self.x_shape)?;
        if let Some(w) = w {
            expect_shape("w", w.shape(), &self.w_shape())?;
        }
        Ok(())
    }

    /// out (N, M) = x w + b into the caller's `out`, with the caller's workspace (at least
    /// [`AffinePlan::workspace_len`]). Everything is validated before anything is written.
    pub fn forward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        w: impl Into<TensorView<'a, T>>,
        b: impl Into<TensorView<'a, T>>,
        out: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, w, b, mut out) = (x.into(), w.into(), b.into(), out.into());
        self.check_inputs(&x, Some(&w))?;
        expect_shape("b", b.shape(), &[self.m])?;
        expect_shape("out", out.shape(), &self.out_shape())?;
        check_workspace(
            workspace,
            self.workspace_len(par)?,
            "AffinePlan::workspace_len",
        )?;
        let (n, d, m) = (self.n, self.d, self.m);
        let (x, w, b) = (x.data(), w.data(), b.data());
        fast::forward_ws(n, d, m, x, w, b, out.data_mut(), workspace, par);
        Ok(())
    }

    /// dx (x's shape), dw (D, M) and db (M,) from the forward's x and w and dout (N, M).
    /// Everything is validated before anything is written.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        w: impl Into<TensorView<'a, T>>,
        dout: impl Into<TensorView<'a, T>>,
        dx: impl Into<TensorViewMut<'o, T>>,
        dw: impl Into<TensorViewMut<'o, T>>,
        db: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        // In argument order: x, w, dout, dx (then dw, db in `backward_with`).
        let (x, w, dout, mut dx) = (x.into(), w.into(), dout.into(), dx.into());
        self.check_inputs(&x, Some(&w))?;
        expect_shape("dout", dout.shape(), &self.out_shape())?;
        expect_shape("dx", dx.shape(), &self.x_shape)?;
        self.backward_with(
            x,
            dout,
            Some((w.data(), dx.data_mut())),
            dw.into(),
            db.into(),
            workspace,
            par,
        )
    }

    /// dw (D, M) and db (M,) only, for a layer whose input needs no gradient (a network's first
    /// layer). The same dw and db bits as [`AffinePlan::backward_into`].
    pub fn backward_weights_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        dout: impl Into<TensorView<'a, T>>,
        dw: impl Into<TensorViewMut<'o, T>>,
        db: impl Into<TensorViewMut<'o, T>>,
        workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        self.backward_with(
            x.into(),
            dout.into(),
            None,
            dw.into(),
            db.into(),
            workspace,
            par,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn backward_with(
        &self,
        x: TensorView<'_, T>,
        dout: TensorView<'_, T>,
        dx: Option<(&[T], &mut [T])>,
        mut dw: TensorViewMut<'_, T>,
        mut db: TensorViewMut<'_, T>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()> {
        self.check_inputs(&x, None)?;
        expect_shape("dout", dout.shape(), &self.out_shape())?;
        expect_shape("dw", dw.shape(), &self.w_shape())?;
        expect_shape("db", db.shape(), &[self.m])?;
        let (w, dx) = match dx {
            Some((w, dx)) => (w, Some(dx)),
            // dx is skipped: w is not read.
            None => (&[][..], None),
        };
        let (n, d, m) = (self.n, self.d, self.m);
        fast::backward_par(
            n,
            d,
            m,
            x.data(),
            w,
            dout.data(),
            dx,
            dw.data_mut(),
            db.data_mut(),
            par,
        );
        Ok(())
    }
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

/// Elements per parallel job of the element-wise plans (ReLU, dropout): whole cache-sized
/// runs; any split gives the same bits.
pub(crate) const ELEMENTWISE_CHUNK: usize = 1 << 15;

/// A ReLU planned once for its shape: [`relu_forward`] / [`relu_backward`] into the caller's
/// buffers on `par`'s threads (element-wise: the same bits for any thread count).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReluPlan<T> {
    shape: Vec<usize>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Float> ReluPlan<T> {
    /// Any shape whose element count fits in memory's address range.
    pub fn new(shape: &[usize]) -> Result<Self> {
        checked_numel("x", shape)?;
        Ok(ReluPlan {
            shape: shape.to_vec(),
            _t: std::marker::PhantomData,
        })
    }
    /// x's, out's, dout's and dx's shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Workspace (elements of T): none; there so that every plan has the same call shape.
    pub fn workspace_len(&self, _par: Parallelism<'_>) -> Result<usize> {
        Ok(0)
    }

    /// out = max(x, 0) (NaN stays NaN). Validated before anything is written.
    pub fn forward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        out: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, mut out) = (x.into(), out.into());
        expect_shape("x", x.shape(), &self.shape)?;
        expect_shape("out", out.shape(), &self.shape)?;
        let x = x.data();
        let par = par.for_bytes(std::mem::size_of_val(x));
        par.for_each_chunk(out.data_mut(), ELEMENTWISE_CHUNK, &|i, o, _| {
            let xs = &x[i * ELEMENTWISE_CHUNK..];
            for (o, &v) in o.iter_mut().zip(xs) {
                *o = relu(v);
            }
        });
        Ok(())
    }

    /// dx = dout where the forward's x > 0, else 0. Validated before anything is written.
    pub fn backward_into<'a, 'o>(
        &self,
        x: impl Into<TensorView<'a, T>>,
        dout: impl Into<TensorView<'a, T>>,
        dx: impl Into<TensorViewMut<'o, T>>,
        _workspace: &mut [T],
        par: Parallelism<'_>,
    ) -> Result<()>
    where
        T: 'a + 'o,
    {
        let (x, dout, mut dx) = (x.into(), dout.into(), dx.into());
        expect_shape("x", x.shape(), &self.shape)?;
        expect_shape("dout", dout.shape(), &self.shape)?;
        expect_shape("dx", dx.shape(), &self.shape)?;
        let (x, dout) = (x.data(), dout.data());
        let par = par.for_bytes(std::mem::size_of_val(x));
        par.for_each_chunk(dx.data_mut(), ELEMENTWISE_CHUNK, &|i, o, _| {
            let r = i * ELEMENTWISE_CHUNK..;
            for ((o, &v), &d) in o.iter_mut().zip(&x[r.clone()]).zip(&dout[r]) {
                *o = relu_grad(v, d);
            }
        });
        Ok(())
    }
}
