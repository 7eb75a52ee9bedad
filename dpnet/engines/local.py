"""The in-process engine: the reference every other engine is tested against."""
from __future__ import annotations

import numpy as np


class LocalEngine:
    name = "local"

    def __init__(self, eval_batch_size=2048):
        self.eval_batch_size = eval_batch_size
        self.model = None
        self.data = {}
        self._xbuf = None

    def start(self, model, datasets, seed=0):
        self.model, self.seed = model, seed
        self.data = {k: v for k, v in datasets.items() if v is not None}

    def gradient(self, step, idx):
        """Mean gradient over training samples ``idx`` into model.grads."""
        x, y = self.data["train"]
        shape = (len(idx), x.shape[1])
        if self._xbuf is None or self._xbuf.shape != shape:
            self._xbuf = np.empty(shape, dtype=x.dtype)
        np.take(x, idx, axis=0, out=self._xbuf)   # gather into a reused buffer
        self.model.seed_step(self.seed, step)
        loss, n = self.model.loss_and_grad(self._xbuf, y[idx])
        return loss, n, self.model.last_correct

    def weights_changed(self, step):
        """Called after every update; the in-process engine reads the weights directly."""

    def evaluate(self, name):
        """(mean loss, n, correct) over a whole named dataset."""
        x, y = self.data[name]
        loss_sum, n_tot, correct = 0.0, 0, 0
        for s in range(0, len(x), self.eval_batch_size):
            loss, n, c = self.model.loss_and_correct(x[s:s + self.eval_batch_size],
                                                     y[s:s + self.eval_batch_size])
            loss_sum += loss * n
            n_tot += n
            correct += c
        return loss_sum / max(n_tot, 1), n_tot, correct

    def stats(self):
        return {}

    def close(self):
        self.data = {}
