"""Checks on (inputs, targets) a user hands to fit / evaluate / train_on_batch / minimize.

Once per call, before any work, so that a mistake is one ValueError naming it -- not
a silently broadcast label, a truncated float, a NaN blamed on the learning rate, or
an IndexError from deep inside a worker. (``loss_and_grad`` itself stays unchecked: it
is the hot path, and the engines only ever feed it checked data.)
"""
from __future__ import annotations

import numpy as np


def numbers(a, what):
    """``a`` if its dtype holds numbers (bool, int, float); an object array of numbers
    (pandas' nullable Int64 or Float32 columns, a mixed bool/float frame) as float64;
    else a ValueError naming ``what`` and the dtype -- complex or text is never cut
    down to a number silently."""
    if a.dtype.kind == "O" and not any(
            isinstance(v, (str, bytes, complex, np.complexfloating, np.datetime64,
                           np.timedelta64)) for v in a.flat):
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            pass
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numbers, got dtype {a.dtype}")
    return a


def check_inputs(model, x, what="input"):
    """x as an (n, n_inputs) array of numbers in the model's dtype (what predict and
    evaluate take), or ValueError naming the problem."""
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be read as an array: {e}") from None
    if x.ndim != 2 or x.shape[1] != model.n_inputs:
        raise ValueError(f"{what} must have shape (n, {model.n_inputs}), got {x.shape}")
    return np.ascontiguousarray(numbers(x, what), dtype=model.dtype)


def _fits(a, dtype, what):
    """``a`` as a contiguous ``dtype`` array, or ValueError: NaN or infinite values, or
    finite ones beyond ``dtype``'s range (1e300 in a float32 model), named as such."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ValueError(f"{what} hold NaN or infinite values")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(a, dtype=dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"{what} hold values too large for {np.dtype(dtype).name} (largest "
                         f"magnitude {float(np.abs(a).max()):g}); scale them, or use a "
                         f"float64 model")
    return out


def check_data(model, x, y, what="data"):
    """(x, y) as contiguous arrays the model can use, or ValueError naming the problem.

    x: (n, n_inputs), finite. y, for k = model.n_outputs outputs:
      - class labels (n,) when k > 1: integers in [0, k) (floats holding whole numbers
        are accepted, as Keras does);
      - (n,) targets for one output, or (n, k) targets (one-hot, or regression targets
        for mse): finite;
    and every target in [0, 1] under binary cross-entropy.
    """
    if y is None:
        raise ValueError(f"{what} has inputs but no targets (y is None)")
    try:
        x = np.asarray(x)
        y = np.asarray(y)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} cannot be read as arrays: {e}") from None
    if x.ndim != 2 or x.shape[1] != model.n_inputs:
        raise ValueError(f"{what} inputs must have shape (n, {model.n_inputs}), got {x.shape}")
    x = _fits(numbers(x, f"{what} inputs"), model.dtype, f"{what} inputs")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what} has {x.shape[0]} inputs but "
                         f"{y.shape[0] if y.ndim else 'a scalar as'} targets")
    y = numbers(y, f"{what} targets")
    if y.dtype.kind == "f":
        _fits(y, model.dtype, f"{what} targets")
    k = model.n_outputs
    # binary cross-entropy takes 0/1 targets -- or, with several outputs, class labels
    # that become one-hot targets (one independent sigmoid per class)
    labels = y.ndim == 1 and k > 1
    if getattr(model.loss, "name", "") == "binary_crossentropy" and y.size \
            and not labels and (y.min() < 0 or y.max() > 1):
        raise ValueError(f"{what} targets for binary cross-entropy must be in [0, 1], "
                         f"got [{y.min()}, {y.max()}]")
    if y.ndim == 2:
        if y.shape[1] != k:
            raise ValueError(f"{what} targets have {y.shape[1]} columns, the network "
                             f"outputs {k}")
        return x, y
    if y.ndim != 1:
        raise ValueError(f"{what} targets must be (n,) labels or (n, {k}) targets, got "
                         f"shape {y.shape}")
    if k == 1:
        return x, y
    if y.dtype.kind == "f":
        if y.size and not np.array_equal(y, np.round(y)):
            raise ValueError(f"{what} labels must be whole numbers (class ids), got "
                             f"{y[y != np.round(y)][0]!r}; give one-hot (n, {k}) "
                             f"targets for soft labels")
        y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{what} labels must be in [0, {k}), got [{y.min()}, {y.max()}]")
    return x, y
