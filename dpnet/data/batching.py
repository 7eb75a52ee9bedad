"""Minibatch order and shards.

The order of epoch ``e`` is a pure function of (seed, e), not of a generator that
has advanced through earlier epochs: resuming at epoch e, or re-running one step
after a worker failure, needs no saved generator state to be exact.
"""
from __future__ import annotations

import numpy as np


def epoch_order(n, epoch, seed, shuffle=True):
    """Sample indices for one epoch: a seeded permutation, or 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def batch_slices(n, batch_size):
    """Slices covering 0..n in steps of batch_size; the last may be shorter."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def shard_bounds(n, k):
    """Split n items into k contiguous shards as even as possible: [(start, stop)].
    The first n % k shards get one extra; shards may be empty when n < k."""
    if k <= 0:
        raise ValueError(f"number of shards must be > 0, got {k!r}")
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds
