"""The one training-loop core that ``fit`` (epochs of minibatches) and ``fit_text``
(global steps over stream chunks) are written on.

A run is a sequence of global steps ``step .. end``; what a step's batch is, and what
happens between steps (metrics, validation, samples, periodic checkpoints,
callbacks), is the loop's ``Plan`` (see ``fit.EpochPlan``, ``text.TextPlan``). The
core owns what must be the same for every loop:

- the engine: made from ``workers`` when none is given (and then closed), started on
  the datasets, always closed again if the run made it;
- one training step: the engine's gradient, a divergence check (one line naming the
  step), the model's update, the engine told of the new weights;
- a clean stop on Ctrl-C / SIGTERM (``GracefulStop``): after the current step, with
  whole weights, ``history.interrupted = True``; a second Ctrl-C raises at once; once
  the run is wound up (checkpoint written, workers gone), ``on_interrupt="raise"``
  hands the signal on to the handler that was there before (``pass_on``): a library
  call must not swallow a Ctrl-C or a SIGTERM meant for the whole program;
- checkpoints: the path is checked before any work; one is written when a worker
  fails (the weights are those of the last whole step) and when the run ends, unless
  the plan saved at that very step already;
- callbacks: every callback sees the records given to it (``fit``: each epoch's;
  ``fit_text``: those holding its ``monitor``, if it has one), and training stops
  after a record if any returned True (``call_all``; then their ``on_stop``);
- the history's step, wall time and the engine's statistics, whatever the ending.
"""
from __future__ import annotations

import math
import os
import signal
import stat
import sys
import threading
import time

import numpy as np

from ..engines import make_engine
from ..engines.errors import StepAbandoned, WorkerError
from ..models.saving import NotFiniteWeights
from ..storage.atomic import atomic_write


class _Previous:
    """What the regular file at ``path`` holds now, kept before a checkpoint replaces
    it, to be put back should the new weights be the ones that diverged: a hard link
    beside it (free at any size: the checkpoint is written as a new file and renamed,
    so the link keeps the old one), else -- a file system without hard links -- its
    bytes, up to ``KEEP_PREVIOUS_BYTES``. ``kept()``: None (no regular file there: a
    FIFO or /dev/stdout is never read), "big", or this."""

    PREFIX = ".dpnet-previous-"

    def __init__(self, real, link=None, data=None):
        self.real, self.link, self.data = real, link, data

    @classmethod
    def kept(cls, path):
        if path is None:
            return None
        try:
            real = os.path.realpath(path)        # (atomic_write replaces a link's target)
            st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):
                return None
            cls._sweep(real)
            link = os.path.join(os.path.dirname(real),
                                f"{cls.PREFIX}{os.getpid()}-{os.path.basename(real)}")
            cls._remove(link)
            try:
                os.link(real, link)
                return cls(real, link=link)
            except OSError:
                pass
            if st.st_size > KEEP_PREVIOUS_BYTES:
                return "big"
            with open(real, "rb") as f:
                return cls(real, data=f.read())
        except OSError:
            return None

    def put_back(self):
        if self.link is not None:
            os.replace(self.link, self.real)     # the old file, as it was, in one step
            self.link = None
        else:
            atomic_write(self.real, lambda f: f.write(self.data))

    def discard(self):
        if self.link is not None:
            self._remove(self.link)
            self.link = None
        self.data = None

    @classmethod
    def _sweep(cls, real):
        """The links a killed run left beside this checkpoint (their pid is gone): each
        holds an old checkpoint's disk space."""
        directory, name = os.path.split(real)
        try:
            entries = [e for e in os.listdir(directory)
                       if e.startswith(cls.PREFIX) and e.endswith(f"-{name}")]
        except OSError:
            return
        for e in entries:
            pid = e[len(cls.PREFIX):-len(name) - 1]
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
                continue                     # a run still going (in another process)
            except ProcessLookupError:
                pass
            except OSError:                  # another user's: alive, not ours
                continue
            try:
                os.unlink(os.path.join(directory, e))
            except OSError:
                pass

    @staticmethod
    def _remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class GracefulStop:
    """While active, the first SIGINT, SIGTERM, SIGHUP (a closed terminal) or SIGQUIT
    only sets ``requested`` (the signal's name): the loop ends after the current step,
    with whole weights (never half an update). A second SIGINT raises
    KeyboardInterrupt at once, for a user who really means it."""

    def __init__(self):
        self.requested = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                # a signal the process ignores stays ignored: nohup's SIGHUP, the
                # SIGINT of a job a non-interactive shell put in the background; and
                # one whose handler was set outside Python (None) could not be put back
                if signal.getsignal(sig) not in (signal.SIG_IGN, None):
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


ON_INTERRUPT = ("raise", "return")


def check_on_interrupt(on_interrupt):
    if on_interrupt not in ON_INTERRUPT:
        raise ValueError(f"on_interrupt must be 'raise' or 'return', got {on_interrupt!r}")


def pass_on(requested, **about):
    """After a run that a signal stopped has wound up cleanly (whole weights, checkpoint
    written, workers gone): the signal (``requested``, its name) goes on to the handler
    that was there before the run, as if the run had never caught it -- Python's raises
    KeyboardInterrupt for Ctrl-C, one of the program's own runs. Where that handler is
    the default action (SIGTERM, SIGHUP, SIGQUIT), which would end the process on the
    spot, SystemExit(128 + the signal's number) ends it instead: the same exit status
    (143 for SIGTERM) after the program's own ``finally`` blocks, ``with`` exits and
    atexit handlers have run. The exception carries ``about`` as attributes
    (``history``, ``result``): what the run did before it stopped."""
    if requested is None:
        return
    sig = signal.Signals[requested]
    try:
        if signal.getsignal(sig) == signal.SIG_DFL:
            raise SystemExit(128 + sig.value)
        signal.raise_signal(sig)
    except (KeyboardInterrupt, SystemExit) as e:
        for k, v in about.items():
            setattr(e, k, v)
        raise


class Diverged(FloatingPointError):
    """The loss ran away: not finite, or far above where training started. The run
    stops, and its checkpoint holds weights from before: a checkpoint whose weights
    gave the loss (``step``: the step whose weights did, when one did) is put back to
    what the file held before it, and weights that are not finite are never written."""

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step


# the file a checkpoint replaces is kept in memory, to be put back should the weights
# just written turn out to be the ones that diverged -- up to this size
KEEP_PREVIOUS_BYTES = 512 << 20


def check_checkpoint_path(checkpoint):
    """An unusable checkpoint path fails now, not after the first epoch."""
    if checkpoint is None:
        return
    d = os.path.dirname(os.path.abspath(os.fspath(checkpoint)))
    if os.path.isdir(checkpoint) or not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise ValueError(f"checkpoint {os.fspath(checkpoint)!r}: not a writable file "
                         f"path (is it a directory, or its directory missing?)")


def call_all(callbacks, *record):
    """Every callback sees the record (a list, not ``any(generator)``, which would stop
    at the first True); True if any of them asks to stop."""
    return any([bool(cb(*record)) for cb in callbacks])


def on_stop(callbacks):
    """Training stops after this record: the callbacks' ``on_stop`` hooks, in order;
    True if one of them changed the weights (returned True)."""
    changed = False
    for cb in callbacks:
        hook = getattr(cb, "on_stop", None)
        if callable(hook):
            changed = bool(hook()) or changed
    return changed


class Plan:
    """What a loop decides; the core calls these in this order:

    ``start(engine)`` once the engine holds the data; per step ``batch(step)`` (what
    ``engine.gradient`` gets) and, after the update, ``after_step(step, loss, n,
    correct, seconds)`` -> True to stop (``step`` is then the count of updates done);
    ``finish(step, interrupted)`` when the loop ends without an error, before the
    final checkpoint; ``close()`` however it ends. ``save(step)`` writes a checkpoint
    that resumes at ``step``; ``diverged(step, loss)`` is the message for a non-finite
    loss."""

    def start(self, engine):
        pass

    def batch(self, step):
        raise NotImplementedError

    def after_step(self, step, loss, n, correct, seconds):
        return False

    def finish(self, step, interrupted):
        pass

    def close(self):
        pass

    def save(self, step):
        raise NotImplementedError

    def diverged(self, step, loss):
        return f"training diverged: loss is {loss} at step {step}; lower the learning rate"


class Loop:
    """Runs a ``Plan`` from ``step`` to ``end`` (see the module docstring)."""

    def __init__(self, model, history, engine=None, workers=0, checkpoint=None, say=print,
                 on_interrupt="raise"):
        check_checkpoint_path(checkpoint)
        check_on_interrupt(on_interrupt)
        self.on_interrupt = on_interrupt
        self.model, self.history, self.say = model, history, say
        self.own_engine = engine is None
        self.engine = make_engine(workers) if engine is None else engine
        self.checkpoint = checkpoint
        self.saved_step = None       # the step of the last checkpoint this run wrote
        self._previous = None        # (_Previous or "big", step or None): what the last
        #                              checkpoint replaced, and of which step

    def save(self, plan, step):
        self.engine.sync_to_host()       # the weights may live with a worker
        self._discard_previous()
        previous = _Previous.kept(self.checkpoint)
        try:
            plan.save(step)              # (refuses weights that are not finite)
        except NotFiniteWeights:
            if isinstance(previous, _Previous):
                previous.discard()       # (nothing was written)
            raise Diverged(f"training diverged: the weights are not finite after step "
                           f"{step}; lower the learning rate", step=step) from None
        except BaseException:
            if isinstance(previous, _Previous):
                previous.discard()
            raise
        self._previous = None if previous is None else (previous, self.saved_step)
        self.saved_step = self.history.saved_step = step

    def _discard_previous(self):
        """The kept file goes (a hard link beside the checkpoint, or bytes in memory)."""
        if self._previous is not None and isinstance(self._previous[0], _Previous):
            self._previous[0].discard()
        self._previous = None

    def _put_back(self, e):
        """After ``Diverged`` ``e``: a checkpoint written from the weights that gave the
        loss goes back to what the file held before (this run's previous checkpoint, or
        the one it was resumed from); said in one line on stderr, quiet or not: which
        weights the file holds is part of the result."""
        if e.step is None or self.checkpoint is None or self.saved_step != e.step:
            return
        path = os.fspath(self.checkpoint)
        if self._previous is None or self._previous[0] == "big":
            why = "it replaced no earlier checkpoint that could be put back" \
                if self._previous is None else \
                "the file it replaced was too big to keep in memory and put back"
            print(f"dpnet: note: {path} holds the weights of step {e.step}, which "
                  f"diverged ({why})", file=sys.stderr)
            return
        kept, step = self._previous
        kept.put_back()
        self._previous = None
        self.saved_step = self.history.saved_step = step
        print(f"dpnet: note: {path} held the weights of step {e.step}, which diverged: "
              f"put back to the checkpoint it replaced"
              + (f" (step {step})" if step is not None else ""), file=sys.stderr)

    def run(self, plan, datasets, seed, step, end):
        """Train from global step ``step`` to ``end``; returns the step reached."""
        self.step = step
        self.history.interrupted = self.history.stopped_early = False   # this run's own
        t_start = time.perf_counter()
        try:
            self.engine.start(self.model, datasets, seed=seed)
            # the training's time is from here: waiting for remote workers to join (or
            # for processes to start) would make its samples/s a figure of that wait
            started = time.perf_counter()
            self.history.start_time += started - t_start
            t_start = started
            plan.start(self.engine)
            with GracefulStop() as stop:
                watch = getattr(self.engine, "stop_when", None)    # waits it may give up
                if watch is not None:
                    watch(lambda: stop.requested is not None)
                try:
                    abandoned = ""
                    try:
                        self._steps(plan, end, stop)
                    except StepAbandoned as e:     # the weights: the last whole step's
                        abandoned = f" ({e})"
                    self.engine.sync_to_host()
                    interrupted = stop.requested is not None
                    self.history.interrupted = interrupted
                    self.history.stop_signal = stop.requested
                    if interrupted:
                        self.say(f"stopped by {stop.requested} after step {self.step}; "
                                 f"the model keeps its last weights{abandoned}")
                    plan.finish(self.step, interrupted)
                except Diverged as e:
                    self._put_back(e)
                    raise
                except WorkerError:
                    # the weights are those of the last whole step: a resumable checkpoint
                    if self.checkpoint is not None and self.saved_step != self.step:
                        self._save_after_failure(plan)
                    raise
                if self.checkpoint is not None and self.saved_step != self.step:
                    self.save(plan, self.step)
        finally:
            if getattr(self.engine, "stop_when", None) is not None:
                self.engine.stop_when(None)       # a later run starts unasked
            plan.close()
            self.history.wall_time += time.perf_counter() - t_start
            self.history.step = self.step
            if self.own_engine:
                self.engine.close()
            self.history.engine_stats = self.engine.stats()
            self._discard_previous()
        if self.on_interrupt == "raise" and self.history.interrupted:
            pass_on(self.history.stop_signal, history=self.history)
        return self.step

    def _save_after_failure(self, plan):
        """Best effort: where the weights lived with the failed worker they may be
        lost; say so, and let the failure itself be what is raised."""
        try:
            self.save(plan, self.step)
        except (WorkerError, Diverged) as e:
            print(f"dpnet: the weights of step {self.step} could not be saved: {e}",
                  file=sys.stderr)

    def _steps(self, plan, end, stop):
        engine, first = self.engine, self.step
        while self.step < end and not stop.requested:
            t0 = time.perf_counter()
            # the engine's step: the gradient, then the update (in the coordinator, or
            # where the weights live); a non-finite loss leaves the weights untouched
            loss, n, correct = engine.step(self.step, plan.batch(self.step))
            if not math.isfinite(loss):
                if self.step == first:       # no update of this run made it so
                    dtype = np.dtype(self.model.dtype).name
                    raise Diverged(f"the loss is {loss} at step {self.step}, before any "
                                   f"update of this run: the data or the weights it "
                                   f"starts from give a loss that is not finite (values "
                                   f"too large for {dtype}?)", step=self.step)
                raise Diverged(plan.diverged(self.step, loss), step=self.step)
            self.step += 1
            if plan.after_step(self.step, loss, n, correct, time.perf_counter() - t0):
                self.history.stopped_early = True
                break
