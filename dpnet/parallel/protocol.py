"""Wire format between the coordinator and its workers: message kinds, encode/decode.

A message is a list of frames: ``[kind, header, *arrays]``. ``kind`` is a short bytes
constant, ``header`` a msgpack map, each array one raw frame whose dtype and shape the
header declares (``header["arrays"]``), so the receiver rebuilds zero-copy views with
``np.frombuffer``. Never pickle: a message is data, not code.

``decode`` refuses rather than trusts: anything malformed, truncated, oversized, of an
unknown kind or protocol version, or missing a field its kind requires raises
``ProtocolError`` naming what is wrong -- and never any other exception, so the
coordinator can log-and-drop a bad message and carry on.

Imports only msgpack, numpy and the standard library (docs/ARCHITECTURE.md, "Layers": no zmq, no maths here).
"""
from __future__ import annotations

from math import prod

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

# --- message kinds --------------------------------------------------------------------
HELLO = b"HELLO"              # worker -> coord: I am up; who I am, what model I hold
WELCOME = b"WELCOME"          # coord -> worker: handshake accepted; run configuration
STEP = b"STEP"                # coord -> worker: compute the gradient of one shard
GRAD = b"GRAD"                # worker -> coord: loss, counts and (usually) the gradient frame
EVAL = b"EVAL"                # coord -> worker: loss/accuracy of one shard, no gradient
EVAL_RESULT = b"EVAL_RESULT"  # worker -> coord: answer to EVAL
SYNC = b"SYNC"                # coord -> worker: weights changed outside a step (load, resume)
HEARTBEAT = b"HEARTBEAT"      # either way: I am alive (any message also counts as liveness)
ERROR = b"ERROR"              # worker -> coord: an exception, with its traceback
STOP = b"STOP"                # coord -> worker: exit cleanly
BYE = b"BYE"                  # worker -> coord: I am exiting (after STOP, or on my own)
PUSH = b"PUSH"                # coord -> worker: weights and optimizer state to hold (a worker
                              #   that applies the updates itself)
PULL = b"PULL"                # coord -> worker: send back your weights and optimizer state
STATE = b"STATE"              # worker -> coord: answer to PULL
JOIN = b"JOIN"                # remote worker -> coord: let me serve this run
ADMIT = b"ADMIT"              # coord -> remote worker: your rank and the run's config
FETCH = b"FETCH"              # remote worker -> coord: a chunk of one of the run's arrays
DATA = b"DATA"                # coord -> remote worker: the chunk (one raw uint8 frame)

# Limits: generous for real traffic, small enough that garbage cannot make us allocate.
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAY_BYTES = 1 << 30     # one gradient of a 268M-parameter float32 model
MAX_NDIM = 8
MAX_KIND_BYTES = 16
MAX_STATE_FRAMES = 4          # optimizer state vectors in a PUSH / STATE (Adam: m, v)
MAX_CHUNK_BYTES = 1 << 24     # one DATA frame: a dataset streams to a remote worker in these

ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in (
        "<f2", "<f4", "<f8", "|i1", "<i2", "<i4", "<i8", "|u1", "<u2", "<u4", "<u8",
    )
)

# Fields the encoder owns; a caller's header must not set them.
_RESERVED = ("v", "arrays")

_INT, _FLOAT, _STR, _BOOL, _MAP = "int", "float", "str", "bool", "map"

# Per kind: required fields -> type, optional fields -> type, and how many array frames.
# STEP/EVAL: ``start:stop`` index a shared index block (local workers); a remote worker
#   gets ``indices=True`` and the shard's indices as arrays[0]. ``weights=True`` means
#   the last array is the flat weight vector at ``weights_version`` (remote workers, or
#   whenever weights do not live in shared memory); otherwise read them from shm.
#   ``scale``: the shard's share of the step's units, in [0, 1]; the worker multiplies
#   its mean gradient by it, so the coordinator only adds. ``chunk``: the stream chunk
#   of a character-model step (which buffer of the carried state to read).
#   ``update``: the worker applies the optimizer to its own weights after the gradient
#   (it holds the weights and the optimizer state; the GRAD then says ``updated``).
# GRAD: the gradient is arrays[0] unless ``grad_in_shm=True`` (a local worker wrote it
#   into its shared-memory gradient slot and sends only this header) or ``updated=True``
#   (the worker applied it itself).
# PUSH / STATE: arrays[0] is the flat weight vector at ``weights_version``; with
#   ``state=True`` the optimizer's state vectors follow, in its ``state_names`` order,
#   and ``t`` is its step count; PUSH's ``optimizer`` is its config (rule, schedule).
# STEP ``carried``: the shard's rows of the carried (h, c) it starts from follow the
#   indices frame (a character model's step on a worker without the coordinator's
#   shared memory); the GRAD's ``carried``: the rows it ends with follow the gradient.
# STEP/EVAL ``attempt``: which sending of the shard this is; the reply echoes it, so a
#   reply to an earlier sending (the step re-sharded after a worker was lost) is stale.
# JOIN: a remote worker asks for a place; ``heartbeat_identity`` is its heartbeat
#   socket's. ADMIT: its ``rank`` and the run's ``config`` (model, task, seed, and each
#   array's dtype, shape and checksum); the worker finds the arrays on its own disk or
#   FETCHes them, ``size`` bytes at ``offset`` at a time, each answered by a DATA frame.
# ERROR: ``user=True`` says the problem is what was asked (no usable device, a dataset
#   that does not fit), not a crash; ``device=True`` that the device failed (a CUDA
#   error, out of device memory), not the code.
_SPEC = {
    HELLO: ({"rank": _INT, "pid": _INT, "signature": _MAP},
            {"host": _STR, "device": _MAP, "data": _STR}, (0, 0)),
    WELCOME: ({"rank": _INT}, {"config": _MAP, "weights_version": _INT, "weights": _BOOL}, (0, 1)),
    STEP: (
        {"step": _INT, "rank": _INT, "start": _INT, "stop": _INT, "weights_version": _INT},
        {"indices": _BOOL, "weights": _BOOL, "epoch": _INT, "scale": _FLOAT, "chunk": _INT,
         "update": _BOOL, "attempt": _INT, "carried": _BOOL},
        (0, 4),
    ),
    GRAD: (
        {"step": _INT, "rank": _INT, "n": _INT, "loss": _FLOAT, "correct": _INT},
        {"grad_in_shm": _BOOL, "updated": _BOOL, "metrics": _MAP, "seconds": _FLOAT,
         "attempt": _INT, "carried": _BOOL}, (0, 3),
    ),
    EVAL: (
        {"step": _INT, "rank": _INT, "start": _INT, "stop": _INT, "weights_version": _INT,
         "split": _STR},
        {"indices": _BOOL, "weights": _BOOL, "attempt": _INT}, (0, 2),
    ),
    EVAL_RESULT: (
        {"step": _INT, "rank": _INT, "n": _INT, "loss": _FLOAT, "correct": _INT},
        {"metrics": _MAP, "seconds": _FLOAT, "attempt": _INT}, (0, 0),
    ),
    SYNC: ({"weights_version": _INT}, {"weights": _BOOL}, (0, 1)),
    HEARTBEAT: ({"rank": _INT}, {"step": _INT, "busy": _BOOL}, (0, 0)),
    ERROR: ({"rank": _INT, "message": _STR, "traceback": _STR},
            {"step": _INT, "user": _BOOL, "device": _BOOL}, (0, 0)),
    STOP: ({"reason": _STR}, {}, (0, 0)),
    BYE: ({"rank": _INT}, {"reason": _STR}, (0, 0)),
    PUSH: ({"weights_version": _INT, "t": _INT, "optimizer": _MAP}, {"state": _BOOL},
           (1, MAX_STATE_FRAMES + 1)),
    PULL: ({"weights_version": _INT}, {}, (0, 0)),
    STATE: ({"rank": _INT, "weights_version": _INT, "t": _INT}, {"state": _BOOL},
            (1, MAX_STATE_FRAMES + 1)),
    JOIN: ({"pid": _INT, "heartbeat_identity": _STR}, {"host": _STR}, (0, 0)),
    ADMIT: ({"rank": _INT, "config": _MAP}, {}, (0, 0)),
    FETCH: ({"rank": _INT, "name": _STR, "offset": _INT, "size": _INT}, {}, (0, 0)),
    DATA: ({"name": _STR, "offset": _INT, "total": _INT}, {}, (1, 1)),
}
KINDS = frozenset(_SPEC)

# Fields that count things or index arrays: a negative value is always a bug or an attack.
_NON_NEGATIVE = frozenset({"step", "start", "stop", "n", "correct", "pid", "weights_version",
                           "chunk", "scale", "t", "attempt", "offset", "size", "total"})


class ProtocolError(Exception):
    """A message that does not follow this protocol (received or about to be sent)."""


def _type_ok(value, kind):
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLOAT:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    return isinstance(value, dict)


def _check_fields(kind, header, n_arrays):
    required, optional, (lo, hi) = _SPEC[kind]
    name = kind.decode()
    for field, ftype in required.items():
        if field not in header:
            raise ProtocolError(f"{name} header lacks required field {field!r}")
    for field, ftype in (*required.items(), *optional.items()):
        if field in header and not _type_ok(header[field], ftype):
            raise ProtocolError(
                f"{name} field {field!r} must be {ftype}, got {header[field]!r}")
        if field in _NON_NEGATIVE and field in header and header[field] < 0:
            raise ProtocolError(f"{name} field {field!r} must be >= 0, got {header[field]!r}")
    if "scale" in header and not header["scale"] <= 1:
        raise ProtocolError(f"{name} field 'scale' must be in [0, 1], got {header['scale']!r}")
    if "start" in required and header["stop"] < header["start"]:
        raise ProtocolError(
            f"{name} range is reversed: start={header['start']!r} stop={header['stop']!r}")
    if kind == FETCH and not 0 < header["size"] <= MAX_CHUNK_BYTES:
        raise ProtocolError(f"FETCH size must be in 1..{MAX_CHUNK_BYTES}, got {header['size']!r}")
    if kind == JOIN and not 0 < len(header["heartbeat_identity"]) <= 255:
        raise ProtocolError("JOIN heartbeat_identity must be 1-255 characters")
    if not lo <= n_arrays <= hi:
        raise ProtocolError(f"{name} carries {n_arrays} array frames, allowed {lo}..{hi}")
    # Optional frames are announced by flags, so their meaning never depends on guessing.
    expected = None
    if kind in (STEP, EVAL):
        expected = (int(header.get("indices", False)) + int(header.get("weights", False))
                    + 2 * int(header.get("carried", False)))
    elif kind in (WELCOME, SYNC):
        expected = int(header.get("weights", False))
    elif kind == GRAD:
        expected = (0 if header.get("grad_in_shm", False) or header.get("updated", False)
                    else 1) + 2 * int(header.get("carried", False))
    elif kind in (PUSH, STATE) and not header.get("state", False):
        expected = 1
    if expected is not None and n_arrays != expected:
        raise ProtocolError(f"{name} header announces {expected} array frames, got {n_arrays}")


def _to_builtin(obj):
    # numpy scalars creep into headers (n = len(idx), loss = arr.mean()); msgpack cannot pack them.
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot put {type(obj).__name__} into a message header: {obj!r}")


def encode(kind, header, *arrays):
    """Frames for one message: ``[kind, msgpack(header), *array buffers]``.

    Arrays are sent as their raw bytes (C order, little-endian); a non-contiguous or
    big-endian array is copied first. The returned array frames are the arrays
    themselves (or contiguous copies): the caller must not modify them until the
    message is sent when sending without copying.
    """
    if kind not in KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}")
    if not isinstance(header, dict):
        raise ProtocolError(f"header must be a dict, got {type(header).__name__}")
    for key in _RESERVED:
        if key in header:
            raise ProtocolError(f"header field {key!r} is reserved for the protocol")
    frames, descr = [], []
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise ProtocolError(f"array frame {i} must be a numpy array, got {type(a).__name__}")
        if a.dtype.str.startswith(">"):
            a = a.astype(a.dtype.newbyteorder("<"))
        a = np.ascontiguousarray(a)
        if a.dtype.str not in ALLOWED_DTYPES:
            raise ProtocolError(f"array frame {i} has dtype {a.dtype.str!r}, not a numeric wire dtype")
        if a.nbytes > MAX_ARRAY_BYTES:
            raise ProtocolError(f"array frame {i} has {a.nbytes} bytes, limit {MAX_ARRAY_BYTES}")
        descr.append([a.dtype.str, list(a.shape)])
        frames.append(a)
    full = dict(header, v=PROTOCOL_VERSION, arrays=descr)
    try:
        packed = msgpack.packb(full, default=_to_builtin, use_bin_type=True)
        # Round-trip the header so the sender fails on what the receiver would refuse.
        _check_fields(kind, _unpack_header(packed), len(arrays))
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises TypeError, ValueError, OverflowError...
        raise ProtocolError(f"cannot encode {kind.decode()} header: {e}") from None
    if len(packed) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{kind.decode()} header is {len(packed)} bytes, limit {MAX_HEADER_BYTES}")
    return [kind, packed, *frames]


def _unpack_header(raw):
    try:
        return msgpack.unpackb(
            raw, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_HEADER_BYTES,
            max_bin_len=MAX_HEADER_BYTES, max_array_len=4096, max_map_len=1024,
            max_ext_len=0,
        )
    except Exception as e:  # ExtraData, FormatError, StackError, ValueError, UnicodeError, ...
        raise ProtocolError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None


def _as_buffer(frame, i):
    # zmq.Frame, bytes, bytearray and memoryview all expose the buffer protocol.
    try:
        buf = memoryview(frame)
    except TypeError:
        raise ProtocolError(f"frame {i} is a {type(frame).__name__}, not a buffer") from None
    if buf.ndim != 1 or buf.itemsize != 1:
        buf = buf.cast("B") if buf.c_contiguous else None
        if buf is None:
            raise ProtocolError(f"frame {i} is not a contiguous byte buffer")
    return buf


def _check_descriptor(i, d):
    if not (isinstance(d, list) and len(d) == 2 and isinstance(d[0], str)
            and isinstance(d[1], list)):
        raise ProtocolError(f"array descriptor {i} must be [dtype, shape], got {d!r}")
    dtype, shape = d
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array {i} has dtype {dtype!r}, not an allowed wire dtype")
    if len(shape) > MAX_NDIM:
        raise ProtocolError(f"array {i} has {len(shape)} dimensions, limit {MAX_NDIM}")
    for s in shape:
        if not (isinstance(s, int) and not isinstance(s, bool)) or not 0 <= s <= MAX_ARRAY_BYTES:
            raise ProtocolError(f"array {i} has an invalid shape {shape!r}")
    nbytes = prod(shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ProtocolError(f"array {i} of shape {shape!r} needs {nbytes} bytes, limit {MAX_ARRAY_BYTES}")
    return np.dtype(dtype), tuple(shape), nbytes


def decode(frames):
    """``(kind, header, arrays)`` from received frames, or ``ProtocolError``.

    ``arrays`` are read-only zero-copy views of the frames (they keep the frames alive).
    The header keeps the protocol's own ``v`` and ``arrays`` fields.
    """
    try:
        return _decode(frames)
    except ProtocolError:
        raise
    except Exception as e:  # belt and braces: a bug here must not crash the coordinator
        raise ProtocolError(f"undecodable message: {type(e).__name__}: {e}") from None


def _decode(frames):
    if not isinstance(frames, (list, tuple)) or len(frames) < 2:
        n = len(frames) if isinstance(frames, (list, tuple)) else type(frames).__name__
        raise ProtocolError(f"malformed message: {n} frames, need at least 2")
    kind_buf = _as_buffer(frames[0], 0)
    if len(kind_buf) > MAX_KIND_BYTES or bytes(kind_buf) not in KINDS:
        raise ProtocolError(f"unknown message kind {bytes(kind_buf[:MAX_KIND_BYTES])!r}")
    kind = bytes(kind_buf)
    raw = _as_buffer(frames[1], 1)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{kind.decode()} header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    header = _unpack_header(raw)
    if not isinstance(header, dict):
        raise ProtocolError(f"{kind.decode()} header must be a map, got {type(header).__name__}")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {PROTOCOL_VERSION}")
    descr = header.get("arrays")
    if not isinstance(descr, list):
        raise ProtocolError(f"{kind.decode()} header field 'arrays' must be a list, got {descr!r}")
    if len(descr) != len(frames) - 2:
        raise ProtocolError(
            f"{kind.decode()} declares {len(descr)} array frames, message has {len(frames) - 2}")
    _check_fields(kind, header, len(descr))
    arrays = []
    for i, (d, frame) in enumerate(zip(descr, frames[2:])):
        dtype, shape, nbytes = _check_descriptor(i, d)
        buf = _as_buffer(frame, i + 2)
        if len(buf) != nbytes:
            raise ProtocolError(
                f"array {i} declares {dtype.str}{list(shape)} = {nbytes} bytes, frame has {len(buf)}")
        a = np.frombuffer(buf, dtype=dtype).reshape(shape)
        a.flags.writeable = False
        arrays.append(a)
    if kind in (STEP, EVAL) and header.get("indices", False):
        idx = arrays[0]
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) != header["stop"] - header["start"]:
            raise ProtocolError(
                f"{kind.decode()} index frame must be 1-D integers of length stop-start="
                f"{header['stop'] - header['start']}, got {idx.dtype.str}{list(idx.shape)}")
    if kind == DATA:
        chunk = arrays[0]
        if chunk.ndim != 1 or chunk.dtype != np.uint8 or len(chunk) > MAX_CHUNK_BYTES:
            raise ProtocolError(f"DATA frame must be 1-D uint8 of at most {MAX_CHUNK_BYTES} "
                                f"bytes, got {chunk.dtype.str}{list(chunk.shape)}")
        if header["offset"] + len(chunk) > header["total"]:
            raise ProtocolError(f"DATA chunk at {header['offset']} of {len(chunk)} bytes runs "
                                f"past the array's {header['total']} bytes")
    return kind, header, arrays


# --- handshake ------------------------------------------------------------------------
def array_checksum(a):
    """A content checksum of one array: its dtype, shape and bytes (what a remote worker
    and its coordinator compare before the worker may use the array)."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
    return h.hexdigest()


def table_checksum(table):
    """One checksum over a run's array table ({name: {dtype, shape, checksum}})."""
    import hashlib
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(table):
        t = table[name]
        h.update(f"{name}:{t['dtype']}{list(t['shape'])}:{t['checksum']};".encode())
    return h.hexdigest()


def model_signature(architecture, n_params, dtype, **extra):
    """What a worker's model must agree on with the coordinator's before the first step.

    ``architecture``: a string or a list of strings/ints (e.g. ``["dense", 784, 512, ...]``);
    ``extra``: any further msgpack-able facts (e.g. ``data_checksum=...``).
    """
    architecture = _plain(architecture)
    if not isinstance(architecture, (str, list)):
        raise ValueError(f"architecture must be a str or list, got {architecture!r}")
    n_params = int(n_params)
    if n_params < 0:
        raise ValueError(f"n_params must be >= 0, got {n_params!r}")
    return {"architecture": architecture, "n_params": n_params, "dtype": np.dtype(dtype).str,
            **extra}


def signature_of(model):
    """The signature of a model object (its ``config()``, ``n_params`` and ``dtype``)."""
    import json
    return model_signature(json.dumps(model.config(), sort_keys=True), model.n_params,
                           model.dtype)


def _plain(x):
    # A signature that crossed the wire has lists where the local one may have tuples.
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x.item() if isinstance(x, np.generic) else x


def check_signature(expected, got):
    """Raise ``ProtocolError`` naming the first field where two signatures differ."""
    if not isinstance(got, dict):
        raise ProtocolError(f"model signature must be a map, got {got!r}")
    expected, got = _plain(expected), _plain(got)
    for key in sorted(set(expected) | set(got), key=str):
        a, b = expected.get(key, "<missing>"), got.get(key, "<missing>")
        if a != b:
            raise ProtocolError(f"model signature mismatch on {key!r}: expected {a!r}, got {b!r}")
