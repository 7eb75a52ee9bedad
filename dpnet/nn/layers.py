"""Layers. Parameters are views into the model's flat vectors (bound by the model),
so a layer never owns or copies its weights.

Work buffers are kept per batch size: a fresh (1000, 512) float32 result is a 2 MB
allocation, which the allocator serves by mmap and the kernel by page faults on
every step; reusing the buffer removes that cost from the hot path.
"""
from __future__ import annotations

import numpy as np

from .activations import get_activation
from ..backend import xp_of
from .initializers import get_initializer
from .rng import uniform_rows


class _Buffers:
    """Reusable work arrays keyed by (tag, shape, dtype)."""

    def __init__(self):
        self._bufs = {}

    def __getstate__(self):
        return {"_bufs": {}}        # scratch: a copy (pickle, joblib) starts without it

    def get(self, xp, tag, shape, dtype):
        key = (tag, shape, dtype)
        buf = self._bufs.get(key)
        if buf is None:
            if len(self._bufs) > 16:          # many batch sizes (e.g. predict): don't hoard
                self._bufs.clear()
            buf = self._bufs[key] = xp.empty(shape, dtype=dtype)
        return buf


class Layer:
    def param_shapes(self):
        return []

    def bind(self, params, grads):
        """params/grads: {local name: view}, views into the model's flat vectors."""

    def init_params(self, rng):
        """Fill this layer's parameter views from ``rng``."""

    def config(self):
        raise NotImplementedError


class Dense(Layer):
    """Fully connected layer followed by its activation: a = f(x @ W + b).

    ``max_norm``: after every update, each column of W (the weights into one unit) is
    scaled back to this L2 norm if it is longer (Srebro & Shraibman 2005; with dropout,
    Hinton et al. 2012). None: no constraint."""

    def __init__(self, n_in, n_out, activation="linear", init="xavier_uniform",
                 max_norm=None):
        for label, v in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Dense {label} must be a positive integer, got {v!r}")
        if max_norm is not None and (not isinstance(max_norm, (int, float, np.integer,
                                                               np.floating))
                                     or isinstance(max_norm, bool) or not max_norm > 0):
            raise ValueError(f"max_norm must be a positive number or None, got {max_norm!r}")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.n_in, self.n_out = int(n_in), int(n_out)
        self.activation = get_activation(activation)
        self.init_name = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        self.init = get_initializer(init)
        self._bufs = _Buffers()
        self.x = self.a = None

    def param_shapes(self):
        return [("W", (self.n_in, self.n_out)), ("b", (self.n_out,))]

    def bind(self, params, grads):
        self.W, self.b = params["W"], params["b"]
        self.dW, self.db = grads["W"], grads["b"]

    def init_params(self, rng):
        self.init(rng, self.W)
        self.b[...] = 0

    def forward(self, x, activate=True):          # x: (B, n_in)
        xp = xp_of(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"Dense({self.n_in}, {self.n_out}) got input of shape {x.shape}")
        z = self._bufs.get(xp, "z", (x.shape[0], self.n_out), self.W.dtype)
        xp.matmul(x, self.W, out=z)
        z += self.b                               # (B, n_out)
        self.x = x
        self.a = self.activation.forward(z) if activate else z
        return self.a                             # (B, n_out), a reused buffer

    def backward(self, da, activate=True, need_dx=True):   # da: (B, n_out)
        xp = xp_of(da)
        dz = self.activation.backward(self.a, da) if activate else da
        xp.matmul(self.x.T, dz, out=self.dW)      # (n_in, n_out), into model.grads
        dz.sum(axis=0, out=self.db)               # (n_out,)
        if not need_dx:
            return None
        dx = self._bufs.get(xp, "dx", (dz.shape[0], self.n_in), dz.dtype)
        return xp.matmul(dz, self.W.T, out=dx)    # (B, n_in)

    def constrain(self):
        """Apply ``max_norm`` to W's columns, in place (after an update)."""
        if self.max_norm is None:
            return
        xp = xp_of(self.W)
        norms = xp.sqrt((self.W * self.W).sum(axis=0))          # (n_out,)
        too_long = norms > self.max_norm
        self.W *= xp.where(too_long, self.max_norm / xp.maximum(norms, 1e-30), 1.0
                           ).astype(self.W.dtype)

    def config(self):
        cfg = {"type": "dense", "n_in": self.n_in, "n_out": self.n_out,
               "activation": self.activation.config(), "init": self.init_name}
        if self.max_norm is not None:
            cfg["max_norm"] = self.max_norm
        return cfg

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation.name!r})"


class Dropout(Layer):
    """Inverted dropout: at training time zero each unit with probability ``rate`` and
    scale the survivors by 1/(1-rate), so inference needs no rescaling."""
    random = True          # the model hands it a key per step
    def __init__(self, rate):
        if not isinstance(rate, (int, float, np.integer, np.floating)) or not 0 <= rate < 1:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.mask = None

    def forward(self, x, key=None, row0=0, training=False):     # x: (B, n)
        """``key`` (an int from dpnet.rng.mix_key) and ``row0`` (the global row of x[0]
        in the whole batch) fix the mask: row j's mask depends only on (key, row0 + j)."""
        if not training or self.rate == 0:
            self.mask = None
            return x
        if key is None:
            raise ValueError("Dropout needs a random key at training time")
        xp = xp_of(x)
        u = uniform_rows(key, row0, x.shape, x.dtype, xp)
        keep = u >= self.rate
        self.mask = keep.astype(x.dtype)
        self.mask *= 1.0 / (1.0 - self.rate)
        return x * self.mask                            # (B, n), new array: x is
                                                        # still needed by the layer below

    def backward(self, dy):                             # dy: (B, n)
        if self.mask is None:
            return dy
        dy *= self.mask
        return dy

    def config(self):
        return {"type": "dropout", "rate": self.rate}

    def __repr__(self):
        return f"Dropout({self.rate})"
