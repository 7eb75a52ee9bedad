"""Sequential: a stack of Dense (and Dropout, Deform) layers over one flat parameter vector."""
from __future__ import annotations

import math
import weakref

import numpy as np

from ..backend import check_dtype, to_numpy, xp_of
from ..nn.deform import Deform
from ..nn.layer_config import layer_from_config
from ..nn.layers import Dense, Dropout, Layer
from ..nn.losses import get_loss
from ..nn.params import ParamLayout
from ..nn.rng import check_seed, mix_key
from ..data.check import check_data, check_inputs
from ..optim.optimizers import claim_optimizer, model_optimizer
from .flat import FlatParams
from .saving import save_model


# the models each layer with weights is bound to (weakly: a layer whose models are all
# gone, or a deep copy of one, is free to join another; a shallow copy of a model shares
# its layers, and so is one more owner)
_OWNERS = weakref.WeakKeyDictionary()


class Sequential(FlatParams):
    """A feed-forward network.

    ``Sequential([Dense(784, 512, activation="relu"), Dense(512, 10, activation="softmax")],
    loss="categorical_crossentropy", optimizer="adam")``

    ``l2`` adds (l2/2)·‖W‖² over the weights (never the biases) to the objective, i.e.
    ``l2·W`` to their gradients; ``clip_norm`` rescales the gradient to at most that
    global L2 norm. Both are applied once per update, by ``apply_gradients`` on the
    averaged gradient, so they are the same whatever computed the gradient.

    ``fit`` (Keras-style) is given to this class by the training layer
    (``dpnet.training.fit``): a model never imports what drives its training.
    """
    kind = "Sequential"
    # what a checkpoint's config must match to be loaded into an existing model
    architecture_keys = ("layers", "loss")

    def __init__(self, layers, loss="categorical_crossentropy", optimizer="adam",
                 l2=0.0, clip_norm=None, dtype=np.float32, seed=0, xp=np):
        layers = list(layers)
        if not layers or not any(isinstance(l, Dense) for l in layers):
            raise ValueError("Sequential needs at least one Dense layer")
        for l in layers:
            if not isinstance(l, Layer):
                raise TypeError(f"Sequential takes Dense, Maxout, Dropout and Deform layers, got {l!r}")
        dense = [l for l in layers if isinstance(l, Dense)]
        for a, b in zip(dense, dense[1:]):
            if a.n_out != b.n_in:
                raise ValueError(f"layer sizes do not chain: {a!r} is followed by {b!r}")
        for i, l in enumerate(layers):
            if isinstance(l, Deform) and (i != 0 or l.n_in != dense[0].n_in):
                raise ValueError(f"{l!r} must be the first layer, before a Dense layer of "
                                 f"{l.n_in} inputs")
        if not isinstance(layers[-1], Dense):
            raise ValueError(f"the last layer must be Dense, got {layers[-1]!r}")
        for i, l in enumerate(layers):
            # a layer's W and b are views of ONE model's vector: a second model of the
            # same layer objects would rebind them, and the first -- while it lives --
            # would train nothing (a copy of the layers, or of a model, is free)
            owned = len(_OWNERS.get(l, ())) or any(l is m for m in layers[:i])
            if l.param_shapes() and owned:
                raise ValueError(f"layer {i} ({l!r}) already belongs to a model (its "
                                 f"weights are views of that model's parameter vector): "
                                 f"give each model layers of its own, or copy.deepcopy "
                                 f"the model")
        self.layers = layers
        self.loss = get_loss(loss)
        out_act = layers[-1].activation.name
        fused = self.loss.fused_activation
        if fused is not None and out_act != fused:
            raise ValueError(f"loss {self.loss.name!r} needs output activation {fused!r}, "
                             f"got {out_act!r}")
        self._fused = fused is not None
        self.optimizer = model_optimizer(optimizer)
        if not isinstance(l2, (int, float, np.integer, np.floating)) or not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        if clip_norm is not None and not (isinstance(clip_norm, (int, float, np.integer,
                                                                np.floating)) and clip_norm > 0):
            raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
        self.l2, self.clip_norm = float(l2), clip_norm
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)

        entries = []
        for i, l in enumerate(layers):
            entries += [(f"{i}.{name}", shape) for name, shape in l.param_shapes()]
        self.layout = ParamLayout(entries)
        self._params, self.grads = self.layout.allocate(self.dtype, xp)
        self._bind()
        self._weight_slices = [self.layout.slice_of(f"{i}.W")
                               for i, l in enumerate(layers) if isinstance(l, Dense)]
        self._constrained = [l for l in layers
                             if isinstance(l, Dense) and l.max_norm is not None]
        self.init_params(self.seed)
        self.seed_step(self.seed, 0)
        self.last_correct = 0
        claim_optimizer(self.optimizer, self)

    # -- set-up --------------------------------------------------------------------
    def _rebind_views(self):
        self._bind()

    def _bind(self):
        pv, gv = self.layout.views(self.params), self.layout.views(self.grads)
        for i, l in enumerate(self.layers):
            if l.param_shapes():
                _OWNERS.setdefault(l, weakref.WeakSet()).add(self)
            names = [n for n, _ in l.param_shapes()]
            l.bind({n: pv[f"{i}.{n}"] for n in names}, {n: gv[f"{i}.{n}"] for n in names})

    def seed_step(self, seed, step, row0=0):
        """Fix the randomness (dropout masks) of the next loss_and_grad: a pure function
        of (seed, step, layer, global row), where ``row0`` is the row of this shard's
        first sample in the whole batch -- so any sharding gives the same masks."""
        self._step_key = (int(seed), int(step))
        self._row0 = int(row0)

    def rebind(self, params=None, grads=None):
        """Make the model use the given flat arrays (e.g. views of shared memory) as its
        parameters and/or gradients. Their contents are taken as they are."""
        for name, arr in (("params", params), ("grads", grads)):
            if arr is not None and (arr.shape != (self.layout.size,) or arr.dtype != self.dtype):
                raise ValueError(f"{name} must be a ({self.layout.size},) {self.dtype} array, "
                                 f"got {arr.shape} {arr.dtype}")
        if params is not None:
            self._params = params
        if grads is not None:
            self.grads = grads
        self._bind()

    def init_params(self, seed):
        """(Re)initialize all weights from ``seed`` alone (layer by layer, in order)."""
        rng = np.random.default_rng(seed)
        for l in self.layers:
            l.init_params(rng)

    @property
    def n_params(self):
        return self.layout.size

    @property
    def n_inputs(self):
        return next(l for l in self.layers if isinstance(l, Dense)).n_in

    @property
    def n_outputs(self):
        return self.layers[-1].n_out

    def _as_input(self, x):
        xp = xp_of(self.params)
        if xp is np or xp_of(x) is np:          # host input: checked there, then moved
            x = check_inputs(self, x)
            return x if xp is np else xp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"input must have shape (n, {self.n_inputs}), got {x.shape}")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"input must be numbers, got dtype {x.dtype}")
        return x.astype(self.dtype, copy=False)

    # -- forward / backward ----------------------------------------------------------
    def _forward(self, x, training):
        """Returns the last layer's pre-activation (fused loss) or output."""
        last = len(self.layers) - 1
        for i, l in enumerate(self.layers):
            if getattr(l, "random", False):          # Dropout, Deform
                key = mix_key(*self._step_key, i) if training else None
                x = l.forward(x, key=key, row0=self._row0, training=training)
            else:
                x = l.forward(x, activate=not (i == last and self._fused))
        return x

    def _backward(self, dout):
        last = len(self.layers) - 1
        d = dout
        for i in range(last, -1, -1):
            l = self.layers[i]
            if d is None:                # below the first Dense: nothing needs a gradient
                break
            if isinstance(l, Dropout):
                d = l.backward(d)
            else:
                first_dense = not any(isinstance(m, Dense) for m in self.layers[:i])
                d = l.backward(d, activate=not (i == last and self._fused),
                               need_dx=not first_dense)

    def loss_and_grad(self, x, y, w=None):
        """Mean loss over the batch; fills ``self.grads`` with the mean gradient.
        ``w``: per-sample weights (B,), the mean then of ``w_i * loss_i``.

        Returns (loss, n). ``self.last_correct`` holds the batch's correct count."""
        x = self._as_input(x)
        xp = xp_of(self.params)
        y = xp.asarray(y)
        if w is not None:
            w = xp.asarray(w, dtype=self.dtype)
        out = self._forward(x, training=True)
        self.last_correct = self._correct(out, y)
        loss, dout = self.loss.value_and_grad(out, y, w)
        self._backward(dout)
        return loss, int(x.shape[0])

    def loss_and_correct(self, x, y, w=None):
        """(mean loss, n, correct count) without touching the gradients; with per-sample
        weights ``w``, the mean of weight x loss (what ``fit(sample_weight=)`` trains)."""
        x = self._as_input(x)
        xp = xp_of(self.params)
        y = xp.asarray(y)
        out = self._forward(x, training=False)
        correct = self._correct(out, y)
        if w is None:
            return self.loss.value(out.copy(), y), int(x.shape[0]), correct
        w = xp.asarray(w, dtype=out.dtype)
        return self.loss.value_and_grad(out.copy(), y, w)[0], int(x.shape[0]), correct

    def _correct(self, out, y):
        """Samples predicted right: class labels by argmax; a single output, or binary
        cross-entropy's 0/1 targets, by thresholding each output (a sample is right
        when all its outputs are); for regression targets the count means nothing, and
        the reports leave it out (``classifies``)."""
        xp = xp_of(out)
        thr = 0 if self._fused else 0.5          # a logit of 0 is a probability of 0.5
        if out.shape[1] == 1:
            return int(xp.count_nonzero((out[:, 0] > thr) == (y.reshape(-1) > 0.5)))
        if y.ndim == 2 and self.loss.name == "binary_crossentropy":
            return int(xp.count_nonzero(((out > thr) == (y > 0.5)).all(axis=1)))
        truth = y if y.ndim == 1 else y.argmax(axis=1)
        return int(xp.count_nonzero(out.argmax(axis=1) == truth))

    def classifies(self, y):
        """Whether targets ``y`` are classes, so that an accuracy means something: a
        cross-entropy loss, or integer class labels (MNIST trained with mse)."""
        if self.loss.name in ("categorical_crossentropy", "binary_crossentropy"):
            return True
        y = np.asarray(y) if not hasattr(y, "dtype") else y
        return y.ndim == 1 and y.dtype.kind in "iub" and self.n_outputs > 1

    # -- the update ------------------------------------------------------------------
    def apply_gradients(self, grads=None):
        """L2, clipping, then one optimizer step, on the flat vectors."""
        g = self.grads if grads is None else grads
        self.add_penalty_grad(g)
        if self.clip_norm is not None:
            norm = float(xp_of(g).sqrt(g @ g))
            if norm > self.clip_norm:
                g *= self.clip_norm / norm
        self.optimizer.step(self.params, g)
        for l in self._constrained:
            l.constrain()

    def train_on_batch(self, x, y):
        x, y = check_data(self, x, y, "the batch")
        if x.shape[0] == 0:
            raise ValueError("the batch is empty: no gradient to step along")
        # each update draws fresh dropout masks, as fit does (keyed by the step count)
        self.seed_step(self.seed, self.optimizer.t)
        loss, n = self.loss_and_grad(x, y)
        self.apply_gradients()
        return loss

    def add_penalty_grad(self, g):
        """Add the L2 penalty's gradient, ``l2·W`` on the weights, to the flat ``g``."""
        if self.l2:
            for sl in self._weight_slices:
                g[sl] += self.l2 * self.params[sl]

    def l2_penalty(self):
        """The L2 penalty (l2/2)·‖W‖² over the weights (never the biases)."""
        if not self.l2:
            return 0.0
        return 0.5 * self.l2 * sum(float(self.params[sl] @ self.params[sl])
                                   for sl in self._weight_slices)

    # -- inference -------------------------------------------------------------------
    def predict_proba(self, x, batch_size=1024):
        """Output activations (class probabilities for a softmax output; the values of
        a regression), as NumPy."""
        return self._outputs(x, batch_size, activate=True)

    def _outputs(self, x, batch_size, activate):
        """The network's outputs over ``x`` in batches, as NumPy: with ``activate``
        False, a fused output layer's logits (before its softmax or sigmoid)."""
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        x = self._as_input(x)
        if not bool(xp_of(x).isfinite(x).all()):
            raise ValueError("inputs hold NaN or infinite values")
        outs = []
        for s in range(0, x.shape[0], batch_size):
            out = self._forward(x[s:s + batch_size], training=False)
            if self._fused and activate:   # the last layer stopped at logits
                out = self.layers[-1].activation.forward(out)
            outs.append(to_numpy(out).copy())
        return np.concatenate(outs) if outs else np.zeros((0, self.n_outputs), self.dtype)

    def predict(self, x, batch_size=1024):
        """What the model predicts: for a cross-entropy classifier the class labels
        (argmax; 0/1 for a single sigmoid output; a 0/1 matrix, one column per output,
        for several sigmoid outputs); for a regression (mse) the output values. Decided
        as ``evaluate`` counts them right: on the logits of a fused output layer, where
        two classes whose probabilities round to the same float32 still differ."""
        if self.loss.name == "mse":
            return self.predict_proba(x, batch_size)
        p = self._outputs(x, batch_size, activate=False)
        thr = 0 if self._fused else 0.5          # a logit of 0 is a probability of 0.5
        if p.shape[1] == 1:
            return (p[:, 0] > thr).astype(np.int64)
        if self.loss.name == "binary_crossentropy":
            return (p > thr).astype(np.int64)
        return p.argmax(axis=1)

    def __call__(self, x, batch_size=1024):
        """``model(x)``: the output activations, as ``predict_proba`` (PyTorch's and
        Keras's way of asking)."""
        return self.predict_proba(x, batch_size)

    def evaluate(self, x, y, batch_size=1024):
        """{"loss", "n"} over (x, y), in batches, and "accuracy" when the targets are
        classes (see ``classifies``)."""
        x, y = check_data(self, x, y, "evaluation data")
        if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n_tot, loss_sum, correct = 0, 0.0, 0
        for s in range(0, len(x), batch_size):
            loss, n, c = self.loss_and_correct(x[s:s + batch_size], y[s:s + batch_size])
            loss_sum += loss * n
            n_tot += n
            correct += c
        if n_tot == 0:
            raise ValueError("cannot evaluate on an empty dataset")
        out = {"loss": loss_sum / n_tot, "n": n_tot}
        if self.classifies(y):
            out["accuracy"] = correct / n_tot
        return out

    # -- persistence -----------------------------------------------------------------
    def config(self):
        return {"type": self.kind, "layers": [l.config() for l in self.layers],
                "loss": self.loss.name, "l2": self.l2, "clip_norm": self.clip_norm,
                "dtype": self.dtype.name, "seed": self.seed}

    @classmethod
    def from_config(cls, cfg, optimizer="adam", xp=np):
        layers = [layer_from_config(c) for c in cfg["layers"]]
        return cls(layers, loss=cfg["loss"], optimizer=optimizer, l2=cfg.get("l2", 0.0),
                   clip_norm=cfg.get("clip_norm"), dtype=cfg["dtype"],
                   seed=cfg.get("seed", 0), xp=xp)

    @staticmethod
    def upgrade_config(cfg):
        """A config as this version writes it (every version so far wrote the same)."""
        return cfg

    @staticmethod
    def config_n_params(cfg):
        """The parameter count a config describes, found without allocating them (a
        loader compares it with the checkpoint's array before building the model)."""
        layers = [layer_from_config(c) for c in cfg["layers"]]
        return sum(math.prod(shape) for l in layers for _, shape in l.param_shapes())

    def save(self, path, **extra):
        """Weights, optimizer state and config to an .npz checkpoint (``dpnet.load``
        reads it back)."""
        save_model(path, self, **extra)

    def summary(self):
        rows = [f"{'layer':<32}{'shape':>16}{'params':>10}"]
        for i, l in enumerate(self.layers):
            shapes = l.param_shapes()
            n = sum(int(np.prod(s)) for _, s in shapes)
            shape = " + ".join("x".join(map(str, s)) for _, s in shapes) or "-"
            rows.append(f"{repr(l):<32}{shape:>16}{n:>10}")
        rows.append(f"total parameters: {self.n_params}")
        return "\n".join(rows)

    def __repr__(self):
        return f"Sequential({self.layers!r}, loss={self.loss.name!r}, optimizer={self.optimizer!r})"
