"""Character corpora: read a UTF-8 text, map characters to ids, cut it into streams.

A character model sees its text as ``B`` parallel streams, each a contiguous slice
of the corpus, read ``T`` characters at a time; batch ``k`` is columns
``[k*T, (k+1)*T)`` of every stream, and its targets are the same columns shifted by
one. Consecutive batches therefore continue each other row by row, which is what lets
a stateful model carry its (h, c) state from one batch to the next (truncated BPTT).
"""
from __future__ import annotations

import os

import numpy as np


class TextError(ValueError):
    """A text file or encoded corpus that cannot be used (one-line message)."""


MAX_TEXT_BYTES = 256 << 20           # a corpus is held four times over (UTF-32 ids)


def read_text(path, max_bytes=MAX_TEXT_BYTES):
    """The whole file at ``path`` as a ``str``, decoded as UTF-8 (a leading BOM is dropped).

    Raises ``TextError`` (a ValueError) naming the file when it is missing, larger than
    ``max_bytes`` (before reading it), empty, or not valid UTF-8 (with the offending
    byte offset)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TextError(f"text file {path!r} does not exist")
    if not os.path.isfile(path):
        raise TextError(f"text file {path!r} is not a regular file")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise TextError(f"text file {path!r} is {size / 2**20:,.1f} MiB, more than the "
                        f"{max_bytes / 2**20:,.0f} MiB limit (raise it: --max-text-mb)")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"text file {path!r} is not valid UTF-8: byte 0x{raw[e.start]:02x} "
                        f"at offset {e.start} ({e.reason})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text:
        raise TextError(f"text file {path!r} is empty")
    return text


def _code_points(text):
    # UTF-32-LE is one uint32 per character: vectorised encode without a Python loop.
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


class Vocabulary:
    """The sorted set of characters of a text; a character's id is its rank.

    ``Vocabulary(text)`` builds it; ``to_list()``/``from_list()`` round-trip it through
    JSON (a checkpoint), so a loaded model decodes exactly as it was trained."""

    def __init__(self, text):
        if not isinstance(text, str):
            raise TypeError(f"Vocabulary takes a str, got {type(text).__name__}")
        if not text:
            raise TextError("cannot build a vocabulary from an empty text")
        self._set(sorted(set(text)))

    def _set(self, chars):
        self.chars = list(chars)
        # Sorted by code point, so encoding is a binary search over this array.
        self._cps = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        self._index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_list(cls, chars):
        """Rebuild from ``to_list()`` output, refusing anything that is not one."""
        if not isinstance(chars, (list, tuple)) or not chars:
            raise TextError(f"vocabulary must be a non-empty list of characters, "
                            f"got {chars!r:.80}")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise TextError(f"vocabulary entries must be single characters, got {c!r}")
        if any(a >= b for a, b in zip(chars, chars[1:])):
            raise TextError("vocabulary characters must be unique and sorted")
        v = cls.__new__(cls)
        v._set(chars)
        return v

    def to_list(self):
        return list(self.chars)

    def __len__(self):
        return len(self.chars)

    @property
    def size(self):
        return len(self.chars)

    def __contains__(self, ch):
        return ch in self._index

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.chars == other.chars

    def __repr__(self):
        return f"Vocabulary({len(self)} characters)"

    def encode(self, text):
        """(len(text),) int32 ids; a character outside the vocabulary is an error."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        cps = _code_points(text)
        ids = np.searchsorted(self._cps, cps).astype(np.int32)
        np.minimum(ids, len(self.chars) - 1, out=ids)
        bad = self._cps[ids] != cps
        if bad.any():
            pos = int(np.argmax(bad))
            raise TextError(f"character {text[pos]!r} (U+{ord(text[pos]):04X}) at position {pos} "
                            f"is not in the vocabulary of {len(self)} characters")
        return ids

    def decode(self, ids):
        """The string for a sequence of ids (list or integer array)."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.dtype.kind not in "iu":
            raise TextError(f"ids must be integers, got dtype {ids.dtype}")
        ids = ids.reshape(-1)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= len(self.chars):
            raise TextError(f"id {lo if lo < 0 else hi} is outside the vocabulary "
                            f"[0, {len(self.chars)})")
        return self._cps[ids].astype("<u4").tobytes().decode("utf-32-le")


def split(ids, val_fraction=0.1):
    """(train, validation) views of ``ids``: the last ``val_fraction`` is validation."""
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) \
            or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(ids)
    n_val = int(n * val_fraction)
    if val_fraction > 0 and n_val < 2:
        # One character predicts nothing; two is the least that gives a loss.
        raise TextError(f"a text of {n} characters is too short for a validation split of "
                        f"{val_fraction!r} ({n_val} characters; at least 2 needed)")
    if n - n_val < 2:
        raise TextError(f"a text of {n} characters leaves {n - n_val} for training")
    return ids[:n - n_val], ids[n - n_val:]


def tiny_shakespeare():
    """The path of the bundled tiny Shakespeare corpus (a checkout's data/ or the
    installed package's copy)."""
    from .bundled import bundled
    return str(bundled("tinyshakespeare", "input.txt"))


def load_corpus(path, val_fraction=0.1, max_bytes=MAX_TEXT_BYTES):
    """(vocabulary, train ids, validation ids) for the text at ``path``.

    The vocabulary is built from the whole text, so validation characters are known."""
    text = read_text(path, max_bytes)
    vocab = Vocabulary(text)
    train, val = split(vocab.encode(text), val_fraction)
    return vocab, train, val


class StreamBatcher:
    """``batch_size`` parallel streams × ``seq_len`` steps over an id array.

    The ids are cut into ``batch_size`` equal contiguous streams (the remainder at the
    end is dropped); batch ``k`` is ``inputs = streams[:, k*T:(k+1)*T]`` and
    ``targets = streams[:, k*T+1:(k+1)*T+1]``. Batches are read-only views of one
    (B, L) view of ``ids``: nothing is copied, so ``ids`` may sit in shared memory.
    """

    def __init__(self, ids, batch_size, seq_len):
        for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        ids = np.asarray(ids)
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TextError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        B, T, n = int(batch_size), int(seq_len), ids.shape[0]
        need = B * (T + 1)
        if n < need:
            raise TextError(f"a text of {n} characters is too short for one batch of "
                            f"{B} streams x {T} steps (needs at least {need} = {B} x ({T} + 1))")
        self.batch_size, self.seq_len = B, T
        self.stream_len = n // B
        streams = ids[:B * self.stream_len].reshape(B, self.stream_len)   # a view
        streams.flags.writeable = False
        self.streams = streams
        # The targets of the last column need one character past it in the same stream.
        self.n_batches = (self.stream_len - 1) // T

    def __len__(self):
        return self.n_batches

    def batch(self, k):
        """(inputs, targets), each (B, T) views; k in [0, n_batches)."""
        if not isinstance(k, (int, np.integer)) or not 0 <= k < self.n_batches:
            raise IndexError(f"batch index must be in [0, {self.n_batches}), got {k!r}")
        a = int(k) * self.seq_len
        return self.streams[:, a:a + self.seq_len], self.streams[:, a + 1:a + 1 + self.seq_len]

    def __iter__(self):
        for k in range(self.n_batches):
            yield self.batch(k)

    @property
    def chars_per_batch(self):
        return self.batch_size * self.seq_len

    def __repr__(self):
        return (f"StreamBatcher({self.batch_size} streams x {self.seq_len} steps, "
                f"{self.n_batches} batches of a {self.stream_len}-character stream)")
