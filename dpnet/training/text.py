"""The character-model training loop: global steps over epochs of stream chunks.

Step s of a run is chunk ``s % n`` of epoch ``s // n`` (``n = len(train)``): the
engine resets the carried (h, c) state at chunk 0 and carries it from chunk to chunk
otherwise (truncated BPTT). Nothing here is random except the samples, which are
seeded by (seed, step), so a run resumed at step s from a checkpoint that holds the
weights, the optimizer state and the carried state of chunk ``s % n`` continues
exactly as the uninterrupted run would have. The step, stopping, failures and callbacks
are the shared loop core's (``loop``); the checkpoint format is ``text_checkpoint``.
"""
from __future__ import annotations

import math
import time

import numpy as np

from ..nn.rng import check_seed
from .callbacks import check_callback_list, sees
from .history import LN2, TextHistory
from .loop import Diverged, Loop, Plan, call_all, on_stop
from .text_checkpoint import save_text_checkpoint, stream_crc


# the metrics of fit_text's two kinds of record, which its callbacks see
TRAIN_RECORD = {"loss", "smooth_loss", "chars_per_s"}
VAL_RECORD = {"val_loss", "val_bits_per_char"}


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




def _batchers(corpus, val, vocab, batch_size, seq_len):
    """(vocab, train, val) StreamBatchers from a ``load_corpus`` answer."""
    from ..data.text import StreamBatcher
    cvocab, train_ids, val_ids = corpus
    if val is not None:
        raise ValueError("with a corpus (vocab, train ids, validation ids) the validation "
                         "streams come from it: give no val")
    train = StreamBatcher(train_ids, batch_size, seq_len)
    b = min(batch_size, len(val_ids) // (seq_len + 1))
    val = StreamBatcher(val_ids, b, seq_len) if b else None
    return (vocab if vocab is not None else cvocab), train, val


def _check_options(train, val, steps, epochs, temperature, smoothing):
    """The global step to end at, after checking the options that are not counts."""
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
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if not isinstance(smoothing, (int, float)) or not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing!r}")
    if val is not None and val.seq_len != train.seq_len:
        raise ValueError(f"validation batches are {val.seq_len} steps long, training "
                         f"batches {train.seq_len}")
    return end


def fit_text(model, train, val=None, *, steps=None, epochs=None, engine=None, workers=0,
             seed=0, eval_every=500, sample_every=500, sample_length=200, temperature=0.8,
             vocab=None, prime=None, log_every=10, smoothing=0.99, checkpoint=None,
             save_every=None, initial_step=0, initial_state=None, history=None,
             print_fn=print, verbose=True, callbacks=(), text_path=None,
             val_fraction=None, divergence=2.0, batch_size=32, seq_len=64,
             on_interrupt="raise"):
    """Train a CharLSTM on ``train`` (a StreamBatcher) for global steps. ``train`` may
    also be what ``load_corpus`` returns, (vocab, train ids, validation ids): the
    streams are then ``batch_size`` x ``seq_len`` and the vocabulary is the corpus's.

    steps / epochs: the global step to stop at, counted from 0 like the checkpoint's
      step (``epochs`` means ``epochs * len(train)``); at most one; neither = 1 epoch.
      A run resumed at ``initial_step`` therefore ends where the uninterrupted one would.
    val: a StreamBatcher with the same seq_len; validated every ``eval_every`` steps
      and at the end (0 = only at the end), reported in nats and bits per character.
    sample_every / sample_length / temperature / prime: a sample printed every
      ``sample_every`` steps (0 = never; needs ``vocab`` to decode), seeded by (seed, step).
    log_every: a progress line (loss, smoothed loss, chars/s) every this many steps.
    smoothing: the factor of the smoothed loss, an exponential moving average of the
      steps' losses bias-corrected as Adam's moments are (so it follows the per-step
      losses from the first step, rather than lagging from a starting guess).
    checkpoint / save_every: a path rewritten atomically every ``save_every`` steps,
      at the end, when interrupted and when a worker fails; it holds what an exact
      resume needs (``text_checkpoint.load_text_checkpoint``), plus ``text_path`` and
      ``val_fraction`` when given (where the text came from, and how it was split).
    initial_step / initial_state / history: resume; ``initial_state`` = (h, c) that
      chunk ``initial_step % len(train)`` starts from (None: zeros).
    callbacks: ``cb(step, record) -> bool`` after every progress line and validation
      (record: {"kind": "train", "step", "loss", "smooth_loss", "chars_per_s"} or
      {"kind": "val", "step", "val_loss", "val_bits_per_char"}); True from any stops
      training after it. A callback with a ``monitor`` (``EarlyStopping``,
      ``ModelCheckpoint``) sees only the records that hold it -- the validations, for
      "val_loss" -- so its patience counts validations; the others see every record.
    divergence: stop (``Diverged``) when the smoothed loss, or a validation loss,
      exceeds this many times ln V, the loss of a uniform guess that training starts
      from; None: never for that reason (a loss that is not finite always stops it).
    on_interrupt: Ctrl-C or SIGTERM stops after the current step with whole weights
      (and the checkpoint written); then "raise" (the default) passes the signal on as
      ``fit``'s does (a KeyboardInterrupt with the TextHistory as ``history``), "return"
      returns the TextHistory with ``interrupted = True``.
    """
    if divergence is not None and not (isinstance(divergence, (int, float))
                                       and divergence > 1):
        raise ValueError(f"divergence must be a factor > 1 or None, got {divergence!r}")
    if isinstance(train, tuple) and len(train) == 3:          # load_corpus's answer
        vocab, train, val = _batchers(train, val, vocab, batch_size, seq_len)
    if vocab is not None:
        # the ids are the vocabulary's: a model of another size, or one that knows
        # another vocabulary, would be trained on ids that mean other characters
        if len(vocab) != model.vocab_size:
            raise ValueError(f"vocab has {len(vocab)} characters, the model's input and "
                             f"output {model.vocab_size}")
        own = getattr(model, "vocab", None)
        if own is not None and list(own.chars) != list(vocab.chars):
            raise ValueError("vocab is not the model's own vocabulary (model.vocab): "
                             "the same ids would mean other characters")
        model.vocab = vocab                  # so the model can sample strings, and save
    end = _check_options(train, val, steps, epochs, temperature, smoothing)
    callbacks = check_callback_list(
        callbacks, [TRAIN_RECORD] + ([VAL_RECORD] if val is not None else []),
        fields={"epoch", "step", "kind"}, routed=True,
        hint=lambda m: "give validation text (val)" if m.startswith("val_") and
        val is None else "")
    counts = {k: _count(k, v) for k, v in (("eval_every", eval_every),
                                           ("sample_every", sample_every),
                                           ("sample_length", sample_length),
                                           ("log_every", log_every))}
    save_every = _count("save_every", save_every, zero_ok=False, none_ok=True)
    step = _count("initial_step", initial_step)
    prime_ids = _prime_ids(prime, vocab, train) if counts["sample_every"] and \
        vocab is not None else None
    say = print_fn if verbose else (lambda *a, **k: None)
    hist = history if history is not None else TextHistory()
    loop = Loop(model, hist, engine=engine, workers=workers, checkpoint=checkpoint, say=say,
                on_interrupt=on_interrupt)
    seed = check_seed(seed, none_ok=False)
    plan = TextPlan(model, loop, train, val, end, seed, vocab, prime_ids, temperature,
                    smoothing, checkpoint, save_every, initial_state, callbacks, say,
                    text_path=text_path, val_fraction=val_fraction, **counts)
    plan.divergence = divergence
    for cb in callbacks:       # last: every check has passed
        if hasattr(cb, "set_model"):
            cb.set_model(model)
    loop.run(plan, {"train": train, "val": val}, seed, step, end)
    return hist


class TextPlan(Plan):
    """Step s is chunk ``s % n``; between steps: progress lines, validation, samples,
    periodic checkpoints, callbacks on each progress line and validation."""

    def __init__(self, model, loop, train, val, end, seed, vocab, prime_ids, temperature,
                 smoothing, checkpoint, save_every, initial_state, callbacks, say,
                 text_path, val_fraction, eval_every, sample_every, sample_length,
                 log_every):
        self.model, self.loop, self.hist = model, loop, loop.history
        self.train, self.val, self.end, self.seed = train, val, end, seed
        self.n = len(train)
        self.vocab, self.prime_ids, self.temperature = vocab, prime_ids, temperature
        self.smoothing, self.checkpoint, self.save_every = smoothing, checkpoint, save_every
        self.initial_state, self.callbacks, self.say = initial_state, callbacks, say
        self.text_path, self.val_fraction = text_path, val_fraction
        self.eval_every, self.sample_every = eval_every, sample_every
        self.sample_length, self.log_every = sample_length, log_every
        self.width = len(str(end))
        h = self.hist
        # the raw moving average, recovered from the corrected one of a resumed history
        self.n_avg = len(h.smooth_loss)
        self.ema = h.smooth_loss[-1] * (1 - smoothing ** self.n_avg) if h.smooth_loss else 0.0
        self.smooth = h.smooth_loss[-1] if h.smooth_loss else math.log(model.vocab_size)
        self.crc = stream_crc(train) if checkpoint is not None else None
        self.t_log, self.chars_log = 0.0, 0
        self.divergence = 2.0
        self.restored = False             # a callback's on_stop put weights back

    def _limit(self):
        """The loss past which training diverged: ``divergence`` x ln V (None: none)."""
        return None if self.divergence is None else \
            self.divergence * math.log(self.model.vocab_size)

    def start(self, engine):
        self.engine = engine
        step = self.loop.step
        if self.initial_state is not None and step % self.n:
            engine.set_state(step % self.n, self.initial_state)

    def batch(self, step):
        return step % self.n

    def after_step(self, step, loss, n_chars, correct, dt):
        h = self.hist
        self.t_log += dt
        self.chars_log += n_chars
        h.train_time += dt
        h.chars += n_chars
        self.ema = self.smoothing * self.ema + (1.0 - self.smoothing) * loss
        self.n_avg += 1
        self.smooth = self.ema / (1.0 - self.smoothing ** self.n_avg)
        limit = self._limit()
        if limit is not None and self.smooth > limit:
            raise Diverged(f"training diverged: the smoothed loss {self.smooth:.4g} nats/char "
                           f"at step {step} is over {self.divergence:g}x ln V = {limit:.4g} "
                           f"(a uniform guess: where training started); lower the learning "
                           f"rate or clip the gradient", step=step - 1)
        h.steps.append(step)
        h.loss.append(loss)
        h.smooth_loss.append(self.smooth)
        records = []
        if (self.log_every and step % self.log_every == 0) or step == self.end:
            records.append(self._progress(step, loss))
        if self.val is not None and self.eval_every and step % self.eval_every == 0:
            records.append(self.validate(step))
        if self.prime_ids is not None and step % self.sample_every == 0:
            self._sample(step)
        stop = False
        if any(hasattr(cb, "set_model") and sees(cb, rec)
               for cb in self.callbacks for rec in records):
            self.engine.sync_to_host()   # they read (EarlyStopping: restore) the weights
        for rec in records:
            stop = call_all([cb for cb in self.callbacks if sees(cb, rec)], step, rec) or stop
        if stop:
            self.restored = on_stop(self.callbacks)
        # (after the callbacks: a checkpoint of this step holds the weights they left)
        if self.checkpoint is not None and self.save_every and step % self.save_every == 0:
            self.loop.save(self, step)
        return stop

    def _progress(self, step, loss):
        rate = self.chars_log / self.t_log if self.t_log > 0 else 0.0
        self.hist.rate_steps.append(step)
        self.hist.chars_per_s.append(rate)
        self.say(f"step {step:>{self.width}}/{self.end}  epoch {step / self.n:.2f}  loss "
                 f"{loss:.4f}  smooth {self.smooth:.4f}  {rate:,.0f} chars/s")
        self.t_log, self.chars_log = 0.0, 0
        return {"kind": "train", "step": step, "loss": loss, "smooth_loss": self.smooth,
                "chars_per_s": rate}

    def validate(self, step):
        t0 = time.perf_counter()
        vl, vn, _ = self.engine.evaluate("val")
        limit = self._limit()
        if not math.isfinite(vl) or (limit is not None and vl > limit):
            # (before the checkpoint of these weights; one written already is put back)
            why = "not finite" if not math.isfinite(vl) else \
                f"over {self.divergence:g}x ln V = {limit:.4g}"
            raise Diverged(f"training diverged: the validation loss {vl:.4g} nats/char at "
                           f"step {step} is {why}; lower the learning rate or clip the "
                           f"gradient", step=step)
        self.hist.val_steps.append(step)
        self.hist.val_loss.append(vl)
        self.say(f"step {step:>{self.width}}/{self.end}  val loss {vl:.4f} nats/char  "
                 f"{vl / LN2:.4f} bits/char  ({vn:,} chars, {time.perf_counter() - t0:.1f} s)")
        return {"kind": "val", "step": step, "val_loss": vl, "val_bits_per_char": vl / LN2}

    def _sample(self, step):
        self.engine.sync_to_host()       # sampling reads the weights
        ids = self.model.sample(self.prime_ids, self.sample_length, self.temperature,
                                seed=[int(self.seed), step])
        text = self.vocab.decode(self.prime_ids + ids)
        self.hist.samples.append((step, text))
        self.say(f"---- sample at step {step} (temperature {self.temperature:g}) ----\n"
                 f"{text}\n----")

    def finish(self, step, interrupted):
        h = self.hist
        # (not after an EarlyStopping put back weights the engine does not hold; fit
        # does not validate after one either)
        if not interrupted and not self.restored and self.val is not None and \
                (not h.val_steps or h.val_steps[-1] != step):
            self.validate(step)

    def save(self, step):
        st = self.engine.get_state(step % self.n) if step % self.n else None
        self.hist.step = step
        save_text_checkpoint(self.checkpoint, self.model, self.vocab, self.train, step,
                             self.seed, self.hist, st, crc=self.crc,
                             text_path=self.text_path, val_fraction=self.val_fraction)

    def diverged(self, step, loss):
        return (f"training diverged: loss is {loss} at step {step}; lower the learning "
                f"rate or clip the gradient")
