"""Hostile inputs from Python: integers out of range, bools and floats where integers are meant,
labels of the wrong kind, running statistics of the wrong shape all raise ValueError naming
the argument (never OverflowError, never a silent coercion); and what the module guarantees
about arrays shared between Python threads while it runs with the GIL released."""

import threading

import numpy as np
import pytest

import fastlayers as fl

X = np.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
W = np.linspace(-0.5, 0.5, 2 * 3 * 3 * 3).reshape(2, 3, 3, 3)
B = np.zeros(2)


@pytest.mark.parametrize(
    "value, message",
    [
        (True, "stride: expected an integer, found <class 'bool'> True"),
        (np.bool_(True), "stride: expected an integer"),
        (1.0, "stride: expected an integer"),
        ("1", "stride: expected an integer"),
        (2**64, "stride: expected an integer in 0..2\\*\\*64"),
        (-1, "stride: expected an integer in 0..2\\*\\*64"),
    ],
)
def test_conv_stride_must_be_a_plain_integer(value, message):
    with pytest.raises(ValueError, match=message):
        fl.conv_forward_fast(X, W, B, {"stride": value, "pad": 1})


def test_numpy_integers_are_integers():
    a, _ = fl.conv_forward_fast(X, W, B, {"stride": np.int64(1), "pad": np.uint8(1)})
    b, _ = fl.conv_forward_fast(X, W, B, {"stride": 1, "pad": 1})
    assert np.array_equal(a, b)


def test_pool_ceil_mode_must_be_a_bool():
    p = {"pool_height": 2, "pool_width": 2, "stride": 2}
    for bad in (1, "yes", [1], 2.0):
        with pytest.raises(ValueError, match="ceil_mode: expected a bool"):
            fl.max_pool_forward_fast(X, dict(p, ceil_mode=bad))
    a, _ = fl.max_pool_forward_fast(X, dict(p, ceil_mode=np.bool_(True)))
    b, _ = fl.max_pool_forward_fast(X, dict(p, ceil_mode=True))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("G", [2**70, -1, True, 1.5])
def test_groupnorm_G_out_of_range_or_not_an_integer(G):
    with pytest.raises(ValueError, match="G: expected an integer"):
        fl.spatial_groupnorm_forward(X, np.ones(3), np.zeros(3), G, {})


@pytest.mark.parametrize("seed", [2**64, -1, True, 0.5])
def test_dropout_seed_out_of_range_or_not_an_integer(seed):
    with pytest.raises(ValueError, match="seed: expected an integer"):
        fl.dropout_forward(X, {"mode": "train", "p": 0.5, "seed": seed})


def test_dropout_seed_at_the_top_of_the_range_is_accepted():
    a, _ = fl.dropout_forward(X, {"mode": "train", "p": 0.5, "seed": 2**64 - 1})
    b, _ = fl.dropout_forward(X, {"mode": "train", "p": 0.5, "seed": 2**64 - 1})
    assert np.array_equal(a, b)


def test_non_numbers_and_non_strings_in_param_dicts():
    for p in ("half", True):
        with pytest.raises(ValueError, match="p: expected a number"):
            fl.dropout_forward(X, {"mode": "train", "p": p})
    with pytest.raises(ValueError, match="eps: expected a number"):
        fl.layernorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), {"eps": False})
    with pytest.raises(ValueError, match="mode: expected a str"):
        fl.dropout_forward(X, {"mode": 1, "p": 0.5})
    with pytest.raises(ValueError, match="convention: expected a str"):
        fl.batchnorm_forward(np.zeros((2, 3)), np.ones(3), np.zeros(3), {"mode": "train", "convention": 0})


@pytest.mark.parametrize(
    "y, message",
    [
        (np.array([0.0, 1.9]), "y: expected integer labels, found dtype float64"),
        (np.array([[0], [1]]), "y: expected a 1-D array of labels, found shape \\(2, 1\\)"),
        (np.array([True, False]), "y: expected integer labels, found dtype bool"),
        ([0, 2**70], "y: expected integer labels, found dtype object"),
        (np.array([0, -1]), "y: expected labels in 0..2\\*\\*64, found -1 at index 1"),
        (np.array([0, 2**63], dtype=np.uint64), "y: expected every label in 0..3"),
    ],
)
def test_labels_are_refused_not_coerced(y, message):
    for loss in (fl.softmax_loss, fl.svm_loss):
        with pytest.raises(ValueError, match=message):
            loss(np.zeros((2, 3)), y)


def test_labels_of_any_integer_dtype_or_a_list_are_read_exactly():
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    ref = fl.softmax_loss(x, np.array([2, 1]))
    for y in ([2, 1], np.array([2, 1], np.uint8), np.array([2, 1], np.int32), np.array([2, 1], np.uint64)):
        got = fl.softmax_loss(x, y)
        assert got[0] == ref[0] and np.array_equal(got[1], ref[1])


def test_running_statistics_must_have_shape_C():
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    bad = {"mode": "train", "running_mean": np.zeros(3), "running_var": np.ones((3, 1))}
    with pytest.raises(ValueError, match="running_var: expected a 1-D array of shape \\(C,\\), found shape \\[3, 1\\]"):
        fl.batchnorm_forward(x, np.ones(3), np.zeros(3), bad)


# ---------- arrays shared between threads while the GIL is released ----------
#
# The guarantee (README, "Python"): the module never writes into an array it did not create
# (outputs are new arrays; updated running statistics replace the dict's entries with new
# arrays). Inputs are shared borrows (rust-numpy's borrow tracking), so any number of calls may
# read the same arrays at once, and they give the bits of a call made alone. A write to an input
# from another thread during a call is not something the module can see (numpy's own
# GIL-releasing functions share this): the values read are then unspecified, but shapes and
# strides are fixed before the GIL is released, so it stays memory-safe.


def test_inputs_are_never_written():
    x, w = X.copy(), W.copy()
    out, cache = fl.conv_forward_fast(x, w, B, {"stride": 1, "pad": 1})
    dout = np.ones_like(out)
    fl.conv_backward_fast(dout, cache)
    assert np.array_equal(x, X) and np.array_equal(w, W) and np.all(dout == 1)
    rm, rv = np.zeros(3), np.ones(3)
    p = {"mode": "train", "running_mean": rm, "running_var": rv}
    fl.batchnorm_forward(np.linspace(-1, 1, 12).reshape(4, 3), np.ones(3), np.zeros(3), p)
    assert np.all(rm == 0) and np.all(rv == 1) and p["running_mean"] is not rm


def test_the_same_array_as_several_inputs():
    # x, w and b may be the same buffer: every input is read-only.
    a = np.linspace(-1, 1, 27).reshape(1, 3, 3, 3)
    out, cache = fl.conv_forward_fast(a, a, a[0, 0, 0, :1], {"stride": 1, "pad": 1})
    ref, _ = fl.conv_forward_naive(a.copy(), a.copy(), a[0, 0, 0, :1].copy(), {"stride": 1, "pad": 1})
    assert np.allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_concurrent_calls_on_shared_inputs_give_the_bits_of_one_call():
    x = np.random.default_rng(0).standard_normal((8, 16, 16, 16)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = np.zeros(16, np.float32)
    p = {"stride": 1, "pad": 1}
    ref, cache = fl.conv_forward_fast(x, w, b, p)
    dref = fl.conv_backward_fast(ref, cache)
    errors, results = [], []

    def run():
        try:
            for _ in range(5):
                o, c = fl.conv_forward_fast(x, w, b, p)
                d = fl.conv_backward_fast(o, c)
                results.append(np.array_equal(o, ref) and all(np.array_equal(u, v) for u, v in zip(d, dref)))
        except Exception as e:  # a failure on a worker thread must fail the test
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a concurrent call did not finish"
    assert not errors and len(results) == 20 and all(results)


def test_a_racing_writer_cannot_crash_a_call():
    x = np.ones((4, 8, 16, 16))
    w = np.ones((8, 8, 3, 3))
    b = np.zeros(8)
    stop = threading.Event()

    def writer():
        v = 0.0
        while not stop.is_set():
            x[...] = v  # in place, with the GIL released inside numpy's assignment too
            v += 1.0

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(20):
            out, cache = fl.conv_forward_fast(x, w, b, {"stride": 1, "pad": 1})
            assert out.shape == (4, 8, 16, 16) and np.all(np.isfinite(out))
            fl.conv_backward_fast(out, cache)
    finally:
        stop.set()
        t.join()
