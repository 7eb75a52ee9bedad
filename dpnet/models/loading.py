"""Models back from checkpoints: ``load`` rebuilds one, ``load_weights_into`` fills an
existing one after checking that it has the same architecture."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from ..optim.optimizers import claim_optimizer, optimizer_from_config
from ..storage.checkpoint import CheckpointError, read_checkpoint
from .registry import model_class


def _check_params(path, arrays, meta, n_params=None, dtype=None):
    params = arrays.get("params")
    if params is None:
        raise CheckpointError(f"checkpoint {path!r} has no parameter array")
    want_n = meta.get("n_params") if n_params is None else n_params
    want_dt = meta.get("dtype") if dtype is None else np.dtype(dtype).name
    if params.ndim != 1 or params.shape[0] != want_n:
        raise CheckpointError(f"checkpoint {path!r} holds {params.size} parameters, "
                              f"expected {want_n}")
    if params.dtype.name != want_dt:
        raise CheckpointError(f"checkpoint {path!r} holds {params.dtype} parameters, "
                              f"expected {want_dt}")
    if not np.isfinite(params).all():
        raise CheckpointError(f"checkpoint {path!r} holds non-finite parameters")
    return params


def _restore_optimizer(path, model, arrays, meta):
    o = meta.get("optimizer")
    if not isinstance(o, dict):
        raise CheckpointError(f"checkpoint {path!r} has no optimizer state")
    try:
        opt = optimizer_from_config(o["config"])
        opt.load_state_dict({"t": o["t"], "arrays": {k[4:]: v for k, v in arrays.items()
                                                     if k.startswith("opt.")}},
                            like=model.params)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} has bad optimizer state: {e}") from None
    claim_optimizer(opt, model)
    model.optimizer = opt


def load(path):
    """Rebuild the model stored at ``path``, with its optimizer state.

    The checkpoint's metadata (epoch, history, ...) is on ``model.checkpoint_meta``."""
    arrays, meta = read_checkpoint(path)
    cfg = meta.get("model")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path!r} has no model description")
    try:
        cls = model_class(cfg.get("type"))
    except ValueError:
        raise CheckpointError(f"checkpoint {path!r} holds an unknown model type "
                              f"{cfg.get('type')!r}") from None
    try:
        cfg = cls.upgrade_config(cfg)
        # the size the description claims, before anything of that size is allocated:
        # an edited description must not make the loader reserve gigabytes
        n = cls.config_n_params(cfg)
        params = arrays.get("params")
        if params is None:
            raise CheckpointError(f"checkpoint {path!r} has no parameter array")
        if params.size != n:
            raise CheckpointError(f"checkpoint {path!r} describes a model of {n:,} "
                                  f"parameters but holds {params.size:,}")
        model = cls.from_config(cfg)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} has a bad model description: {e}") from None
    model.params[...] = _to_backend(model.params, _check_params(path, arrays, meta,
                                                                 model.n_params, model.dtype))
    _restore_optimizer(path, model, arrays, meta)
    if meta.get("vocabulary") is not None and hasattr(model, "vocab"):
        from ..data.text import TextError, Vocabulary
        try:
            model.vocab = Vocabulary.from_list(meta["vocabulary"])
        except TextError as e:
            raise CheckpointError(f"checkpoint {path!r}: {e}") from None
    model.checkpoint_meta = meta
    return model


def load_weights_into(model, path, optimizer="checkpoint"):
    """Copy a checkpoint's weights and optimizer state into an existing ``model``,
    refusing one of a different architecture (naming the first difference).

    optimizer="checkpoint": the model takes the checkpoint's optimizer (rule,
    hyperparameters, schedule and state). optimizer="state": the model keeps its own
    optimizer, which must be the same rule with the same hyperparameters, and takes
    the checkpoint's state (step count, moments) -- its own schedule is kept.
    optimizer="none": the weights alone; the model's optimizer is left as it is."""
    arrays, meta = read_checkpoint(path)
    theirs, ours = meta.get("model"), model.config()
    if not isinstance(theirs, dict):
        raise CheckpointError(f"checkpoint {path!r} has no model description")
    if theirs.get("type") != ours.get("type"):
        raise CheckpointError(f"checkpoint {path!r} holds a {theirs.get('type')!r}, "
                              f"not a {ours.get('type')!r}")
    theirs = type(model).upgrade_config(theirs)
    for key in type(model).architecture_keys:
        if key in ours and without_init(theirs.get(key)) != without_init(ours[key]):
            raise CheckpointError(f"checkpoint {path!r} does not match the model: "
                                  f"{_difference(key, theirs.get(key), ours[key])}")
    params = _check_params(path, arrays, meta, model.n_params, model.dtype)
    if optimizer == "state":
        ours = {k: v for k, v in model.optimizer.config().items() if k != "schedule"}
        o = meta.get("optimizer")
        if not isinstance(o, dict) or not isinstance(o.get("config"), dict):
            raise CheckpointError(f"checkpoint {path!r} has no optimizer state")
        theirs = {k: v for k, v in o["config"].items() if k != "schedule"}
        if ours != theirs:
            raise CheckpointError(f"checkpoint {path!r} was trained with optimizer {theirs}, "
                                  f"not {ours}; resume with the same optimizer settings")
        keep = model.optimizer
        _restore_optimizer(path, model, arrays, meta)
        keep.t, keep.state = model.optimizer.t, model.optimizer.state
        model.optimizer = keep
    elif optimizer == "checkpoint":
        _restore_optimizer(path, model, arrays, meta)
    elif optimizer != "none":
        raise ValueError(f"optimizer must be 'checkpoint', 'state' or 'none', got "
                         f"{optimizer!r}")
    model.params[...] = _to_backend(model.params, params)
    model.checkpoint_meta = meta
    return meta


def without_init(value):
    """A layer list as compared for loading: a layer's initializer chose weights that
    the checkpoint's replace, so it is no part of the architecture."""
    if isinstance(value, list):
        return [{k: v for k, v in c.items() if k != "init"} if isinstance(c, dict) else c
                for c in value]
    return value


def _to_backend(like, host):
    return xp_of(like).asarray(host)


def _difference(key, theirs, ours):
    """Where the checkpoint's architecture value differs from the model's: the first
    layer that differs and its settings, or both values in brief."""
    if isinstance(theirs, list) and isinstance(ours, list) and len(theirs) == len(ours):
        for i, (a, b) in enumerate(zip(theirs, ours)):
            if a != b and isinstance(a, dict) and isinstance(b, dict):
                keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
                return (f"layer {i} ({a.get('type')}): the checkpoint has "
                        + ", ".join(f"{k} {a.get(k)!r}" for k in keys) + "; this model "
                        + ", ".join(f"{k} {b.get(k)!r}" for k in keys))
    return f"{key} {_brief(theirs)} != {_brief(ours)}"


def _brief(layers):
    if isinstance(layers, list):
        return "[" + ", ".join(f"{c.get('type')}({c.get('n_in', c.get('rate'))}"
                               f"{', ' + str(c['n_out']) if 'n_out' in c else ''}"
                               f"{', ' + c['activation'] if 'activation' in c else ''})"
                               for c in layers if isinstance(c, dict)) + "]"
    return repr(layers)
