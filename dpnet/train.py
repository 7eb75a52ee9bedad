"""The training loop: epochs, batches, validation, callbacks, checkpoints.

It never computes a gradient itself: an engine does (in process, on workers, on a
GPU), and the model's optimizer applies it. Everything random is a function of
(seed, epoch) or (seed, step), so a run resumed from a checkpoint, or a step re-run
after a worker failure, is the same as an uninterrupted run.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

import numpy as np

from .datacheck import check_data

from .data.batching import batch_slices, epoch_order


class History:
    """Per-epoch metrics: ``history.history["val_loss"][-1]`` as in Keras."""

    def __init__(self):
        self.history = {}
        self.epochs = []
        self.interrupted = False      # stopped by Ctrl-C / SIGTERM
        self.stopped_early = False    # stopped by a callback
        self.wall_time = 0.0
        self.samples = 0
        self.step = 0                 # updates applied so far (set by fit)
        self.engine_stats = {}

    def append(self, epoch, metrics):
        self.epochs.append(epoch)
        for k, v in metrics.items():
            self.history.setdefault(k, []).append(v)

    def to_dict(self):
        return {"epochs": self.epochs, "history": self.history, "interrupted": self.interrupted,
                "stopped_early": self.stopped_early, "wall_time": self.wall_time}

    @classmethod
    def from_dict(cls, d):
        h = cls()
        h.epochs = list(d.get("epochs", []))
        h.history = {k: list(v) for k, v in d.get("history", {}).items()}
        h.wall_time = float(d.get("wall_time", 0.0))
        return h

    def __repr__(self):
        return f"History(epochs={len(self.epochs)}, keys={list(self.history)})"


class EarlyStopping:
    """Stop after ``patience`` epochs in a row in which ``monitor`` has not improved by
    ``min_delta`` (as Keras);
    with ``restore_best_weights`` the model ends with the best epoch's weights."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=True):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best_weights = restore_best_weights
        self.mode = "max" if "acc" in monitor else "min"
        self.best, self.best_epoch, self.wait, self.best_params = None, None, 0, None
        self.model = None

    def set_model(self, model):
        """Called by fit at the start of every run: a callback reused for another run
        (or another model) starts afresh, never restoring the previous run's weights."""
        self.model = model
        self.best, self.best_epoch, self.wait, self.best_params = None, None, 0, None

    def __call__(self, epoch, metrics):
        if self.monitor not in metrics:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which this run does "
                             f"not report (has: {', '.join(metrics)})")
        v = metrics[self.monitor]
        better = self.best is None or (v < self.best - self.min_delta if self.mode == "min"
                                       else v > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch, self.wait = v, epoch, 0
            if self.restore_best_weights and self.model is not None:
                self.best_params = self.model.params.copy()
            return False
        self.wait += 1
        if self.wait >= self.patience:
            if self.best_params is not None:
                self.model.params[...] = self.best_params
            return True
        return False


class _GracefulStop:
    """While active, the first SIGINT/SIGTERM only sets ``requested``: the loop ends
    after the current step, with whole weights (never half an update). A second
    SIGINT raises KeyboardInterrupt at once, for a user who really means it."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _check_xy(model, x, y, what):
    return check_data(model, x, y, what)


def check_validation(model, validation_data):
    """validation_data as checked (x, y), or ValueError: an (x, y) pair, not empty."""
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be an (x, y) pair, got "
                         f"{type(validation_data).__name__}"
                         + (f" of {len(validation_data)}" if isinstance(validation_data,
                                                                     (tuple, list)) else ""))
    x, y = check_data(model, *validation_data, "validation data")
    if x.shape[0] == 0:
        raise ValueError("validation data is empty (give validation_data=None for none)")
    return x, y


def fit(model, x, y, epochs=1, batch_size=32, validation_data=None, callbacks=(),
        shuffle=True, seed=None, verbose=1, engine=None, workers=0, checkpoint=None,
        initial_step=0, history=None, print_fn=print, progress=None):
    """Train ``model`` on (x, y).

    epochs: the epoch to stop after (counting from 0, as Keras's ``epochs`` with
      ``initial_epoch``): a run resumed at step s continues to the same end.
    callbacks: callables ``cb(epoch, metrics) -> bool``; True stops training.
    seed: shuffling and dropout seed (default: the model's seed).
    engine / workers: who computes gradients (default: in process).
    checkpoint: a path rewritten (atomically) after every epoch and when stopped.
    initial_step: resume after this many updates (from a checkpoint's metadata).
    progress: show a tqdm bar per epoch (default: when stderr is a terminal).
    Ctrl-C or SIGTERM stops after the current step; the model keeps its weights and
    the returned History has ``interrupted = True``.
    """
    from .engines import make_engine

    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x, y = _check_xy(model, x, y, "training data")
    if x.shape[0] == 0:
        raise ValueError("training data is empty")
    if checkpoint is not None:       # an unusable path fails now, not after an epoch
        d = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
        if os.path.isdir(checkpoint) or not os.path.isdir(d) or not os.access(d, os.W_OK):
            raise ValueError(f"checkpoint {os.fspath(checkpoint)!r}: not a writable file "
                             f"path (is it a directory, or its directory missing?)")
    datasets = {"train": (x, y)}
    if validation_data is not None:
        datasets["val"] = check_validation(model, validation_data)
    seed = model.seed if seed is None else int(seed)
    n = x.shape[0]
    slices = batch_slices(n, batch_size)
    steps_per_epoch = len(slices)
    history = history if history is not None else History()
    if progress is None:
        progress = verbose and sys.stderr.isatty()
    for cb in callbacks:
        if hasattr(cb, "set_model"):
            cb.set_model(model)

    own_engine = engine is None
    engine = make_engine(workers) if own_engine else engine
    step = int(initial_step)
    t_start = time.perf_counter()
    try:
        engine.start(model, datasets, seed=seed)
        with _GracefulStop() as stop:
            epoch = step // steps_per_epoch
            while epoch < epochs and not stop.requested:
                t0 = time.perf_counter()
                order = epoch_order(n, epoch, seed, shuffle)
                loss_sum = correct = seen = 0
                first = step - epoch * steps_per_epoch
                bar = None
                if progress:
                    from tqdm import tqdm
                    bar = tqdm(total=steps_per_epoch, initial=first, leave=False,
                               desc=f"epoch {epoch + 1}/{epochs}", unit="batch")
                for sl in slices[first:]:
                    loss, nb, c = engine.gradient(step, order[sl])
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"training diverged: loss is {loss} at step "
                                                 f"{step} (epoch {epoch + 1}); lower the "
                                                 f"learning rate")
                    model.apply_gradients()
                    step += 1
                    engine.weights_changed(step)
                    loss_sum += loss * nb
                    correct += c
                    seen += nb
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    if stop.requested:
                        break
                if bar is not None:
                    bar.close()
                history.samples += seen
                if stop.requested and step % steps_per_epoch:
                    break                  # a partial epoch gets no metrics line
                metrics = {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}
                if "val" in datasets:
                    vl, vn, vc = engine.evaluate("val")
                    metrics.update(val_loss=vl, val_accuracy=vc / max(vn, 1))
                metrics["lr"] = model.optimizer.lr
                metrics["seconds"] = time.perf_counter() - t0
                history.append(epoch + 1, metrics)
                if verbose:
                    print_fn(format_epoch(epoch + 1, epochs, metrics))
                epoch += 1
                stop_now = any(bool(cb(epoch, metrics)) for cb in list(callbacks))
                if checkpoint is not None:
                    save_training_checkpoint(checkpoint, model, step, seed, batch_size, history,
                                             n_train=n)
                if stop_now:
                    history.stopped_early = True
                    break
            if stop.requested:
                history.interrupted = True
                if verbose:
                    print_fn(f"stopped by {stop.requested} after step {step}; "
                             f"the model keeps its last weights")
                if checkpoint is not None:
                    save_training_checkpoint(checkpoint, model, step, seed, batch_size, history,
                                             n_train=n)
    finally:
        history.wall_time += time.perf_counter() - t_start
        history.step = step
        if own_engine:
            engine.close()
        history.engine_stats = engine.stats()
    return history


def format_epoch(epoch, epochs, m):
    parts = [f"epoch {epoch:>3}/{epochs}", f"loss {m['loss']:.4f}", f"acc {m['accuracy']:.4f}"]
    if "val_loss" in m:
        parts += [f"val_loss {m['val_loss']:.4f}", f"val_acc {m['val_accuracy']:.4f}"]
    parts += [f"lr {m['lr']:.2e}", f"{m['seconds']:.1f}s"]
    return "  ".join(parts)


def save_training_checkpoint(path, model, step, seed, batch_size, history, n_train=None,
                             **extra):
    """A checkpoint that a run can resume from: the step, and what the step count means
    (seed, batch size, training-set size), so a resume with other settings is refused."""
    from .checkpoint import save_model
    training = {"step": int(step), "seed": int(seed), "batch_size": int(batch_size),
                "n_train": None if n_train is None else int(n_train),
                "history": history.to_dict(), **extra}
    save_model(path, model, training=training)
