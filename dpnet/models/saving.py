"""What a model puts in a checkpoint (the format itself is ``dpnet.storage.checkpoint``;
reading a model back is ``dpnet.models.loading``)."""
from __future__ import annotations

import os

from ..backend import xp_of
from ..storage.checkpoint import write_checkpoint


class NotFiniteWeights(ValueError):
    """Weights that are not finite, refused for a checkpoint: ``dpnet.load`` would
    refuse the file (a training loop turns it into ``Diverged``)."""


def model_arrays_and_meta(model, **extra):
    """What a model contributes to a checkpoint: params, optimizer state, config;
    ``NotFiniteWeights`` if the weights are not all finite."""
    p = model.params
    finite = xp_of(p).isfinite(p)
    if not bool(finite.all()):
        raise NotFiniteWeights(f"the model's weights are not finite "
                               f"({int((~finite).sum()):,} of {p.size:,})")
    opt = model.optimizer.state_dict()
    arrays = {"params": model.params}
    arrays.update({f"opt.{k}": v for k, v in opt["arrays"].items()})
    meta = {"model": model.config(), "n_params": int(model.n_params),
            "dtype": model.dtype.name,
            "optimizer": {"config": opt["config"], "t": opt["t"]}}
    meta.update(extra)
    return arrays, meta


def save_model(path, model, arrays=None, **extra):
    """Atomically write ``model`` (weights, optimizer state, config), further ``arrays``
    (names other than the model's own) and ``extra`` metadata to ``path``. Weights that
    are not finite are refused (``NotFiniteWeights``, a ValueError)."""
    try:
        own, meta = model_arrays_and_meta(model, **extra)
    except NotFiniteWeights as e:
        raise NotFiniteWeights(f"{e}: not saved to {os.fspath(path)!r}") from None
    for name in arrays or {}:
        if name in own:
            raise ValueError(f"array name {name!r} is the model's own")
    write_checkpoint(path, {**own, **(arrays or {})}, meta)
