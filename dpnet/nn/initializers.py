"""Weight initializers. Each fills a (n_in, n_out) array in place from an explicit
``numpy.random.Generator`` (never the global RNG), so runs are reproducible and a
model's init depends only on its seed."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of


def _fans(shape):
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], shape[1]


def _uniform(rng, out, limit):
    # drawn on the host in float64 so the init is the same on any backend or dtype
    out[...] = xp_of(out).asarray(rng.uniform(-limit, limit, size=out.shape))


def _normal(rng, out, std):
    out[...] = xp_of(out).asarray(rng.normal(0.0, std, size=out.shape))


def xavier_uniform(rng, out):
    """Glorot & Bengio (2010): U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    fi, fo = _fans(out.shape)
    _uniform(rng, out, np.sqrt(6.0 / (fi + fo)))


def xavier_normal(rng, out):
    """Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out))."""
    fi, fo = _fans(out.shape)
    _normal(rng, out, np.sqrt(2.0 / (fi + fo)))


def he_normal(rng, out):
    """He et al. (2015), for ReLU: N(0, 2 / fan_in)."""
    fi, _ = _fans(out.shape)
    _normal(rng, out, np.sqrt(2.0 / fi))


def he_uniform(rng, out):
    fi, _ = _fans(out.shape)
    _uniform(rng, out, np.sqrt(6.0 / fi))


def lecun_normal(rng, out):
    """LeCun et al. (1998), for the scaled tanh: N(0, 1 / fan_in)."""
    fi, _ = _fans(out.shape)
    _normal(rng, out, np.sqrt(1.0 / fi))


def lecun_uniform(rng, out):
    fi, _ = _fans(out.shape)
    _uniform(rng, out, np.sqrt(3.0 / fi))


def zeros(rng, out):
    out[...] = 0


INITIALIZERS = {
    "xavier_uniform": xavier_uniform, "glorot_uniform": xavier_uniform, "xavier": xavier_uniform,
    "xavier_normal": xavier_normal, "glorot_normal": xavier_normal,
    "he_normal": he_normal, "he": he_normal, "he_uniform": he_uniform,
    "lecun_normal": lecun_normal, "lecun": lecun_normal, "lecun_uniform": lecun_uniform,
    "zeros": zeros,
}


def get_initializer(name):
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown initializer {name!r}; choose one of "
                         f"{', '.join(sorted(INITIALIZERS))}") from None
