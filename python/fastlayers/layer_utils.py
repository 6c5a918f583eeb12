"""cs231n's layer_utils.py: the sandwich layers, on the Rust kernels."""

from . import (
    affine_backward,
    affine_forward,
    batchnorm_backward_alt,
    batchnorm_forward,
    conv_backward_fast,
    conv_forward_fast,
    layernorm_backward,
    layernorm_forward,
    max_pool_backward_fast,
    max_pool_forward_fast,
    relu_backward,
    relu_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
)
from . import (  # noqa: F401  (re-exported under the notebook's module)
    affine_relu_backward,
    affine_relu_forward,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    a, fc_cache = affine_forward(x, w, b)
    an, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (fc_cache, bn_cache, relu_cache)


def affine_bn_relu_backward(dout, cache):
    fc_cache, bn_cache, relu_cache = cache
    da, dgamma, dbeta = batchnorm_backward_alt(relu_backward(dout, relu_cache), bn_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def affine_ln_relu_forward(x, w, b, gamma, beta, ln_param):
    a, fc_cache = affine_forward(x, w, b)
    an, ln_cache = layernorm_forward(a, gamma, beta, ln_param)
    out, relu_cache = relu_forward(an)
    return out, (fc_cache, ln_cache, relu_cache)


def affine_ln_relu_backward(dout, cache):
    fc_cache, ln_cache, relu_cache = cache
    da, dgamma, dbeta = layernorm_backward(relu_backward(dout, relu_cache), ln_cache)
    dx, dw, db = affine_backward(da, fc_cache)
    return dx, dw, db, dgamma, dbeta


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    conv_cache, bn_cache, relu_cache = cache
    dan, dgamma, dbeta = spatial_batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)
    dx, dw, db = conv_backward_fast(dan, conv_cache)
    return dx, dw, db, dgamma, dbeta


def conv_bn_relu_pool_forward(x, w, b, gamma, beta, conv_param, bn_param, pool_param):
    s, (conv_cache, bn_cache, relu_cache) = conv_bn_relu_forward(
        x, w, b, gamma, beta, conv_param, bn_param
    )
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, bn_cache, relu_cache, pool_cache)


def conv_bn_relu_pool_backward(dout, cache):
    conv_cache, bn_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward_fast(dout, pool_cache)
    return conv_bn_relu_backward(ds, (conv_cache, bn_cache, relu_cache))
