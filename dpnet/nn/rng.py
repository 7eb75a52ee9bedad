"""Counter-based random numbers: uniform[0, 1) as a pure function of (key, position).

Dropout masks come from here rather than from a sequential generator, so the mask of
row j of a batch depends only on (seed, step, layer, j) -- not on which worker computes
that row, how the batch was sharded, or whether the step is a re-run after a worker
failure. That is what makes data-parallel training with dropout give the same
weights for any worker count.

The mixer is SplitMix64's finalizer (Steele, Lea & Flood 2014) applied to
key + golden-ratio increments; its 24 top bits make a float32 uniform.
"""
from __future__ import annotations

import numpy as np


_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def check_seed(seed, name="seed", none_ok=True):
    """A seed as an int: a non-negative integer, or (``none_ok``) None for a fresh one
    drawn from the operating system's entropy -- which the model then records, so the
    run can be repeated. A negative, fractional or non-number seed is a ValueError (a
    float was truncated silently, a negative one failed deep in NumPy)."""
    if seed is None and none_ok:
        return int(np.random.SeedSequence().entropy % (1 << 32))
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer"
                         + (" or None" if none_ok else "") + f", got {seed!r}")
    return int(seed)


def mix_key(*parts):
    """Fold integers (seed, step, layer, ...) into one 64-bit key."""
    k = 0
    for p in parts:
        k = (k * 0x100000001B3 ^ (int(p) & _MASK64)) & _MASK64   # FNV-style fold
        k = int(_splitmix_scalar(k))
    return k


def _splitmix_scalar(z):
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def uniform_rows(key, row0, shape, dtype=np.float32, xp=np):
    """Uniforms for rows row0 .. row0+shape[0] of a conceptual (∞, shape[1]) array."""
    rows, cols = shape
    z = xp.arange(row0 * cols, (row0 + rows) * cols, dtype=xp.uint64)
    z += np.uint64(key)
    z *= _GAMMA               # positions spread over the 64-bit circle (wrapping)
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    z >>= np.uint64(40)       # top 24 bits: exactly representable in float32
    u = z.astype(dtype)
    u *= 1.0 / (1 << 24)
    return u.reshape(rows, cols)
