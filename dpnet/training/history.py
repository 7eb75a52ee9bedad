"""What a training run records: ``History`` (per epoch, as Keras's) for ``fit`` and
``TextHistory`` (per step) for ``fit_text``. Both go into checkpoints as dicts, so a
resumed run's history covers the whole training."""
from __future__ import annotations

import math

LN2 = math.log(2.0)


def exit_code(history):
    """The process exit code a run's history calls for: 0, or 128 + the number of the
    signal that stopped it (130 for Ctrl-C, 143 for SIGTERM, 129 for a hang-up)."""
    import signal
    if not history.interrupted:
        return 0
    try:
        return 128 + signal.Signals[history.stop_signal].value
    except (KeyError, TypeError):
        return 130


class History:
    """Per-epoch metrics: ``history.history["val_loss"][-1]`` as in Keras."""

    def __init__(self):
        self.history = {}
        self.epochs = []
        self.interrupted = False      # stopped by Ctrl-C / SIGTERM / SIGHUP / SIGQUIT
        self.stop_signal = None       # ... and by which: "SIGINT", ...
        self.stopped_early = False    # stopped by a callback
        self.wall_time = 0.0          # seconds training (evaluations, checkpoints in)
        self.start_time = 0.0         # seconds the engine took to start (workers to join)
        self.samples = 0
        self.step = 0                 # updates applied so far (set by fit)
        self.saved_step = None        # the step of the last checkpoint this run wrote
        self.engine_stats = {}
        # a checkpoint's sums of the epoch it was saved in the middle of ({"step",
        # "loss_sum", "correct", "seen", "seconds"}): a run resumed there takes them
        self.partial = None

    def append(self, epoch, metrics):
        """Record an epoch. A metric that earlier epochs lacked (a resumed run that now
        watches the test set) or that this one lacks gets NaN there, so every list in
        ``history`` stays as long as ``epochs``."""
        n = len(self.epochs)
        self.epochs.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, [math.nan] * n).append(v)
        for k, values in self.history.items():
            if len(values) == n:
                values.append(math.nan)

    def to_dict(self):
        return {"epochs": self.epochs, "history": self.history, "interrupted": self.interrupted,
                "stopped_early": self.stopped_early, "wall_time": self.wall_time}

    @classmethod
    def from_dict(cls, d):
        h = cls()
        h.epochs = list(d.get("epochs", []))
        h.history = {k: list(v) for k, v in d.get("history", {}).items()}
        h.wall_time = float(d.get("wall_time", 0.0))
        return h

    def __repr__(self):
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"


class TextHistory:
    """What a run recorded. Per step: ``steps``, ``loss``, ``smooth_loss`` (nats/char);
    per validation: ``val_steps``, ``val_loss``; per progress line: ``rate_steps``,
    ``chars_per_s``; ``samples`` as (step, text). A resumed run appends to the history
    it was given, so the lists cover the whole training."""

    def __init__(self):
        self.steps, self.loss, self.smooth_loss = [], [], []
        self.val_steps, self.val_loss = [], []
        self.rate_steps, self.chars_per_s = [], []
        self.samples = []
        self.chars = 0                 # characters trained on
        self.train_time = 0.0          # seconds in gradient + update (the chars/s basis)
        self.wall_time = 0.0
        self.start_time = 0.0          # seconds the engine took to start (workers to join)
        self.step = 0
        self.saved_step = None         # the step of the last checkpoint this run wrote
        self.interrupted = False       # stopped by Ctrl-C / SIGTERM / SIGHUP / SIGQUIT
        self.stop_signal = None        # ... and by which: "SIGINT", ...
        self.stopped_early = False     # stopped by a callback
        self.engine_stats = {}

    @property
    def val_bits_per_char(self):
        return [v / LN2 for v in self.val_loss]

    @property
    def mean_chars_per_s(self):
        return self.chars / self.train_time if self.train_time > 0 else 0.0

    def recent_loss(self, k=100):
        """Mean per-step loss over the last ``k`` steps (None before any step)."""
        tail = self.loss[-k:]
        return sum(tail) / len(tail) if tail else None

    _LISTS = ("steps", "loss", "smooth_loss", "val_steps", "val_loss", "rate_steps",
              "chars_per_s", "samples")
    _SCALARS = ("chars", "train_time", "wall_time", "step", "interrupted", "stopped_early")

    def to_dict(self):
        d = {k: list(getattr(self, k)) for k in self._LISTS}
        d["samples"] = [list(s) for s in self.samples]
        d.update({k: getattr(self, k) for k in self._SCALARS})
        return d

    @classmethod
    def from_dict(cls, d):
        h = cls()
        if not isinstance(d, dict):
            raise ValueError(f"a history must be a dict, got {type(d).__name__}")
        for k in cls._LISTS:
            setattr(h, k, list(d.get(k, [])))
        h.samples = [tuple(s) for s in h.samples]
        for k in cls._SCALARS:
            if k in d:
                setattr(h, k, type(getattr(h, k))(d[k]))
        return h

    def __repr__(self):
        return (f"TextHistory(step={self.step}, last loss={self.recent_loss(1)}, "
                f"{len(self.val_loss)} validations)")
