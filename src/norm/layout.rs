//! Which element of which layer belongs to which statistic group and channel, and the
//! validation of shapes and parameters against it (one place for every norm entry point).

use super::NormKind;
use crate::error::{Error, Result, expect_rank, fmt_shape};
use crate::tensor::TensorView;

/// Which layer, on which shape. Element `i` of the flat input belongs to statistic group
/// `group_of(i)` and is scaled by `gamma[channel_of(i)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// The variants are the layers' names, which all end in "Norm".
#[allow(clippy::enum_variant_names)]
pub(crate) enum NormLayout {
    /// (N, D): statistics per feature d over N.
    BatchNorm { n: usize, d: usize },
    /// (N, C, H, W): statistics per channel over N * H * W.
    SpatialBatchNorm {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
    },
    /// (N, D): statistics per sample over D.
    LayerNorm { n: usize, d: usize },
    /// (N, C, H, W): statistics per (sample, group of C/G channels) over C/G * H * W.
    GroupNorm {
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        g: usize,
    },
}

impl NormLayout {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            NormLayout::BatchNorm { .. } => "batchnorm",
            NormLayout::SpatialBatchNorm { .. } => "spatial_batchnorm",
            NormLayout::LayerNorm { .. } => "layernorm",
            NormLayout::GroupNorm { .. } => "spatial_groupnorm",
        }
    }
    pub(crate) fn shape(&self) -> Vec<usize> {
        match *self {
            NormLayout::BatchNorm { n, d } | NormLayout::LayerNorm { n, d } => vec![n, d],
            NormLayout::SpatialBatchNorm { n, c, h, w }
            | NormLayout::GroupNorm { n, c, h, w, .. } => {
                vec![n, c, h, w]
            }
        }
    }
    pub(crate) fn numel(&self) -> usize {
        self.shape().iter().product()
    }
    /// Length of gamma and beta.
    pub(crate) fn channels(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } | NormLayout::LayerNorm { d, .. } => d,
            NormLayout::SpatialBatchNorm { c, .. } | NormLayout::GroupNorm { c, .. } => c,
        }
    }
    /// Number of statistic groups.
    pub(crate) fn groups(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } => d,
            NormLayout::SpatialBatchNorm { c, .. } => c,
            NormLayout::LayerNorm { n, .. } => n,
            NormLayout::GroupNorm { n, g, .. } => n * g,
        }
    }
    /// Elements per statistic group.
    pub(crate) fn group_size(&self) -> usize {
        match *self {
            NormLayout::BatchNorm { n, .. } => n,
            NormLayout::SpatialBatchNorm { n, h, w, .. } => n * h * w,
            NormLayout::LayerNorm { d, .. } => d,
            NormLayout::GroupNorm { c, h, w, g, .. } => c / g * h * w,
        }
    }
    #[inline(always)]
    pub(crate) fn group_of(&self, i: usize) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } => i % d,
            NormLayout::SpatialBatchNorm { c, h, w, .. } => (i / (h * w)) % c,
            NormLayout::LayerNorm { d, .. } => i / d,
            NormLayout::GroupNorm { c, h, w, g, .. } => {
                let (n, ch) = (i / (c * h * w), (i / (h * w)) % c);
                n * g + ch / (c / g)
            }
        }
    }
    #[inline(always)]
    pub(crate) fn channel_of(&self, i: usize) -> usize {
        match *self {
            NormLayout::BatchNorm { d, .. } | NormLayout::LayerNorm { d, .. } => i % d,
            NormLayout::SpatialBatchNorm { c, h, w, .. }
            | NormLayout::GroupNorm { c, h, w, .. } => (i / (h * w)) % c,
        }
    }
    /// The layer kind (with the group count).
    pub(crate) fn kind(&self) -> NormKind {
        match *self {
            NormLayout::BatchNorm { .. } => NormKind::BatchNorm,
            NormLayout::SpatialBatchNorm { .. } => NormKind::SpatialBatchNorm,
            NormLayout::LayerNorm { .. } => NormKind::LayerNorm,
            NormLayout::GroupNorm { g, .. } => NormKind::GroupNorm { groups: g },
        }
    }
    pub(crate) fn is_spatial(&self) -> bool {
        matches!(
            self,
            NormLayout::SpatialBatchNorm { .. } | NormLayout::GroupNorm { .. }
        )
    }
}

/// Checks x against the layer's rank and returns the layout.
pub(crate) fn layout_of(kind: NormKind, x: &[usize]) -> Result<NormLayout> {
    let l = match kind {
        NormKind::BatchNorm | NormKind::LayerNorm => {
            expect_rank("x", x, 2, "(N, D)")?;
            let (n, d) = (x[0], x[1]);
            if kind == NormKind::BatchNorm {
                NormLayout::BatchNorm { n, d }
            } else {
                NormLayout::LayerNorm { n, d }
            }
        }
        NormKind::SpatialBatchNorm | NormKind::GroupNorm { .. } => {
            expect_rank("x", x, 4, "(N, C, H, W)")?;
            let (n, c, h, w) = (x[0], x[1], x[2], x[3]);
            match kind {
                NormKind::GroupNorm { groups } => {
                    if groups == 0 || c % groups != 0 {
                        return Err(Error::param("G", format!("a divisor of C = {c}"), groups));
                    }
                    NormLayout::GroupNorm {
                        n,
                        c,
                        h,
                        w,
                        g: groups,
                    }
                }
                _ => NormLayout::SpatialBatchNorm { n, c, h, w },
            }
        }
    };
    crate::error::checked_numel("x", x)?;
    Ok(l)
}

/// gamma/beta: (C,) or, for the spatial layers, also (1, C, 1, 1) as the notebook passes them.
pub(crate) fn check_affine<T>(
    arg: &'static str,
    p: &TensorView<'_, T>,
    l: &NormLayout,
) -> Result<()> {
    let c = l.channels();
    let ok = p.shape() == [c] || (l.is_spatial() && p.shape() == [1, c, 1, 1]);
    if ok {
        Ok(())
    } else {
        let expected = if l.is_spatial() {
            format!("({c},) or (1, {c}, 1, 1)")
        } else {
            format!("({c},)")
        };
        Err(Error::shape(arg, expected, fmt_shape(p.shape())))
    }
}

pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps >= 0.0 {
        Ok(())
    } else {
        Err(Error::param("eps", "a finite value >= 0", eps))
    }
}

pub(crate) fn check_batch_stats(l: &NormLayout) -> Result<()> {
    if l.group_size() == 0 {
        return Err(Error::shape(
            "x",
            format!("at least one element per {} statistic", l.name()),
            fmt_shape(&l.shape()),
        ));
    }
    Ok(())
}
