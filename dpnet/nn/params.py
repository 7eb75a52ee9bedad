"""One flat parameter vector, and named views into it.

Every model keeps all its parameters in ONE contiguous array and its gradients in a
second one of the same layout. A ``ParamLayout`` is the list of (name, shape) in
order; it hands out the offsets and the views. See docs/ARCHITECTURE.md, "The one idea".
"""
from __future__ import annotations

from math import prod

import numpy as np


class ParamLayout:
    def __init__(self, entries):
        self.entries = []          # (name, shape, start, stop)
        offset = 0
        seen = set()
        for name, shape in entries:
            if name in seen:
                raise ValueError(f"duplicate parameter name {name!r}")
            seen.add(name)
            shape = tuple(int(s) for s in shape)
            if any(s <= 0 for s in shape):
                raise ValueError(f"parameter {name!r} has a non-positive size {shape}")
            size = prod(shape)
            self.entries.append((name, shape, offset, offset + size))
            offset += size
        self.size = offset

    def views(self, flat):
        """{name: view of ``flat`` with that parameter's shape} (no copies)."""
        if flat.ndim != 1 or flat.shape[0] != self.size:
            raise ValueError(f"flat vector has shape {flat.shape}, layout needs ({self.size},)")
        return {name: flat[a:b].reshape(shape) for name, shape, a, b in self.entries}

    def slice_of(self, name):
        for n, _, a, b in self.entries:
            if n == name:
                return slice(a, b)
        raise KeyError(name)

    def allocate(self, dtype=np.float32, xp=np):
        """Zeroed (params, grads) flat vectors for this layout."""
        return xp.zeros(self.size, dtype=dtype), xp.zeros(self.size, dtype=dtype)

    def describe(self):
        return [(name, shape) for name, shape, _, _ in self.entries]
