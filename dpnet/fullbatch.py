"""Full-batch training with scipy's minimizers (L-BFGS-B, CG, BFGS, ...).

scipy takes the model's flat parameter vector as it is; each evaluation of the
objective is one full-batch gradient computed by an engine -- in process or sharded
over worker processes, so L-BFGS is data-parallel too.
"""
from __future__ import annotations

import time

import numpy as np

from .layers import Dropout

METHODS = ("L-BFGS-B", "CG", "BFGS")


def minimize(model, x, y, method="L-BFGS-B", maxiter=100, validation_data=None,
             engine=None, workers=0, callback=None, tol=None, print_fn=None):
    """Minimize the mean training loss (plus the model's L2 penalty) over all of (x, y).

    Returns scipy's OptimizeResult; the model ends with the best parameters found.
    ``callback(iteration, metrics) -> bool`` runs after every iteration; True stops.
    """
    try:
        from scipy.optimize import minimize as scipy_minimize
    except ImportError:
        raise ImportError("full-batch training needs scipy: pip install scipy") from None
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(maxiter, int) or maxiter <= 0:
        raise ValueError(f"maxiter must be a positive integer, got {maxiter!r}")
    if any(isinstance(l, Dropout) and l.rate > 0 for l in getattr(model, "layers", [])):
        raise ValueError("line searches need a deterministic objective: "
                         "full-batch training does not support dropout")
    from .engines import make_engine
    from .train import _check_xy, check_validation
    x, y = _check_xy(model, x, y, "training data")
    if x.shape[0] == 0:
        raise ValueError("training data is empty")
    datasets = {"train": (x, y)}
    if validation_data is not None:
        datasets["val"] = check_validation(model, validation_data)
    own = engine is None
    engine = make_engine(workers) if own else engine
    all_idx = np.arange(len(x))
    evals = [0]
    t0 = time.perf_counter()

    def objective(theta):                      # theta: float64 (n_params,)
        model.params[...] = theta              # cast to the model's dtype
        evals[0] += 1
        engine.weights_changed(evals[0])
        loss, _, _ = engine.gradient(evals[0], all_idx)
        g = model.grads
        for sl in model._weight_slices:        # L2: (l2/2)·‖W‖² on weights only
            g[sl] += model.l2 * model.params[sl]
        return loss + model.l2_penalty(), g.astype(np.float64)

    iteration = [0]

    class _Stop(Exception):
        pass

    def on_iteration(theta):
        iteration[0] += 1
        model.params[...] = theta
        engine.weights_changed(evals[0])
        tl, tn, tc = engine.evaluate("train")
        metrics = {"loss": tl, "accuracy": tc / max(tn, 1)}
        if "val" in datasets:
            vl, vn, vc = engine.evaluate("val")
            metrics.update(val_loss=vl, val_accuracy=vc / max(vn, 1))
        metrics["seconds"] = time.perf_counter() - t0
        if print_fn is not None:
            print_fn(f"iter {iteration[0]:>4}/{maxiter}  " + "  ".join(
                f"{k} {v:.4f}" for k, v in metrics.items()))
        if callback is not None and callback(iteration[0], metrics):
            raise _Stop

    try:
        engine.start(model, datasets)
        theta0 = model.params.astype(np.float64)
        try:
            result = scipy_minimize(objective, theta0, jac=True, method=method, tol=tol,
                                    callback=on_iteration, options={"maxiter": maxiter})
            model.params[...] = result.x
        except _Stop:
            result = None
    finally:
        if own:
            engine.close()
    return result
