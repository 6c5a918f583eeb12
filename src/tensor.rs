//! Flat, contiguous, row-major (NCHW) arrays: an owned [`Tensor`] and the borrowed
//! [`TensorView`]/[`TensorViewMut`] the kernels take, with zero-copy conversions to and from
//! `ndarray` where the layout allows.

use crate::error::{Error, Result, checked_numel, fmt_shape};
use crate::scalar::Float;
use ndarray::{ArrayD, ArrayViewD, IxDyn};

/// An owned contiguous row-major array: a `Vec<T>` plus its shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<T> {
    data: Vec<T>,
    shape: Vec<usize>,
}

/// A borrowed contiguous row-major array.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a, T> {
    data: &'a [T],
    shape: &'a [usize],
}

/// A mutably borrowed contiguous row-major array (an output buffer).
#[derive(Debug)]
pub struct TensorViewMut<'a, T> {
    data: &'a mut [T],
    shape: &'a [usize],
}

fn check_len(arg: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    let n = checked_numel(arg, shape)?;
    if n != len {
        return Err(Error::shape(
            arg,
            format!("{n} elements for shape {}", fmt_shape(shape)),
            format!("{len} elements"),
        ));
    }
    Ok(())
}

impl<T: Copy> Tensor<T> {
    /// Wraps `data` as an array of `shape`; the lengths must agree.
    pub fn new(data: Vec<T>, shape: &[usize]) -> Result<Self> {
        check_len("data", data.len(), shape)?;
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
        })
    }
    /// An array of `shape` filled with `value`.
    pub fn full(shape: &[usize], value: T) -> Result<Self> {
        let n = checked_numel("shape", shape)?;
        Ok(Tensor {
            data: crate::error::try_filled("shape", n, value)?,
            shape: shape.to_vec(),
        })
    }
    /// An array of `shape` whose flat element `i` is `f(i)`.
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> T) -> Result<Self> {
        let n = checked_numel("shape", shape)?;
        let mut data = Vec::with_capacity(n);
        crate::cpu::advise_huge_pages(data.spare_capacity_mut());
        data.extend((0..n).map(f));
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
        })
    }
    /// The same elements under another shape of the same size.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        check_len("shape", self.data.len(), shape)?;
        self.shape = shape.to_vec();
        Ok(self)
    }
    /// Element-wise map into a new array.
    pub fn map<U: Copy>(&self, f: impl FnMut(&T) -> U) -> Tensor<U> {
        let mut data = Vec::with_capacity(self.data.len());
        crate::cpu::advise_huge_pages(data.spare_capacity_mut());
        data.extend(self.data.iter().map(f));
        Tensor {
            data,
            shape: self.shape.clone(),
        }
    }
}

impl<T> Tensor<T> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        &self.data
    }
    /// The elements, row-major, for writing.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The elements, row-major, without a copy.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }
    /// A borrowed view.
    pub fn view(&self) -> TensorView<'_, T> {
        TensorView {
            data: &self.data,
            shape: &self.shape,
        }
    }
    /// A mutable borrowed view (an output buffer).
    pub fn view_mut(&mut self) -> TensorViewMut<'_, T> {
        TensorViewMut {
            data: &mut self.data,
            shape: &self.shape,
        }
    }
}

impl<T: Float> Tensor<T> {
    /// An array of `shape` filled with zeros.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::full(shape, T::zero())
    }
    /// `n` evenly spaced values from `start` to `stop` inclusive, reshaped to `shape`:
    /// numpy's `np.linspace(start, stop, num=prod(shape)).reshape(shape)`, the notebooks'
    /// favourite test input. Computed as numpy does (`start + i * step`, last element `stop`).
    pub fn linspace(start: f64, stop: f64, shape: &[usize]) -> Result<Self> {
        let n = checked_numel("shape", shape)?;
        let step = if n > 1 {
            (stop - start) / (n - 1) as f64
        } else {
            0.0
        };
        Self::from_fn(shape, |i| {
            if n > 1 && i == n - 1 {
                T::from_f(stop)
            } else {
                T::from_f(start + i as f64 * step)
            }
        })
    }
    /// Converts every element to f64.
    pub fn to_f64(&self) -> Tensor<f64> {
        self.map(|v| v.to_f())
    }
    /// Converts every element from f64 (rounding to nearest for f32).
    pub fn from_f64(t: &Tensor<f64>) -> Tensor<T> {
        t.map(|&v| T::from_f(v))
    }
}

impl<T: Clone> Tensor<T> {
    /// Takes an ndarray array; no copy when it is in standard (C-contiguous) layout.
    pub fn from_ndarray(a: ArrayD<T>) -> Self {
        let shape = a.shape().to_vec();
        let data = if a.is_standard_layout() {
            let (v, off) = a.into_raw_vec_and_offset();
            match off {
                Some(0) | None if v.len() == shape.iter().product::<usize>() => v,
                Some(o) => v[o..o + shape.iter().product::<usize>()].to_vec(),
                None => Vec::new(),
            }
        } else {
            a.iter().cloned().collect()
        };
        Tensor { data, shape }
    }
    /// Gives the data to ndarray without copying.
    pub fn into_ndarray(self) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data)
            .expect("invariant: data length equals the product of the shape")
    }
    /// Borrows the data as an ndarray view (no copy).
    pub fn as_ndarray(&self) -> ArrayViewD<'_, T> {
        ArrayViewD::from_shape(IxDyn(&self.shape), &self.data)
            .expect("invariant: data length equals the product of the shape")
    }
}

impl<'a, T> TensorView<'a, T> {
    /// Borrows `data` as an array of `shape`; the lengths must agree.
    pub fn new(data: &'a [T], shape: &'a [usize]) -> Result<Self> {
        check_len("data", data.len(), shape)?;
        Ok(TensorView { data, shape })
    }
    /// Borrows an ndarray view when it is contiguous in standard layout (None otherwise).
    pub fn from_ndarray(a: &'a ArrayViewD<'a, T>) -> Option<Self> {
        a.as_slice().map(|data| TensorView {
            data,
            shape: a.shape(),
        })
    }
    /// The shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    /// The elements, row-major.
    pub fn data(&self) -> &'a [T] {
        self.data
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// An owned copy.
    pub fn to_owned(&self) -> Tensor<T>
    where
        T: Copy,
    {
        Tensor {
            data: self.data.to_vec(),
            shape: self.shape.to_vec(),
        }
    }
    /// The same elements as an ndarray view (no copy).
    pub fn as_ndarray(&self) -> ArrayViewD<'a, T> {
        ArrayViewD::from_shape(IxDyn(self.shape), self.data)
            .expect("invariant: data length equals the product of the shape")
    }
}

impl<'a, T> TensorViewMut<'a, T> {
    /// Borrows `data` as an output array of `shape`; the lengths must agree.
    pub fn new(data: &'a mut [T], shape: &'a [usize]) -> Result<Self> {
        check_len("data", data.len(), shape)?;
        Ok(TensorViewMut { data, shape })
    }
    /// The shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The elements, row-major.
    pub fn data(&self) -> &[T] {
        self.data
    }
    /// The elements, row-major, for writing.
    pub fn data_mut(&mut self) -> &mut [T] {
        self.data
    }
    /// The borrowed elements.
    pub fn into_data(self) -> &'a mut [T] {
        self.data
    }
    /// A shared view of the same elements.
    pub fn as_view(&self) -> TensorView<'_, T> {
        TensorView {
            data: self.data,
            shape: self.shape,
        }
    }
}

impl<'a, T> From<&'a Tensor<T>> for TensorView<'a, T> {
    fn from(t: &'a Tensor<T>) -> Self {
        TensorView {
            data: &t.data,
            shape: &t.shape,
        }
    }
}

impl<'a, T> From<&'a mut Tensor<T>> for TensorViewMut<'a, T> {
    fn from(t: &'a mut Tensor<T>) -> Self {
        TensorViewMut {
            data: &mut t.data,
            shape: &t.shape,
        }
    }
}

#[cfg(all(
    test,
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
mod tests {
    use super::*;

    /// The VmFlags line of the mapping in /proc/self/smaps that holds address `a`.
    fn vm_flags(a: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let mut inside = false;
        for line in smaps.lines() {
            // A mapping's header starts with its range, "lo-hi perms ..."; its fields with
            // "Name:".
            let first = line.split(' ').next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                let (lo, hi) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16));
                inside = matches!((lo, hi), (Ok(lo), Ok(hi)) if lo <= a && a < hi);
            } else if inside && line.starts_with("VmFlags:") {
                return line.to_string();
            }
        }
        panic!("no mapping holds {a:#x}");
    }

    /// Large tensors are advised to take huge pages: the mapping around their 2 MB-aligned
    /// interior carries the `hg` flag (MADV_HUGEPAGE), whatever pages the kernel then gives.
    #[test]
    fn large_tensors_ask_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let n = 3 << 20; // 12 MB of f32
        let z = Tensor::<f32>::zeros(&[n]).unwrap();
        let f = Tensor::<f32>::from_fn(&[n], |i| i as f32).unwrap();
        let m = f.map(|v| v * 2.0);
        for (name, t) in [("zeros", &z), ("from_fn", &f), ("map", &m)] {
            let inner = (t.data().as_ptr() as usize).next_multiple_of(2 << 20);
            let flags = vm_flags(inner);
            assert!(
                flags.split_whitespace().any(|w| w == "hg"),
                "{name}: {flags}"
            );
        }
        assert_eq!(m.data()[5], 10.0);
    }
}
