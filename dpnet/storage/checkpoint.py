"""The checkpoint format: one ``.npz`` of plain numeric arrays plus JSON metadata.

This module knows the file, not the models: what a model puts in a checkpoint and how
one is rebuilt from it is ``dpnet.models.saving`` / ``dpnet.models.loading``.

Nothing is ever unpickled: arrays are plain ``.npy`` members (no object dtypes) and
the metadata is JSON stored as a uint8 array. Files are written to a temporary name in
the same directory, fsynced, then renamed over the target, so a crash mid-write
leaves the previous checkpoint intact.

Reading trusts nothing in the file before it is checked, and reads no more than the
model needs: the metadata first (bounded), then only the members it lists, each after
its ``.npy`` header and the archive's declared sizes agree with the dtype and shape the
metadata says (``arrays``; for files written before that table, what those files held),
and never more bytes than that array holds -- so an extra member, a header claiming
gigabytes or a deflate bomb is refused in one line, without allocating what it
claims. Everything refused is a ``CheckpointError`` naming what is wrong.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
import zlib

import numpy as np

from .._version import __version__
from ..backend import to_numpy
from .atomic import atomic_write

FORMAT = "dpnet-checkpoint"
FORMAT_VERSION = 1
META = "__meta__"
MAX_META_BYTES = 16 << 20          # JSON metadata, the training history included
# [path] of the last checkpoint this process began to write (atomically: the file holds
# it whole, or the one before), so that a run cut short at any moment can say what is on
# disk by reading it back
LAST_WRITTEN = []


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model."""


def write_checkpoint(path, arrays, meta):
    """Atomically write ``arrays`` ({name: numeric array}) and JSON-able ``meta``."""
    path = os.fspath(path)
    arrays = {k: np.ascontiguousarray(to_numpy(v)) for k, v in arrays.items()}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise CheckpointError(f"array {k!r} has dtype {a.dtype}; only numbers are stored")
        if k == META or "/" in k or not k:
            raise CheckpointError(f"array name {k!r} is not allowed")
    meta = dict(meta, format=FORMAT, format_version=FORMAT_VERSION, dpnet_version=__version__,
                crc32={k: zlib.crc32(a.tobytes()) for k, a in arrays.items()},
                arrays={k: [a.dtype.str, list(a.shape)] for k, a in arrays.items()})
    blob = np.frombuffer(json.dumps(meta, default=_plain).encode("utf-8"), dtype=np.uint8)
    if blob.nbytes > MAX_META_BYTES:
        raise CheckpointError(f"checkpoint metadata is {blob.nbytes:,} bytes, limit "
                              f"{MAX_META_BYTES:,}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    LAST_WRITTEN[:] = [path]                # (what it holds is read back when asked)
    atomic_write(path, lambda f: np.savez(f, **{META: blob}, **arrays))


def _plain(v):
    """JSON for the NumPy scalars a caller may put in metadata (``epoch=np.int64(3)``)."""
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    raise TypeError(f"checkpoint metadata must be JSON values (numbers, strings, lists, "
                    f"dicts), got {type(v).__name__}: {v!r}"[:200])


def read_checkpoint(path):
    """(arrays, meta) from a checkpoint, after checking its integrity (see the module
    docstring for what is refused)."""
    return _open(path, _read)


def read_checkpoint_meta(path):
    """A checkpoint's metadata alone (the same checks on it, no array read): what a
    caller needs to decide how to build the model before loading into it."""
    return _open(path, lambda path, z: _read_meta(path, z, _members(z)))


def _open(path, read):
    path = os.fspath(path)
    if not os.path.isfile(path):
        why = "is a directory" if os.path.isdir(path) else (
            "is not a regular file" if os.path.exists(path) else "does not exist")
        raise CheckpointError(f"checkpoint {path!r} {why}")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path!r} cannot be read (permission denied)")
    try:
        with zipfile.ZipFile(path) as z:
            return read(path, z)
    except CheckpointError:
        raise
    except PermissionError:
        raise CheckpointError(f"checkpoint {path!r} cannot be read (permission denied)") \
            from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError,
            KeyError, zlib.error, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupt (not a readable "
                              f".npz file: {e})") from None


def _members(z):
    return {i.filename: i for i in z.infolist()}


def _read_meta(path, z, members):
    if META + ".npy" not in members:
        raise CheckpointError(f"{path!r} is not a dpnet checkpoint (no metadata)")
    blob = _member(path, z, members[META + ".npy"], "|u1", None, MAX_META_BYTES)
    try:
        meta = json.loads(blob.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path!r} has unreadable metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a dpnet checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version "
                              f"{meta.get('format_version')!r}; this dpnet reads {FORMAT_VERSION}")
    crcs = meta.get("crc32")
    if not isinstance(crcs, dict):
        raise CheckpointError(f"checkpoint {path!r} has no array checksums in its metadata")
    for name in members:
        if name != META + ".npy" and name[:-4] not in crcs:
            raise CheckpointError(f"checkpoint {path!r} holds a member {name!r} that its "
                                  f"metadata does not list")
    return meta


def _read(path, z):
    members = _members(z)
    meta = _read_meta(path, z, members)
    crcs = meta["crc32"]
    specs = {k: _expected(path, meta, k) for k in crcs}
    total = sum(np.dtype(d).itemsize * math.prod(s) for d, s in specs.values())
    if total > _physical_memory():
        raise CheckpointError(f"checkpoint {path!r} declares {total / 2**30:,.1f} GiB of "
                              f"arrays, more than this machine's memory")
    arrays = {}
    for k, crc in crcs.items():
        if k + ".npy" not in members:
            raise CheckpointError(f"checkpoint {path!r} lacks array {k!r}")
        dtype, shape = specs[k]
        a = _member(path, z, members[k + ".npy"], dtype, shape)
        if zlib.crc32(a.tobytes()) != crc:
            raise CheckpointError(f"checkpoint {path!r}: array {k!r} fails its checksum")
        arrays[k] = a
    return arrays, meta


def _physical_memory():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _expected(path, meta, name):
    """(dtype str, shape) that the metadata says array ``name`` has. Files written
    before the metadata had an ``arrays`` table held parameter-sized vectors (the
    weights, the optimizer's state) and, for a text run stopped mid-epoch, the
    carried stream state (batch_size, layers * hidden_size)."""
    table = meta.get("arrays")
    if table is not None:
        spec = table.get(name) if isinstance(table, dict) else None
        if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str)
                and isinstance(spec[1], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in spec[1])):
            raise CheckpointError(f"checkpoint {path!r} declares no valid dtype and shape "
                                  f"for array {name!r}")
        return spec[0], tuple(spec[1])
    try:
        dt = np.dtype(meta["dtype"]).str
        if name == "params" or name.startswith("opt."):
            return dt, (int(meta["n_params"]),)
        if name in ("state.h", "state.c"):
            model = meta["model"]
            return dt, (int(meta["training"]["batch_size"]),
                        int(model["hidden_size"]) * int(model.get("num_layers", 1)))
    except (KeyError, TypeError, ValueError):
        pass
    raise CheckpointError(f"checkpoint {path!r} holds an array {name!r} whose dtype and "
                          f"shape its metadata does not give")


def _member(path, z, info, dtype, shape, max_bytes=None):
    """One ``.npy`` member as an array of ``dtype`` and ``shape`` (any 1-D length up to
    ``max_bytes`` when ``shape`` is None): the header checked first, the archive's
    declared size checked against it, then exactly that many bytes read -- and one
    more tried, which must not exist."""
    name = info.filename[:-4]
    with z.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} has .npy version "
                                  f"{version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        got_shape, fortran, got_dtype = read_header(f, max_header_size=10_000)
        header_len = f.tell()
        if fortran or got_dtype.hasobject or got_dtype.str != np.dtype(dtype).str:
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} is "
                                  f"{got_dtype.str}{list(got_shape)}"
                                  f"{' (Fortran order)' if fortran else ''}, its metadata "
                                  f"says {np.dtype(dtype).str}"
                                  f"{list(shape) if shape is not None else ''}")
        if shape is None:
            if len(got_shape) != 1 or got_shape[0] * got_dtype.itemsize > max_bytes:
                raise CheckpointError(f"checkpoint {path!r}: member {name!r} declares shape "
                                      f"{list(got_shape)}, more than {max_bytes:,} bytes")
            shape = tuple(got_shape)
        elif tuple(got_shape) != tuple(shape):
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} has shape "
                                  f"{list(got_shape)}, its metadata says {list(shape)}")
        a = np.empty(shape, dtype=got_dtype)
        if info.file_size != header_len + a.nbytes:
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} declares "
                                  f"{info.file_size:,} bytes, its array holds "
                                  f"{header_len + a.nbytes:,}")
        view = memoryview(a.reshape(-1).view(np.uint8))
        done = 0
        while done < a.nbytes:
            n = f.readinto(view[done:])
            if not n:
                raise CheckpointError(f"checkpoint {path!r}: member {name!r} is truncated")
            done += n
        if f.read(1):
            raise CheckpointError(f"checkpoint {path!r}: member {name!r} holds more data "
                                  f"than its array")
    return a
