"""The checkpoint format: one ``.npz`` of plain numeric arrays plus JSON metadata.

This module knows the file, not the models: what a model puts in a checkpoint and how
one is rebuilt from it is ``dpnet.models.saving`` / ``dpnet.models.loading``.

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

from .._version import __version__
from ..backend import to_numpy
from .atomic import atomic_write

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
