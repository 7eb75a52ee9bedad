"""CharLSTM: an LSTM character model (one layer, or a stack) over one flat parameter vector.

Layout (docs/ARCHITECTURE.md, "The one idea"): ``Wx`` (V, 4H), ``Wh`` (H, 4H), ``b`` (4H,), then for each further
layer k = 2..L ``Wx<k>`` (H, 4H), ``Wh<k>`` (H, 4H), ``b<k>`` (4H,), then ``Wy`` (H, V),
``by`` (V,); gate columns in the order i, f, g, o. Per step and layer, with x_t the
one-hot character (first layer) or the hidden state of the layer below:

    z_t = x_t @ Wx + b + h_{t-1} @ Wh                    (B, 4H)
    i, f, o = sigmoid(z_i, z_f, z_o);  g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t);  logits_t = h_t(top) @ Wy + by

The carried state (h, c) holds every layer: each is (B, L*H), layer l's in columns
l*H:(l+1)*H -- for one layer simply (B, H). Layers run one after the other over the
whole chunk, so a layer's input projection is one (T*B, H) @ (H, 4H) GEMM.

Where the time goes (V=65, H=256, B=32, T=64, one OpenBLAS thread: ~60% in GEMMs,
the rest elementwise work and memory traffic), and what is done about it:
- the four gate matmuls are one (B, H) @ (H, 4H) GEMM per step; the input projection
  of all T steps is one row gather from the table ``(Wx + b)`` (one-hot input), done
  before the loop; the output layer is one (T*B, H) @ (H, V) GEMM after it, and
  ``dWh`` one (H, T*B) @ (T*B, 4H) GEMM after the backward loop;
- sigmoid(x) = 0.5 + 0.5*tanh(x/2): the 1/2 is folded into scaled copies of the
  weights (exact, a power of two), so one tanh over the fused (B, 4H) row activates
  all four gates (half the cost of exp-based sigmoids);
- the backward GEMM reads a contiguous copy of Wh.T (1.5x faster than the strided
  transpose), copied in row bands (3x faster than one strided copy);
- the scatter-add into dWx is a (V, T*B) @ (T*B, 4H) one-hot GEMM for small
  vocabularies (5x faster than np.add.at) and ``add.at`` otherwise; db is then the
  column sum of dWx, not another pass over the (T*B, 4H) gradient;
- every per-step array lives in buffers kept per (B, T); activations are in place.
Arrays are time-major inside (T, B, ...), so each step touches contiguous blocks.
All maths goes through ``xp = xp_of(self.params)``: the same code runs on CuPy.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import check_dtype, elementwise_kernel, to_numpy, xp_of
from ..nn.initializers import get_initializer
from ..nn.params import ParamLayout
from ..nn.rng import check_seed
from ..optim.optimizers import claim_optimizer, model_optimizer
from .flat import FlatParams
from .saving import save_model

# Above this vocabulary size a one-hot GEMM costs more than a true scatter-add.
_ONEHOT_SCATTER_MAX_V = 256


def _positive_int(name, v):
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _scatter_add_rows(out, idx, rows, onehot=None):
    """out[...] = sum of rows[k] into out[idx[k]] (repeated ids accumulate); out: (V, D)."""
    xp = xp_of(out)
    if onehot is not None:                           # (N, V) buffer: one GEMM
        onehot[...] = 0
        onehot[xp.arange(idx.shape[0]), idx] = 1
        xp.matmul(onehot.T, rows, out=out)           # (V, D)
    else:
        out[...] = 0
        xp.add.at(out, idx, rows)                    # numpy; cupy >= 12 has ufunc.at


def _take_rows(table, idx, out):
    """out[...] = table[idx] along axis 0. The ids are already checked, and numpy's
    default mode="raise" would gather into a temporary first."""
    if xp_of(table) is np:
        np.take(table, idx, axis=0, out=out, mode="clip")
    else:
        xp_of(table).take(table, idx, axis=0, out=out)


def _transpose_into(out, a):
    """out[...] = a.T, copied in 32-row bands: each band's transpose stays in cache,
    where one strided copy of the whole transpose runs ~3x slower."""
    if xp_of(a) is not np:
        out[...] = a.T
        return
    for j in range(0, a.shape[0], 32):
        out[:, j:j + 32] = a[j:j + 32].T


# One time step's element-wise maths as CUDA kernels (used where the arrays are on a
# CUDA device; the NumPy loops of _steps and _bptt are the reference they are tested
# against). Pre-activations arrive halved for i, f, o (the weights are scaled), so
# sigmoid(z) = 0.5 + 0.5 tanh(z / 2) is one tanh, as in the NumPy loop.
_CELL_IN = "T zi, T zf, T zg, T zo, T ri, T rf, T rg, T ro, T c_prev"
_CELL_OUT = "T ig, T fg, T gg, T og, T c, T tc, T h"     # ("i" is CuPy's loop index)
_CELL_OP = """
    const T half = 0.5;
    ig = tanh(zi + ri) * half + half;
    fg = tanh(zf + rf) * half + half;
    gg = tanh(zg + rg);
    og = tanh(zo + ro) * half + half;
    c = fg * c_prev + ig * gg;
    tc = tanh(c);
    h = og * tc;
"""
_BACK_IN = "T dh, T tc, T k, T ig, T fg, T gg, T c_prev, T Di, T Df, T Dg, T Do"
_BACK_OUT = "T di, T df, T dg, T d_o, T dc"
_BACK_OP = """
    const T dct = dc + dh * k;
    d_o = (dh * tc) * Do;
    di = (dct * gg) * Di;
    dg = (dct * ig) * Dg;
    df = (dct * c_prev) * Df;
    dc = dct * fg;
"""


class _LayerWork:
    """One layer's buffers for one (B, T)."""

    def __init__(self, xp, B, T, n_in, H, dtype, first):
        e = lambda *s: xp.empty(s, dtype=dtype)      # noqa: E731
        if first:
            self.table = e(n_in, 4 * H)  # (Wx + b) * scale: the input projection of each char
        else:
            self.Wx_s = e(n_in, 4 * H)  # Wx * scale, b * scale: applied to the layer below
            self.b_s = e(4 * H)
        self.Wh_s = e(H, 4 * H)       # Wh * scale
        self.WhT = e(4 * H, H)        # contiguous Wh.T for the backward GEMM
        self.A = e(T, B, 4 * H)       # pre-activations, then activations i, f, g, o
        self.C = e(T + 1, B, H)       # cell states, C[0] = c0
        self.Hs = e(T + 1, B, H)      # hidden states, Hs[0] = h0
        self.TC = e(T, B, H)          # tanh(c_t)
        self.D = e(T, B, 4 * H)       # activation derivatives, from the outputs (backward)
        self.K = e(T, B, H)           # o_t (1 - tanh²(c_t)): dh_t -> dc_t (backward)
        self.dG = e(T, B, 4 * H)      # gradient w.r.t. the pre-activations
        self.dH = e(T, B, H)          # gradient w.r.t. h_t (from above + recurrent path)
        self.dc = e(B, H)
        self.tmp = e(B, H)
        self.tmp4 = e(B, 4 * H)


class _Work:
    """Buffers for one (B, T): reused across calls so the hot path allocates nothing big."""

    def __init__(self, xp, B, T, V, H, L, dtype):
        self.B, self.T = B, T
        self.layers = [_LayerWork(xp, B, T, V if l == 0 else H, H, dtype, l == 0)
                       for l in range(L)]
        self.Z = xp.empty((T * B, V), dtype=dtype)   # logits, then probabilities, then dlogits
        self.onehot = (xp.empty((T * B, V), dtype=dtype) if V <= _ONEHOT_SCATTER_MAX_V
                       else None)
        self.gate_mul = xp.asarray(np.repeat(np.array([0.5, 0.5, 1.0, 0.5], dtype), H))
        self.gate_add = xp.asarray(np.repeat(np.array([0.5, 0.5, 0.0, 0.5], dtype), H))
        self.idx = None               # (T, B) time-major inputs of the last forward


class CharLSTM(FlatParams):
    """LSTM over characters (one-hot input of size ``vocab_size``), ``num_layers`` deep.

    ``loss_and_grad(inputs, targets, state)`` follows the engine contract: it fills
    ``self.grads`` with the MEAN gradient over the B*T predicted characters and returns
    ``(mean_loss, n_chars, new_state)``; ``state`` is None (zeros) or (h, c), each
    (B, num_layers * H), and is treated as a constant (truncated BPTT across chunks).
    """
    kind = "CharLSTM"
    # what a checkpoint's config must match to be loaded into an existing model
    architecture_keys = ("vocab_size", "hidden_size", "num_layers")

    def __init__(self, vocab_size, hidden_size, dtype=np.float32, seed=0, forget_bias=1.0,
                 init="xavier_uniform", optimizer="adam", clip_norm=None, clip_value=None,
                 xp=np, num_layers=1, temperature=1.0):
        self.vocab_size = _positive_int("vocab_size", vocab_size)
        self.hidden_size = _positive_int("hidden_size", hidden_size)
        self.num_layers = _positive_int("num_layers", num_layers)
        self.dtype = check_dtype(dtype)
        self.seed = check_seed(seed)
        if not isinstance(forget_bias, (int, float)) or isinstance(forget_bias, bool) \
                or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        self.forget_bias = float(forget_bias)
        self.temperature = temperature
        self.init_name = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        self._init = get_initializer(init)
        for name, v in (("clip_norm", clip_norm), ("clip_value", clip_value)):
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                      and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be > 0 or None, got {v!r}")
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.clip_value = None if clip_value is None else float(clip_value)
        self.optimizer = model_optimizer(optimizer)
        self.vocab = None            # a dpnet.data.text.Vocabulary, once one is given

        V, H = self.vocab_size, self.hidden_size
        self._names = [(f"Wx{k}", f"Wh{k}", f"b{k}") for k in
                       [""] + [str(k) for k in range(2, self.num_layers + 1)]]
        entries = []
        for k, (wx, wh, b) in enumerate(self._names):
            entries += [(wx, (V if k == 0 else H, 4 * H)), (wh, (H, 4 * H)), (b, (4 * H,))]
        self.layout = ParamLayout(entries + [("Wy", (H, V)), ("by", (V,))])
        params, grads = self.layout.allocate(self.dtype, xp)
        self.bind(params, grads)
        self.init_params(self.seed)
        claim_optimizer(self.optimizer, self)

    @property
    def temperature(self):
        """The softmax temperature of the output: the model's distribution is
        softmax(logits / temperature), in training (the 000 seed's ``temperature``
        argument of ``train``), in its losses, and under any sampling temperature."""
        return self._temperature

    @temperature.setter
    def temperature(self, t):
        if not isinstance(t, (int, float, np.floating)) or isinstance(t, bool) \
                or not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {t!r}")
        self._temperature = float(t)

    # -- parameters -------------------------------------------------------------------
    def bind(self, params, grads=None):
        """Use ``params`` (and ``grads``) as the flat vectors, e.g. views of shared
        memory or device arrays; the named views are rebuilt, nothing is copied."""
        for label, a in (("params", params), ("grads", grads)):
            if a is None:
                continue
            if a.ndim != 1 or a.shape[0] != self.layout.size or a.dtype != self.dtype:
                raise ValueError(f"{label} must be a ({self.layout.size},) {self.dtype} vector, "
                                 f"got {a.shape} {a.dtype}")
        if grads is None:
            grads = xp_of(params).zeros_like(params)
        if xp_of(params) is not xp_of(grads):
            raise ValueError("params and grads must live on the same backend")
        self._params, self.grads = params, grads
        for name, v in self.layout.views(params).items():
            setattr(self, name, v)
        for name, v in self.layout.views(grads).items():
            setattr(self, "d" + name, v)
        # per layer: (Wx, Wh, b) and their gradients (dWx, dWh, db)
        self._lp = [tuple(getattr(self, n) for n in names) for names in self._names]
        self._lg = [tuple(getattr(self, "d" + n) for n in names) for names in self._names]
        self._work = {}

    def _rebind_views(self):
        self.bind(self._params, self.grads)

    def rebind(self, params=None, grads=None):
        """The engines' name for ``bind`` (as Sequential.rebind): keep what is not given."""
        self.bind(self.params if params is None else params,
                  self.grads if grads is None else grads)

    def init_params(self, seed):
        """(Re)initialize from ``seed`` alone: the matrices by the initializer (drawn in
        float64 on the host, so float32 and float64 models of one seed agree), biases 0
        except the forget gate's, ``forget_bias`` (remember by default, Gers et al. 2000)."""
        rng = np.random.default_rng(seed)
        H = self.hidden_size
        host = np.zeros(self.layout.size, dtype=np.float64)
        views = self.layout.views(host)
        for wx, wh, b in self._names:                # layer by layer, then the output
            self._init(rng, views[wx])
            self._init(rng, views[wh])
            views[b][H:2 * H] = self.forget_bias
        self._init(rng, views["Wy"])
        self.params[...] = xp_of(self.params).asarray(host.astype(self.dtype))

    @property
    def n_params(self):
        return self.layout.size

    @property
    def state_size(self):
        """Columns of the carried h (and c): every layer's H side by side."""
        return self.num_layers * self.hidden_size

    def init_state(self, batch_size):
        """Zero (h, c) for ``batch_size`` streams, each (batch_size, state_size)."""
        xp = xp_of(self.params)
        shape = (_positive_int("batch_size", batch_size), self.state_size)
        return xp.zeros(shape, self.dtype), xp.zeros(shape, self.dtype)

    # -- input checks -----------------------------------------------------------------
    def _ids(self, a, name):
        xp = xp_of(self.params)
        a = xp.asarray(a)
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty (B, T) array, got shape {a.shape}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer ids, got dtype {a.dtype}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"{name} holds id {lo if lo < 0 else hi}, outside the "
                             f"vocabulary [0, {self.vocab_size})")
        return a

    def _state(self, state, B):
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError("state must be None or an (h, c) pair")
        xp = xp_of(self.params)
        h, c = (xp.asarray(s, dtype=self.dtype) for s in state)
        for label, s in (("h", h), ("c", c)):
            if s.shape != (B, self.state_size):
                raise ValueError(f"state {label} must have shape {(B, self.state_size)}, "
                                 f"got {s.shape}")
            if not bool(xp.isfinite(s).all()):
                raise ValueError(f"state {label} holds NaN or infinite values")
        return h, c

    def _layer_state(self, state, l):
        """Layer l's (h, c) columns of a whole-stack state (None stays None)."""
        if state is None:
            return None
        H = self.hidden_size
        return state[0][:, l * H:(l + 1) * H], state[1][:, l * H:(l + 1) * H]

    def _final_state(self, w):
        """(h_T, c_T) of every layer, as fresh (B, L*H) arrays."""
        xp, T = xp_of(self.params), w.T
        if len(w.layers) == 1:
            return w.layers[0].Hs[T].copy(), w.layers[0].C[T].copy()
        return (xp.concatenate([lw.Hs[T] for lw in w.layers], axis=1),
                xp.concatenate([lw.C[T] for lw in w.layers], axis=1))

    def _workspace(self, B, T):
        w = self._work.get((B, T))
        if w is None:
            if len(self._work) >= 3:                 # e.g. train, validation, sampling
                self._work.clear()
            w = self._work[(B, T)] = _Work(xp_of(self.params), B, T, self.vocab_size,
                                           self.hidden_size, self.num_layers, self.dtype)
        return w

    # -- forward ----------------------------------------------------------------------
    def _prepare(self, w):
        """Scaled weight copies for this call's parameters (see the module docstring)."""
        xp, H = xp_of(self.params), self.hidden_size
        for l, lw in enumerate(w.layers):
            Wx, Wh, b = self._lp[l]
            if l == 0:
                xp.add(Wx, b, out=lw.table)          # one-hot x @ Wx + b == (Wx + b)[x]
                blocks = [lw.table, lw.Wh_s]
            else:
                xp.copyto(lw.Wx_s, Wx)
                xp.copyto(lw.b_s, b)
                blocks = [lw.Wx_s, lw.b_s, lw.Wh_s]
            xp.copyto(lw.Wh_s, Wh)
            for blk in blocks:                       # halve the i, f, o columns
                blk[..., :2 * H] *= 0.5
                blk[..., 3 * H:] *= 0.5

    def _input_projection(self, w, l, idx):
        """Layer l's x_t @ Wx + b (scaled) for all T steps at once, into its A."""
        lw = w.layers[l]
        if l == 0:
            _take_rows(lw.table, idx, lw.A)          # (T, B, 4H) row gather
        else:
            xp, H, N = xp_of(self.params), self.hidden_size, w.T * w.B
            below = w.layers[l - 1].Hs[1:].reshape(N, H)
            xp.matmul(below, lw.Wx_s, out=lw.A.reshape(N, 4 * H))   # (T*B, 4H)
            lw.A += lw.b_s

    def _steps(self, w, l, state):
        """Run layer l's recurrence over w's T steps from ``state`` (None = zeros)."""
        xp, H, T = xp_of(self.params), self.hidden_size, w.T
        lw = w.layers[l]
        A, C, Hs, TC = lw.A, lw.C, lw.Hs, lw.TC
        if state is None:
            Hs[0] = 0
            C[0] = 0
        else:
            Hs[0], C[0] = state
        cell = elementwise_kernel(xp, "dpnet_lstm_cell", _CELL_IN, _CELL_OUT, _CELL_OP)
        if cell is not None:
            return self._fused_steps(cell, w, lw, state)
        for t in range(T):
            a = A[t]                                 # (B, 4H)
            if t or state is not None:               # h0 = 0 contributes nothing
                xp.matmul(Hs[t], lw.Wh_s, out=lw.tmp4)
                a += lw.tmp4
            xp.tanh(a, out=a)
            xp.multiply(a, w.gate_mul, out=a)        # sigmoid(x) = 0.5 + 0.5 tanh(x/2) on
            a += w.gate_add                          # i, f, o; identity on g (one pass each)
            i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
            xp.multiply(f, C[t], out=C[t + 1])       # (B, H)
            xp.multiply(i, g, out=lw.tmp)
            C[t + 1] += lw.tmp
            xp.tanh(C[t + 1], out=TC[t])
            xp.multiply(o, TC[t], out=Hs[t + 1])

    def _fused_steps(self, cell, w, lw, state):
        """The recurrence with each time step's element-wise gate maths as one CUDA
        kernel (``_CELL_OP``, the loop above being its reference): a GEMM and a
        kernel per step."""
        xp, H = xp_of(self.params), self.hidden_size
        A, C, Hs, TC, r = lw.A, lw.C, lw.Hs, lw.TC, lw.tmp4
        gates = lambda a: (a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:])  # noqa
        if state is None:
            r[...] = 0                               # h0 = 0 contributes nothing
        # The gate activations overwrite their pre-activations in A[t] (outputs alias
        # inputs): each z is read once, in the statement that writes its gate.
        for t in range(w.T):
            if t or state is not None:
                xp.matmul(Hs[t], lw.Wh_s, out=r)
            cell(*gates(A[t]), *gates(r), C[t], *gates(A[t]), C[t + 1], TC[t], Hs[t + 1])

    def _run(self, w, idx, state):
        """All layers, bottom up, over the chunk ``idx`` (T, B)."""
        for l in range(self.num_layers):
            self._input_projection(w, l, idx)
            self._steps(w, l, self._layer_state(state, l))

    def _forward(self, inputs, state):
        """Gather, recurrences and output layer; logits land in w.Z (T*B, V)."""
        xp = xp_of(self.params)
        B, T = inputs.shape
        state = self._state(state, B)
        w = self._workspace(B, T)
        self._prepare(w)
        w.idx = inputs.T                             # (T, B) time-major
        self._run(w, w.idx, state)
        top = w.layers[-1].Hs[1:].reshape(T * B, self.hidden_size)
        xp.matmul(top, self.Wy, out=w.Z)
        w.Z += self.by                               # (T*B, V)
        return w

    def _loss(self, w, targets, grad):
        """Mean cross-entropy of w.Z against targets; with ``grad``, w.Z becomes
        d(mean loss)/d(logits)."""
        xp = xp_of(self.params)
        Z, N = w.Z, w.Z.shape[0]
        ys = targets.T.reshape(N)                    # time-major, like the rows of Z
        rows = xp.arange(N)
        if self._temperature != 1.0:
            Z *= 1.0 / self._temperature             # softmax(logits / temperature)
        Z -= Z.max(axis=1, keepdims=True)            # shift by the max: exp never overflows
        picked = Z[rows, ys]                         # (N,) shifted logit of the target
        xp.exp(Z, out=Z)
        sums = Z.sum(axis=1)                         # (N,)
        loss = float((xp.log(sums) - picked).sum(dtype=xp.float64)) / N
        if grad:
            Z /= sums[:, None]                       # softmax
            Z[rows, ys] -= 1
            # mean over predicted characters; d(logits / T)/d(logits) = 1 / T
            Z *= 1.0 / (N * self._temperature)
        return loss

    # -- backward ---------------------------------------------------------------------
    def _backward(self, w, need_state_grad=False):
        """BPTT through w's T steps, top layer first; fills self.grads. Returns
        (dh0, dc0), each (B, L*H), or None."""
        xp, H, T, B = xp_of(self.params), self.hidden_size, w.T, w.B
        N = T * B
        dZ = w.Z                                     # (N, V) dlogits
        top = w.layers[-1]
        xp.matmul(top.Hs[1:].reshape(N, H).T, dZ, out=self.dWy)      # (H, V)
        xp.sum(dZ, axis=0, out=self.dby)
        xp.matmul(dZ, self.Wy.T, out=top.dH.reshape(N, H))           # (N, H)
        state_grads = []
        for l in range(self.num_layers - 1, -1, -1):
            lw = w.layers[l]
            (Wx, Wh, _), (dWx, dWh, db) = self._lp[l], self._lg[l]
            state_grads.append(self._bptt(w, lw, Wh, need_state_grad))
            G = lw.dG.reshape(N, 4 * H)
            xp.matmul(lw.Hs[:T].reshape(N, H).T, G, out=dWh)        # (H, 4H)
            if l == 0:
                _scatter_add_rows(dWx, w.idx.reshape(N), G, w.onehot)   # (V, 4H)
                # Every row of G lands in exactly one row of dWx, so summing dWx's V
                # rows gives db without another pass over the (N, 4H) array.
                xp.sum(dWx, axis=0, out=db)
            else:
                below = w.layers[l - 1]
                xp.matmul(below.Hs[1:].reshape(N, H).T, G, out=dWx)    # (H, 4H)
                xp.sum(G, axis=0, out=db)
                xp.matmul(G, Wx.T, out=below.dH.reshape(N, H))        # into the layer below
        if not need_state_grad:
            return None
        state_grads.reverse()                        # layer order, bottom first
        if len(state_grads) == 1:
            return state_grads[0]
        return (xp.concatenate([g[0] for g in state_grads], axis=1),
                xp.concatenate([g[1] for g in state_grads], axis=1))

    def _bptt(self, w, lw, Wh, need_state_grad):
        """One layer's BPTT: lw.dH (gradient w.r.t. its outputs h_t) -> lw.dG (w.r.t.
        its pre-activations). Returns (dh0, dc0) of the layer, or None."""
        xp, H, T = xp_of(self.params), self.hidden_size, w.T
        _transpose_into(lw.WhT, Wh)
        A, C, TC, dG, dH, dc, tmp = lw.A, lw.C, lw.TC, lw.dG, lw.dH, lw.dc, lw.tmp
        D, K = lw.D, lw.K
        # What depends on the forward pass alone is computed for all T steps at once:
        # a few large NumPy calls instead of many small ones inside the time loop.
        xp.multiply(A, A, out=D)
        for sl in (slice(0, 2 * H), slice(3 * H, 4 * H)):
            xp.subtract(A[:, :, sl], D[:, :, sl], out=D[:, :, sl])   # s (1 - s): i, f, o
        xp.subtract(1.0, D[:, :, 2 * H:3 * H], out=D[:, :, 2 * H:3 * H])  # 1 - g^2
        xp.multiply(TC, TC, out=K)
        xp.subtract(1.0, K, out=K)
        K *= A[:, :, 3 * H:]                         # o (1 - tanh^2(c))
        dc[...] = 0                                  # no gradient arrives from beyond T
        state_grad = None
        back = elementwise_kernel(xp, "dpnet_lstm_cell_back", _BACK_IN, _BACK_OUT, _BACK_OP)
        for t in range(T - 1, -1, -1):
            if back is not None:                     # the loop body below, as one kernel
                a, d = A[t], dG[t]
                back(dH[t], TC[t], K[t], a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], C[t],
                     *(D[t][:, k * H:(k + 1) * H] for k in range(4)),
                     *(d[:, k * H:(k + 1) * H] for k in range(4)), dc)
                if t:
                    xp.matmul(d, lw.WhT, out=tmp)
                    dH[t - 1] += tmp
                elif need_state_grad:
                    state_grad = (xp.matmul(d, lw.WhT), dc.copy())
                continue
            a, d, dh = A[t], dG[t], dH[t]
            i, f, g = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H]
            di, df, dg, do = d[:, :H], d[:, H:2 * H], d[:, 2 * H:3 * H], d[:, 3 * H:]
            xp.multiply(dh, TC[t], out=do)           # dL/do
            xp.multiply(dh, K[t], out=tmp)
            dc += tmp                                # dL/dc_t (from h_t and from c_{t+1})
            xp.multiply(dc, g, out=di)
            xp.multiply(dc, i, out=dg)
            xp.multiply(dc, C[t], out=df)
            dc *= f                                  # dL/dc_{t-1} through the forget gate
            d *= D[t]                                # (B, 4H) dL/dz_t
            if t:
                xp.matmul(d, lw.WhT, out=tmp)        # recurrent path into h_{t-1}
                dH[t - 1] += tmp
            elif need_state_grad:
                state_grad = (xp.matmul(d, lw.WhT), dc.copy())
        return state_grad

    # -- the contract -----------------------------------------------------------------
    def loss_and_grad(self, inputs, targets, state=None, return_state_grad=False):
        """Mean loss over the B*T predicted characters; fills ``self.grads`` with the
        mean gradient. Returns (loss, n_chars, (h_T, c_T)), the state as fresh copies;
        with ``return_state_grad`` also (dL/dh0, dL/dc0) as a fourth item."""
        inputs, targets = self._ids(inputs, "inputs"), self._ids(targets, "targets")
        if inputs.shape != targets.shape:
            raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} differ in shape")
        w = self._forward(inputs, state)
        loss = self._loss(w, targets, grad=True)
        state_grad = self._backward(w, need_state_grad=return_state_grad)
        out = (loss, int(targets.size), self._final_state(w))
        return out + (state_grad,) if return_state_grad else out

    def predict_loss(self, inputs, targets, state=None):
        """(mean loss, n_chars, new_state) without touching the gradients."""
        inputs, targets = self._ids(inputs, "inputs"), self._ids(targets, "targets")
        if inputs.shape != targets.shape:
            raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} differ in shape")
        w = self._forward(inputs, state)
        loss = self._loss(w, targets, grad=False)
        return loss, int(targets.size), self._final_state(w)

    def forward(self, inputs, state=None):
        """(logits (B, T, V), new_state) for integer inputs (B, T)."""
        inputs = self._ids(inputs, "inputs")
        B, T = inputs.shape
        w = self._forward(inputs, state)
        logits = w.Z.reshape(T, B, self.vocab_size).transpose(1, 0, 2).copy()
        return logits, self._final_state(w)

    def evaluate(self, batches, state=None):
        """Mean loss over consecutive (inputs, targets) batches, carrying the state:
        {"loss" (nats/char), "bits_per_char", "n"}."""
        total, n_tot = 0.0, 0
        for x, y in batches:
            loss, n, state = self.predict_loss(x, y, state)
            total += loss * n
            n_tot += n
        if n_tot == 0:
            raise ValueError("cannot evaluate on no batches")
        return {"loss": total / n_tot, "bits_per_char": total / n_tot / math.log(2), "n": n_tot}

    # -- the update -------------------------------------------------------------------
    def apply_gradients(self, grads=None):
        """Clip (element-wise, then global norm) and take one optimizer step."""
        g = self.grads if grads is None else grads
        xp = xp_of(g)
        if self.clip_value is not None:
            xp.clip(g, -self.clip_value, self.clip_value, out=g)
        if self.clip_norm is not None:
            norm = float(xp.sqrt(g @ g))
            if norm > self.clip_norm:
                g *= self.clip_norm / norm
        self.optimizer.step(self.params, g)

    def train_on_batch(self, inputs, targets, state=None):
        """One step; returns (loss, new_state)."""
        loss, _, state = self.loss_and_grad(inputs, targets, state)
        self.apply_gradients()
        return loss, state

    # -- sampling ---------------------------------------------------------------------
    def sample(self, prime_ids, length, temperature=1.0, seed=0, state=None,
               return_state=False, on_draw=None):
        """``length`` ids drawn one at a time after feeding ``prime_ids`` (at least one).

        Each draw is from softmax(logits / (temperature * self.temperature)), the
        model's own distribution at ``temperature`` 1: below 1 sharpens towards the
        argmax, above 1 flattens. Deterministic for a ``seed``. With
        ``return_state`` also the (h, c) reached just before the last id (prime or drawn)
        was fed, so ``sample([ids[-1]], ..., state=that)`` continues the same text.
        ``on_draw(id)`` is called as each id is drawn (to show text as it comes)."""
        prime = np.asarray(prime_ids).reshape(-1)
        if prime.size == 0:
            raise ValueError("sample needs at least one prime id")
        if prime.dtype.kind not in "iu":
            raise ValueError(f"prime ids must be integers, got dtype {prime.dtype}")
        if prime.min() < 0 or prime.max() >= self.vocab_size:
            raise ValueError(f"prime ids must be in [0, {self.vocab_size}), got range "
                             f"[{prime.min()}, {prime.max()}]")
        if not isinstance(length, (int, np.integer)) or isinstance(length, bool) or length < 0:
            raise ValueError(f"length must be an integer >= 0, got {length!r}")
        if not isinstance(temperature, (int, float, np.floating)) \
                or isinstance(temperature, bool) or not math.isfinite(temperature) \
                or temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        rng = np.random.default_rng(
            [check_seed(s, none_ok=False) for s in seed] if isinstance(seed, (list, tuple))
            else check_seed(seed, none_ok=False))          # (seed, step) keys, too
        xp = xp_of(self.params)
        w = self._workspace(1, 1)
        self._prepare(w)
        st = self._state(state, 1)
        out = []
        ids = list(int(i) for i in prime)
        for k in range(len(ids) + length - 1):
            cur = ids[k] if k < len(ids) else out[-1]
            self._run(w, xp.asarray([[cur]]), st)
            st = self._final_state(w)
            if k + 1 < len(ids):
                continue
            logits = to_numpy(w.layers[-1].Hs[1] @ self.Wy + self.by)[0].astype(np.float64)
            # Shift before dividing: a tiny temperature then sends the others to -inf
            # (probability 0), never to inf - inf.
            p = np.exp((logits - logits.max()) / (float(temperature) * self._temperature))
            cdf = np.cumsum(p)
            # Inverse-CDF draw: one uniform per character, robust to p not summing to 1.
            j = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            out.append(min(j, self.vocab_size - 1))
            if on_draw is not None:
                on_draw(out[-1])
        if return_state:
            h, c = st if st is not None else self.init_state(1)
            return out, (h.copy(), c.copy())
        return out

    def save(self, path, **extra):
        """Weights, optimizer state, config and (when it has one) the vocabulary to an
        .npz checkpoint (``dpnet.load`` reads it back); a training run's position is
        saved by ``fit_text``."""
        if self.vocab is not None and "vocabulary" not in extra:
            extra["vocabulary"] = self.vocab.to_list()
        save_model(path, self, **extra)

    def generate(self, prime, length, temperature=1.0, seed=0):
        """``length`` characters after the text ``prime``, as a str -- for a model that
        knows its vocabulary (``fit_text`` with ``vocab`` gives it one; ``dpnet.load``
        restores it)."""
        if self.vocab is None:
            raise ValueError("this model has no vocabulary to turn text into ids and back: "
                             "train it with fit_text(..., vocab=...) or set model.vocab")
        ids = self.sample([int(i) for i in self.vocab.encode(prime)], length, temperature,
                          seed=seed)
        return self.vocab.decode(ids)

    # -- description ------------------------------------------------------------------
    def config(self):
        """JSON-able constructor arguments (the parameters travel separately)."""
        return {"type": self.kind, "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "dtype": self.dtype.name,
                "forget_bias": self.forget_bias, "init": self.init_name, "seed": self.seed,
                "clip_norm": self.clip_norm, "clip_value": self.clip_value,
                **({} if self._temperature == 1.0 else {"temperature": self._temperature})}

    def describe(self):
        return dict(self.config(), n_params=self.n_params,
                    layout=[[n, list(s)] for n, s in self.layout.describe()])

    @staticmethod
    def upgrade_config(cfg):
        """A config as this version writes it: the first checkpoints had one layer and
        did not name the count."""
        return dict(cfg, num_layers=cfg.get("num_layers", 1))

    @classmethod
    def config_n_params(cls, cfg):
        """The parameter count a config describes, found without allocating them."""
        V = _positive_int("vocab_size", cfg["vocab_size"])
        H = _positive_int("hidden_size", cfg["hidden_size"])
        L = _positive_int("num_layers", cfg.get("num_layers", 1))
        return 4 * H * (V + H + 1) + (L - 1) * 4 * H * (2 * H + 1) + H * V + V

    @classmethod
    def from_config(cls, cfg, optimizer="adam", xp=np):
        init = cfg.get("init", "xavier_uniform")
        try:
            get_initializer(init)
        except ValueError:
            # a custom initializer function, recorded by name only: the weights that
            # come with the config (checkpoint, shared memory) replace the draw anyway
            init = "xavier_uniform"
        m = cls(cfg["vocab_size"], cfg["hidden_size"], dtype=cfg.get("dtype", "float32"),
                seed=cfg.get("seed", 0), forget_bias=cfg.get("forget_bias", 1.0),
                init=init, optimizer=optimizer, clip_norm=cfg.get("clip_norm"),
                clip_value=cfg.get("clip_value"), xp=xp, num_layers=cfg.get("num_layers", 1),
                temperature=cfg.get("temperature", 1.0))
        m.init_name = cfg.get("init", m.init_name)
        return m

    def __repr__(self):
        layers = f"num_layers={self.num_layers}, " if self.num_layers > 1 else ""
        return (f"CharLSTM(vocab_size={self.vocab_size}, hidden_size={self.hidden_size}, "
                f"{layers}dtype={self.dtype.name}, {self.n_params} parameters)")
