"""Activation functions, forward beside backward.

Every activation here can write its output over its input (``forward(z)`` may
return ``z`` itself, changed) and computes its derivative from the OUTPUT ``a``
alone. That is why a Dense layer keeps only one (B, n_out) buffer per step: the
pre-activation is not needed after the forward pass.
"""
from __future__ import annotations

from ..backend import xp_of

# LeCun et al., "Efficient BackProp" (1998): f(x) = 1.7159 tanh(2x/3), so f(±1) ≈ ±1.
LECUN_A = 1.7159
LECUN_S = 2.0 / 3.0


class Activation:
    name = "?"

    def forward(self, z):                  # z: (B, n) -> a: (B, n), may overwrite z
        raise NotImplementedError

    def backward(self, a, da):             # a, da: (B, n) -> dz: (B, n), may overwrite da
        raise NotImplementedError

    def config(self):
        """The name, or {"name": ..., **parameters} for a parameterized activation."""
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Activation):
    name = "linear"

    def forward(self, z):
        return z

    def backward(self, a, da):
        return da


class Sigmoid(Activation):
    name = "sigmoid"

    def forward(self, z):
        # sigmoid(z) = (1 + tanh(z/2)) / 2: no exp, so no overflow for any z, in place.
        xp = xp_of(z)
        z *= 0.5
        xp.tanh(z, out=z)
        z += 1
        z *= 0.5
        return z

    def backward(self, a, da):
        da *= a * (1 - a)
        return da


class Tanh(Activation):
    name = "tanh"

    def forward(self, z):
        return xp_of(z).tanh(z, out=z)

    def backward(self, a, da):
        da *= 1 - a * a
        return da


class LecunTanh(Activation):
    """1.7159 tanh(2z/3); derivative from the output: (2/3)(1.7159 - a²/1.7159)."""
    name = "lecun_tanh"

    def forward(self, z):
        xp = xp_of(z)
        z *= LECUN_S
        xp.tanh(z, out=z)
        z *= LECUN_A
        return z

    def backward(self, a, da):
        da *= LECUN_S * (LECUN_A - a * a * (1.0 / LECUN_A))
        return da


class ReLU(Activation):
    name = "relu"

    def forward(self, z):
        return xp_of(z).maximum(z, 0, out=z)

    def backward(self, a, da):
        da *= a > 0
        return da


class LeakyReLU(Activation):
    name = "leaky_relu"

    def __init__(self, alpha=0.01):
        if not 0 <= alpha < 1:
            raise ValueError(f"leaky_relu alpha must be in [0, 1), got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, z):
        # max(z, alpha*z) is z for z >= 0 and alpha*z below, as alpha < 1.
        return xp_of(z).maximum(z, self.alpha * z, out=z)

    def backward(self, a, da):
        xp = xp_of(a)
        da *= xp.where(a > 0, 1, self.alpha).astype(da.dtype, copy=False)
        return da

    def config(self):
        return self.name if self.alpha == 0.01 else {"name": self.name, "alpha": self.alpha}

    def __repr__(self):
        return f"LeakyReLU(alpha={self.alpha})"


class Softmax(Activation):
    """Row-wise softmax. Its backward is the Jacobian-vector product
    a * (da - sum(da * a)); with cross-entropy the loss fuses it away instead."""
    name = "softmax"

    def forward(self, z):
        xp = xp_of(z)
        z -= z.max(axis=1, keepdims=True)   # exp never overflows; result unchanged
        xp.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def backward(self, a, da):
        s = (da * a).sum(axis=1, keepdims=True)
        da -= s
        da *= a
        return da


ACTIVATIONS = {
    "linear": Linear, "identity": Linear, "sigmoid": Sigmoid, "tanh": Tanh,
    "lecun_tanh": LecunTanh, "relu": ReLU, "leaky_relu": LeakyReLU, "softmax": Softmax,
}


def get_activation(name):
    """An activation from its name, its config() (a dict) or an Activation itself."""
    if isinstance(name, Activation):
        return name
    if isinstance(name, dict):
        cfg = dict(name)
        kind = cfg.pop("name", None)
        if kind not in ACTIVATIONS:
            raise ValueError(f"unknown activation {kind!r} in {name!r}")
        try:
            return ACTIVATIONS[kind](**cfg)
        except TypeError as e:
            raise ValueError(f"bad parameters for activation {kind!r}: {e}") from None
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of "
                         f"{', '.join(sorted(ACTIVATIONS))}") from None
