//! Layer parameters and every piece of shape arithmetic, validated once and overflow-checked.
//!
//! A `*Geom` is built from the input shapes and a parameter struct; once it exists, every index the
//! kernels compute from it is in bounds. Both the reference and the fast kernels start from it.

use crate::error::{Error, Result, checked_numel, expect_rank, fmt_shape, overflow};

/// Convolution parameters. `ConvParam::new(stride, pad)` is the notebook's `conv_param`
/// (`{'stride': s, 'pad': p}`); the rest is what frameworks need beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvParam {
    /// (vertical, horizontal) step between receptive fields.
    pub stride: (usize, usize),
    /// (vertical, horizontal) zero padding on each side.
    pub pad: (usize, usize),
    /// (vertical, horizontal) spacing between kernel taps (1 = dense kernel).
    pub dilation: (usize, usize),
    /// Channel groups: C and F are split into `groups` independent convolutions
    /// (groups == C == F is a depthwise convolution).
    pub groups: usize,
}

impl ConvParam {
    /// The notebook's parameters: the same stride and zero padding in both directions.
    pub fn new(stride: usize, pad: usize) -> Self {
        ConvParam {
            stride: (stride, stride),
            pad: (pad, pad),
            dilation: (1, 1),
            groups: 1,
        }
    }
    /// Separate vertical and horizontal strides.
    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }
    /// Separate vertical and horizontal padding.
    pub fn with_pad(mut self, ph: usize, pw: usize) -> Self {
        self.pad = (ph, pw);
        self
    }
    /// Spacing between kernel taps (1 = dense).
    pub fn with_dilation(mut self, dh: usize, dw: usize) -> Self {
        self.dilation = (dh, dw);
        self
    }
    /// Channel groups (groups == C == F: depthwise).
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
}

impl Default for ConvParam {
    fn default() -> Self {
        ConvParam::new(1, 0)
    }
}

/// Output extent of a sliding window: `1 + (input + 2*pad - dilation*(k-1) - 1) / stride`
/// (floor division), or `None` when the (dilated) window does not fit the padded input.
fn window_out(input: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Option<usize> {
    let padded = input.checked_add(pad.checked_mul(2)?)?;
    let span = dil.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    if span > padded {
        return None;
    }
    Some(1 + (padded - span) / stride)
}

/// Validated convolution geometry: x (N, C, H, W), w (F, C/groups, KH, KW), b (F,),
/// out (N, F, HO, WO). Only [`ConvGeom::new`] builds one (the fields are private), so every
/// geometry a kernel sees passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) f: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) p: ConvParam,
}

impl ConvGeom {
    /// Checks x, w and b shapes against each other and the parameters.
    pub fn new(x: &[usize], w: &[usize], b: &[usize], p: &ConvParam) -> Result<Self> {
        expect_rank("x", x, 4, "(N, C, H, W)")?;
        expect_rank("w", w, 4, "(F, C/groups, HH, WW)")?;
        checked_numel("x", x)?;
        checked_numel("w", w)?;
        let (n, c, h, wd) = (x[0], x[1], x[2], x[3]);
        let (f, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
        for (arg, v) in [
            ("conv_param.stride", p.stride.0),
            ("conv_param.stride", p.stride.1),
            ("conv_param.dilation", p.dilation.0),
            ("conv_param.dilation", p.dilation.1),
            ("conv_param.groups", p.groups),
        ] {
            if v == 0 {
                return Err(Error::param(arg, "a value >= 1", v));
            }
        }
        if c % p.groups != 0 {
            return Err(Error::param(
                "conv_param.groups",
                format!("a divisor of C = {c}"),
                p.groups,
            ));
        }
        if f % p.groups != 0 {
            return Err(Error::param(
                "conv_param.groups",
                format!("a divisor of F = {f}"),
                p.groups,
            ));
        }
        if cg != c / p.groups || kh == 0 || kw == 0 {
            return Err(Error::shape(
                "w",
                format!(
                    "(F, {}, HH >= 1, WW >= 1) for x with C = {c} and groups = {}",
                    c / p.groups,
                    p.groups
                ),
                fmt_shape(w),
            ));
        }
        if b != [f] {
            return Err(Error::shape("b", fmt_shape(&[f]), fmt_shape(b)));
        }
        let ho = window_out(h, kh, p.stride.0, p.pad.0, p.dilation.0);
        let wo = window_out(wd, kw, p.stride.1, p.pad.1, p.dilation.1);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return Err(Error::shape(
                "w",
                format!(
                    "a dilated window (HH-1)*dilation+1 x (WW-1)*dilation+1 that fits the padded input {} x {}",
                    h.saturating_add(p.pad.0.saturating_mul(2)),
                    wd.saturating_add(p.pad.1.saturating_mul(2))
                ),
                format!(
                    "{} x {}",
                    p.dilation.0.saturating_mul(kh - 1).saturating_add(1),
                    p.dilation.1.saturating_mul(kw - 1).saturating_add(1)
                ),
            ));
        };
        let g = ConvGeom {
            n,
            c,
            h,
            w: wd,
            f,
            kh,
            kw,
            ho,
            wo,
            p: *p,
        };
        checked_numel("out", &g.out_shape())?;
        // The per-image column matrix (C/groups*KH*KW) x (HO*WO) must be addressable too.
        checked_numel("workspace", &[c, kh, kw, ho, wo])?;
        Ok(g)
    }
    /// x's shape (N, C, H, W).
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// w's shape (F, C/groups, HH, WW).
    pub fn w_shape(&self) -> [usize; 4] {
        [self.f, self.c / self.p.groups, self.kh, self.kw]
    }
    /// The output's shape (N, F, H', W').
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.f, self.ho, self.wo]
    }
    /// The parameters the geometry was validated with.
    pub fn param(&self) -> &ConvParam {
        &self.p
    }
    pub(crate) fn groups(&self) -> usize {
        self.p.groups
    }
    /// Input channels per group.
    pub(crate) fn cg(&self) -> usize {
        self.c / self.p.groups
    }
    /// Filters per group.
    pub(crate) fn fg(&self) -> usize {
        self.f / self.p.groups
    }
    /// Rows of one group's column matrix: C/groups * KH * KW.
    pub(crate) fn k_rows(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    /// Output pixels per image: HO * WO.
    pub(crate) fn pixels(&self) -> usize {
        self.ho * self.wo
    }
    /// Multiply-adds * 2 of the forward pass.
    pub fn flops(&self) -> f64 {
        2.0 * self.n as f64 * self.f as f64 * self.pixels() as f64 * self.k_rows() as f64
    }
    /// Input row for output row `oh` and kernel row `i`, or None in the padding.
    #[inline(always)]
    pub(crate) fn in_row(&self, oh: usize, i: usize) -> Option<usize> {
        (oh * self.p.stride.0 + i * self.p.dilation.0)
            .checked_sub(self.p.pad.0)
            .filter(|&r| r < self.h)
    }
    /// Input column for output column `ow` and kernel column `j`, or None in the padding.
    #[inline(always)]
    pub(crate) fn in_col(&self, ow: usize, j: usize) -> Option<usize> {
        (ow * self.p.stride.1 + j * self.p.dilation.1)
            .checked_sub(self.p.pad.1)
            .filter(|&c| c < self.w)
    }
}

/// Max-pooling parameters. `PoolParam::new(ph, pw, stride)` is the notebook's `pool_param`;
/// padding and ceil_mode follow PyTorch's `max_pool2d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolParam {
    /// Window height.
    pub pool_height: usize,
    /// Window width.
    pub pool_width: usize,
    /// (vertical, horizontal) step between windows.
    pub stride: (usize, usize),
    /// (vertical, horizontal) implicit padding; padded positions never win. At most half the
    /// window, as PyTorch requires, so every window holds at least one real element.
    pub pad: (usize, usize),
    /// Round the output extent up instead of down (PyTorch's rule: a last window must start
    /// inside the input or its left padding).
    pub ceil_mode: bool,
}

impl PoolParam {
    /// The notebook's `{'pool_height', 'pool_width', 'stride'}`: no padding, floor rounding.
    pub fn new(pool_height: usize, pool_width: usize, stride: usize) -> Self {
        PoolParam {
            pool_height,
            pool_width,
            stride: (stride, stride),
            pad: (0, 0),
            ceil_mode: false,
        }
    }
    /// Separate vertical and horizontal strides.
    pub fn with_stride(mut self, sh: usize, sw: usize) -> Self {
        self.stride = (sh, sw);
        self
    }
    /// Separate vertical and horizontal padding.
    pub fn with_pad(mut self, ph: usize, pw: usize) -> Self {
        self.pad = (ph, pw);
        self
    }
    /// Round the output extent up (PyTorch's `ceil_mode`).
    pub fn with_ceil_mode(mut self, ceil_mode: bool) -> Self {
        self.ceil_mode = ceil_mode;
        self
    }
}

/// PyTorch's `pooling_output_shape` for dilation 1.
fn pool_out(input: usize, k: usize, stride: usize, pad: usize, ceil: bool) -> Option<usize> {
    let padded = input.checked_add(pad.checked_mul(2)?)?;
    if k > padded {
        return None;
    }
    let span = padded - k;
    let mut out = if ceil {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    // A last window that starts in the right padding (or beyond) is dropped.
    if ceil && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Some(out)
}

/// Validated pooling geometry: x (N, C, H, W), out (N, C, HO, WO). Only [`PoolGeom::new`]
/// builds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub(crate) n: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) ho: usize,
    pub(crate) wo: usize,
    pub(crate) p: PoolParam,
}

impl PoolGeom {
    /// Checks x's shape against the parameters (every output window holds a real element; plane
    /// offsets fit the u32 argmax indices).
    pub fn new(x: &[usize], p: &PoolParam) -> Result<Self> {
        expect_rank("x", x, 4, "(N, C, H, W)")?;
        checked_numel("x", x)?;
        let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
        for (arg, v) in [
            ("pool_param.pool_height", p.pool_height),
            ("pool_param.pool_width", p.pool_width),
            ("pool_param.stride", p.stride.0),
            ("pool_param.stride", p.stride.1),
        ] {
            if v == 0 {
                return Err(Error::param(arg, "a value >= 1", v));
            }
        }
        if p.pad.0 > p.pool_height / 2 || p.pad.1 > p.pool_width / 2 {
            return Err(Error::param(
                "pool_param.pad",
                format!(
                    "at most half the window: <= ({}, {})",
                    p.pool_height / 2,
                    p.pool_width / 2
                ),
                format!("({}, {})", p.pad.0, p.pad.1),
            ));
        }
        // An empty plane with padding would leave windows of padding alone, which have no
        // maximum (padding is never a candidate). PyTorch refuses empty planes too.
        if (h == 0 || w == 0) && (p.pad.0 > 0 || p.pad.1 > 0) {
            return Err(Error::shape(
                "x",
                "H >= 1 and W >= 1 when pool_param.pad > 0 (a window of padding alone has no maximum)",
                format!("{h} x {w}"),
            ));
        }
        // Argmax indices are u32 offsets into one input plane.
        if h.checked_mul(w).is_none_or(|hw| hw > u32::MAX as usize) {
            return Err(overflow("x", "H * W must fit the u32 argmax indices"));
        }
        let ho = pool_out(h, p.pool_height, p.stride.0, p.pad.0, p.ceil_mode);
        let wo = pool_out(w, p.pool_width, p.stride.1, p.pad.1, p.ceil_mode);
        let (Some(ho), Some(wo)) = (ho, wo) else {
            return Err(Error::shape(
                "x",
                format!(
                    "a padded input at least as large as the {} x {} window",
                    p.pool_height, p.pool_width
                ),
                format!(
                    "{} x {}",
                    h.saturating_add(p.pad.0.saturating_mul(2)),
                    w.saturating_add(p.pad.1.saturating_mul(2))
                ),
            ));
        };
        let g = PoolGeom {
            n,
            c,
            h,
            w,
            ho,
            wo,
            p: *p,
        };
        checked_numel("out", &g.out_shape())?;
        Ok(g)
    }
    /// x's shape (N, C, H, W).
    pub fn x_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// The output's (and argmax's) shape (N, C, H', W').
    pub fn out_shape(&self) -> [usize; 4] {
        [self.n, self.c, self.ho, self.wo]
    }
    /// The parameters the geometry was validated with.
    pub fn param(&self) -> &PoolParam {
        &self.p
    }
    /// Input rows covered by output row `oh`, clipped to the real input (padding dropped).
    #[inline(always)]
    pub(crate) fn rows(&self, oh: usize) -> std::ops::Range<usize> {
        let start = oh * self.p.stride.0;
        let lo = start.saturating_sub(self.p.pad.0);
        let hi = (start + self.p.pool_height)
            .saturating_sub(self.p.pad.0)
            .min(self.h);
        lo..hi
    }
    /// Input columns covered by output column `ow`, clipped to the real input.
    #[inline(always)]
    pub(crate) fn cols(&self, ow: usize) -> std::ops::Range<usize> {
        let start = ow * self.p.stride.1;
        let lo = start.saturating_sub(self.p.pad.1);
        let hi = (start + self.p.pool_width)
            .saturating_sub(self.p.pad.1)
            .min(self.w);
        lo..hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_out_matches_notebook_formula() {
        // H' = 1 + (H + 2 pad - HH) / stride
        let g = ConvGeom::new(&[2, 3, 4, 4], &[3, 3, 4, 4], &[3], &ConvParam::new(2, 1)).unwrap();
        assert_eq!(g.out_shape(), [2, 3, 2, 2]);
        let g = ConvGeom::new(
            &[100, 3, 31, 31],
            &[25, 3, 3, 3],
            &[25],
            &ConvParam::new(2, 1),
        )
        .unwrap();
        assert_eq!((g.ho, g.wo), (16, 16));
    }

    #[test]
    fn pool_ceil_mode_matches_pytorch_rule() {
        // torch: MaxPool2d(2, 2, ceil_mode=True) on 5x5 gives 3x3; on 4x4 gives 2x2.
        let p = PoolParam::new(2, 2, 2).with_ceil_mode(true);
        assert_eq!(PoolGeom::new(&[1, 1, 5, 5], &p).unwrap().ho, 3);
        assert_eq!(PoolGeom::new(&[1, 1, 4, 4], &p).unwrap().ho, 2);
        // MaxPool2d(3, 2, padding=1, ceil_mode=True) on 6: ceil((6+2-3)/2)+1 = 4, and the last
        // window starts at 6 >= 6 + 1? no -> 4.
        let p = PoolParam::new(3, 3, 2).with_pad(1, 1).with_ceil_mode(true);
        assert_eq!(PoolGeom::new(&[1, 1, 6, 6], &p).unwrap().ho, 4);
        // MaxPool2d(2, 2, ceil_mode=True) on 3 with stride 2: ceil(1/2)+1 = 2, start 2 < 3 keeps it.
        let p = PoolParam::new(2, 2, 2).with_ceil_mode(true);
        assert_eq!(PoolGeom::new(&[1, 1, 3, 3], &p).unwrap().ho, 2);
    }
}
