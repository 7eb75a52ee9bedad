"""The array backend: NumPy always, CuPy when it is installed and asked for.

This is the only module that imports cupy. Maths modules never import an array
library's GPU side directly: they take ``xp = xp_of(array)`` from the data they are
given, so one implementation serves both.
"""
from __future__ import annotations

import numpy as np

try:  # optional: only the GPU engine needs it
    import cupy as _cupy
except Exception:  # ImportError, or a CUDA runtime that fails to load
    _cupy = None


def xp_of(*arrays):
    """The array module (numpy or cupy) that owns ``arrays``."""
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def get_xp(name: str = "numpy"):
    """The array module named ``name`` ("numpy" or "cupy")."""
    if name == "numpy":
        return np
    if name == "cupy":
        if _cupy is None:
            raise RuntimeError("cupy is not installed or no CUDA device is usable; "
                               "install dpnet[gpu] on a machine with an NVIDIA GPU")
        return _cupy
    raise ValueError(f"backend must be 'numpy' or 'cupy', got {name!r}")


def gpu_available() -> bool:
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_numpy(a):
    """A host (NumPy) copy or view of ``a``, whichever backend it lives on."""
    if _cupy is not None and isinstance(a, _cupy.ndarray):
        return _cupy.asnumpy(a)
    return np.asarray(a)


def check_dtype(dtype):
    """Normalise ``dtype`` and refuse anything but float32/float64."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
