"""The notebooks' training cells with only the import changed: the classifiers' gradients
against numeric ones, the update rules, the Solver overfitting small data, get_CIFAR10_data on
the official binary layout and its errors."""

import os

import numpy as np
import pytest

from fastlayers import eval_numerical_gradient, rel_error
from fastlayers.classifiers import FullyConnectedNet, ThreeLayerConvNet, TwoLayerNet
from fastlayers.data_utils import get_CIFAR10_data
from fastlayers.optim import adam, rmsprop, sgd, sgd_momentum
from fastlayers.solver import Solver


def check_grads(model, X, y, tol=1e-6):
    """The notebooks' loop; asserts max |num - ana| <= tol * max |ana| + 1e-8 (the measure the
    Rust tests use: rel_error alone blows up on entries that are zero in exact arithmetic)."""
    loss, grads = model.loss(X, y)
    for name in sorted(grads):
        f = lambda _: model.loss(X, y)[0]
        num = eval_numerical_gradient(f, model.params[name], verbose=False, h=1e-6)
        worst = np.max(np.abs(num - grads[name]))
        scale = np.max(np.abs(grads[name]))
        print("%s relative error: %.2e" % (name, rel_error(num, grads[name])))
        assert worst <= tol * scale + 1e-8, (name, worst, scale)
    return loss


@pytest.mark.parametrize("normalization", [None, "batchnorm", "layernorm"])
@pytest.mark.parametrize("reg,dropout", [(0, 1), (3.14, 1), (0, 0.5)])
def test_fully_connected_net_gradients(normalization, reg, dropout):
    np.random.seed(231)
    N, D, H1, H2, C = 2, 15, 20, 30, 10
    X = np.random.randn(N, D)
    y = np.random.randint(C, size=(N,))
    model = FullyConnectedNet([H1, H2], input_dim=D, num_classes=C, reg=reg,
                              weight_scale=5e-2, dtype=np.float64,
                              normalization=normalization, dropout=dropout, seed=123)
    # Batch norm over N = 2 is ill-conditioned (each normalised value is +-1 and its
    # derivative goes as 1 / |x1 - x2|), so the centred difference's h^2 * f''' truncation
    # error reaches 1e-5 of the gradient here; the notebook prints up to 1e-4 for W1 too.
    loss = check_grads(model, X, y, tol=1e-4 if normalization == "batchnorm" else 1e-6)
    if reg == 0 and dropout == 1:
        assert abs(loss - np.log(C)) < 0.2, loss  # the notebook's "Initial loss" ~2.3
    if reg > 0:
        assert loss > np.log(C)


def test_two_layer_net_gradients():
    np.random.seed(0)
    X = np.random.randn(3, 5)
    y = np.array([0, 2, 1])
    check_grads(TwoLayerNet(input_dim=5, hidden_dim=50, num_classes=3, weight_scale=1e-1,
                            reg=0.7), X, y)


def test_three_layer_conv_net_gradients_and_initial_loss():
    np.random.seed(231)
    X = np.random.randn(2, 3, 16, 16)
    y = np.random.randint(10, size=2)
    model = ThreeLayerConvNet(num_filters=3, filter_size=3, input_dim=(3, 16, 16), hidden_dim=7,
                              weight_scale=1e-1, dtype=np.float64)
    check_grads(model, X, y)
    # The notebook's sanity check: loss ~ log(10) with small weights, higher with reg.
    model = ThreeLayerConvNet()
    X = np.random.randn(50, 3, 32, 32)
    y = np.random.randint(10, size=50)
    loss, _ = model.loss(X, y)
    assert abs(loss - np.log(10)) < 0.02, loss
    model.reg = 0.5
    assert model.loss(X, y)[0] > loss
    assert model.loss(X).shape == (50, 10)


def test_update_rules():
    rng = np.random.RandomState(1)
    w, dw = rng.randn(4, 5), rng.randn(4, 5)
    nw, _ = sgd(w.copy(), dw, {"learning_rate": 0.1})
    assert np.allclose(nw, w - 0.1 * dw)
    v = rng.randn(4, 5)
    nw, cfg = sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    assert np.allclose(cfg["velocity"], 0.9 * v - 1e-3 * dw) and np.allclose(nw, w + cfg["velocity"])
    nw, cfg = rmsprop(w, dw, {"learning_rate": 1e-2})
    assert np.allclose(cfg["cache"], 0.01 * dw ** 2)
    assert np.allclose(nw, w - 1e-2 * dw / (np.sqrt(0.01 * dw ** 2) + 1e-8))
    # Adam's first step, bias-corrected, moves each weight by learning_rate against its
    # gradient's sign (up to epsilon).
    nw, cfg = adam(w, dw, {"learning_rate": 1e-3})
    assert cfg["t"] == 1
    assert np.allclose(nw, w - 1e-3 * np.sign(dw), atol=1e-10)


def _write_cifar_dir(path, n_train=600, n_test=100, seed=0):
    """Images whose class shows in their colour and position, in the official binary layout."""
    rng = np.random.RandomState(seed)
    os.makedirs(path, exist_ok=True)

    def batch(n):
        y = rng.randint(10, size=n).astype(np.uint8)
        x = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.int64)
        for i, c in enumerate(y):
            x[i, c % 3, (c // 3) * 8:(c // 3) * 8 + 8, :] = 255
        rec = np.concatenate([y[:, None], x.reshape(n, -1).astype(np.uint8)], axis=1)
        return rec.astype(np.uint8)

    for b in range(1, 6):
        batch(n_train // 5).tofile(os.path.join(path, "data_batch_%d.bin" % b))
    batch(n_test).tofile(os.path.join(path, "test_batch.bin"))


def test_get_cifar10_data_and_overfit_small_data(tmp_path):
    d = str(tmp_path / "cifar")
    _write_cifar_dir(d)
    data = get_CIFAR10_data(d, num_training=500, num_validation=100, num_test=100)
    assert data["X_train"].shape == (500, 3, 32, 32) and data["X_val"].shape == (100, 3, 32, 32)
    assert abs(data["X_train"].mean(axis=0)).max() < 1e-9
    np.random.seed(231)
    small = {"X_train": data["X_train"][:100], "y_train": data["y_train"][:100],
             "X_val": data["X_val"], "y_val": data["y_val"]}
    model = ThreeLayerConvNet(weight_scale=1e-2)
    solver = Solver(model, small, num_epochs=15, batch_size=50, update_rule="adam",
                    optim_config={"learning_rate": 1e-3}, verbose=True, print_every=1)
    solver.train()
    assert len(solver.loss_history) == 30
    assert solver.train_acc_history[-1] > 0.9, solver.train_acc_history
    model = FullyConnectedNet([100, 100], weight_scale=1e-2, normalization="batchnorm",
                              dropout=0.9)
    solver = Solver(model, small, num_epochs=10, batch_size=25, update_rule="adam",
                    optim_config={"learning_rate": 1e-3}, verbose=False)
    solver.train()
    assert max(solver.train_acc_history) > 0.9, solver.train_acc_history
    assert isinstance(model.params["W1"], np.ndarray)


def test_get_cifar10_data_names_bad_files(tmp_path):
    d = str(tmp_path / "cifar")
    _write_cifar_dir(d)
    b3 = os.path.join(d, "data_batch_3.bin")
    good = open(b3, "rb").read()
    open(b3, "wb").write(good[:-7])
    with pytest.raises(ValueError, match="data_batch_3.bin.*3073"):
        get_CIFAR10_data(d, num_training=400, num_validation=0, num_test=10)
    bad = bytearray(good)
    bad[3073 * 2] = 12
    open(b3, "wb").write(bytes(bad))
    with pytest.raises(ValueError, match="record 2: label byte 12"):
        get_CIFAR10_data(d, num_training=400, num_validation=0, num_test=10)
    os.remove(b3)
    with pytest.raises(ValueError, match="data_batch_3.bin: missing"):
        get_CIFAR10_data(d)
    with pytest.raises(ValueError, match="not a directory"):
        get_CIFAR10_data(str(tmp_path / "nope"))
