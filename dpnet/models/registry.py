"""The kinds of model, known in one place: checkpoints, engines and workers ask here.

A kind is a model class (with ``kind``, the ``type`` of its ``config()``; ``from_config``;
``architecture_keys``, the config entries a checkpoint must match to be loaded into an
existing model; ``upgrade_config``, which fills in what older configs lack) and a task
class (``dpnet.models.tasks``: what one shard of a step is). Adding a kind is a model
file, a task and one ``register`` line below.
"""
from __future__ import annotations

from .lstm import CharLSTM
from .mlp import Sequential
from .tasks import LstmTask, MlpTask

_KINDS = {}          # config "type" -> (model class, task class)


def register(model_cls, task_cls):
    """Make ``model_cls`` (and its ``task_cls``) known to checkpoints, engines and workers."""
    kind = model_cls.kind
    if kind in _KINDS or any(t.name == task_cls.name for _, t in _KINDS.values()):
        raise ValueError(f"model kind {kind!r} or task {task_cls.name!r} is registered already")
    _KINDS[kind] = (model_cls, task_cls)


register(Sequential, MlpTask)
register(CharLSTM, LstmTask)


def kinds():
    return sorted(_KINDS)


def model_class(kind):
    """The model class of a config ``type``, or ValueError naming it."""
    if kind not in _KINDS:
        raise ValueError(f"unknown model type {kind!r} (known: {', '.join(kinds())})")
    return _KINDS[kind][0]


def model_from_config(cfg, xp=None):
    """Rebuild a model (weights freshly initialized) from its ``config()`` dict, its
    arrays on ``xp`` (numpy by default; cupy in a GPU worker)."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    cls = model_class(kind)
    return cls.from_config(cls.upgrade_config(cfg)) if xp is None else \
        cls.from_config(cls.upgrade_config(cfg), xp=xp)


def task_for(model):
    """The task class that computes shards of ``model``'s steps."""
    kind = model.config().get("type")
    if kind not in _KINDS:
        raise ValueError(f"no engine task for model type {kind!r}")
    return _KINDS[kind][1]


def task_by_name(name):
    for _, task in _KINDS.values():
        if task.name == name:
            return task
    raise ValueError(f"unknown engine task {name!r}")
