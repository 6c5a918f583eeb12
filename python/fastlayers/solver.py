"""cs231n's solver.py: the Solver with the notebook's constructor arguments, `train()`,
`check_accuracy()`, loss and accuracy histories, the best validation parameters restored at the
end, and the notebook's printout."""

import pickle

import numpy as np

from . import optim


class Solver(object):
    def __init__(self, model, data, **kwargs):
        self.model = model
        self.X_train, self.y_train = data["X_train"], data["y_train"]
        self.X_val, self.y_val = data["X_val"], data["y_val"]
        self.update_rule = kwargs.pop("update_rule", "sgd")
        self.optim_config = kwargs.pop("optim_config", {})
        self.lr_decay = kwargs.pop("lr_decay", 1.0)
        self.batch_size = kwargs.pop("batch_size", 100)
        self.num_epochs = kwargs.pop("num_epochs", 10)
        self.num_train_samples = kwargs.pop("num_train_samples", 1000)
        self.num_val_samples = kwargs.pop("num_val_samples", None)
        self.checkpoint_name = kwargs.pop("checkpoint_name", None)
        self.print_every = kwargs.pop("print_every", 10)
        self.verbose = kwargs.pop("verbose", True)
        if len(kwargs) > 0:
            raise ValueError("Unrecognized arguments %s" % ", ".join('"%s"' % k for k in kwargs))
        if not hasattr(optim, self.update_rule):
            raise ValueError('Invalid update_rule "%s"' % self.update_rule)
        self.update_rule = getattr(optim, self.update_rule)
        self._reset()

    def _reset(self):
        self.epoch = 0
        self.best_val_acc = 0
        self.best_params = {}
        self.loss_history = []
        self.train_acc_history = []
        self.val_acc_history = []
        self.optim_configs = {p: dict(self.optim_config) for p in self.model.params}

    def _step(self):
        num_train = self.X_train.shape[0]
        batch_mask = np.random.choice(num_train, self.batch_size)
        X_batch, y_batch = self.X_train[batch_mask], self.y_train[batch_mask]
        loss, grads = self.model.loss(X_batch, y_batch)
        self.loss_history.append(loss)
        for p, w in self.model.params.items():
            next_w, next_config = self.update_rule(w, grads[p], self.optim_configs[p])
            self.model.params[p] = next_w
            self.optim_configs[p] = next_config

    def _save_checkpoint(self):
        if self.checkpoint_name is None:
            return
        checkpoint = {
            "model": self.model, "update_rule": self.update_rule, "lr_decay": self.lr_decay,
            "optim_config": self.optim_config, "batch_size": self.batch_size,
            "num_train_samples": self.num_train_samples, "num_val_samples": self.num_val_samples,
            "epoch": self.epoch, "loss_history": self.loss_history,
            "train_acc_history": self.train_acc_history, "val_acc_history": self.val_acc_history,
        }
        filename = "%s_epoch_%d.pkl" % (self.checkpoint_name, self.epoch)
        if self.verbose:
            print('Saving checkpoint to "%s"' % filename)
        with open(filename, "wb") as f:
            pickle.dump(checkpoint, f)

    def check_accuracy(self, X, y, num_samples=None, batch_size=100):
        N = X.shape[0]
        if num_samples is not None and N > num_samples:
            mask = np.random.choice(N, num_samples)
            N, X, y = num_samples, X[mask], y[mask]
        num_batches = N // batch_size + (N % batch_size != 0)
        y_pred = []
        for i in range(num_batches):
            scores = self.model.loss(X[i * batch_size:(i + 1) * batch_size])
            y_pred.append(np.argmax(scores, axis=1))
        return np.mean(np.hstack(y_pred) == y)

    def train(self):
        num_train = self.X_train.shape[0]
        iterations_per_epoch = max(num_train // self.batch_size, 1)
        num_iterations = self.num_epochs * iterations_per_epoch
        for t in range(num_iterations):
            self._step()
            if self.verbose and t % self.print_every == 0:
                print("(Iteration %d / %d) loss: %f" % (t + 1, num_iterations,
                                                        self.loss_history[-1]))
            epoch_end = (t + 1) % iterations_per_epoch == 0
            if epoch_end:
                self.epoch += 1
                for k in self.optim_configs:
                    self.optim_configs[k]["learning_rate"] = (
                        self.optim_configs[k].get("learning_rate", 1e-2) * self.lr_decay)
            if t == 0 or t == num_iterations - 1 or epoch_end:
                train_acc = self.check_accuracy(self.X_train, self.y_train,
                                                num_samples=self.num_train_samples)
                val_acc = self.check_accuracy(self.X_val, self.y_val,
                                              num_samples=self.num_val_samples)
                self.train_acc_history.append(train_acc)
                self.val_acc_history.append(val_acc)
                self._save_checkpoint()
                if self.verbose:
                    print("(Epoch %d / %d) train acc: %f; val_acc: %f" % (
                        self.epoch, self.num_epochs, train_acc, val_acc))
                if val_acc > self.best_val_acc:
                    self.best_val_acc = val_acc
                    self.best_params = {k: v.copy() for k, v in self.model.params.items()}
        self.model.params = self.best_params
