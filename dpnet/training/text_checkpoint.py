"""Checkpoints of a character model in training: a model checkpoint plus what a
text run needs to decode and to resume exactly.

Besides the parameters and optimizer state it holds: the vocabulary (a JSON list, so
a loaded model decodes as it was trained), the global step, seed, batch layout
(batch_size, seq_len, chunks per epoch), a CRC of the training streams (resuming on a
different text must not reuse the carried state), the history, and -- when the step
falls mid-epoch -- the carried (h, c) of every stream as arrays ``state.h``/``state.c``.
"""
from __future__ import annotations

import os
import zlib

import numpy as np

from ..data.text import TextError, Vocabulary
from ..models.loading import load
from ..models.saving import model_arrays_and_meta
from ..storage.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from .history import TextHistory


def stream_crc(batcher):
    """CRC-32 of the training streams: the text and its layout in one number."""
    return zlib.crc32(np.ascontiguousarray(batcher.streams).tobytes())


def save_text_checkpoint(path, model, vocab, train, step, seed, history, state=None,
                         crc=None, text_path=None, val_fraction=None):
    """Atomically write ``model`` (with optimizer state) and the run's position.

    ``state``: the (h, c) that chunk ``step % len(train)`` starts from, or None at an
    epoch boundary (chunk 0 starts from zeros). ``text_path`` and ``val_fraction``:
    the training text's file and its held-out share, recorded so that continuing
    without naming them splits the same text the same way."""
    training = {"step": int(step), "seed": int(seed), "batch_size": int(train.batch_size),
                "seq_len": int(train.seq_len), "chunks_per_epoch": len(train),
                "train_crc32": int(stream_crc(train) if crc is None else crc),
                "history": history.to_dict()}
    if text_path is not None:
        training["text"] = os.path.abspath(str(text_path))
    if val_fraction is not None:
        training["val_fraction"] = float(val_fraction)
    arrays, meta = model_arrays_and_meta(
        model, vocabulary=None if vocab is None else vocab.to_list(), training=training)
    if state is not None:
        arrays["state.h"], arrays["state.c"] = state
    write_checkpoint(path, arrays, meta)


class TextCheckpoint:
    """A loaded text checkpoint: ``model`` (with optimizer), ``vocab`` (or None),
    ``step``, ``seed``, ``batch_size``, ``seq_len``, ``chunks_per_epoch``,
    ``train_crc32``, ``state`` ((h, c) or None), ``history`` (a TextHistory),
    ``text`` and ``val_fraction`` (the training text's path and held-out share when
    they were recorded, else None)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def resume_state(self, train):
        """(state, note): the carried state to continue on ``train`` with, and, when it
        cannot be used, a one-line reason (training then continues from zeros)."""
        if self.step % len(train) == 0:
            return None, None
        if (self.batch_size, self.seq_len) != (train.batch_size, train.seq_len):
            return None, (f"the checkpoint's streams were {self.batch_size} x "
                          f"{self.seq_len}, these are {train.batch_size} x {train.seq_len}: "
                          f"the stream state restarts from zero")
        if self.train_crc32 != stream_crc(train):
            return None, ("the training text differs from the checkpoint's: the stream "
                          "state restarts from zero")
        if self.state is None:
            return None, "the checkpoint holds no stream state: it restarts from zero"
        return self.state, None


def load_text_checkpoint(path):
    """A TextCheckpoint from ``path``, validated; CheckpointError (one line) if not."""
    model = load(path)
    if model.config().get("type") != "CharLSTM":
        raise CheckpointError(f"checkpoint {path!r} holds a {model.config().get('type')!r}, "
                              f"not a character model")
    meta = model.checkpoint_meta
    vocab = None
    if meta.get("vocabulary") is not None:
        try:
            vocab = Vocabulary.from_list(meta["vocabulary"])
        except TextError as e:
            raise CheckpointError(f"checkpoint {path!r}: {e}") from None
        if len(vocab) != model.vocab_size:
            raise CheckpointError(f"checkpoint {path!r} has {len(vocab)} characters in its "
                                  f"vocabulary but a model over {model.vocab_size}")
    tr = meta.get("training")
    if not isinstance(tr, dict):
        raise CheckpointError(f"checkpoint {path!r} has no training position")
    fields = {}
    for key in ("step", "seed", "batch_size", "seq_len", "chunks_per_epoch", "train_crc32"):
        v = tr.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CheckpointError(f"checkpoint {path!r} has a bad training {key}: {v!r}")
        fields[key] = v
    try:
        history = TextHistory.from_dict(tr.get("history", {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} has a bad history: {e}") from None
    text, vf = tr.get("text"), tr.get("val_fraction")
    if text is not None and not isinstance(text, str):
        raise CheckpointError(f"checkpoint {path!r} has a bad training text path: {text!r}")
    if vf is not None and (not isinstance(vf, (int, float)) or isinstance(vf, bool)
                           or not 0.0 <= vf < 1.0):
        raise CheckpointError(f"checkpoint {path!r} has a bad val_fraction: {vf!r}")
    state = None
    arrays, _ = read_checkpoint(path)
    if "state.h" in arrays or "state.c" in arrays:
        want = (fields["batch_size"], model.state_size)
        state = tuple(arrays.get(k) for k in ("state.h", "state.c"))
        for k, s in zip(("state.h", "state.c"), state):
            if s is None or s.shape != want or s.dtype != model.dtype \
                    or not np.isfinite(s).all():
                raise CheckpointError(f"checkpoint {path!r}: {k} must be a finite {want} "
                                      f"{model.dtype} array, got "
                                      f"{None if s is None else (s.shape, s.dtype.name)}")
    return TextCheckpoint(model=model, vocab=vocab, state=state, history=history,
                          path=str(path), text=text, val_fraction=vf, **fields)
