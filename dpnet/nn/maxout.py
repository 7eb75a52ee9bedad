"""Maxout units (Goodfellow, Warde-Farley, Mirza, Courville & Bengio 2013): each of
``n_out`` units is the maximum of ``pieces`` affine functions of the input -- the
"pooling over groups of units" of the 000 seed's modified network.

It is a Dense layer whose ``n_out * pieces`` linear outputs are pooled in groups, so
it shares Dense's parameters (``W``, ``b``), initialisation, L2 and max-norm handling;
only the forward pass and the backward routing differ.
"""
from __future__ import annotations

import numpy as np

from ..backend import xp_of
from .layers import Dense


class Maxout(Dense):
    """h_j = max_k (x @ W[:, j*pieces + k] + b[j*pieces + k]), for j < n_out.

    The gradient of a unit goes to the piece that was the largest (on a tie, the first
    of them: a subgradient, like ReLU's at 0). ``max_norm``: after every update each
    column of W (one piece's weight vector) is scaled back to that L2 norm if longer.
    """

    def __init__(self, n_in, n_out, pieces=2, init="xavier_uniform", max_norm=None):
        if not isinstance(pieces, (int, np.integer)) or isinstance(pieces, bool) or pieces < 1:
            raise ValueError(f"Maxout pieces must be a positive integer, got {pieces!r}")
        if not isinstance(n_out, (int, np.integer)) or isinstance(n_out, bool) or n_out <= 0:
            raise ValueError(f"Maxout n_out must be a positive integer, got {n_out!r}")
        self.pieces = int(pieces)
        super().__init__(n_in, int(n_out) * self.pieces, activation="linear", init=init,
                         max_norm=max_norm)
        self.n_out = int(n_out)                 # what the next layer sees
        self.n_linear = self.n_out * self.pieces
        self.winner = None

    def param_shapes(self):
        return [("W", (self.n_in, self.n_linear)), ("b", (self.n_linear,))]

    def forward(self, x, activate=True):          # x: (B, n_in)
        xp = xp_of(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"{self!r} got input of shape {x.shape}")
        z = self._bufs.get(xp, "z", (x.shape[0], self.n_linear), self.W.dtype)
        xp.matmul(x, self.W, out=z)
        z += self.b                               # (B, n_out * pieces)
        groups = z.reshape(x.shape[0], self.n_out, self.pieces)
        self.winner = groups.argmax(axis=2)       # (B, n_out): the first largest piece
        self.x = x
        self.a = groups.max(axis=2)               # (B, n_out)
        return self.a

    def backward(self, da, activate=True, need_dx=True):   # da: (B, n_out)
        xp = xp_of(da)
        b = da.shape[0]
        dz = self._bufs.get(xp, "dz", (b, self.n_out, self.pieces), da.dtype)
        dz[...] = 0
        # each unit's gradient to its winning piece: one scatter into the flat buffer
        flat = (xp.arange(b * self.n_out) * self.pieces).reshape(b, self.n_out) + self.winner
        dz.reshape(-1)[flat.reshape(-1)] = da.reshape(-1)
        dz = dz.reshape(b, self.n_linear)         # (B, n_out * pieces)
        xp.matmul(self.x.T, dz, out=self.dW)      # (n_in, n_out * pieces)
        dz.sum(axis=0, out=self.db)
        if not need_dx:
            return None
        dx = self._bufs.get(xp, "dx", (b, self.n_in), dz.dtype)
        return xp.matmul(dz, self.W.T, out=dx)    # (B, n_in)

    def config(self):
        cfg = {"type": "maxout", "n_in": self.n_in, "n_out": self.n_out,
               "pieces": self.pieces, "init": self.init_name}
        if self.max_norm is not None:
            cfg["max_norm"] = self.max_norm
        return cfg

    def __repr__(self):
        norm = "" if self.max_norm is None else f", max_norm={self.max_norm:g}"
        return f"Maxout({self.n_in}, {self.n_out}, pieces={self.pieces}{norm})"
