//! `fastlayers._fastlayers`: the notebook API of cs231n's layers.py / fast_layers.py on the Rust
//! kernels. float32 and float64 arrays keep their dtype; non-contiguous arrays are copied; other
//! dtypes, bad shapes and bad parameters raise ValueError with the library's message. The GIL is
//! released while a kernel runs.

use fastlayers as fl;
use fastlayers::{Float, Tensor, TensorView};
use numpy::{
    Element, IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyTuple};

fn err(e: fl::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dt {
    F32,
    F64,
}

/// The dtype of `obj`, which must be a float32 or float64 numpy array.
fn dtype_of(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Dt> {
    if obj.cast::<PyArrayDyn<f64>>().is_ok() {
        Ok(Dt::F64)
    } else if obj.cast::<PyArrayDyn<f32>>().is_ok() {
        Ok(Dt::F32)
    } else {
        let found = obj
            .getattr("dtype")
            .map(|d| d.to_string())
            .unwrap_or_else(|_| obj.get_type().to_string());
        Err(PyValueError::new_err(format!(
            "{name}: expected a numpy array of dtype float32 or float64, found {found}"
        )))
    }
}

/// `obj` must be a float array of dtype `want` (the dtype of the call's first input).
fn check_dtype(obj: &Bound<'_, PyAny>, name: &str, want: Dt) -> PyResult<()> {
    let dt = dtype_of(obj, name)?;
    if dt != want {
        let s = |d: Dt| if d == Dt::F32 { "float32" } else { "float64" };
        return Err(PyValueError::new_err(format!(
            "{name}: expected dtype {} like the other inputs, found {}",
            s(want),
            s(dt)
        )));
    }
    Ok(())
}

/// A C-contiguous array (from `c_array`) borrowed as a tensor view. An error, not a panic, if
/// a cached array's layout was changed in place (`a.strides = ...`) since the forward.
fn view<'a, T: Element + Float>(
    ro: &'a PyReadonlyArrayDyn<'_, T>,
    name: &str,
) -> PyResult<TensorView<'a, T>> {
    let data = match ro.as_slice() {
        Ok(d) if ro.is_c_contiguous() => d,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name}: expected a C-contiguous array, found strides {:?}",
                ro.strides()
            )));
        }
    };
    TensorView::new(data, ro.shape()).map_err(err)
}

/// A numpy input borrowed without copying when C-contiguous, copied (by `c_array`) otherwise.
struct In<'py, T: Element> {
    ro: PyReadonlyArrayDyn<'py, T>,
}

impl<'py, T: Element + Float> In<'py, T> {
    fn new(obj: &Bound<'py, PyAny>, name: &str, want: Dt) -> PyResult<Self> {
        Ok(In {
            ro: c_array::<T>(obj, name, want)?.readonly(),
        })
    }
    fn view(&self) -> TensorView<'_, T> {
        view(&self.ro, "input").expect("c_array returns a C-contiguous array")
    }
}

fn out<'py, T: Element + Float>(py: Python<'py>, t: Tensor<T>) -> Bound<'py, PyAny> {
    t.into_ndarray().into_pyarray(py).into_any()
}

/// Runs the body with `T` bound to the element type of `$x`.
macro_rules! by_dtype {
    ($x:expr, $name:literal, |$dt:ident, $T:ident| $body:block) => {
        match dtype_of($x, $name)? {
            Dt::F32 => {
                type $T = f32;
                let $dt = Dt::F32;
                $body
            }
            Dt::F64 => {
                type $T = f64;
                let $dt = Dt::F64;
                $body
            }
        }
    };
}

/// A cache object: the Rust cache of one layer in one dtype, opaque to Python.
macro_rules! cache_class {
    ($name:ident, $pyname:literal, $inner:ident) => {
        #[pyclass(name = $pyname, module = "fastlayers", frozen)]
        struct $name {
            f32: Option<fl::$inner<f32>>,
            f64: Option<fl::$inner<f64>>,
        }
        impl $name {
            /// Wraps the cache of whichever dtype T is (f32 or f64).
            fn wrap<T: 'static>(c: fl::$inner<T>) -> Self {
                let b: Box<dyn std::any::Any> = Box::new(c);
                match b.downcast::<fl::$inner<f32>>() {
                    Ok(c) => $name {
                        f32: Some(*c),
                        f64: None,
                    },
                    Err(b) => $name {
                        f32: None,
                        f64: b.downcast::<fl::$inner<f64>>().ok().map(|c| *c),
                    },
                }
            }
            fn dt(&self) -> Dt {
                if self.f32.is_some() { Dt::F32 } else { Dt::F64 }
            }
            /// The cache as `fl::X<T>`; errors if it holds the other dtype.
            fn get<T: 'static>(&self) -> PyResult<&fl::$inner<T>> {
                use std::any::Any;
                let a = self
                    .f32
                    .as_ref()
                    .and_then(|c| (c as &dyn Any).downcast_ref());
                let b = self
                    .f64
                    .as_ref()
                    .and_then(|c| (c as &dyn Any).downcast_ref());
                a.or(b)
                    .ok_or_else(|| PyValueError::new_err("cache: holds another dtype than dout"))
            }
        }
    };
}

cache_class!(PoolCache, "PoolCache", PoolCache);
cache_class!(AffineCache, "AffineCache", AffineCache);
cache_class!(ReluCache, "ReluCache", ReluCache);
cache_class!(DropoutCache, "DropoutCache", DropoutCache);
cache_class!(NormCache, "NormCache", NormCache);

/// The body of every backward binding: dout must have the forward's dtype; it is borrowed, the
/// typed Rust cache taken out, `$call` run with the GIL released, and its result converted by
/// `$conv`.
macro_rules! backward_body {
    ($py:expr, $dout:expr, $cache:expr, $Cache:ident, |$dv:ident, $c:ident| $call:expr, |$r:ident| $conv:expr) => {{
        let dt = check_cache_dtype($dout, $cache.dt())?;
        by_dtype!($dout, "dout", |_dt, T| {
            let d = In::<T>::new($dout, "dout", dt)?;
            let $c: &fl::$Cache<T> = $cache.get::<T>()?;
            let $dv = d.view();
            let $r = $py.detach(|| $call).map_err(err)?;
            $conv
        })
    }};
}

/// The body of a forward binding: every input must have x's dtype and is borrowed (copied if not
/// C-contiguous) as `$v`; `$call` runs with the GIL released and its (out, cache) is converted.
macro_rules! forward_body {
    ($py:expr, $Cache:ident, |$($arg:ident => $v:ident),+| $call:expr) => {{
        let first = forward_body!(@first $($arg),+);
        by_dtype!(first, "x", |dt, T| {
            $( let $arg = In::<T>::new($arg, stringify!($arg), dt)?; )+
            $( let $v = $arg.view(); )+
            let (o, c) = $py.detach(|| $call).map_err(err)?;
            Ok((out($py, o), $Cache::wrap(c)))
        })
    }};
    (@first $a:ident $(, $rest:ident)*) => { $a };
}

fn check_cache_dtype(dout: &Bound<'_, PyAny>, cache_dt: Dt) -> PyResult<Dt> {
    let dt = dtype_of(dout, "dout")?;
    if dt != cache_dt {
        return Err(PyValueError::new_err(format!(
            "dout: expected the dtype of the forward pass ({:?}), found {:?}",
            cache_dt, dt
        )));
    }
    Ok(dt)
}

/// A non-negative Python integer (or numpy integer) below 2^64 as u64: ValueError, naming the
/// argument, for anything else, including a bool (`stride=True` is not 1) and an integer past
/// the range (which PyO3 would report as OverflowError).
fn uint_value(v: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    let is_int = !v.is_instance_of::<PyBool>()
        && v.py()
            .import("numpy")?
            .getattr("bool_")
            .and_then(|b| v.is_instance(&b))
            .map(|is_bool| !is_bool)
            .unwrap_or(true)
        && v.call_method0("__index__").is_ok();
    if !is_int {
        return Err(PyValueError::new_err(format!(
            "{name}: expected an integer, found {} {v}",
            v.get_type()
        )));
    }
    v.extract::<u64>().map_err(|_| {
        PyValueError::new_err(format!(
            "{name}: expected an integer in 0..2**64, found {v}"
        ))
    })
}

/// As `uint_value`, within usize.
fn usize_value(v: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    usize::try_from(uint_value(v, name)?).map_err(|_| {
        PyValueError::new_err(format!(
            "{name}: expected an integer below 2**{}, found {v}",
            usize::BITS
        ))
    })
}

fn get_usize(d: &Bound<'_, PyDict>, key: &str, default: Option<usize>) -> PyResult<usize> {
    match d.get_item(key)? {
        Some(v) => usize_value(&v, key),
        None => {
            default.ok_or_else(|| PyValueError::new_err(format!("{key}: required key missing")))
        }
    }
}

/// A str value: ValueError naming the key otherwise.
fn str_value(v: &Bound<'_, PyAny>, key: &str) -> PyResult<String> {
    v.extract()
        .map_err(|_| PyValueError::new_err(format!("{key}: expected a str, found {v}")))
}

fn conv_param(d: &Bound<'_, PyDict>) -> PyResult<fl::ConvParam> {
    Ok(
        fl::ConvParam::new(get_usize(d, "stride", None)?, get_usize(d, "pad", None)?)
            .with_dilation(
                get_usize(d, "dilation", Some(1))?,
                get_usize(d, "dilation", Some(1))?,
            )
            .with_groups(get_usize(d, "groups", Some(1))?),
    )
}

fn pool_param(d: &Bound<'_, PyDict>) -> PyResult<fl::PoolParam> {
    let pad = get_usize(d, "pad", Some(0))?;
    let ceil = match d.get_item("ceil_mode")? {
        // A bool (Python's or numpy's), not any truthy value.
        Some(v) => v
            .extract::<bool>()
            .map_err(|_| PyValueError::new_err(format!("ceil_mode: expected a bool, found {v}")))?,
        None => false,
    };
    Ok(fl::PoolParam::new(
        get_usize(d, "pool_height", None)?,
        get_usize(d, "pool_width", None)?,
        get_usize(d, "stride", None)?,
    )
    .with_pad(pad, pad)
    .with_ceil_mode(ceil))
}

// ---------------------------------------------------------------- convolution

/// The convolution cache: the forward's x and w themselves, as the notebook's cache holds them
/// (C-contiguous arrays of one dtype; a C-ordered copy only when the caller's array was not).
/// No copy of the data is made, so changing x or w in place between forward and backward
/// changes the backward, as it does in the notebook.
#[pyclass(name = "ConvCache", module = "fastlayers", frozen)]
struct ConvCache {
    x: Py<PyAny>,
    w: Py<PyAny>,
    p: fl::ConvParam,
    dt: Dt,
}

/// `obj` as a C-contiguous array of T (dtype checked like every input): the array itself, or
/// a C-ordered copy.
fn c_array<'py, T: Element + Float>(
    obj: &Bound<'py, PyAny>,
    name: &str,
    want: Dt,
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    check_dtype(obj, name, want)?;
    let arr = obj.cast::<PyArrayDyn<T>>()?.clone();
    if arr.is_c_contiguous() {
        return Ok(arr);
    }
    let copy = arr.readonly().as_array().as_standard_layout().into_owned();
    Ok(copy.into_pyarray(obj.py()))
}

/// A fresh zeroed array of this shape (the kernels write every element; zeroed because safe
/// code cannot hand out uninitialised memory).
fn new_array<'py, T: Element + Float>(
    py: Python<'py>,
    shape: &[usize],
) -> Bound<'py, PyArrayDyn<T>> {
    PyArrayDyn::<T>::zeros(py, shape, false)
}

fn conv_fwd<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    p: &Bound<'py, PyDict>,
    fast: bool,
) -> PyResult<(Bound<'py, PyAny>, ConvCache)> {
    let p = conv_param(p)?;
    by_dtype!(x, "x", |dt, T| {
        let (xa, wa) = (c_array::<T>(x, "x", dt)?, c_array::<T>(w, "w", dt)?);
        let bi = In::<T>::new(b, "b", dt)?;
        let out = {
            let (xr, wr) = (xa.readonly(), wa.readonly());
            let (xv, wv, bv) = (view(&xr, "x")?, view(&wr, "w")?, bi.view());
            if fast {
                // Into a fresh numpy array through the framework entry point: the cache keeps
                // references, so nothing is copied.
                let plan = fl::ConvPlan::<T>::new(xv.shape(), wv.shape(), &p).map_err(err)?;
                let oshape = plan.geom().out_shape();
                let o = new_array::<T>(py, &oshape);
                let mut ow = o.readwrite();
                let os = ow.as_slice_mut()?;
                let par = fl::Parallelism::Current;
                let need = plan.forward_workspace_len(par).map_err(err)?;
                py.detach(|| {
                    let mut ws = vec![T::default(); need];
                    let ov = fl::TensorViewMut::new(os, &oshape)?;
                    plan.forward_into(xv, wv, bv, ov, &mut ws, par)
                })
                .map_err(err)?;
                drop(ow);
                o.into_any()
            } else {
                let (o, _) = py
                    .detach(|| fl::conv_forward_naive(xv, wv, bv, &p))
                    .map_err(err)?;
                out(py, o)
            }
        };
        let cache = ConvCache {
            x: xa.into_any().unbind(),
            w: wa.into_any().unbind(),
            p,
            dt,
        };
        Ok((out, cache))
    })
}

fn conv_bwd<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &ConvCache,
    fast: bool,
) -> PyResult<Bound<'py, PyTuple>> {
    let dt = check_cache_dtype(dout, cache.dt)?;
    by_dtype!(dout, "dout", |_dt, T| {
        let d = In::<T>::new(dout, "dout", dt)?;
        let (xa, wa) = (
            cache.x.bind(py).cast::<PyArrayDyn<T>>()?,
            cache.w.bind(py).cast::<PyArrayDyn<T>>()?,
        );
        let (xr, wr) = (xa.readonly(), wa.readonly());
        let (xv, wv, dv) = (view(&xr, "cache.x")?, view(&wr, "cache.w")?, d.view());
        let p = cache.p;
        if fast {
            let f = wv.shape()[0];
            let (dx, dw, db) = (
                new_array::<T>(py, xv.shape()),
                new_array::<T>(py, wv.shape()),
                new_array::<T>(py, &[f]),
            );
            {
                let (mut a, mut b, mut c) = (dx.readwrite(), dw.readwrite(), db.readwrite());
                let (a, b, c) = (a.as_slice_mut()?, b.as_slice_mut()?, c.as_slice_mut()?);
                let par = fl::Parallelism::Current;
                let plan = fl::ConvPlan::<T>::new(xv.shape(), wv.shape(), &p).map_err(err)?;
                let need = plan.backward_workspace_len(par).map_err(err)?;
                let fs = [f];
                py.detach(|| {
                    let mut ws = vec![T::default(); need];
                    let a = fl::TensorViewMut::new(a, xv.shape())?;
                    let b = fl::TensorViewMut::new(b, wv.shape())?;
                    let c = fl::TensorViewMut::new(c, &fs)?;
                    plan.backward_into(xv, wv, dv, a, b, c, &mut ws, par)
                })
                .map_err(err)?;
            }
            PyTuple::new(py, [dx.into_any(), dw.into_any(), db.into_any()])
        } else {
            let c = fl::ConvCache::new(xv, wv, &p).map_err(err)?;
            let (dx, dw, db) = py.detach(|| fl::conv_backward_naive(dv, &c)).map_err(err)?;
            PyTuple::new(py, [out(py, dx), out(py, dw), out(py, db)])
        }
    })
}

#[pyfunction]
fn conv_forward_naive<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    conv_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, ConvCache)> {
    conv_fwd(py, x, w, b, conv_param, false)
}
#[pyfunction]
fn conv_forward_fast<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
    conv_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, ConvCache)> {
    conv_fwd(py, x, w, b, conv_param, true)
}
#[pyfunction]
fn conv_backward_naive<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &ConvCache,
) -> PyResult<Bound<'py, PyTuple>> {
    conv_bwd(py, dout, cache, false)
}
#[pyfunction]
fn conv_backward_fast<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &ConvCache,
) -> PyResult<Bound<'py, PyTuple>> {
    conv_bwd(py, dout, cache, true)
}

// ---------------------------------------------------------------- pooling

fn pool_fwd<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    p: &Bound<'py, PyDict>,
    fast: bool,
) -> PyResult<(Bound<'py, PyAny>, PoolCache)> {
    let p = pool_param(p)?;
    forward_body!(py, PoolCache, |x => xv| if fast {
        fl::max_pool_forward_fast(xv, &p)
    } else {
        fl::max_pool_forward_naive(xv, &p)
    })
}

fn pool_bwd<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &PoolCache,
    fast: bool,
) -> PyResult<Bound<'py, PyAny>> {
    backward_body!(
        py,
        dout,
        cache,
        PoolCache,
        |dv, c| if fast {
            fl::max_pool_backward_fast(dv, c)
        } else {
            fl::max_pool_backward_naive(dv, c)
        },
        |dx| Ok(out(py, dx))
    )
}

#[pyfunction]
fn max_pool_forward_naive<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    pool_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, PoolCache)> {
    pool_fwd(py, x, pool_param, false)
}
#[pyfunction]
fn max_pool_forward_fast<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    pool_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, PoolCache)> {
    pool_fwd(py, x, pool_param, true)
}
#[pyfunction]
fn max_pool_backward_naive<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &PoolCache,
) -> PyResult<Bound<'py, PyAny>> {
    pool_bwd(py, dout, cache, false)
}
#[pyfunction]
fn max_pool_backward_fast<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &PoolCache,
) -> PyResult<Bound<'py, PyAny>> {
    pool_bwd(py, dout, cache, true)
}

// ---------------------------------------------------------------- affine, relu, dropout

#[pyfunction]
fn affine_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, AffineCache)> {
    forward_body!(py, AffineCache, |x => xv, w => wv, b => bv| fl::affine_forward(xv, wv, bv))
}

#[pyfunction]
fn affine_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &AffineCache,
) -> PyResult<Bound<'py, PyTuple>> {
    backward_body!(
        py,
        dout,
        cache,
        AffineCache,
        |dv, c| fl::affine_backward(dv, c),
        |r| {
            let (dx, dw, db) = r;
            PyTuple::new(py, [out(py, dx), out(py, dw), out(py, db)])
        }
    )
}

#[pyfunction]
fn relu_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, ReluCache)> {
    forward_body!(py, ReluCache, |x => xv| fl::relu_forward(xv))
}

#[pyfunction]
fn relu_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &ReluCache,
) -> PyResult<Bound<'py, PyAny>> {
    backward_body!(
        py,
        dout,
        cache,
        ReluCache,
        |dv, c| fl::relu_backward(dv, c),
        |dx| Ok(out(py, dx))
    )
}

fn mode_of(d: &Bound<'_, PyDict>, key: &str) -> PyResult<fl::Mode> {
    let m = str_value(
        &d.get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("{key}: required key missing")))?,
        key,
    )?;
    match m.as_str() {
        "train" => Ok(fl::Mode::Train),
        "test" => Ok(fl::Mode::Test),
        other => Err(PyValueError::new_err(format!(
            "{key}: expected 'train' or 'test', found '{other}'"
        ))),
    }
}

#[pyfunction]
fn dropout_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    dropout_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, DropoutCache)> {
    if dropout_param.get_item("p")?.is_none() {
        return Err(PyValueError::new_err("p: required key missing"));
    }
    let p = f64_key(dropout_param, "p", 0.0)?;
    let seed = match dropout_param.get_item("seed")? {
        Some(s) if !s.is_none() => Some(uint_value(&s, "seed")?),
        _ => None,
    };
    let prm = fl::DropoutParam {
        p,
        mode: mode_of(dropout_param, "mode")?,
        seed,
    };
    forward_body!(py, DropoutCache, |x => xv| fl::dropout_forward(xv, &prm))
}

#[pyfunction]
fn dropout_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &DropoutCache,
) -> PyResult<Bound<'py, PyAny>> {
    backward_body!(
        py,
        dout,
        cache,
        DropoutCache,
        |dv, c| fl::dropout_backward(dv, c),
        |dx| Ok(out(py, dx))
    )
}

// ---------------------------------------------------------------- normalisation

fn f64_key(d: &Bound<'_, PyDict>, key: &str, default: f64) -> PyResult<f64> {
    match d.get_item(key)? {
        // A bool is not a number here (`p=True` is not 1.0).
        Some(v) if v.is_instance_of::<PyBool>() => Err(PyValueError::new_err(format!(
            "{key}: expected a number, found {v}"
        ))),
        Some(v) => v
            .extract()
            .map_err(|_| PyValueError::new_err(format!("{key}: expected a number, found {v}"))),
        None => Ok(default),
    }
}

fn vec_key<T: Element + Float>(
    d: &Bound<'_, PyDict>,
    key: &str,
    dt: Dt,
) -> PyResult<Option<Vec<T>>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => {
            let name = if key == "running_mean" {
                "running_mean"
            } else {
                "running_var"
            };
            let a = In::<T>::new(&v, name, dt)?;
            // (C,) exactly, as gamma: a (C, 1) array is not flattened.
            if a.view().shape().len() != 1 {
                return Err(PyValueError::new_err(format!(
                    "{name}: expected a 1-D array of shape (C,), found shape {:?}",
                    a.view().shape()
                )));
            }
            Ok(Some(a.view().data().to_vec()))
        }
        _ => Ok(None),
    }
}

fn bn_fwd<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    bn_param: &Bound<'py, PyDict>,
    spatial: bool,
) -> PyResult<(Bound<'py, PyAny>, NormCache)> {
    let mode = mode_of(bn_param, "mode")?;
    let pytorch = match bn_param.get_item("convention")? {
        Some(v) => {
            let s = str_value(&v, "convention")?;
            match s.as_str() {
                "notebook" => false,
                "pytorch" => true,
                o => {
                    return Err(PyValueError::new_err(format!(
                        "convention: expected 'notebook' or 'pytorch', found '{o}'"
                    )));
                }
            }
        }
        None => false,
    };
    by_dtype!(x, "x", |dt, T| {
        let mut p: fl::BnParam<T> = if pytorch {
            fl::BnParam::pytorch(mode)
        } else {
            fl::BnParam::train()
        };
        p.mode = mode;
        p.eps = f64_key(bn_param, "eps", p.eps)?;
        p.momentum = f64_key(bn_param, "momentum", p.momentum)?;
        p.running_mean = vec_key::<T>(bn_param, "running_mean", dt)?;
        p.running_var = vec_key::<T>(bn_param, "running_var", dt)?;
        let (x, g, b) = (
            In::<T>::new(x, "x", dt)?,
            In::<T>::new(gamma, "gamma", dt)?,
            In::<T>::new(beta, "beta", dt)?,
        );
        let (xv, gv, bv) = (x.view(), g.view(), b.view());
        let (o, c) = py
            .detach(|| {
                if spatial {
                    fl::spatial_batchnorm_forward(xv, gv, bv, &mut p)
                } else {
                    fl::batchnorm_forward(xv, gv, bv, &mut p)
                }
            })
            .map_err(err)?;
        // Like the notebook: the updated running statistics go back into the caller's dict.
        if let (Some(rm), Some(rv)) = (p.running_mean.take(), p.running_var.take()) {
            bn_param.set_item("running_mean", rm.into_pyarray(py))?;
            bn_param.set_item("running_var", rv.into_pyarray(py))?;
        }
        let cache = NormCache::wrap(c);
        Ok((out(py, o), cache))
    })
}

fn norm_bwd<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
    which: u8,
) -> PyResult<Bound<'py, PyTuple>> {
    backward_body!(
        py,
        dout,
        cache,
        NormCache,
        |dv, c| match which {
            0 => fl::batchnorm_backward(dv, c),
            1 => fl::batchnorm_backward_naive(dv, c),
            2 => fl::spatial_batchnorm_backward(dv, c),
            3 => fl::layernorm_backward(dv, c),
            _ => fl::spatial_groupnorm_backward(dv, c),
        },
        |r| {
            let (dx, dg, db) = r;
            PyTuple::new(py, [out(py, dx), out(py, dg), out(py, db)])
        }
    )
}

#[pyfunction]
fn batchnorm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    bn_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, NormCache)> {
    bn_fwd(py, x, gamma, beta, bn_param, false)
}
/// Backward through the computation graph (the reference), as the notebook's batchnorm_backward.
#[pyfunction]
fn batchnorm_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
) -> PyResult<Bound<'py, PyTuple>> {
    norm_bwd(py, dout, cache, 1)
}
/// The simplified closed form (the fast kernel).
#[pyfunction]
fn batchnorm_backward_alt<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
) -> PyResult<Bound<'py, PyTuple>> {
    norm_bwd(py, dout, cache, 0)
}
#[pyfunction]
fn spatial_batchnorm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    bn_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, NormCache)> {
    bn_fwd(py, x, gamma, beta, bn_param, true)
}
#[pyfunction]
fn spatial_batchnorm_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
) -> PyResult<Bound<'py, PyTuple>> {
    norm_bwd(py, dout, cache, 2)
}

#[pyfunction]
fn layernorm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    ln_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, NormCache)> {
    let p = fl::NormParam {
        eps: f64_key(ln_param, "eps", 1e-5)?,
    };
    forward_body!(py, NormCache, |x => xv, gamma => gv, beta => bv| fl::layernorm_forward(xv, gv, bv, &p))
}
#[pyfunction]
fn layernorm_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
) -> PyResult<Bound<'py, PyTuple>> {
    norm_bwd(py, dout, cache, 3)
}

#[pyfunction]
#[allow(non_snake_case)]
fn spatial_groupnorm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    G: &Bound<'py, PyAny>,
    gn_param: &Bound<'py, PyDict>,
) -> PyResult<(Bound<'py, PyAny>, NormCache)> {
    let G = usize_value(G, "G")?;
    let p = fl::NormParam {
        eps: f64_key(gn_param, "eps", 1e-5)?,
    };
    forward_body!(py, NormCache, |x => xv, gamma => gv, beta => bv| fl::spatial_groupnorm_forward(xv, gv, bv, G, &p))
}
#[pyfunction]
fn spatial_groupnorm_backward<'py>(
    py: Python<'py>,
    dout: &Bound<'py, PyAny>,
    cache: &NormCache,
) -> PyResult<Bound<'py, PyTuple>> {
    norm_bwd(py, dout, cache, 4)
}

// ---------------------------------------------------------------- losses

/// The labels: a 1-D array (or sequence) of integers >= 0. Floats are refused, not truncated;
/// a 2-D array is refused, not flattened; unsigned 64-bit labels are read as such.
fn labels(y: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let np = y.py().import("numpy")?;
    let arr = np.call_method1("asarray", (y,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if !(kind == "i" || kind == "u") {
        return Err(PyValueError::new_err(format!(
            "y: expected integer labels, found dtype {}",
            arr.getattr("dtype")?
        )));
    }
    if ndim != 1 {
        return Err(PyValueError::new_err(format!(
            "y: expected a 1-D array of labels, found shape {}",
            arr.getattr("shape")?
        )));
    }
    let bad = |i: usize, v: &dyn std::fmt::Display| {
        PyValueError::new_err(format!(
            "y: expected labels in 0..2**{}, found {v} at index {i}",
            usize::BITS
        ))
    };
    if kind == "u" {
        let a = np.call_method1("asarray", (arr, "uint64"))?;
        let a = a.cast::<PyArrayDyn<u64>>()?.readonly();
        return a
            .as_array()
            .iter()
            .enumerate()
            .map(|(i, &v)| usize::try_from(v).map_err(|_| bad(i, &v)))
            .collect();
    }
    let a = np.call_method1("asarray", (arr, "int64"))?;
    let a = a.cast::<PyArrayDyn<i64>>()?.readonly();
    a.as_array()
        .iter()
        .enumerate()
        .map(|(i, &v)| usize::try_from(v).map_err(|_| bad(i, &v)))
        .collect()
}

fn loss<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
    svm: bool,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    let y = labels(y)?;
    by_dtype!(x, "x", |dt, T| {
        let x = In::<T>::new(x, "x", dt)?;
        let xv = x.view();
        let (l, dx) = py
            .detach(|| {
                if svm {
                    fl::svm_loss(xv, &y)
                } else {
                    fl::softmax_loss(xv, &y)
                }
            })
            .map_err(err)?;
        Ok((l, out(py, dx)))
    })
}

#[pyfunction]
fn softmax_loss<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    loss(py, x, y, false)
}
#[pyfunction]
fn svm_loss<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    y: &Bound<'py, PyAny>,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    loss(py, x, y, true)
}

#[pymodule]
fn _fastlayers(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(conv_forward_naive, m)?)?;
    m.add_function(wrap_pyfunction!(conv_backward_naive, m)?)?;
    m.add_function(wrap_pyfunction!(conv_forward_fast, m)?)?;
    m.add_function(wrap_pyfunction!(conv_backward_fast, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool_forward_naive, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool_backward_naive, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool_forward_fast, m)?)?;
    m.add_function(wrap_pyfunction!(max_pool_backward_fast, m)?)?;
    m.add_function(wrap_pyfunction!(affine_forward, m)?)?;
    m.add_function(wrap_pyfunction!(affine_backward, m)?)?;
    m.add_function(wrap_pyfunction!(relu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(relu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(dropout_forward, m)?)?;
    m.add_function(wrap_pyfunction!(dropout_backward, m)?)?;
    m.add_function(wrap_pyfunction!(batchnorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(batchnorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(batchnorm_backward_alt, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_batchnorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_batchnorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(layernorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(layernorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_groupnorm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(spatial_groupnorm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_loss, m)?)?;
    m.add_function(wrap_pyfunction!(svm_loss, m)?)?;
    m.add_class::<ConvCache>()?;
    m.add_class::<PoolCache>()?;
    m.add_class::<AffineCache>()?;
    m.add_class::<ReluCache>()?;
    m.add_class::<DropoutCache>()?;
    m.add_class::<NormCache>()?;
    Ok(())
}
