"""The notebooks' check cells run through the `fastlayers` module unchanged, plus naive-vs-fast,
dtype and bad-input checks. Gradients are checked with the notebooks' own numpy
eval_numerical_gradient_array (written out here, independent of the module)."""

import json
import pathlib

import numpy as np
import pytest

import fastlayers as fl


def rel_error(x, y):
    return np.max(np.abs(x - y) / (np.maximum(1e-8, np.abs(x) + np.abs(y))))


def num_grad(f, x, df, h=1e-5):
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


def num_grad_scalar(f, x, h=1e-5):
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = f(x)
        x[ix] = old - h
        neg = f(x)
        x[ix] = old
        grad[ix] = (pos - neg) / (2 * h)
        it.iternext()
    return grad


def norm_err(a, b):
    """max|a - b| / max|b|: well conditioned across random seeds."""
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


# The notebooks' check-cell data: the one copy, shared with `fastlayers check` and the Rust tests.
CELLS = json.loads((pathlib.Path(__file__).resolve().parents[2] / "data" / "notebook_cells.json").read_text())["cells"]


def cell_input(cell, name, dtype=np.float64):
    spec = CELLS[cell]["inputs"][name]
    shape = spec["shape"]
    return np.linspace(*spec["linspace"], num=int(np.prod(shape))).reshape(shape).astype(dtype)


def cell_correct(cell):
    c = CELLS[cell]["correct_out"]
    return np.array(c["values"]).reshape(c["shape"])


@pytest.mark.parametrize("fwd", [fl.conv_forward_naive, fl.conv_forward_fast])
def test_conv_forward_linspace_cell(fwd):
    cell = "conv_forward_naive"
    x, w, b = (cell_input(cell, n) for n in "xwb")
    params, correct, tol = CELLS[cell]["params"], cell_correct(cell), CELLS[cell]["tol"]
    out, _ = fwd(x, w, b, params)
    assert out.dtype == np.float64
    assert rel_error(out, correct) < tol
    out32, _ = fwd(*(cell_input(cell, n, np.float32) for n in "xwb"), params)
    assert out32.dtype == np.float32
    # f32 inputs carry 2^-24 relative rounding: the notebook's f64 tolerance does not apply.
    assert rel_error(out32, correct) < 1e-5


@pytest.mark.parametrize("fwd", [fl.max_pool_forward_naive, fl.max_pool_forward_fast])
def test_max_pool_forward_linspace_cell(fwd):
    cell = "max_pool_forward_naive"
    out, _ = fwd(cell_input(cell, "x"), CELLS[cell]["params"])
    assert rel_error(out, cell_correct(cell)) < CELLS[cell]["tol"]


def test_affine_forward_linspace_cell():
    cell = "affine_forward"
    x, w, b = (cell_input(cell, n) for n in "xwb")
    out, _ = fl.affine_forward(x, w, b)
    assert rel_error(out, cell_correct(cell)) < CELLS[cell]["tol"]


@pytest.mark.parametrize("fast", [False, True])
def test_conv_backward_numeric(fast):
    rng = np.random.RandomState(231)
    x = rng.randn(4, 3, 5, 5)
    w = rng.randn(2, 3, 3, 3)
    b = rng.randn(2)
    dout = rng.randn(4, 2, 5, 5)
    p = {"stride": 1, "pad": 1}
    fwd, bwd = (fl.conv_forward_fast, fl.conv_backward_fast) if fast else (fl.conv_forward_naive, fl.conv_backward_naive)
    dx_num = num_grad(lambda x: fwd(x, w, b, p)[0], x, dout)
    dw_num = num_grad(lambda w: fwd(x, w, b, p)[0], w, dout)
    db_num = num_grad(lambda b: fwd(x, w, b, p)[0], b, dout)
    _, cache = fwd(x, w, b, p)
    dx, dw, db = bwd(dout, cache)
    # The notebook prints rel_error (a max of per-element ratios, dominated by the smallest
    # gradient entry): its own run shows dx 1.2e-8 and asks for "around e-8 or less". We assert
    # that order of magnitude, and 1e-8 on the well-conditioned error.
    for a, n in ((dx, dx_num), (dw, dw_num), (db, db_num)):
        assert norm_err(a, n) < 1e-8
        assert rel_error(a, n) < 1e-7


@pytest.mark.parametrize("fast", [False, True])
def test_max_pool_backward_numeric(fast):
    rng = np.random.RandomState(231)
    x = rng.randn(3, 2, 8, 8)
    dout = rng.randn(3, 2, 4, 4)
    p = {"pool_height": 2, "pool_width": 2, "stride": 2}
    fwd, bwd = (fl.max_pool_forward_fast, fl.max_pool_backward_fast) if fast else (fl.max_pool_forward_naive, fl.max_pool_backward_naive)
    dx_num = num_grad(lambda x: fwd(x, p)[0], x, dout)
    _, cache = fwd(x, p)
    assert rel_error(bwd(dout, cache), dx_num) < 1e-10


def test_naive_vs_fast_on_the_timing_cell_shapes():
    rng = np.random.RandomState(231)
    x = rng.randn(20, 3, 31, 31)
    w = rng.randn(25, 3, 3, 3)
    b = rng.randn(25)
    p = {"stride": 2, "pad": 1}
    out_n, cache_n = fl.conv_forward_naive(x, w, b, p)
    out_f, cache_f = fl.conv_forward_fast(x, w, b, p)
    assert rel_error(out_n, out_f) < 1e-9
    dout = rng.randn(*out_n.shape)
    for a, c in zip(fl.conv_backward_naive(dout, cache_n), fl.conv_backward_fast(dout, cache_f)):
        assert rel_error(a, c) < 1e-9
    x = rng.randn(20, 3, 32, 32)
    pp = {"pool_height": 2, "pool_width": 2, "stride": 2}
    out_n, cache_n = fl.max_pool_forward_naive(x, pp)
    out_f, cache_f = fl.max_pool_forward_fast(x, pp)
    assert rel_error(out_n, out_f) == 0.0
    dout = rng.randn(*out_n.shape)
    assert rel_error(fl.max_pool_backward_naive(dout, cache_n), fl.max_pool_backward_fast(dout, cache_f)) == 0.0


def test_affine_relu_and_sandwiches_numeric():
    rng = np.random.RandomState(231)
    x, w, b = rng.randn(10, 2, 3), rng.randn(6, 5), rng.randn(5)
    dout = rng.randn(10, 5)
    _, cache = fl.affine_forward(x, w, b)
    dx, dw, db = fl.affine_backward(dout, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, num_grad(lambda x: fl.affine_forward(x, w, b)[0], x, dout)) < 1e-9
    assert rel_error(dw, num_grad(lambda w: fl.affine_forward(x, w, b)[0], w, dout)) < 1e-9
    assert rel_error(db, num_grad(lambda b: fl.affine_forward(x, w, b)[0], b, dout)) < 1e-9
    x = rng.randn(2, 3, 8, 8)
    w, b = rng.randn(3, 3, 3, 3), rng.randn(3)
    cp, pp = {"stride": 1, "pad": 1}, {"pool_height": 2, "pool_width": 2, "stride": 2}
    dout = rng.randn(2, 3, 4, 4)
    _, cache = fl.conv_relu_pool_forward(x, w, b, cp, pp)
    dx, dw, db = fl.conv_relu_pool_backward(dout, cache)
    f = lambda x, w, b: fl.conv_relu_pool_forward(x, w, b, cp, pp)[0]
    assert norm_err(dx, num_grad(lambda x: f(x, w, b), x, dout)) < 1e-7
    assert norm_err(dw, num_grad(lambda w: f(x, w, b), w, dout)) < 1e-7
    dout = rng.randn(2, 3, 8, 8)
    _, cache = fl.conv_relu_forward(x, w, b, cp)
    dx, _, _ = fl.conv_relu_backward(dout, cache)
    assert norm_err(dx, num_grad(lambda x: fl.conv_relu_forward(x, w, b, cp)[0], x, dout)) < 1e-7
    x, w, b, dout = rng.randn(4, 6), rng.randn(6, 3), rng.randn(3), rng.randn(4, 3)
    _, cache = fl.affine_relu_forward(x, w, b)
    dx, _, _ = fl.affine_relu_backward(dout, cache)
    assert norm_err(dx, num_grad(lambda x: fl.affine_relu_forward(x, w, b)[0], x, dout)) < 1e-7


def test_batchnorm_train_stats_and_running_averages_in_the_dict():
    rng = np.random.RandomState(231)
    a = rng.randn(200, 3) * [10, 20, 30] + [5, -5, 11]
    bn_param = {"mode": "train"}
    out, _ = fl.batchnorm_forward(a, np.array([1.0, 2.0, 3.0]), np.array([11.0, 12.0, 13.0]), bn_param)
    assert np.allclose(out.mean(axis=0), [11, 12, 13], atol=1e-10)
    assert np.allclose(out.std(axis=0), [1, 2, 3], rtol=1e-5)
    # Notebook convention: running = 0.9 * running + 0.1 * batch, starting at zero.
    assert np.allclose(bn_param["running_mean"], 0.1 * a.mean(axis=0))
    assert np.allclose(bn_param["running_var"], 0.1 * a.var(axis=0))
    # Test mode uses the running statistics only.
    bn_param["mode"] = "test"
    x = rng.randn(7, 3)
    out, _ = fl.batchnorm_forward(x, np.ones(3), np.zeros(3), bn_param)
    want = (x - bn_param["running_mean"]) / np.sqrt(bn_param["running_var"] + 1e-5)
    assert np.allclose(out, want, rtol=1e-12, atol=1e-12)


def test_spatial_batchnorm_cells():
    rng = np.random.RandomState(231)
    N, C, H, W = 2, 3, 4, 5
    x = 4 * rng.randn(N, C, H, W) + 10
    out, _ = fl.spatial_batchnorm_forward(x, np.asarray([3.0, 4, 5]), np.asarray([6.0, 7, 8]), {"mode": "train"})
    assert np.max(np.abs(out.mean(axis=(0, 2, 3)) - [6, 7, 8])) < 1e-5
    assert np.max(np.abs(out.std(axis=(0, 2, 3)) - [3, 4, 5])) < 1e-5
    # Test-time cell: warm up, then test mode.
    bn_param = {"mode": "train"}
    for _ in range(50):
        fl.spatial_batchnorm_forward(2.3 * rng.randn(10, 4, 11, 12) + 13, np.ones(4), np.zeros(4), bn_param)
    bn_param["mode"] = "test"
    a, _ = fl.spatial_batchnorm_forward(2.3 * rng.randn(10, 4, 11, 12) + 13, np.ones(4), np.zeros(4), bn_param)
    assert np.max(np.abs(a.mean(axis=(0, 2, 3)))) < 0.3
    assert np.max(np.abs(a.std(axis=(0, 2, 3)) - 1)) < 0.3
    # Backward, numeric.
    x = 5 * rng.randn(N, C, H, W) + 12
    gamma, beta, dout = rng.randn(C), rng.randn(C), rng.randn(N, C, H, W)
    f = lambda x, g, b: fl.spatial_batchnorm_forward(x, g, b, {"mode": "train"})[0]
    _, cache = fl.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = fl.spatial_batchnorm_backward(dout, cache)
    assert norm_err(dx, num_grad(lambda x: f(x, gamma, beta), x, dout)) < 1e-7
    assert rel_error(dgamma, num_grad(lambda g: f(x, g, beta), gamma, dout)) < 1e-7
    assert rel_error(dbeta, num_grad(lambda b: f(x, gamma, b), beta, dout)) < 1e-7


def test_batchnorm_backward_graph_alt_and_numeric():
    rng = np.random.RandomState(231)
    x = 5 * rng.randn(4, 5) + 12
    gamma, beta, dout = rng.randn(5), rng.randn(5), rng.randn(4, 5)
    f = lambda x: fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]
    _, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = fl.batchnorm_backward(dout, cache)
    dx2, dgamma2, dbeta2 = fl.batchnorm_backward_alt(dout, cache)
    assert rel_error(dx, num_grad(f, x, dout)) < 1e-7
    assert rel_error(dx, dx2) < 1e-10 and rel_error(dgamma, dgamma2) < 1e-12 and rel_error(dbeta, dbeta2) < 1e-12


def test_layernorm_and_groupnorm():
    rng = np.random.RandomState(231)
    x = 4 * rng.randn(4, 60) + 10
    out, _ = fl.layernorm_forward(x, np.ones(60), np.zeros(60), {})
    assert np.max(np.abs(out.mean(axis=1))) < 1e-10 and np.max(np.abs(out.std(axis=1) - 1)) < 1e-5
    x = 5 * rng.randn(4, 5) + 12
    gamma, beta, dout = rng.randn(5), rng.randn(5), rng.randn(4, 5)
    _, cache = fl.layernorm_forward(x, gamma, beta, {})
    dx, _, _ = fl.layernorm_backward(dout, cache)
    assert norm_err(dx, num_grad(lambda x: fl.layernorm_forward(x, gamma, beta, {})[0], x, dout)) < 1e-7
    # Group norm, as the notebook calls it: gamma/beta of shape (1, C, 1, 1).
    N, C, H, W, G = 2, 6, 4, 5, 2
    x = 4 * rng.randn(N, C, H, W) + 10
    out, _ = fl.spatial_groupnorm_forward(x, np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1)), G, {"mode": "train"})
    og = out.reshape(N * G, -1)
    assert np.max(np.abs(og.mean(axis=1))) < 1e-10 and np.max(np.abs(og.std(axis=1) - 1)) < 1e-5
    x = 5 * rng.randn(N, C, H, W) + 12
    gamma, beta, dout = rng.randn(1, C, 1, 1), rng.randn(1, C, 1, 1), rng.randn(N, C, H, W)
    f = lambda x, g, b: fl.spatial_groupnorm_forward(x, g, b, G, {})[0]
    _, cache = fl.spatial_groupnorm_forward(x, gamma, beta, G, {})
    dx, dgamma, dbeta = fl.spatial_groupnorm_backward(dout, cache)
    assert dgamma.shape == (1, C, 1, 1)
    assert norm_err(dx, num_grad(lambda x: f(x, gamma, beta), x, dout)) < 1e-7
    assert rel_error(dgamma, num_grad(lambda g: f(x, g, beta), gamma, dout)) < 1e-7


def test_dropout_is_inverted_and_seeded():
    rng = np.random.RandomState(231)
    x = rng.randn(500, 500) + 10
    for p in [0.25, 0.4, 0.7]:
        out, _ = fl.dropout_forward(x, {"mode": "train", "p": p, "seed": 123})
        assert abs(out.mean() / x.mean() - 1) < 0.01
        assert abs((out == 0).mean() - (1 - p)) < 0.01
        out_test, _ = fl.dropout_forward(x, {"mode": "test", "p": p})
        assert np.array_equal(out_test, x)
    x = rng.randn(10, 10) + 10
    dout = rng.randn(10, 10)
    prm = {"mode": "train", "p": 0.2, "seed": 123}
    _, cache = fl.dropout_forward(x, prm)
    dx = fl.dropout_backward(dout, cache)
    assert rel_error(dx, num_grad(lambda x: fl.dropout_forward(x, prm)[0], x, dout)) < 1e-10


def test_losses():
    rng = np.random.RandomState(231)
    x = 0.001 * rng.randn(50, 10)
    y = rng.randint(10, size=50)
    loss, dx = fl.svm_loss(x, y)
    assert abs(loss - 9) < 0.02
    assert rel_error(dx, num_grad_scalar(lambda x: fl.svm_loss(x, y)[0], x)) < 1e-7
    loss, dx = fl.softmax_loss(x, y)
    assert abs(loss - np.log(10)) < 0.01
    assert rel_error(dx, num_grad_scalar(lambda x: fl.softmax_loss(x, y)[0], x)) < 1e-7


def test_helpers_exported():
    x = np.array([1.0, 2.0])
    assert fl.rel_error(x, x) == 0.0
    g = fl.eval_numerical_gradient_array(lambda v: 3 * v, x.copy(), np.ones(2))
    assert np.allclose(g, 3)


def test_non_contiguous_inputs_are_accepted():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 8, 10)[:, :, :, ::2]  # strided view
    assert not x.flags["C_CONTIGUOUS"]
    w, b = rng.randn(4, 3, 3, 3), rng.randn(4)
    a, _ = fl.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
    c, _ = fl.conv_forward_fast(np.ascontiguousarray(x), w, b, {"stride": 1, "pad": 1})
    assert np.array_equal(a, c)
    xt = rng.randn(5, 3).T  # Fortran-ordered
    out, _ = fl.affine_forward(xt, np.eye(5), np.zeros(5))
    assert np.allclose(out, xt)


def test_conv_cache_holds_x_and_w_like_the_notebook():
    # The cache refers to the forward's arrays (no copy), as the notebook's (x, w, b, conv_param)
    # cache does: the backward uses x and w as they are when it runs. A non-contiguous x is
    # copied once, so later changes to the caller's array do not reach that cache.
    rng = np.random.RandomState(3)
    cp = {"stride": 2, "pad": 1}
    x, w, b = rng.randn(2, 3, 9, 9), rng.randn(4, 3, 3, 3), rng.randn(4)
    out, cache = fl.conv_forward_fast(x, w, b, cp)
    dout = rng.randn(*out.shape)
    x += 1.0
    _, fresh = fl.conv_forward_naive(x, w, b, cp)
    for bwd in (fl.conv_backward_fast, fl.conv_backward_naive):
        got, want = bwd(dout, cache), fl.conv_backward_naive(dout, fresh)
        for g, e in zip(got, want):
            assert rel_error(g, e) < 1e-10
    xs = rng.randn(2, 3, 9, 18)[:, :, :, ::2]
    _, c1 = fl.conv_forward_fast(xs, w, b, cp)
    _, c2 = fl.conv_forward_naive(xs.copy(), w, b, cp)
    want = fl.conv_backward_naive(dout, c2)
    xs += 1.0
    for g, e in zip(fl.conv_backward_fast(dout, c1), want):
        assert rel_error(g, e) < 1e-10


def test_library_extensions_in_param_dicts():
    rng = np.random.RandomState(1)
    x = rng.randn(1, 4, 7, 7)
    w = rng.randn(4, 2, 3, 3)
    out, _ = fl.conv_forward_fast(x, w, np.zeros(4), {"stride": 1, "pad": 2, "dilation": 2, "groups": 2})
    ref, _ = fl.conv_forward_naive(x, w, np.zeros(4), {"stride": 1, "pad": 2, "dilation": 2, "groups": 2})
    assert out.shape == (1, 4, 7, 7) and rel_error(out, ref) < 1e-10
    out, _ = fl.max_pool_forward_fast(x, {"pool_height": 3, "pool_width": 3, "stride": 2, "pad": 1, "ceil_mode": True})
    assert out.shape == (1, 4, 4, 4)
    bn = {"mode": "train", "convention": "pytorch"}
    fl.batchnorm_forward(rng.randn(6, 2), np.ones(2), np.zeros(2), bn)
    assert bn["running_var"].shape == (2,)


def test_bad_input_raises_value_error_with_the_library_message():
    x = np.zeros((2, 3, 4, 4))
    w = np.zeros((2, 3, 3, 3))
    with pytest.raises(ValueError, match="x: expected a numpy array of dtype float32 or float64"):
        fl.conv_forward_fast(x.astype(np.int32), w, np.zeros(2), {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="conv_param.stride: expected a value >= 1, found 0"):
        fl.conv_forward_fast(x, w, np.zeros(2), {"stride": 0, "pad": 1})
    with pytest.raises(ValueError, match="b: expected shape"):
        fl.conv_forward_fast(x, w, np.zeros(3), {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="w: expected dtype float64"):
        fl.conv_forward_fast(x, w.astype(np.float32), np.zeros(2), {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="stride: required key missing"):
        fl.conv_forward_fast(x, w, np.zeros(2), {"pad": 1})
    out, cache = fl.conv_forward_fast(x, w, np.zeros(2), {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="dout: expected shape"):
        fl.conv_backward_fast(np.zeros((2, 2, 4, 3)), cache)
    with pytest.raises(ValueError, match="dout: expected the dtype of the forward pass"):
        fl.conv_backward_fast(out.astype(np.float32), cache)
    with pytest.raises(ValueError, match="pool_param.pad"):
        fl.max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2, "pad": 2})
    with pytest.raises(ValueError, match="G: expected a divisor of C = 3"):
        fl.spatial_groupnorm_forward(x, np.ones(3), np.zeros(3), 2, {})
    _, ln_cache = fl.layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), {})
    with pytest.raises(ValueError, match="cache: expected a cache from batchnorm_forward"):
        fl.batchnorm_backward_alt(np.zeros((2, 3)), ln_cache)
    with pytest.raises(ValueError, match="y: expected every label in 0..3, found 3"):
        fl.softmax_loss(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="p: expected a keep probability in"):
        fl.dropout_forward(x, {"mode": "train", "p": 0.0})
    with pytest.raises(ValueError, match="mode: expected 'train' or 'test'"):
        fl.batchnorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), {"mode": "eval"})
    with pytest.raises(TypeError):
        fl.conv_backward_fast(out, "not a cache")
