"""fastlayers: cs231n's layers.py / fast_layers.py on Rust kernels.

Same names, arguments and return values as the notebooks: forward functions return
``(out, cache)`` with an opaque cache object, backward functions take ``(dout, cache)``.
float32 and float64 inputs keep their dtype; other dtypes and bad shapes or parameters raise
ValueError. ``conv_param`` also takes 'dilation' and 'groups', ``pool_param`` 'pad' and
'ceil_mode', ``bn_param`` 'convention' ('notebook' or 'pytorch'). The convolution cache holds
x and w themselves, as the notebook's does (a copy only of a non-contiguous input): changing them
in place between forward and backward changes the backward.
"""

import numpy as np

from ._fastlayers import (
    AffineCache,
    ConvCache,
    DropoutCache,
    NormCache,
    PoolCache,
    ReluCache,
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    conv_backward_fast,
    conv_backward_naive,
    conv_forward_fast,
    conv_forward_naive,
    dropout_backward,
    dropout_forward,
    layernorm_backward,
    layernorm_forward,
    max_pool_backward_fast,
    max_pool_backward_naive,
    max_pool_forward_fast,
    max_pool_forward_naive,
    relu_backward,
    relu_forward,
    softmax_loss,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
    svm_loss,
)


# Sandwich layers (cs231n's layer_utils.py), built from the kernels above.

def affine_relu_forward(x, w, b):
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def conv_relu_forward(x, w, b, conv_param):
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout, cache):
    conv_cache, relu_cache = cache
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


def conv_relu_pool_backward(dout, cache):
    conv_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward_fast(dout, pool_cache)
    return conv_backward_fast(relu_backward(ds, relu_cache), conv_cache)


# The notebooks' checking helpers.

def rel_error(x, y):
    """Returns the maximum relative error, as the notebooks do."""
    return np.max(np.abs(x - y) / (np.maximum(1e-8, np.abs(x) + np.abs(y))))


def eval_numerical_gradient(f, x, verbose=True, h=0.00001):
    """Numeric gradient of a scalar function f at x (the notebooks' gradient_check helper)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        fxph = f(x)
        x[ix] = old - h
        fxmh = f(x)
        x[ix] = old
        grad[ix] = (fxph - fxmh) / (2 * h)
        if verbose:
            print(ix, grad[ix])
        it.iternext()
    return grad


def eval_numerical_gradient_array(f, x, df, h=1e-5):
    """Numeric gradient of an array function f at x against the upstream gradient df."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = f(x).copy()
        x[ix] = old - h
        neg = f(x).copy()
        x[ix] = old
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


__all__ = [n for n in dir() if not n.startswith("_")]

# The notebooks' modules: fastlayers.classifiers, .solver, .optim, .data_utils, .layer_utils
# (imported after the kernels above, which they use).
from . import classifiers, data_utils, layer_utils, optim, solver  # noqa: E402,F401
