"""The in-process engine: the reference every other engine is tested against.

It runs the same task code as a worker process (``dpnet.models.tasks``), on one
shard that covers the whole step.
"""
from __future__ import annotations

import math

from ..models.registry import task_for
from ..models.tasks import stateful


class LocalEngine:
    name = "local"

    def __init__(self, eval_batch_size=2048):
        self.eval_batch_size = eval_batch_size
        self.model = self.task = None
        self.arrays = {}

    def start(self, model, datasets, seed=0):
        self.model = model
        self.task_cls = task_for(model)
        self.arrays, options = self.task_cls.shared_arrays(
            model, {k: v for k, v in datasets.items() if v is not None})
        self.task = self.task_cls(model, self.arrays, seed, options, self.eval_batch_size)

    def gradient(self, step, batch):
        """Mean gradient of one step into model.grads: (loss, n, correct)."""
        n, extra, index = self.task_cls.plan_step(self.arrays, step, batch)
        return self.task.step({"step": step, "start": 0, "stop": n, **extra}, index)

    def step(self, step, batch):
        """One training step: gradient and update. Returns (loss, n, correct); a
        non-finite loss leaves the weights as they were."""
        out = self.gradient(step, batch)
        if math.isfinite(out[0]):
            self.model.apply_gradients()
        return out

    def weights_changed(self, step):
        """Called after every update; the in-process engine reads the weights directly."""

    def sync_to_host(self):
        """The model is the engine's: always current."""

    def evaluate(self, name):
        """(mean loss, n, correct) over a whole named dataset."""
        n, extra = self.task_cls.plan_eval(self.arrays, name)
        return self.task.evaluate({"split": name, "start": 0, "stop": n, "step": 0, **extra})

    def get_state(self, chunk):
        """The carried (h, c) that training chunk ``chunk`` starts from (LSTM only)."""
        return stateful(self.task_cls).read_state(self.arrays, chunk)

    def set_state(self, chunk, state):
        """Make training chunk ``chunk`` start from ``state`` = (h, c) (LSTM only)."""
        stateful(self.task_cls).write_state(self.arrays, chunk, state)

    def stats(self):
        return {}

    def close(self):
        self.arrays = {}
        self.task = None
