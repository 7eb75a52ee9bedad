"""Full-batch training with scipy's minimizers (L-BFGS-B, CG, BFGS, ...).

scipy takes the model's flat parameter vector as it is; each evaluation of the
objective is one full-batch gradient computed by an engine -- in process or sharded
over worker processes, so L-BFGS is data-parallel too.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np

from ..data.batching import batch_slices, epoch_order
from ..engines import make_engine
from ..nn.deform import Deform
from ..nn.layers import Dropout
from ..nn.rng import check_seed
from .epochs import check_training_data, check_validation, sample_weights
from .loop import GracefulStop, check_on_interrupt, pass_on

METHODS = ("L-BFGS-B", "CG", "BFGS")
STOPPED = 99            # a result's status when a callback or a signal stopped the run


class _Stop(Exception):
    """A callback or a stop signal asked to stop: leaves scipy's loop."""


def _stopper(stop):
    """The caller's ``GracefulStop`` (it reads ``requested`` afterwards), else one of
    our own: either way the first Ctrl-C (SIGTERM, SIGHUP) ends the run after the
    current iteration, with the model holding that iterate, not half a line search."""
    return contextlib.nullcontext(stop) if stop is not None else GracefulStop()


def _pass_on(own_stop, stop, on_interrupt, **about):
    """A signal that stopped a run with a stop of its own goes on (``loop.pass_on``)
    under on_interrupt="raise"; a caller's ``stop`` is the caller's to act on."""
    if own_stop and on_interrupt == "raise":
        pass_on(stop.requested, **about)


def _check(model, method, maxiter):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(maxiter, int) or maxiter <= 0:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
    layers = getattr(model, "layers", [])
    if any(isinstance(l, Dropout) and l.rate > 0 for l in layers):
        raise ValueError("line searches need a deterministic objective: "
                         "full-batch training does not support dropout")
    if any(isinstance(l, Deform) for l in layers):
        raise ValueError("line searches need a deterministic objective: "
                         "full-batch training does not support Deform")
    if any(getattr(l, "max_norm", None) is not None for l in layers):
        raise ValueError("scipy's minimizers do not keep a max_norm constraint: "
                         "full-batch training does not support max_norm")


class _Objective:
    """scipy's view of the model: ``value_and_grad(theta)`` for the line searches and
    ``iteration(theta)`` after each accepted step (metrics, printing, the callback).
    ``idx``: the training samples the objective covers (default: all of them)."""

    def __init__(self, model, engine, n, validate, maxiter, callback, print_fn, offset=0,
                 idx=None, first_eval=0, stop=None):
        self.model, self.engine, self.validate = model, engine, validate
        self.stop = stop
        self.maxiter, self.callback, self.print_fn = maxiter, callback, print_fn
        self.offset = offset
        self.all_idx = np.arange(n) if idx is None else idx
        self.first_eval = first_eval
        self.evals = self.iterations = 0
        self.t0 = time.perf_counter()

    def value_and_grad(self, theta):             # theta: float64 (n_params,)
        model = self.model
        model.params[...] = theta                # cast to the model's dtype
        self.evals += 1
        self.engine.weights_changed(self.first_eval + self.evals)
        loss, _, _ = self.engine.gradient(self.first_eval + self.evals, self.all_idx)
        model.add_penalty_grad(model.grads)      # the L2 term, as apply_gradients adds it
        return loss + model.l2_penalty(), model.grads.astype(np.float64)

    def iteration(self, theta):
        self.iterations += 1
        self.model.params[...] = theta
        self.engine.weights_changed(self.evals)
        metrics = _metrics(self.engine, self.classify, self.validate)
        metrics["seconds"] = time.perf_counter() - self.t0
        if self.print_fn is not None:
            self.print_fn(f"iter {self.offset + self.iterations:>4}/"
                          f"{self.offset + self.maxiter}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.callback is not None and self.callback(self.iterations, metrics):
            self.stopped_by = "the callback"
            raise _Stop
        if self.stop is not None and self.stop.requested is not None:
            raise _Stop


def _metrics(engine, classify, validate):
    """Loss (and accuracy) on the training set, and on the validation set if any, at
    the weights the engine has."""
    tl, tn, tc = engine.evaluate("train")
    metrics = {"loss": tl}
    if classify:
        metrics["accuracy"] = tc / max(tn, 1)
    if validate:
        vl, vn, vc = engine.evaluate("val")
        metrics["val_loss"] = vl
        if classify:
            metrics["val_accuracy"] = vc / max(vn, 1)
    return metrics


def _prepare(model, x, y, validation_data, method, maxiter, sample_weight=None):
    """scipy's minimize, and the checked data as the engine's datasets."""
    try:
        from scipy.optimize import minimize as scipy_minimize
    except ImportError:
        raise ImportError("CG and L-BFGS need scipy: pip install scipy") from None
    _check(model, method, maxiter)
    x, y = check_training_data(model, x, y)
    w = sample_weights(y, sample_weight)
    datasets = {"train": (x, y) if w is None else (x, y, w)}
    if validation_data is not None:
        datasets["val"] = check_validation(model, validation_data)
    return scipy_minimize, x, y, datasets


def minimize(model, x, y, method="L-BFGS-B", maxiter=100, validation_data=None,
             engine=None, workers=0, callback=None, tol=None, print_fn=None,
             iterations_done=0, stop=None, sample_weight=None, on_interrupt="raise"):
    """Minimize the mean training loss (plus the model's L2 penalty) over all of (x, y)
    -- with ``sample_weight`` (one per sample, >= 0), the mean of weight x loss, as
    ``fit``'s (the ``loss`` the callback and the progress lines show is the unweighted
    evaluation).

    Returns scipy's OptimizeResult; the model ends with the best parameters found, or
    the last whole iterate when stopped early -- then, as scipy marks a stop its own
    callback asks for, ``status`` is ``STOPPED`` (99), ``success`` False and
    ``message`` names what stopped it, with ``nit`` and ``nfev`` counted so far.
    ``callback(iteration, metrics) -> bool`` runs after every iteration; True stops.
    ``iterations_done``: how many a resumed run ran before (the progress lines
    count on from there). Ctrl-C stops after the current iteration (a second one at
    once); then, with on_interrupt="raise" (the default), the signal goes on as
    ``fit``'s does (a KeyboardInterrupt carrying the OptimizeResult as ``result``),
    with "return" the result is returned. A caller that passes its own
    ``GracefulStop`` as ``stop`` acts on ``stop.requested`` itself.
    """
    check_on_interrupt(on_interrupt)
    scipy_minimize, x, y, datasets = _prepare(model, x, y, validation_data, method, maxiter,
                                              sample_weight)
    own_stop, own = stop is None, engine is None
    engine = make_engine(workers) if own else engine
    try:
        engine.start(model, datasets)
        with _stopper(stop) as stop:
            f = _Objective(model, engine, len(x), "val" in datasets, maxiter, callback,
                           print_fn, offset=int(iterations_done), stop=stop)
            f.classify = model.classifies(y)
            try:
                result = scipy_minimize(f.value_and_grad, model.params.astype(np.float64),
                                        jac=True, method=method, tol=tol,
                                        callback=f.iteration, options={"maxiter": maxiter})
                model.params[...] = result.x
            except _Stop:
                from scipy.optimize import OptimizeResult      # (scipy: imported by now)
                why = f"stopped by {getattr(f, 'stopped_by', None) or stop.requested}"
                result = OptimizeResult(x=model.params.astype(np.float64), nit=f.iterations,
                                        nfev=f.evals, success=False, status=STOPPED,
                                        message=why)
    finally:
        if own:
            engine.close()
    _pass_on(own_stop, stop, on_interrupt, result=result)
    return result


@dataclass
class MinibatchRun:
    """What ``minimize_minibatches`` did: gradient evaluations, the step reached (one
    step = one minibatch, counted from the first epoch), the training samples its
    minibatches held, and whether a stop signal came (the model then holds the
    weights after ``step``; ``fit``'s rule: also when it came in the last batch)."""
    evals: int
    step: int
    samples: int
    interrupted: bool = False


def minimize_minibatches(model, x, y, method="L-BFGS-B", batch_size=1000, mb_maxiter=3,
                         epochs=1, validation_data=None, engine=None, workers=0, seed=0,
                         callback=None, print_fn=None, initial_step=0, stop=None,
                         on_interrupt="raise"):
    """scipy's minimizer on one minibatch at a time, as the 002 blog runs CG and L-BFGS-B:
    each epoch visits the shuffled training set in batches of ``batch_size``, and on each
    batch scipy runs ``mb_maxiter`` iterations from the current weights (a fresh
    curvature memory per batch). ``callback(epoch, metrics) -> stop?`` after each
    epoch; metrics as ``fit``'s (training and validation loss and accuracy) and
    ``iterations``, scipy's over the epoch's batches (a resumed partial epoch: its
    remaining batches').

    Returns a ``MinibatchRun``. Ctrl-C (SIGTERM, SIGHUP) stops after the current
    minibatch; nothing but the weights carries from one minibatch to the next, so
    ``initial_step=run.step`` from those weights continues exactly as if never stopped.
    The signal then goes on as ``minimize``'s does (``on_interrupt``; the
    KeyboardInterrupt carries the MinibatchRun as ``result``).
    """
    if not isinstance(initial_step, (int, np.integer)) or initial_step < 0:
        raise ValueError(f"initial_step must be a count of minibatches >= 0, got "
                         f"{initial_step!r}")
    scipy_minimize, x, y, datasets = _prepare(model, x, y, validation_data, method,
                                              mb_maxiter)
    classify = model.classifies(y)
    slices = batch_slices(len(x), int(batch_size))
    check_on_interrupt(on_interrupt)
    seed = check_seed(seed, none_ok=False)
    own_stop, own = stop is None, engine is None
    engine = make_engine(workers) if own else engine
    try:
        engine.start(model, datasets)
        with _stopper(stop) as stop:
            run = _minibatch_epochs(scipy_minimize, model, engine, x, datasets, classify,
                                    slices, method, mb_maxiter, epochs, seed, callback,
                                    print_fn, int(initial_step), stop)
    finally:
        if own:
            engine.close()
    _pass_on(own_stop, stop, on_interrupt, result=run)
    return run


def _minibatch_epochs(scipy_minimize, model, engine, x, datasets, classify, slices, method,
                      mb_maxiter, epochs, seed, callback, print_fn, step, stop):
    evals = samples = 0
    for epoch in range(step // len(slices), int(epochs)):
        t0 = time.perf_counter()
        order = epoch_order(len(x), epoch, seed, True)
        iterations = 0
        for sl in slices[step - epoch * len(slices):]:
            f = _Objective(model, engine, len(x), False, mb_maxiter, None, None,
                           idx=np.sort(order[sl]), first_eval=evals)
            result = scipy_minimize(f.value_and_grad, model.params.astype(np.float64),
                                    jac=True, method=method,
                                    options={"maxiter": int(mb_maxiter)})
            model.params[...] = result.x
            evals += f.evals
            iterations += int(result.nit)
            step += 1
            samples += sl.stop - sl.start
            if stop.requested is not None and step % len(slices):
                engine.weights_changed(evals + 1)     # mid-epoch: no epoch metrics
                return MinibatchRun(evals, step, samples, interrupted=True)
        engine.weights_changed(evals + 1)
        metrics = _metrics(engine, classify, "val" in datasets)
        metrics["seconds"] = time.perf_counter() - t0
        metrics["iterations"] = iterations          # scipy's, over the epoch's batches
        if print_fn is not None:
            short = {"accuracy": "acc", "val_accuracy": "val_acc"}
            print_fn(f"epoch {epoch + 1:>3}/{epochs}  " + "  ".join(
                f"{short.get(k, k)} {v:.4f}" for k, v in metrics.items()
                if k not in ("seconds", "iterations")) + f"  {metrics['seconds']:.1f}s")
        if callback is not None and callback(epoch + 1, metrics):
            break
        if stop.requested is not None:          # (a signal in the last batch: fit's rule)
            return MinibatchRun(evals, step, samples, interrupted=True)
    return MinibatchRun(evals, step, samples)
