"""What a worker computes for STEP and EVAL, per model kind. The worker loop and the
protocol know nothing of models; these know nothing of sockets."""
from __future__ import annotations

import json

import numpy as np


def make_task(cfg, arrays, rank):
    kind = cfg["task"]
    if kind == "mlp":
        return MlpTask(cfg, arrays, rank)
    raise ValueError(f"unknown worker task {kind!r}")


def signature_of(model):
    from dpnet.parallel.protocol import model_signature
    return model_signature(json.dumps(model.config(), sort_keys=True), model.n_params,
                           model.dtype)


class MlpTask:
    """Shards of a Sequential's minibatch. Shared arrays: ``weights``, ``grads``
    (one row per rank), ``index`` (the step's sample indices), ``version`` (the step
    whose weights are in ``weights``), and ``<split>.x`` / ``<split>.y`` per dataset."""

    def __init__(self, cfg, arrays, rank):
        from dpnet.models import model_from_config
        self.model = model_from_config(cfg["model"])
        self.model.rebind(params=arrays["weights"], grads=arrays["grads"][rank])
        self.arrays = arrays
        self.seed = int(cfg["seed"])
        self.eval_batch = int(cfg.get("eval_batch_size", 2048))
        self._xbuf = None

    def signature(self):
        return signature_of(self.model)

    def _check_version(self, h):
        have = int(self.arrays["version"][0])
        if have != h["weights_version"]:
            raise RuntimeError(f"weights in shared memory are version {have}, "
                               f"step asks for {h['weights_version']}")

    def step(self, h):                              # one shard of the batch
        self._check_version(h)
        start, stop = h["start"], h["stop"]
        idx = self.arrays["index"][start:stop]
        x, y = self.arrays["train.x"], self.arrays["train.y"]
        shape = (stop - start, x.shape[1])
        if self._xbuf is None or self._xbuf.shape != shape:
            self._xbuf = np.empty(shape, dtype=x.dtype)
        np.take(x, idx, axis=0, out=self._xbuf)
        # row0 = start: the dropout masks of these rows are those of the whole batch
        self.model.seed_step(self.seed, h["step"], row0=start)
        loss, n = self.model.loss_and_grad(self._xbuf, y[idx])
        return loss, n, self.model.last_correct

    def evaluate(self, h):                          # a contiguous range of a dataset
        self._check_version(h)
        x, y = self.arrays[f"{h['split']}.x"], self.arrays[f"{h['split']}.y"]
        loss_sum, n_tot, correct = 0.0, 0, 0
        for s in range(h["start"], h["stop"], self.eval_batch):
            e = min(s + self.eval_batch, h["stop"])
            loss, n, c = self.model.loss_and_correct(x[s:e], y[s:e])
            loss_sum += loss * n
            n_tot += n
            correct += c
        return (loss_sum / n_tot if n_tot else 0.0), n_tot, correct
