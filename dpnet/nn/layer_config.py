"""Layers rebuilt from the configs that models (and checkpoints) record."""
from __future__ import annotations

from .deform import Deform
from .initializers import INITIALIZERS
from .layers import Dense, Dropout
from .maxout import Maxout


def layer_from_config(cfg):
    kind = cfg.get("type")
    if kind in ("dense", "maxout"):
        # The initializer is recorded, not needed: a rebuilt layer's weights are always
        # overwritten (from a checkpoint, or by the shared weights in a worker). A
        # custom callable is known only by name, so it must not stop the rebuild.
        init = cfg.get("init", "xavier_uniform")
        init = init if init in INITIALIZERS else "xavier_uniform"
        if kind == "maxout":
            layer = Maxout(int(cfg["n_in"]), int(cfg["n_out"]), pieces=int(cfg["pieces"]),
                           init=init, max_norm=cfg.get("max_norm"))
        else:
            layer = Dense(int(cfg["n_in"]), int(cfg["n_out"]), activation=cfg["activation"],
                          init=init, max_norm=cfg.get("max_norm"))
        layer.init_name = cfg.get("init", "xavier_uniform")
        return layer
    if kind == "dropout":
        return Dropout(float(cfg["rate"]))
    if kind == "deform":
        return Deform.from_config(cfg)
    raise ValueError(f"unknown layer type {kind!r} in model config")
