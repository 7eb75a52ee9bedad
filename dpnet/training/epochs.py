"""``fit``: epochs of shuffled minibatches, with validation, callbacks and checkpoints.

It never computes a gradient itself: an engine does (in process, on workers, on a
GPU), and the model's optimizer applies it; the step, the stop on Ctrl-C, the
checkpoint on a worker failure and the callback rule are the shared loop core's
(``dpnet.training.loop``). Everything random is a function of (seed, epoch) or
(seed, step), so a run resumed from a checkpoint, or a step re-run after a worker
failure, is the same as an uninterrupted run.
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np

from ..data.batching import batch_slices, epoch_order
from ..data.check import check_data
from ..nn.rng import check_seed
from ..models.saving import save_model
from .callbacks import EarlyStopping, check_callback_list
from .history import History
from .loop import Diverged, Loop, Plan, call_all, on_stop


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


def check_training_data(model, x, y):
    x, y = check_data(model, x, y, "training data")
    if x.shape[0] == 0:
        raise ValueError("training data is empty")
    return x, y


def fit(model, x, y, epochs=1, batch_size=32, validation_data=None, callbacks=(),
        shuffle=True, seed=None, verbose=1, engine=None, workers=0, checkpoint=None,
        initial_step=0, history=None, print_fn=print, progress=None, divergence=100.0,
        checkpoint_extra=None, validation_split=None, initial_epoch=None,
        sample_weight=None, class_weight=None, test_data=None, on_interrupt="raise"):
    """Train ``model`` on (x, y).

    epochs: the epoch to stop after (counting from 0, as Keras's ``epochs`` with
      ``initial_epoch``): a run resumed at step s continues to the same end.
    callbacks: callables ``cb(epoch, metrics) -> bool`` after every epoch; every one
      sees every epoch, and True from any stops training after it.
    seed: shuffling and dropout seed (default: the model's seed).
    engine / workers: who computes gradients (default: in process).
    checkpoint: a path rewritten (atomically) after every epoch, when stopped, and
      when a worker fails; ``checkpoint_extra`` (a dict) goes into its training
      metadata (the CLI records how the data was prepared).
    initial_step: resume after this many updates (from a checkpoint's metadata);
      ``initial_epoch`` (Keras's name) resumes at the start of that epoch instead.
    validation_split: hold out this fraction of (x, y) -- the last samples, before any
      shuffling, as Keras does -- as validation data (not with ``validation_data``).
    sample_weight: a weight per training sample (>= 0); class_weight: {class: weight}
      for integer (or one-hot) class labels, unnamed classes weighing 1. A step's loss
      is then the mean of weight x loss over its batch (as Keras's); both multiply.
      Validation losses stay unweighted.
    test_data: (x, y) also evaluated after every epoch and shown (``test_loss``,
      ``test_accuracy`` in the history): to watch, not to choose by -- choosing an epoch
      or a setting on it would make the test score optimistic.
    progress: show a tqdm bar per epoch (default: when stderr is a terminal).
    divergence: stop (``Diverged``, a FloatingPointError) when an epoch's loss (or its
      validation loss) is more than this many times the first epoch's; None lets a
      run go where it goes -- but a loss or validation loss that is not finite always
      stops it, and the checkpoint then holds weights from before.
    on_interrupt: Ctrl-C (SIGTERM, SIGHUP, SIGQUIT) stops training after the current
      step, with whole weights, the checkpoint written and any workers stopped; then,
      with "raise" (the default), the signal goes on as if fit had not caught it:
      Ctrl-C raises KeyboardInterrupt (its ``history`` attribute: the run's History),
      SIGTERM SystemExit(143) (``loop.pass_on``); with "return", fit returns the History, its
      ``interrupted`` True (what the command-line tools do). A second Ctrl-C raises
      at once.
    """
    if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) \
            or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x, y = check_training_data(model, x, y)
    w = sample_weights(y, sample_weight, class_weight,
                       n_classes=getattr(model, "n_outputs", None))
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if not isinstance(validation_split, (int, float, np.floating)) \
                or isinstance(validation_split, bool) or not 0 < validation_split < 1:
            raise ValueError(f"validation_split must be a fraction in (0, 1), got "
                             f"{validation_split!r}")
        cut = x.shape[0] - int(round(x.shape[0] * validation_split))
        if not 0 < cut < x.shape[0]:
            raise ValueError(f"validation_split {validation_split} of {x.shape[0]} samples "
                             f"leaves no training or no validation data")
        x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
        w = None if w is None else w[:cut]
    datasets = {"train": (x, y) if w is None else (x, y, w)}
    if validation_data is not None:
        datasets["val"] = check_validation(model, validation_data)
    if test_data is not None:
        datasets["test"] = check_validation(model, test_data)
    if initial_epoch is not None:
        if initial_step:
            raise ValueError("give initial_step or initial_epoch, not both")
        if not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
            raise ValueError(f"initial_epoch must be a non-negative integer, got "
                             f"{initial_epoch!r}")
        initial_step = int(initial_epoch) * len(batch_slices(x.shape[0], int(batch_size)))
    if not isinstance(initial_step, (int, np.integer)) or isinstance(initial_step, bool) \
            or initial_step < 0:
        raise ValueError(f"initial_step must be a non-negative integer, got {initial_step!r}")
    history = history if history is not None else History()
    say = print_fn if verbose else (lambda *a, **k: None)
    loop = Loop(model, history, engine=engine, workers=workers, checkpoint=checkpoint, say=say,
                on_interrupt=on_interrupt)
    seed = model.seed if seed is None else check_seed(seed, none_ok=False)
    classify = model.classifies(y)               # else a regression: no accuracy reported
    callbacks = check_callbacks(callbacks, classify, datasets)
    plan = EpochPlan(model, loop, x.shape[0], int(batch_size), int(epochs), seed, shuffle,
                     "val" in datasets, callbacks, checkpoint, say,
                     progress=verbose and sys.stderr.isatty() if progress is None else progress)
    plan.classify = classify
    plan.report_test = "test" in datasets
    if divergence is not None and not (isinstance(divergence, (int, float))
                                       and divergence > 1):
        raise ValueError(f"divergence must be a factor > 1 or None, got {divergence!r}")
    plan.divergence = divergence
    plan.extra = dict(checkpoint_extra or {})
    for cb in callbacks:       # last: a callback given a resumed state keeps it until now
        if hasattr(cb, "set_model"):
            cb.set_model(model)
    loop.run(plan, datasets, seed, int(initial_step), plan.end)
    return history


def check_callbacks(callbacks, classify, datasets):
    """fit's callbacks as a list, checked before any work (``check_callback_list``)
    against the metrics of its epochs: loss, lr, seconds, accuracy of a classifier, and
    the same of each dataset given beside the training set (val_*, test_*)."""
    have = {"loss", "lr", "seconds"} | ({"accuracy"} if classify else set())
    for part in ("val", "test"):
        if part in datasets:
            have |= {f"{part}_{m}" for m in have & {"loss", "accuracy"}}
    return check_callback_list(callbacks, [have], fields={"epoch"},
                               hint=lambda m: "give validation_data or validation_split"
                               if m.startswith("val_") and "val" not in datasets else "")


def sample_weights(y, sample_weight=None, class_weight=None, n_classes=None):
    """The per-sample weights (float64, (n,)) that ``sample_weight`` and
    ``class_weight`` give, or None; a ValueError names what is wrong (a class_weight
    key outside the ``n_classes`` classes of the model's output among it)."""
    if sample_weight is None and class_weight is None:
        return None
    n = len(y)
    w = np.ones(n)
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "iuf" or sw.shape != (n,):
            raise ValueError(f"sample_weight must be {n} numbers, one per training sample, "
                             f"got {sw.dtype} of shape {sw.shape}")
        sw = sw.astype(np.float64)
        if not np.isfinite(sw).all() or (sw < 0).any():
            bad = int(np.flatnonzero(~np.isfinite(sw) | (sw < 0))[0])
            raise ValueError(f"sample_weight must be finite and >= 0; sample {bad} has "
                             f"{float(sw[bad])!r}")
        w *= sw
    if class_weight is not None:
        if not isinstance(class_weight, dict) or not class_weight:
            raise ValueError(f"class_weight must be a dict {{class: weight}}, got "
                             f"{class_weight!r}")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            labels = y.argmax(axis=1)
        elif y.ndim == 1 and y.dtype.kind in "iub":
            labels = y.astype(np.int64)
        else:
            raise ValueError("class_weight needs integer class labels (or one-hot targets)")
        for c, cw in class_weight.items():
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool):
                raise ValueError(f"class_weight keys must be class labels (integers), got "
                                 f"{c!r}")
            if n_classes is not None and not 0 <= c < max(n_classes, 2):
                raise ValueError(f"class_weight has class {c}, but the model has "
                                 f"{max(n_classes, 2)} classes (0 to {max(n_classes, 2) - 1})")
            if not isinstance(cw, (int, float, np.number)) or isinstance(cw, bool) \
                    or not np.isfinite(cw) or cw < 0:
                raise ValueError(f"class_weight[{c}] must be a finite number >= 0, got {cw!r}")
            w[labels == c] *= float(cw)
    if not w.any():
        raise ValueError("every training sample has weight 0: nothing to learn from")
    return w


class EpochPlan(Plan):
    """Global step s is batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``;
    at each epoch's end: metrics (and validation), a line, the callbacks, a checkpoint."""

    def __init__(self, model, loop, n, batch_size, epochs, seed, shuffle, validate,
                 callbacks, checkpoint, say, progress):
        self.model, self.loop, self.history = model, loop, loop.history
        self.n, self.batch_size, self.epochs = n, batch_size, epochs
        self.seed, self.shuffle, self.validate = seed, shuffle, validate
        self.callbacks, self.checkpoint, self.say = callbacks, checkpoint, say
        self.progress = progress
        self.slices = batch_slices(n, batch_size)
        self.steps_per_epoch = len(self.slices)
        self.end = epochs * self.steps_per_epoch
        self.epoch = self.order = self.bar = None
        self.classify = True
        self.report_test = False
        self.divergence = 100.0
        self.first_loss = None
        self.extra = {}

    def batch(self, step):
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            self._begin_epoch(epoch, first=k)
        return self.order[self.slices[k]]

    def _begin_epoch(self, epoch, first):
        self.first_step_of_epoch = first
        self.t0 = time.perf_counter()
        self.epoch = epoch
        self.order = epoch_order(self.n, epoch, self.seed, self.shuffle)
        self.loss_sum = self.correct = self.seen = 0
        part = self.history.partial
        if first and isinstance(part, dict) and \
                part.get("step") == epoch * self.steps_per_epoch + first:
            # a resume in mid-epoch: the sums of the steps before it, so that the
            # epoch's metrics are those of the uninterrupted run
            self.loss_sum, self.correct, self.seen = (part["loss_sum"], part["correct"],
                                                      part["seen"])
            self.t0 -= part["seconds"]
            self.first_step_of_epoch = 0
        self.history.partial = None
        if self.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps_per_epoch, initial=first, leave=False,
                            desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch")

    def after_step(self, step, loss, n, correct, seconds):
        if self.first_loss is None:
            self.first_loss = loss
        self.loss_sum += loss * n
        self.correct += correct
        self.seen += n
        self.history.samples += n
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step % self.steps_per_epoch:
            return False
        return self._end_epoch(step)

    def _end_epoch(self, step):
        self.close()
        self.loop.engine.sync_to_host()  # the learning rate, and callbacks, read the model
        metrics = {"loss": self.loss_sum / max(self.seen, 1)}
        self._check_divergence(step, metrics["loss"])
        if self.classify:
            metrics["accuracy"] = self.correct / max(self.seen, 1)
        if self.validate:
            vl, vn, vc = self.loop.engine.evaluate("val")
            self._check_val_divergence(step, vl)
            metrics["val_loss"] = vl
            if self.classify:
                metrics["val_accuracy"] = vc / max(vn, 1)
        if self.report_test:
            tl, tn, tc = self.loop.engine.evaluate("test")
            metrics["test_loss"] = tl
            if self.classify:
                metrics["test_accuracy"] = tc / max(tn, 1)
        metrics["lr"] = self.model.optimizer.lr
        metrics["seconds"] = time.perf_counter() - self.t0
        epoch = self.epoch + 1
        self.history.append(epoch, metrics)
        line = format_epoch(epoch, self.epochs, metrics)
        if self.first_step_of_epoch:          # a run resumed mid-epoch: say what it covers
            line += (f"  (resumed: the last {self.steps_per_epoch - self.first_step_of_epoch}"
                     f" of {self.steps_per_epoch} steps)")
        self.say(line)
        self.epoch = None
        stop = call_all(self.callbacks, epoch, metrics)
        if stop:
            on_stop(self.callbacks)
        self.history.stopped_early = bool(stop)    # (the checkpoint records it)
        if self.checkpoint is not None:
            self.loop.save(self, step)
        return stop

    def _check_divergence(self, step, loss):
        """An epoch's loss far above where training started: the first epoch's (of a
        resumed training too), else this run's first step's."""
        first = self.history.history.get("loss", [self.first_loss])[0]
        if self.divergence is not None and loss > self.divergence * max(first, 1e-12):
            raise Diverged(f"training diverged: epoch {self.epoch + 1}'s loss {loss:.4g} is "
                           f"over {self.divergence:g}x the {first:.4g} it started from (step "
                           f"{step}); lower the learning rate")

    def _check_val_divergence(self, step, val_loss):
        """The validation loss of the weights the epoch ended with -- which no step has
        tried yet -- not finite (always), or far above the first epoch's validation
        loss (or training loss, if larger: a first validation loss near 0 is no
        yardstick): before they are checkpointed."""
        first = (self.history.history.get("val_loss") or [None])[0]
        if first is not None:
            first = max(first, self.history.history.get("loss", [self.first_loss])[0])
        far = first is not None and self.divergence is not None and \
            val_loss > self.divergence * max(first, 1e-12)
        if not math.isfinite(val_loss) or far:
            raise Diverged(f"training diverged: the validation loss {val_loss:.4g} after "
                           f"epoch {self.epoch + 1} (step {step}) is "
                           + (f"over {self.divergence:g}x the first epoch's {first:.4g}"
                              if far else "not finite") + "; lower the learning rate")

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def save(self, step):
        extra = dict(self.extra)
        if step % self.steps_per_epoch and self.epoch == step // self.steps_per_epoch:
            extra["epoch_partial"] = {
                "step": int(step), "loss_sum": float(self.loss_sum),
                "correct": int(self.correct), "seen": int(self.seen),
                "seconds": time.perf_counter() - self.t0}
        save_training_checkpoint(self.checkpoint, self.model, step, self.seed,
                                 self.batch_size, self.history, n_train=self.n,
                                 early_stopping=[cb for cb in self.callbacks
                                                 if isinstance(cb, EarlyStopping)], **extra)

    def diverged(self, step, loss):
        return (f"training diverged: loss is {loss} at step {step} (epoch "
                f"{step // self.steps_per_epoch + 1}); lower the learning rate")


def format_epoch(epoch, epochs, m):
    parts = [f"epoch {epoch:>3}/{epochs}", f"loss {m['loss']:.4f}"]
    if "accuracy" in m:
        parts.append(f"acc {m['accuracy']:.4f}")
    if "val_loss" in m:
        parts.append(f"val_loss {m['val_loss']:.4f}")
    if "val_accuracy" in m:
        parts.append(f"val_acc {m['val_accuracy']:.4f}")
    if "test_accuracy" in m:
        parts.append(f"test_acc {m['test_accuracy']:.4f}")
    elif "test_loss" in m:
        parts.append(f"test_loss {m['test_loss']:.4f}")
    parts += [f"lr {m['lr']:.2e}", f"{m['seconds']:.1f}s"]
    return "  ".join(parts)


def save_training_checkpoint(path, model, step, seed, batch_size, history, n_train=None,
                             early_stopping=(), **extra):
    """A checkpoint that a run can resume from: the step, and what the step count means
    (seed, batch size, training-set size), so a resume with other settings is refused;
    in mid-epoch the epoch's sums so far (``epoch_partial``); the state of each
    ``EarlyStopping`` with its best weights (arrays ``early.K.best_params``)."""
    training = {"step": int(step), "seed": int(seed), "batch_size": int(batch_size),
                "n_train": None if n_train is None else int(n_train),
                "history": history.to_dict(), **extra}
    arrays = {}
    if early_stopping:
        training["early_stopping"] = [es.state() for es in early_stopping]
        for k, es in enumerate(early_stopping):
            if es.best_params is not None:
                arrays[f"early.{k}.best_params"] = es.best_params
    save_model(path, model, arrays=arrays, training=training)
