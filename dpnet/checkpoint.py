"""Checkpoints: one ``.npz`` of plain numeric arrays plus JSON metadata.

Nothing is ever unpickled: arrays load with ``allow_pickle=False`` and the metadata
is JSON stored as a uint8 array. Files are written to a temporary name in the same
directory, fsynced, then renamed over the target, so a crash mid-write leaves the
previous checkpoint intact. Loading validates everything and raises
``CheckpointError`` with one line naming what is wrong.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib

import numpy as np

from . import __version__
from .backend import to_numpy
from .fileio import atomic_write

FORMAT = "dpnet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def write_checkpoint(path, arrays, meta):
    """Atomically write ``arrays`` ({name: numeric array}) and JSON-able ``meta``."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in arrays.items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise CheckpointError(f"array {k!r} has dtype {a.dtype}; only numbers are stored")
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, dpnet_version=__version__,
                crc32={k: zlib.crc32(a.tobytes()) for k, a in arrays.items()})
    blob = np.frombuffer(json.dumps(meta, default=_plain).encode("utf-8"), dtype=np.uint8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, __meta__=blob, **arrays))


def _plain(v):
    """JSON for the NumPy scalars a caller may put in metadata (``epoch=np.int64(3)``)."""
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    raise TypeError(f"checkpoint metadata must be JSON values (numbers, strings, lists, "
                    f"dicts), got {type(v).__name__}: {v!r}"[:200])


def read_checkpoint(path):
    """(arrays, meta) from a checkpoint, after checking its integrity."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        why = "is a directory" if os.path.isdir(path) else (
            "is not a regular file" if os.path.exists(path) else "does not exist")
        raise CheckpointError(f"checkpoint {path!r} {why}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt (not a readable "
                              f".npz file)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, zlib.error) as e:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt: {e}") from None
    blob = arrays.pop("__meta__", None)
    if blob is None or blob.dtype != np.uint8 or blob.ndim != 1:
        raise CheckpointError(f"{path!r} is not a dpnet checkpoint (no metadata)")
    try:
        meta = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has unreadable metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a dpnet checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version "
                              f"{meta.get('format_version')!r}; this dpnet reads {FORMAT_VERSION}")
    crcs = meta.get("crc32", {})
    for k in crcs:
        if k not in arrays:
            raise CheckpointError(f"checkpoint {path!r} lacks array {k!r}")
        if zlib.crc32(arrays[k].tobytes()) != crcs[k]:
            raise CheckpointError(f"checkpoint {path!r}: array {k!r} fails its checksum")
    return arrays, meta


# -- models -------------------------------------------------------------------------
def model_arrays_and_meta(model, **extra):
    """What a model contributes to a checkpoint: params, optimizer state, config."""
    opt = model.optimizer.state_dict()
    arrays = {"params": model.params}
    arrays.update({f"opt.{k}": v for k, v in opt["arrays"].items()})
    meta = {"model": model.config(), "n_params": int(model.n_params),
            "dtype": model.dtype.name,
            "optimizer": {"config": opt["config"], "t": opt["t"]}}
    meta.update(extra)
    return arrays, meta


def save_model(path, model, **extra):
    arrays, meta = model_arrays_and_meta(model, **extra)
    write_checkpoint(path, arrays, meta)


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
    from .optimizers import optimizer_from_config
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
    model.optimizer = opt


def load(path):
    """Rebuild the model stored at ``path``, with its optimizer state.

    The checkpoint's metadata (epoch, history, ...) is on ``model.checkpoint_meta``."""
    arrays, meta = read_checkpoint(path)
    cfg = meta.get("model")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {path!r} has no model description")
    kind = cfg.get("type")
    try:
        if kind == "Sequential":
            from .models.mlp import Sequential
            model = Sequential.from_config(cfg)
        elif kind == "CharLSTM":
            from .models.lstm import CharLSTM
            model = CharLSTM.from_config(cfg)
        else:
            raise CheckpointError(f"checkpoint {path!r} holds an unknown model type {kind!r}")
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"checkpoint {path!r} has a bad model description: {e}") from None
    model.params[...] = _to_backend(model.params, _check_params(path, arrays, meta,
                                                                 model.n_params, model.dtype))
    _restore_optimizer(path, model, arrays, meta)
    model.checkpoint_meta = meta
    return model


def load_weights_into(model, path, optimizer="checkpoint"):
    """Copy a checkpoint's weights and optimizer state into an existing ``model``,
    refusing one of a different architecture (naming the first difference).

    optimizer="checkpoint": the model takes the checkpoint's optimizer (rule,
    hyperparameters, schedule and state). optimizer="state": the model keeps its own
    optimizer, which must be the same rule with the same hyperparameters, and takes
    the checkpoint's state (step count, moments) -- its own schedule is kept."""
    arrays, meta = read_checkpoint(path)
    theirs, ours = meta.get("model", {}), model.config()
    if theirs.get("type") != ours.get("type"):
        raise CheckpointError(f"checkpoint {path!r} holds a {theirs.get('type')!r}, "
                              f"not a {ours.get('type')!r}")
    if ours.get("type") == "CharLSTM":           # older checkpoints: one layer, unnamed
        theirs = dict(theirs, num_layers=theirs.get("num_layers", 1))
    for key in ("layers", "vocab_size", "hidden_size", "num_layers", "loss"):
        if key in ours and theirs.get(key) != ours[key]:
            raise CheckpointError(f"checkpoint {path!r} does not match the model: {key} "
                                  f"{_brief(theirs.get(key))} != {_brief(ours[key])}")
    params = _check_params(path, arrays, meta, model.n_params, model.dtype)
    if optimizer == "state":
        ours = {k: v for k, v in model.optimizer.config().items() if k != "schedule"}
        o = meta.get("optimizer") or {}
        theirs = {k: v for k, v in (o.get("config") or {}).items() if k != "schedule"}
        if ours != theirs:
            raise CheckpointError(f"checkpoint {path!r} was trained with optimizer {theirs}, "
                                  f"not {ours}; resume with the same optimizer settings")
        keep = model.optimizer
        _restore_optimizer(path, model, arrays, meta)
        keep.t, keep.state = model.optimizer.t, model.optimizer.state
        model.optimizer = keep
    elif optimizer == "checkpoint":
        _restore_optimizer(path, model, arrays, meta)
    else:
        raise ValueError(f"optimizer must be 'checkpoint' or 'state', got {optimizer!r}")
    model.params[...] = _to_backend(model.params, params)
    model.checkpoint_meta = meta
    return meta


def _to_backend(like, host):
    from .backend import xp_of
    return xp_of(like).asarray(host)


def _brief(layers):
    if isinstance(layers, list):
        return "[" + ", ".join(f"{c.get('type')}({c.get('n_in', c.get('rate'))}"
                               f"{', ' + str(c['n_out']) if 'n_out' in c else ''}"
                               f"{', ' + c['activation'] if 'activation' in c else ''})"
                               for c in layers if isinstance(c, dict)) + "]"
    return repr(layers)
