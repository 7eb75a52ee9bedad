"""The character-model training loop: global steps over epochs of stream chunks.

Step s of a run is chunk ``s % n`` of epoch ``s // n`` (``n = len(train)``): the
engine resets the carried (h, c) state at chunk 0 and carries it from chunk to chunk
otherwise (truncated BPTT). Nothing here is random except the samples, which are
seeded by (seed, step), so a run resumed at step s from a checkpoint that holds the
weights, the optimizer state and the carried state of chunk ``s % n`` continues
exactly as the uninterrupted run would have. Checkpoint format: ``checkpoint_text``.
"""
from __future__ import annotations

import math
import time

import numpy as np

from .checkpoint_text import save_text_checkpoint, stream_crc
from .train import _GracefulStop

LN2 = math.log(2.0)


class TextHistory:
    """What a run recorded. Per step: ``steps``, ``loss``, ``smooth_loss`` (nats/char);
    per validation: ``val_steps``, ``val_loss``; per progress line: ``rate_steps``,
    ``chars_per_s``; ``samples`` as (step, text). A resumed run appends to the history
    it was given, so the lists cover the whole training."""

    def __init__(self):
        self.steps, self.loss, self.smooth_loss = [], [], []
        self.val_steps, self.val_loss = [], []
        self.rate_steps, self.chars_per_s = [], []
        self.samples = []
        self.chars = 0                 # characters trained on
        self.train_time = 0.0          # seconds in gradient + update (the chars/s basis)
        self.wall_time = 0.0
        self.step = 0
        self.saved_step = None         # the step of the last checkpoint this run wrote
        self.interrupted = False       # stopped by Ctrl-C / SIGTERM
        self.stopped_early = False     # stopped by a callback
        self.engine_stats = {}

    @property
    def val_bits_per_char(self):
        return [v / LN2 for v in self.val_loss]

    @property
    def mean_chars_per_s(self):
        return self.chars / self.train_time if self.train_time > 0 else 0.0

    def recent_loss(self, k=100):
        """Mean per-step loss over the last ``k`` steps (None before any step)."""
        tail = self.loss[-k:]
        return sum(tail) / len(tail) if tail else None

    _LISTS = ("steps", "loss", "smooth_loss", "val_steps", "val_loss", "rate_steps",
              "chars_per_s", "samples")
    _SCALARS = ("chars", "train_time", "wall_time", "step", "interrupted", "stopped_early")

    def to_dict(self):
        d = {k: list(getattr(self, k)) for k in self._LISTS}
        d["samples"] = [list(s) for s in self.samples]
        d.update({k: getattr(self, k) for k in self._SCALARS})
        return d

    @classmethod
    def from_dict(cls, d):
        h = cls()
        if not isinstance(d, dict):
            raise ValueError(f"a history must be a dict, got {type(d).__name__}")
        for k in cls._LISTS:
            setattr(h, k, list(d.get(k, [])))
        h.samples = [tuple(s) for s in h.samples]
        for k in cls._SCALARS:
            if k in d:
                setattr(h, k, type(getattr(h, k))(d[k]))
        return h

    def __repr__(self):
        return (f"TextHistory(step={self.step}, last loss={self.recent_loss(1)}, "
                f"{len(self.val_loss)} validations)")


def _count(name, v, zero_ok=True, none_ok=False):
    if v is None and none_ok:
        return None
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if zero_ok else 1):
        kind = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"{name} must be {kind} integer{' or None' if none_ok else ''}, "
                         f"got {v!r}")
    return int(v)


def _prime_ids(prime, vocab, train):
    """Ids the periodic samples start from: ``prime`` (a str needs ``vocab``), else a
    newline when the vocabulary has one (a sample then starts like a paragraph),
    else the first character of the training text."""
    if prime is None:
        if vocab is not None and "\n" in vocab:
            return [int(vocab.encode("\n")[0])]
        return [int(train.streams[0, 0])]
    if isinstance(prime, str):
        if vocab is None:
            raise ValueError("a text prime needs the vocabulary (vocab=...)")
        if not prime:
            raise ValueError("prime must not be empty")
        return [int(i) for i in vocab.encode(prime)]
    ids = [int(i) for i in prime]
    V = len(vocab) if vocab is not None else int(train.streams.max()) + 1
    if not ids or min(ids) < 0 or max(ids) >= V:
        raise ValueError(f"prime ids must be a non-empty list in [0, {V}), got {prime!r}")
    return ids


def fit_text(model, train, val=None, *, steps=None, epochs=None, engine=None, workers=0,
             seed=0, eval_every=500, sample_every=500, sample_length=200, temperature=0.8,
             vocab=None, prime=None, log_every=10, smoothing=0.99, checkpoint=None,
             save_every=None, initial_step=0, initial_state=None, history=None,
             print_fn=print, verbose=True, callbacks=(), text_path=None,
             val_fraction=None):
    """Train a CharLSTM on ``train`` (a StreamBatcher) for global steps.

    steps / epochs: the global step to stop at, counted from 0 like the checkpoint's
      step (``epochs`` means ``epochs * len(train)``); at most one; neither = 1 epoch.
      A run resumed at ``initial_step`` therefore ends where the uninterrupted one would.
    val: a StreamBatcher with the same seq_len; validated every ``eval_every`` steps
      and at the end (0 = only at the end), reported in nats and bits per character.
    sample_every / sample_length / temperature / prime: a sample printed every
      ``sample_every`` steps (0 = never; needs ``vocab`` to decode), seeded by (seed, step).
    log_every: a progress line (loss, smoothed loss, chars/s) every this many steps.
    smoothing: the EMA factor of the smoothed loss, which starts at ln(V) (the loss of
      a uniform guess) as in char-rnn.
    checkpoint / save_every: a path rewritten atomically every ``save_every`` steps,
      at the end, when interrupted and when a worker fails; it holds what an exact
      resume needs (``checkpoint_text.load_text_checkpoint``), plus ``text_path`` and
      ``val_fraction`` when given (where the text came from, and how it was split).
    initial_step / initial_state / history: resume; ``initial_state`` = (h, c) that
      chunk ``initial_step % len(train)`` starts from (None: zeros).
    callbacks: ``cb(step, record) -> bool`` after every progress line and validation
      (record: {"kind": "train" | "val", ...}); True stops training.
    Ctrl-C or SIGTERM stops after the current step with whole weights; the returned
    TextHistory then has ``interrupted = True``.
    """
    from .engines import make_engine
    from .engines.errors import WorkerError

    for label, b in (("train", train), ("val", val)):
        if b is not None and not all(hasattr(b, a) for a in ("streams", "seq_len", "batch")):
            raise ValueError(f"{label} must be a dpnet.data.text.StreamBatcher, got "
                             f"{type(b).__name__}")
    n = len(train)
    if n <= 0:
        raise ValueError("the training text yields no batch")
    if steps is not None and epochs is not None:
        raise ValueError(f"give steps or epochs, not both (got steps={steps!r}, "
                         f"epochs={epochs!r})")
    end = _count("steps", steps) if steps is not None else _count(
        "epochs", 1 if epochs is None else epochs) * n
    eval_every, sample_every = _count("eval_every", eval_every), _count("sample_every",
                                                                        sample_every)
    sample_length, log_every = _count("sample_length", sample_length), _count("log_every",
                                                                              log_every)
    save_every = _count("save_every", save_every, zero_ok=False, none_ok=True)
    step = _count("initial_step", initial_step)
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if val is not None and val.seq_len != train.seq_len:
        raise ValueError(f"validation batches are {val.seq_len} steps long, training "
                         f"batches {train.seq_len}")
    prime_ids = _prime_ids(prime, vocab, train) if sample_every and vocab is not None else None
    say = print_fn if verbose else (lambda *a, **k: None)
    hist = history if history is not None else TextHistory()
    hist.interrupted = hist.stopped_early = False     # this run's, not a resumed one's
    smooth = hist.smooth_loss[-1] if hist.smooth_loss else math.log(model.vocab_size)
    crc = stream_crc(train) if checkpoint is not None else None
    saved_at = [None]

    def save():
        st = engine.get_state(step % n) if step % n else None
        hist.step = step
        save_text_checkpoint(checkpoint, model, vocab, train, step, seed, hist, st, crc=crc,
                             text_path=text_path, val_fraction=val_fraction)
        saved_at[0] = hist.saved_step = step

    def validate():
        t0 = time.perf_counter()
        vl, vn, _ = engine.evaluate("val")
        hist.val_steps.append(step)
        hist.val_loss.append(vl)
        say(f"step {step:>{width}}/{end}  val loss {vl:.4f} nats/char  {vl / LN2:.4f} "
            f"bits/char  ({vn:,} chars, {time.perf_counter() - t0:.1f} s)")
        return {"kind": "val", "step": step, "val_loss": vl, "val_bits_per_char": vl / LN2}

    def sample():
        ids = model.sample(prime_ids, sample_length, temperature, seed=[int(seed), step])
        text = vocab.decode(prime_ids + ids)
        hist.samples.append((step, text))
        say(f"---- sample at step {step} (temperature {temperature:g}) ----\n{text}\n----")

    own_engine = engine is None
    engine = make_engine(workers) if own_engine else engine
    width = len(str(end))
    t_start = time.perf_counter()
    try:
        engine.start(model, {"train": train, "val": val}, seed=seed)
        if initial_state is not None and step % n:
            engine.set_state(step % n, initial_state)
        with _GracefulStop() as stop:
            try:
                t_log, chars_log, stop_now = 0.0, 0, False
                while step < end and not stop.requested and not stop_now:
                    t0 = time.perf_counter()
                    loss, n_chars, _ = engine.gradient(step, step % n)
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"training diverged: loss is {loss} at step {step}; lower the "
                            f"learning rate or clip the gradient")
                    model.apply_gradients()
                    step += 1
                    engine.weights_changed(step)
                    dt = time.perf_counter() - t0
                    t_log += dt
                    chars_log += n_chars
                    hist.train_time += dt
                    hist.chars += n_chars
                    smooth = smoothing * smooth + (1.0 - smoothing) * loss
                    hist.steps.append(step)
                    hist.loss.append(loss)
                    hist.smooth_loss.append(smooth)
                    records = []
                    if (log_every and step % log_every == 0) or step == end:
                        rate = chars_log / t_log if t_log > 0 else 0.0
                        hist.rate_steps.append(step)
                        hist.chars_per_s.append(rate)
                        say(f"step {step:>{width}}/{end}  epoch {step / n:.2f}  loss "
                            f"{loss:.4f}  smooth {smooth:.4f}  {rate:,.0f} chars/s")
                        records.append({"kind": "train", "step": step, "loss": loss,
                                        "smooth_loss": smooth, "chars_per_s": rate})
                        t_log, chars_log = 0.0, 0
                    if val is not None and eval_every and step % eval_every == 0:
                        records.append(validate())
                    if prime_ids is not None and step % sample_every == 0:
                        sample()
                    if checkpoint is not None and save_every and step % save_every == 0:
                        save()
                    for rec in records:
                        # a list, not any(generator): every callback sees every record
                        answers = [bool(cb(step, rec)) for cb in callbacks]
                        stop_now = stop_now or any(answers)
                hist.stopped_early = stop_now
                if stop.requested:
                    hist.interrupted = True
                    say(f"stopped by {stop.requested} after step {step}; the model keeps "
                        f"its last weights")
                elif val is not None and (not hist.val_steps or hist.val_steps[-1] != step):
                    validate()
            except WorkerError:
                # The weights are those of the last whole step and chunk step % n's
                # state is untouched (double-buffered): a resumable checkpoint.
                if checkpoint is not None and saved_at[0] != step:
                    save()
                raise
            if checkpoint is not None and saved_at[0] != step:
                save()
    finally:
        hist.wall_time += time.perf_counter() - t_start
        hist.step = step
        if own_engine:
            engine.close()
        hist.engine_stats = engine.stats()
    return hist
