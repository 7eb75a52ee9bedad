"""Losses. ``value_and_grad(out, y, w=None)`` returns the MEAN loss over the B samples
and the gradient of that mean with respect to ``out``. With per-sample weights ``w``
(B,) the loss is the mean of ``w_i * loss_i`` over the batch (Keras's
``sample_weight``, reduced over the batch size, so a batch's share of an epoch does
not depend on its weights).

Cross-entropies are fused with their output activation: they take the logits
``z`` (not probabilities), which is both cheaper (the gradient is simply
``p - y``) and numerically safe for any logit, even 1e4.
"""
from __future__ import annotations

from ..backend import xp_of


def _as_targets(y, out):
    """Integer labels (B,) become one-hot (B, K) in out's dtype; arrays pass through."""
    xp = xp_of(out)
    if y.ndim == 1 and out.ndim == 2 and out.shape[1] > 1:
        t = xp.zeros_like(out)
        t[xp.arange(y.shape[0]), y.astype(xp.intp, copy=False)] = 1
        return t
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.shape != out.shape:
        raise ValueError(f"targets have shape {y.shape}, network output is {out.shape}")
    return y.astype(out.dtype, copy=False)


class Loss:
    name = "?"
    fused_activation = None     # output activation folded into this loss, if any

    def value_and_grad(self, out, y, w=None):
        raise NotImplementedError

    def value(self, out, y):
        return self.value_and_grad(out, y)[0]


class MeanSquaredError(Loss):
    """Per sample: mean over outputs of (a - y)²."""
    name = "mse"

    def value_and_grad(self, a, y, w=None):      # a: (B, K), w: (B,) or None
        d = a - _as_targets(y, a)                # (B, K)
        if w is None:
            loss = float((d * d).mean())
            d *= 2.0 / d.size
            return loss, d
        loss = float((w * (d * d).mean(axis=1)).mean())
        d *= (2.0 / d.size) * w[:, None]
        return loss, d


class BinaryCrossEntropy(Loss):
    """Sigmoid outputs, per sample: mean over outputs of -y log p - (1-y) log(1-p),
    written with logits as max(z, 0) - z y + log(1 + exp(-|z|))."""
    name = "binary_crossentropy"
    fused_activation = "sigmoid"

    def value_and_grad(self, z, y, w=None):      # z: (B, K) logits, w: (B,) or None
        xp = xp_of(z)
        t = _as_targets(y, z)
        loss = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
        value = float(loss.mean()) if w is None else float((w * loss.mean(axis=1)).mean())
        p = 0.5 * (1 + xp.tanh(0.5 * z))         # sigmoid, overflow-free
        p -= t
        p *= 1.0 / p.size if w is None else (1.0 / p.size) * w[:, None]
        return value, p


class CategoricalCrossEntropy(Loss):
    """Softmax outputs, per sample: -sum_k y_k log p_k = logsumexp(z) - sum_k y_k z_k
    (for targets that sum to one). Labels may be integers (B,) or one-hot (B, K)."""
    name = "categorical_crossentropy"
    fused_activation = "softmax"

    def value_and_grad(self, z, y, w=None):      # z: (B, K) logits, w: (B,) or None
        xp = xp_of(z)
        B = z.shape[0]
        p = z - z.max(axis=1, keepdims=True)     # (B, K) shifted: exp never overflows
        xp.exp(p, out=p)
        s = p.sum(axis=1, keepdims=True)         # (B, 1), >= 1
        p /= s
        if y.ndim == 1:                          # integer labels: pick, don't build one-hot
            rows = xp.arange(B)
            yi = y.astype(xp.intp, copy=False)
            zmax = z.max(axis=1)
            per = xp.log(s[:, 0]) + zmax - z[rows, yi]                 # (B,)
            p[rows, yi] -= 1
        else:
            t = _as_targets(y, z)
            lse = xp.log(s[:, 0]) + z.max(axis=1)                      # (B,)
            per = lse * t.sum(axis=1) - (t * z).sum(axis=1)
            p -= t
        if w is None:
            value = float(per.mean())
            p *= 1.0 / B
        else:
            value = float((w * per).mean())
            p *= (1.0 / B) * w[:, None]
        return value, p


LOSSES = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "binary_crossentropy": BinaryCrossEntropy, "bce": BinaryCrossEntropy,
    "categorical_crossentropy": CategoricalCrossEntropy, "cce": CategoricalCrossEntropy,
    "crossentropy": CategoricalCrossEntropy,
}


def get_loss(name):
    if isinstance(name, Loss):
        return name
    try:
        return LOSSES[name]()
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of "
                         f"{', '.join(sorted(LOSSES))}") from None
