"""Learning-rate schedules: pure functions of the optimizer's step count ``t`` (the
number of updates already applied), so resuming from a checkpoint that stores ``t``
gives exactly the same rates."""
from __future__ import annotations

import inspect
import math

import numpy as np


def _positive(name, v):
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool) \
            or not v > 0 or not math.isfinite(v):
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


class Schedule:
    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def config(self):
        raise NotImplementedError


class Constant(Schedule):
    def __init__(self, lr):
        self.lr = _positive("lr", lr)

    def __call__(self, t):
        return self.lr

    def config(self):
        return {"type": "constant", "lr": self.lr}

    def __str__(self):
        return f"{self.lr:g}"


class ExponentialDecay(Schedule):
    """lr * decay_rate ** (t / decay_steps)."""

    def __init__(self, lr, decay_rate, decay_steps):
        self.lr = _positive("lr", lr)
        self.decay_rate = _positive("decay_rate", decay_rate)
        if self.decay_rate > 1:      # (Keras's order is (lr, decay_steps, decay_rate))
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate!r} (the "
                             f"arguments are lr, decay_rate, decay_steps)")
        self.decay_steps = _positive("decay_steps", decay_steps)

    def __call__(self, t):
        return self.lr * self.decay_rate ** (t / self.decay_steps)

    def config(self):
        return {"type": "exponential", "lr": self.lr, "decay_rate": self.decay_rate,
                "decay_steps": self.decay_steps}

    def __str__(self):
        return f"{self.lr:g} decaying by {self.decay_rate:g} every {self.decay_steps:g} steps"


class StepDecay(Schedule):
    """lr * drop ** floor(t / every): e.g. halve every 10 epochs' worth of steps."""

    def __init__(self, lr, drop, every):
        self.lr = _positive("lr", lr)
        self.drop = _positive("drop", drop)
        if self.drop > 1:
            raise ValueError(f"drop must be in (0, 1], got {drop!r} (the arguments are lr, "
                             f"drop, every)")
        if not isinstance(every, int) or isinstance(every, bool) or every <= 0:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.every = every

    def __call__(self, t):
        return self.lr * self.drop ** (t // self.every)

    def config(self):
        return {"type": "step", "lr": self.lr, "drop": self.drop, "every": self.every}

    def __str__(self):
        return f"{self.lr:g} times {self.drop:g} every {self.every} steps"


class Anneal(Schedule):
    """From ``lr`` at t=0 to ``lr_final`` at t=total_steps, then held: geometrically
    (equal ratios per step, the natural path from 1e-3 to 1e-5) or linearly."""

    def __init__(self, lr, lr_final, total_steps, kind="geometric"):
        self.lr = _positive("lr", lr)
        self.lr_final = _positive("lr_final", lr_final)
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps <= 0:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        if kind not in ("geometric", "linear"):
            raise ValueError(f"kind must be 'geometric' or 'linear', got {kind!r}")
        self.total_steps, self.kind = total_steps, kind

    def __call__(self, t):
        f = min(t, self.total_steps) / self.total_steps
        if self.kind == "linear":
            return self.lr + (self.lr_final - self.lr) * f
        return self.lr * (self.lr_final / self.lr) ** f

    def config(self):
        return {"type": "anneal", "lr": self.lr, "lr_final": self.lr_final,
                "total_steps": self.total_steps, "kind": self.kind}

    def __str__(self):
        how = "" if self.kind == "geometric" else f" {self.kind}ly"
        return f"{self.lr:g} annealed{how} to {self.lr_final:g} over {self.total_steps:,} steps"


_KINDS = {"constant": Constant, "exponential": ExponentialDecay, "step": StepDecay,
          "anneal": Anneal}


def as_schedule(lr):
    if isinstance(lr, Schedule):
        return lr
    return Constant(lr)


def schedule_from_config(cfg):
    if not isinstance(cfg, dict):
        raise ValueError(f"a learning-rate schedule is a JSON object, got {cfg!r}"[:200])
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown schedule type {kind!r}")
    try:
        return _KINDS[kind](**cfg)
    except TypeError:               # a setting missing or unknown: name what it needs
        need = [p for p in inspect.signature(_KINDS[kind]).parameters if p != "self"]
        raise ValueError(f"the {kind!r} schedule takes {', '.join(need)}; got "
                         f"{', '.join(sorted(cfg)) or 'nothing'}") from None
