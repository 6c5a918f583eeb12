"""cs231n's classifiers/cnn.py on the Rust kernels:
conv - relu - 2x2 max pool - affine - relu - affine - softmax."""

import numpy as np

from .. import affine_backward, affine_forward, softmax_loss
from ..layer_utils import (
    affine_relu_backward,
    affine_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)


class ThreeLayerConvNet(object):
    def __init__(self, input_dim=(3, 32, 32), num_filters=32, filter_size=7, hidden_dim=100,
                 num_classes=10, weight_scale=1e-3, reg=0.0, dtype=np.float32):
        C, H, W = input_dim
        self.reg = reg
        self.dtype = dtype
        self.params = {
            "W1": weight_scale * np.random.randn(num_filters, C, filter_size, filter_size),
            "b1": np.zeros(num_filters),
            "W2": weight_scale * np.random.randn(num_filters * (H // 2) * (W // 2), hidden_dim),
            "b2": np.zeros(hidden_dim),
            "W3": weight_scale * np.random.randn(hidden_dim, num_classes),
            "b3": np.zeros(num_classes),
        }
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        p = self.params
        filter_size = p["W1"].shape[2]
        conv_param = {"stride": 1, "pad": (filter_size - 1) // 2}
        pool_param = {"pool_height": 2, "pool_width": 2, "stride": 2}
        a, c1 = conv_relu_pool_forward(X, p["W1"], p["b1"], conv_param, pool_param)
        h, c2 = affine_relu_forward(a, p["W2"], p["b2"])
        scores, c3 = affine_forward(h, p["W3"], p["b3"])
        if y is None:
            return scores
        loss, ds = softmax_loss(scores, y)
        dh, dw3, db3 = affine_backward(ds, c3)
        da, dw2, db2 = affine_relu_backward(dh, c2)
        _, dw1, db1 = conv_relu_pool_backward(da.reshape(a.shape), c1)
        grads = {"W1": dw1, "b1": db1, "W2": dw2, "b2": db2, "W3": dw3, "b3": db3}
        for k in ("W1", "W2", "W3"):
            loss += 0.5 * self.reg * np.sum(p[k] * p[k])
            grads[k] = grads[k] + self.reg * p[k]
        return loss, grads
