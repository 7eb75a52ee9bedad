"""Callbacks for ``fit``: ``cb(epoch, metrics) -> bool``, True stops training.

The rule, the same for ``fit`` and ``fit_text`` (``dpnet.training.loop.call_all``):
every callback sees the records given to it (``fit``: every epoch's; ``fit_text``:
those holding its ``monitor``, if it has one), in order, and training stops after the
record if any of them returned True; then each callback with an ``on_stop()`` has it called
(``EarlyStopping`` puts its best weights back there, after every callback has seen
the last record with the weights that made it).
"""
from __future__ import annotations

import math
import numbers
import string


class EarlyStopping:
    """Stop after ``patience`` epochs in a row in which ``monitor`` has not improved by
    ``min_delta`` (as Keras);
    with ``restore_best_weights`` the model ends with the best epoch's weights."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, restore_best_weights=True):
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer, got {patience!r}")
        if not isinstance(min_delta, numbers.Real) or isinstance(min_delta, bool) \
                or not 0 <= min_delta < math.inf:
            raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.restore_best_weights = restore_best_weights
        self.mode = "max" if "acc" in monitor else "min"
        self.best, self.best_epoch, self.wait, self.best_params = None, None, 0, None
        self.model = None
        self._resumed = False

    def set_model(self, model):
        """Called by fit at the start of every run: a callback reused for another run
        (or another model) starts afresh, never restoring the previous run's weights --
        unless ``resume`` has just given it a checkpoint's state for this run."""
        self.model = model
        if not self._resumed:
            self.best, self.best_epoch, self.wait, self.best_params = None, None, 0, None
        self._resumed = False

    def state(self):
        """What a checkpoint keeps of it (JSON), beside ``best_params`` (an array, or
        None): with both, a resumed run stops where the uninterrupted one does and
        restores the same weights."""
        return {"monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch,
                "wait": self.wait}

    def resume(self, state, best_params=None):
        """Take a checkpoint's ``state()`` (and best weights) for the next run; a state
        of another monitor, or malformed, is a ValueError naming it."""
        try:
            monitor, best, best_epoch, wait = (state["monitor"], state["best"],
                                               state["best_epoch"], state["wait"])
        except (KeyError, TypeError):
            raise ValueError(f"early-stopping state {state!r} is malformed"[:200]) from None
        if monitor != self.monitor:
            raise ValueError(f"the early-stopping state monitors {monitor!r}, not "
                             f"{self.monitor!r}")
        if not (isinstance(wait, int) and not isinstance(wait, bool) and wait >= 0
                and (best is None) == (best_epoch is None)
                and (best is None or (isinstance(best, (int, float))
                                      and not isinstance(best, bool) and math.isfinite(best)))
                and (best_epoch is None or isinstance(best_epoch, int))):
            raise ValueError(f"early-stopping state {state!r} is malformed"[:200])
        self.best, self.best_epoch, self.wait = best, best_epoch, wait
        self.best_params = None if best_params is None else best_params.copy()
        self._resumed = True

    @property
    def stopped(self):
        """Whether its patience has run out (a resumed run then has nothing to do)."""
        return self.best is not None and self.wait > 0 and self.wait >= self.patience

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
        return self.wait >= self.patience

    def on_stop(self):
        """Training stops (after every callback saw the record): the best weights back,
        if this callback's patience ran out -- not when another stopped training."""
        if self.stopped and self.best_params is not None and self.model is not None:
            self.model.params = self.best_params         # (copied in: host or device)
            return True
        return False


class ModelCheckpoint:
    """Save the model (weights and optimizer state, ``model.save``'s checkpoint) after an
    epoch -- with ``save_best_only`` only when ``monitor`` improved, as Keras's
    ModelCheckpoint; ``path`` may hold ``{epoch}`` and the epoch's metrics, formatted as
    Keras's (``"m-{epoch:02d}-{val_loss:.3f}.npz"``). Never stops training."""

    def __init__(self, path, monitor="val_loss", save_best_only=True):
        self.path, self.monitor, self.save_best_only = path, monitor, save_best_only
        self.mode = "max" if "acc" in monitor else "min"
        self.best, self.model, self.saved = None, None, []

    def set_model(self, model):
        self.model, self.best, self.saved = model, None, []

    def __call__(self, epoch, metrics):
        if self.save_best_only:
            if self.monitor not in metrics:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which this run "
                                 f"does not report (has: {', '.join(metrics)})")
            v = metrics[self.monitor]
            if self.best is not None and not (v < self.best if self.mode == "min"
                                              else v > self.best):
                return False
            self.best = v
        try:                              # Keras's names: "m-{epoch:02d}-{val_loss:.3f}.npz"
            path = str(self.path).format(epoch=epoch, **metrics)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            raise ValueError(f"ModelCheckpoint path {str(self.path)!r} cannot be filled in "
                             f"({type(e).__name__}: {e}); it may name epoch and "
                             f"{', '.join(metrics)}") from None
        self.model.save(path, epoch=int(epoch), metrics=dict(metrics))
        self.saved.append(path)
        return False


def check_callback_list(callbacks, records, fields=(), hint=lambda monitor: "",
                        routed=False):
    """``callbacks`` as a list of callables, checked before any work, so that a mistake
    is a ValueError now, not after the first epoch: a lone callback given for the list,
    something not callable, one that monitors a metric no record of the run holds
    (``records``: the sets of metric names of the run's kinds of record), or a
    ModelCheckpoint path naming a field its records lack (``fields``: the names a path
    may use besides the metrics). ``hint(monitor)``: advice added to a missing monitor's
    message. ``routed``: each callback with a ``monitor`` sees only the records that
    hold it (``fit_text``), so every monitor is checked, a ModelCheckpoint's too when it
    saves every time."""
    if callbacks is None:
        return []
    if callable(callbacks) or not isinstance(callbacks, (list, tuple)):
        raise ValueError(f"callbacks must be a list of callbacks, got "
                         f"{type(callbacks).__name__} (write callbacks=[...])")
    every = set().union(*records)
    for cb in callbacks:
        if not callable(cb):
            raise ValueError(f"callbacks must be callables cb(epoch, metrics), got {cb!r}")
        checkpoint = isinstance(cb, ModelCheckpoint)
        monitor = getattr(cb, "monitor", None)
        have = every
        if isinstance(monitor, str) and (routed or not checkpoint or cb.save_best_only):
            if monitor not in every:
                advice = hint(monitor)
                raise ValueError(f"{type(cb).__name__} monitors {monitor!r}, which this run "
                                 f"does not report (it has {', '.join(sorted(every))}"
                                 + (f"; {advice}" if advice else "") + ")")
            have = next(r for r in records if monitor in r)    # the records it will see
        if checkpoint:
            try:
                names = {f.split(".")[0].split("[")[0]
                         for _, f, _, _ in string.Formatter().parse(str(cb.path)) if f}
            except ValueError as e:
                raise ValueError(f"ModelCheckpoint path {str(cb.path)!r}: {e}") from None
            missing = sorted(names - have - set(fields))
            if missing:
                which = "this run does not report (it has" if have is every else \
                    f"the records it sees (those with {monitor!r}) do not hold (they have"
                raise ValueError(f"ModelCheckpoint path {str(cb.path)!r} names "
                                 f"{', '.join(missing)}, which {which} "
                                 f"{', '.join(sorted(set(fields) | have))})")
    return list(callbacks)


def sees(cb, record):
    """Whether a routed callback is given this record: one with a ``monitor`` only
    those that hold it (``fit_text``'s validation records for ``val_loss``)."""
    monitor = getattr(cb, "monitor", None)
    return not isinstance(monitor, str) or monitor in record
