//! The layers' parameters: the notebook's `bn_param` and `ln_param` / `gn_param`, and the
//! layer kinds.

/// Train mode normalises with batch statistics (and updates the running ones); test mode
/// normalises with the running statistics only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: batch statistics (and dropout drops).
    Train,
    /// Inference: running statistics (and dropout is the identity).
    Test,
}

/// How running statistics are kept.
///
/// | | Notebook (default) | PyTorch |
/// |---|---|---|
/// | update | `running = momentum * running + (1 - momentum) * batch` | `running = (1 - momentum) * running + momentum * batch` |
/// | default momentum | 0.9 | 0.1 |
/// | running variance | uncorrected batch variance | unbiased: batch variance * n / (n - 1) |
/// | running stats when absent | mean 0, var 0 | mean 0, var 1 |
///
/// In both, train mode normalises with the uncorrected batch variance. With `PyTorch`, running
/// statistics can be exchanged with a PyTorch checkpoint's `running_mean`/`running_var`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Convention {
    /// The notebook's rule (the default).
    #[default]
    Notebook,
    /// PyTorch's `BatchNorm` rule.
    PyTorch,
}

/// The notebook's `bn_param`. `forward` stores the updated running statistics back into it.
#[derive(Clone, Debug, PartialEq)]
pub struct BnParam<T> {
    /// Train or test mode.
    pub mode: Mode,
    /// Added to the variance before the square root (finite, >= 0). With eps = 0 a group of
    /// constant values (variance 0) normalises to 0 * inf = NaN, in the forward and in dx, as
    /// in numpy and PyTorch; eps > 0 (the default 1e-5) keeps it finite.
    pub eps: f64,
    /// Weight of the running statistics in their update, in [0, 1] (see [`Convention`]).
    pub momentum: f64,
    /// Per channel; None starts at zeros. Written back by a train-mode forward.
    pub running_mean: Option<Vec<T>>,
    /// Per channel; None starts as [`Convention`] says. Written back by a train-mode forward.
    pub running_var: Option<Vec<T>>,
    /// How the running statistics are kept.
    pub convention: Convention,
}

impl<T> BnParam<T> {
    /// `{'mode': 'train'}`: eps 1e-5, momentum 0.9, notebook convention.
    pub fn train() -> Self {
        BnParam {
            mode: Mode::Train,
            eps: 1e-5,
            momentum: 0.9,
            running_mean: None,
            running_var: None,
            convention: Convention::Notebook,
        }
    }
    /// `{'mode': 'test'}`.
    pub fn test() -> Self {
        BnParam {
            mode: Mode::Test,
            ..Self::train()
        }
    }
    /// PyTorch's `BatchNorm` conventions: momentum 0.1 weighting the new batch, unbiased
    /// running variance, running variance starting at 1.
    pub fn pytorch(mode: Mode) -> Self {
        BnParam {
            mode,
            momentum: 0.1,
            convention: Convention::PyTorch,
            ..Self::train()
        }
    }
}

/// `ln_param` / `gn_param`: only eps (default 1e-5). These layers behave the same in train
/// and test mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormParam {
    /// Added to the variance before the square root (finite, >= 0). With eps = 0 a group of
    /// constant values (variance 0) normalises to 0 * inf = NaN, in the forward and in dx, as
    /// in numpy and PyTorch; eps > 0 (the default 1e-5) keeps it finite.
    pub eps: f64,
}

impl Default for NormParam {
    fn default() -> Self {
        NormParam { eps: 1e-5 }
    }
}
