"""cs231n's classifiers/fc_net.py on the Rust kernels: same constructors, same `params` dicts of
numpy arrays (W1, b1, gamma1, beta1, ...), same `loss(X, y=None)`: scores in test mode, else
(loss, grads) with L2 regularisation 0.5 * reg * sum(W^2) on the weights only."""

import numpy as np

from .. import affine_backward, affine_forward, dropout_backward, dropout_forward, softmax_loss
from ..layer_utils import (
    affine_bn_relu_backward,
    affine_bn_relu_forward,
    affine_ln_relu_backward,
    affine_ln_relu_forward,
    affine_relu_backward,
    affine_relu_forward,
)


class TwoLayerNet(object):
    """affine - relu - affine - softmax."""

    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10,
                 weight_scale=1e-3, reg=0.0):
        self.params = {
            "W1": weight_scale * np.random.randn(input_dim, hidden_dim),
            "b1": np.zeros(hidden_dim),
            "W2": weight_scale * np.random.randn(hidden_dim, num_classes),
            "b2": np.zeros(num_classes),
        }
        self.reg = reg

    def loss(self, X, y=None):
        p = self.params
        h, c1 = affine_relu_forward(X, p["W1"], p["b1"])
        scores, c2 = affine_forward(h, p["W2"], p["b2"])
        if y is None:
            return scores
        loss, ds = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
        dh, dw2, db2 = affine_backward(ds, c2)
        _, dw1, db1 = affine_relu_backward(dh, c1)
        grads = {"W1": dw1 + self.reg * p["W1"], "b1": db1,
                 "W2": dw2 + self.reg * p["W2"], "b2": db2}
        return loss, grads


class FullyConnectedNet(object):
    """{affine - [batch/layer norm] - relu - [dropout]} x (L - 1) - affine - softmax."""

    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None,
                 dropout_keep_ratio=None):
        if dropout_keep_ratio is not None:  # the 2019+ notebooks' name for `dropout`
            dropout = dropout_keep_ratio
        self.normalization = normalization
        self.use_dropout = dropout != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}
        dims = [input_dim] + list(hidden_dims) + [num_classes]
        for i in range(self.num_layers):
            self.params["W%d" % (i + 1)] = weight_scale * np.random.randn(dims[i], dims[i + 1])
            self.params["b%d" % (i + 1)] = np.zeros(dims[i + 1])
            if normalization is not None and i < self.num_layers - 1:
                self.params["gamma%d" % (i + 1)] = np.ones(dims[i + 1])
                self.params["beta%d" % (i + 1)] = np.zeros(dims[i + 1])
        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {"mode": "train", "p": dropout}
            if seed is not None:
                self.dropout_param["seed"] = seed
        self.bn_params = []
        if normalization == "batchnorm":
            self.bn_params = [{"mode": "train"} for _ in range(self.num_layers - 1)]
        elif normalization == "layernorm":
            self.bn_params = [{} for _ in range(self.num_layers - 1)]
        elif normalization is not None:
            raise ValueError("normalization: expected None, 'batchnorm' or 'layernorm', found %r"
                             % (normalization,))
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        mode = "test" if y is None else "train"
        if self.use_dropout:
            self.dropout_param["mode"] = mode
        if self.normalization == "batchnorm":
            for bn_param in self.bn_params:
                bn_param["mode"] = mode
        p = self.params
        h, caches = X, []
        for i in range(1, self.num_layers):
            w, b = p["W%d" % i], p["b%d" % i]
            if self.normalization == "batchnorm":
                h, c = affine_bn_relu_forward(h, w, b, p["gamma%d" % i], p["beta%d" % i],
                                              self.bn_params[i - 1])
            elif self.normalization == "layernorm":
                h, c = affine_ln_relu_forward(h, w, b, p["gamma%d" % i], p["beta%d" % i],
                                              self.bn_params[i - 1])
            else:
                h, c = affine_relu_forward(h, w, b)
            dc = None
            if self.use_dropout:
                h, dc = dropout_forward(h, self.dropout_param)
            caches.append((c, dc))
        L = self.num_layers
        scores, last = affine_forward(h, p["W%d" % L], p["b%d" % L])
        if mode == "test":
            return scores
        loss, ds = softmax_loss(scores, y)
        grads = {}
        dh, grads["W%d" % L], grads["b%d" % L] = affine_backward(ds, last)
        for i in range(L - 1, 0, -1):
            c, dc = caches[i - 1]
            if dc is not None:
                dh = dropout_backward(dh, dc)
            if self.normalization == "batchnorm":
                dh, dw, db, dg, dbe = affine_bn_relu_backward(dh, c)
            elif self.normalization == "layernorm":
                dh, dw, db, dg, dbe = affine_ln_relu_backward(dh, c)
            else:
                dh, dw, db = affine_relu_backward(dh, c)
            if self.normalization is not None:
                grads["gamma%d" % i], grads["beta%d" % i] = dg, dbe
            grads["W%d" % i], grads["b%d" % i] = dw, db
        for i in range(1, L + 1):
            w = p["W%d" % i]
            loss += 0.5 * self.reg * np.sum(w * w)
            grads["W%d" % i] = grads["W%d" % i] + self.reg * w
        return loss, grads
