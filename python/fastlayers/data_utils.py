"""cs231n's data_utils.get_CIFAR10_data: the 49000 / 1000 / 1000 split, mean image subtracted,
NCHW float arrays. Reads CIFAR-10's binary distribution (data_batch_1.bin .. 5, test_batch.bin,
as `fastlayers train --cifar10` does) or the python one the notebooks download
(data_batch_1 .. 5, test_batch: pickles)."""

import os
import pickle

import numpy as np


def _read_bin(path):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise ValueError("%s: expected a whole number of 3073-byte records, found %d bytes"
                         % (path, raw.size))
    raw = raw.reshape(-1, 3073)
    labels = raw[:, 0].astype(np.int64)
    if labels.max() > 9:
        i = int(np.argmax(labels > 9))
        raise ValueError("%s: record %d: label byte %d is not a class in 0..10"
                         % (path, i, labels[i]))
    return raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float64), labels


def _read_pickle(path):
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    X = np.asarray(d["data"], dtype=np.float64).reshape(-1, 3, 32, 32)
    return X, np.asarray(d["labels"], dtype=np.int64)


def load_CIFAR10(ROOT):
    """(Xtr, Ytr, Xte, Yte) as NCHW float64 and int64 labels."""
    if not os.path.isdir(ROOT):
        raise ValueError("%s: not a directory; expected CIFAR-10's batches" % ROOT)
    binary = os.path.exists(os.path.join(ROOT, "data_batch_1.bin"))
    read, ext = (_read_bin, ".bin") if binary else (_read_pickle, "")
    xs, ys = [], []
    for b in range(1, 6):
        path = os.path.join(ROOT, "data_batch_%d%s" % (b, ext))
        if not os.path.exists(path):
            raise ValueError("%s: missing" % path)
        X, Y = read(path)
        xs.append(X)
        ys.append(Y)
    path = os.path.join(ROOT, "test_batch" + ext)
    if not os.path.exists(path):
        raise ValueError("%s: missing" % path)
    Xte, Yte = read(path)
    return np.concatenate(xs), np.concatenate(ys), Xte, Yte


def get_CIFAR10_data(cifar10_dir="cs231n/datasets/cifar-10-batches-py", num_training=49000,
                     num_validation=1000, num_test=1000, subtract_mean=True):
    X_train, y_train, X_test, y_test = load_CIFAR10(cifar10_dir)
    if num_training + num_validation > X_train.shape[0] or num_test > X_test.shape[0]:
        raise ValueError("split: %d + %d training/validation and %d test images requested, the "
                         "files hold %d and %d" % (num_training, num_validation, num_test,
                                                   X_train.shape[0], X_test.shape[0]))
    X_val = X_train[num_training:num_training + num_validation]
    y_val = y_train[num_training:num_training + num_validation]
    X_train, y_train = X_train[:num_training], y_train[:num_training]
    X_test, y_test = X_test[:num_test], y_test[:num_test]
    if subtract_mean:
        mean_image = np.mean(X_train, axis=0)
        X_train = X_train - mean_image
        X_val = X_val - mean_image
        X_test = X_test - mean_image
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val,
            "X_test": X_test, "y_test": y_test}
