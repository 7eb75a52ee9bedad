"""Deformations of training images, drawn afresh for every sample of every step.

``Deform`` is a layer without parameters that sits first in a network: at training
time it moves each image by a random affine map (shift, rotation, scale, shear) and,
optionally, a smooth random displacement field (Simard, Steinkraus & Platt 2003,
"elastic" distortions); at inference it passes the images through. Being a layer,
it runs wherever the step's gradient is computed -- in process, in every CPU worker
on its own shard, in the GPU worker -- and travels in the model's config, so a
checkpoint resumes with the same deformations.

Its draws come from the counter-based generator (``rng.uniform_rows``) keyed by
(seed, step, layer) at the sample's row in the whole batch, like dropout's masks:
a sample's deformation depends on the run's seed and on where it sits in which step
-- within a run, on (epoch, sample index) -- and never on which worker computes it.

Images are rows of ``n = H * W`` pixels; where the map reads outside the image the
pixel is ``fill`` (0: MNIST's background). Bilinear interpolation mixes at most four
pixels with weights summing to one, so values stay within the image's range and
``fill``. Everything is written once for NumPy and CuPy (``xp`` from the data).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import xp_of
from .layers import Layer
from .rng import uniform_rows

KINDS = ("affine", "elastic")
N_AFFINE = 5           # uniforms per image for the affine map: angle, scale, shear, tx, ty
CHUNK = 128            # images deformed at a time


def _number(name, v, lo=0.0, hi=math.inf):
    if (not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool)
            or not lo <= v <= hi):
        raise ValueError(f"Deform: {name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


class Deform(Layer):
    """Random affine (and with ``kind="elastic"`` also elastic) deformations.

    shift: pixels, each axis uniform in [-shift, shift]; rotate: degrees, uniform in
    [-rotate, rotate]; scale: the zoom is uniform in [1 - scale, 1 + scale]; shear:
    the shear factor is uniform in [-shear, shear]. Elastic: a displacement field of
    uniforms in [-1, 1] per pixel and axis, smoothed by a Gaussian of ``sigma``
    pixels and scaled by ``alpha`` (Simard et al.: alpha 34, sigma 4 on 28x28).
    """
    random = True          # the model hands it a key per step, as it does dropout

    def __init__(self, image_shape=(28, 28), kind="affine", shift=2.0, rotate=10.0,
                 scale=0.1, shear=0.1, alpha=34.0, sigma=4.0, fill=0.0):
        if kind not in KINDS:
            raise ValueError(f"Deform: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        shape = tuple(image_shape)
        if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and s > 1
                                      for s in shape):
            raise ValueError(f"Deform: image_shape must be (height, width) > 1, "
                             f"got {image_shape!r}")
        self.kind = kind
        self.image_shape = (int(shape[0]), int(shape[1]))
        self.n_in = self.n_out = self.image_shape[0] * self.image_shape[1]
        self.shift = _number("shift", shift)
        self.rotate = _number("rotate", rotate, 0, 180)
        self.scale = _number("scale", scale, 0, 0.9)
        self.shear = _number("shear", shear, 0, 1)
        self.alpha = _number("alpha", alpha)
        self.sigma = _number("sigma", sigma, 0.1, 100)
        self.fill = float(fill)
        self._smooth = {}

    # -- the maps ------------------------------------------------------------------
    def draw(self, key, row0, n, xp=np):
        """The deformation of rows row0 .. row0+n-1 for ``key``: source coordinates
        (ys, xs), each (n, H*W), at which each output pixel reads its input."""
        h, w = self.image_shape
        cols = N_AFFINE + (2 * h * w if self.kind == "elastic" else 0)
        u = uniform_rows(key, row0, (n, cols), np.float32, xp)
        u = 2.0 * u - 1.0                                   # uniform in [-1, 1)
        angle = u[:, 0] * math.radians(self.rotate)
        zoom = 1.0 + u[:, 1] * self.scale
        params = dict(angle=angle, zoom=zoom, shear=u[:, 2] * self.shear,
                      tx=u[:, 3] * self.shift, ty=u[:, 4] * self.shift)
        ys, xs = affine_sources(self.image_shape, xp=xp, **params)
        if self.kind == "elastic":
            g = self._gaussian(xp, h), self._gaussian(xp, w)
            dy = u[:, N_AFFINE:N_AFFINE + h * w].reshape(n, h, w)
            dx = u[:, N_AFFINE + h * w:].reshape(n, h, w)
            # separable smoothing: G_h @ field @ G_w^T, batched over the images
            ys = ys + self.alpha * (g[0] @ dy @ g[1].T).reshape(n, h * w)
            xs = xs + self.alpha * (g[0] @ dx @ g[1].T).reshape(n, h * w)
        return ys, xs

    def _gaussian(self, xp, size):
        """(size, size) smoothing matrix: row i is a Gaussian around i, normalised to
        sum 1 over the pixels inside (a zero-padded convolution would shrink the field
        at the border)."""
        key = (xp.__name__, size)
        if key not in self._smooth:
            i = np.arange(size)
            g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / self.sigma) ** 2)
            g /= g.sum(axis=1, keepdims=True)
            self._smooth[key] = xp.asarray(g)
        return self._smooth[key]

    # -- the layer -----------------------------------------------------------------
    def forward(self, x, key=None, row0=0, training=False):     # x: (B, H*W)
        if not training:
            return x
        if key is None:
            raise ValueError("Deform needs a random key at training time")
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"Deform{self.image_shape} takes rows of {self.n_in} pixels, "
                             f"got {x.shape}")
        xp = xp_of(x)
        if x.shape[0] <= CHUNK:
            ys, xs = self.draw(key, row0, x.shape[0], xp)
            return sample_bilinear(x, self.image_shape, ys, xs, self.fill)   # (B, H*W)
        # in blocks whose work arrays stay in cache (a 1000-image batch at once runs
        # ~3x slower per image here); each row's draw depends on its row alone
        out = xp.empty_like(x)
        for s in range(0, x.shape[0], CHUNK):
            e = min(s + CHUNK, x.shape[0])
            ys, xs = self.draw(key, row0 + s, e - s, xp)
            out[s:e] = sample_bilinear(x[s:e], self.image_shape, ys, xs, self.fill)
        return out

    def backward(self, dy):
        # the first layer: nothing below it needs a gradient (the model stops before)
        raise RuntimeError("Deform has no input gradient (it is the network's first layer)")

    def config(self):
        return {"type": "deform", "kind": self.kind, "image_shape": list(self.image_shape),
                "shift": self.shift, "rotate": self.rotate, "scale": self.scale,
                "shear": self.shear, "alpha": self.alpha, "sigma": self.sigma,
                "fill": self.fill}

    @classmethod
    def from_config(cls, cfg):
        return cls(tuple(cfg["image_shape"]), kind=cfg["kind"], shift=cfg["shift"],
                   rotate=cfg["rotate"], scale=cfg["scale"], shear=cfg["shear"],
                   alpha=cfg["alpha"], sigma=cfg["sigma"], fill=cfg["fill"])

    def __repr__(self):
        extra = f", alpha={self.alpha:g}, sigma={self.sigma:g}" if self.kind == "elastic" else ""
        return (f"Deform({self.kind}, shift={self.shift:g}, rotate={self.rotate:g}, "
                f"scale={self.scale:g}, shear={self.shear:g}{extra})")


def affine_sources(image_shape, angle, zoom, shear, tx, ty, xp=np):
    """Where each output pixel reads its input under the map of each image: about the
    image's centre, p_src = zoom * R(angle) @ [[1, shear], [0, 1]] @ p + (tx, ty).
    Arguments are (n,) arrays (radians, factors, pixels). Returns (ys, xs), (n, H*W)."""
    h, w = image_shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    gy, gx = _grid(xp, h, w)                            # (1, H*W) each, centred
    c, s = xp.cos(angle)[:, None], xp.sin(angle)[:, None]
    z, k = zoom[:, None], shear[:, None]
    u = gx + k * gy                                     # shear along x
    xs = z * (c * u - s * gy) + tx[:, None] + cx        # (n, H*W)
    ys = z * (s * u + c * gy) + ty[:, None] + cy
    return ys, xs


_GRIDS = {}


def _grid(xp, h, w):
    """Pixel coordinates about the image's centre, made once per array module."""
    key = (xp.__name__, h, w)
    if key not in _GRIDS:
        gy, gx = np.meshgrid(np.arange(h, dtype=np.float32) - (h - 1) / 2.0,
                             np.arange(w, dtype=np.float32) - (w - 1) / 2.0, indexing="ij")
        _GRIDS[key] = xp.asarray(gy.reshape(1, -1)), xp.asarray(gx.reshape(1, -1))
    return _GRIDS[key]


def sample_bilinear(x, image_shape, ys, xs, fill=0.0):
    """Images ``x`` (n, H*W) read at (ys, xs) (n, H*W) with bilinear interpolation;
    reads outside the image give ``fill``. Returns a new (n, H*W) array of x's dtype.

    The images get a border of one ``fill`` pixel and the coordinates are clamped to
    it, so every read is a plain gather: a point far outside reads the border with
    weight one, a point within a pixel of the edge mixes the edge with ``fill``."""
    xp = xp_of(x)
    h, w = image_shape
    n = x.shape[0]
    hp, wp = h + 2, w + 2
    padded = xp.full((n, hp, wp), fill, dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x.reshape(n, h, w)
    ys = xp.clip(ys, -1.0, float(h)) + 1.0              # padded coordinates, in [0, h + 1]
    xs = xp.clip(xs, -1.0, float(w)) + 1.0
    y0 = xp.minimum(xp.floor(ys), hp - 2)               # so that y0 + 1 is still inside
    x0 = xp.minimum(xp.floor(xs), wp - 2)
    fy, fx = (ys - y0).astype(x.dtype), (xs - x0).astype(x.dtype)
    base = (y0 * wp + x0).astype(np.int64)
    base += (xp.arange(n, dtype=np.int64) * (hp * wp))[:, None]
    flat = padded.reshape(-1)
    top = flat[base] * (1 - fx) + flat[base + 1] * fx
    bottom = flat[base + wp] * (1 - fx) + flat[base + wp + 1] * fx
    return top * (1 - fy) + bottom * fy                 # (n, H*W), x's dtype
