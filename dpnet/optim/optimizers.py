"""Optimizers on the flat parameter and gradient vectors.

Each update rule is the textbook one, written in its docstring; ``t`` counts the
updates already applied and the learning rate may be a schedule of ``t``.

The update is memory-bound: Adam reads and writes four vectors of the model's size.
NumPy expressions like ``p -= lr * m / (sqrt(v) + eps)`` allocate a temporary for
every operator; on a 476k-parameter MLP that doubles the update time. So each rule
is written as in-place operations (``out=``) over blocks of ~64K elements (a block
and its temporaries stay in cache). ``threads > 1`` shares the blocks among a thread
pool (NumPy releases the GIL inside ufuncs); on the 2-core development machine that
was SLOWER than one thread (one core already streams ~24 GB/s through the update), so
the default is one thread. The maths is written once for NumPy and CuPy (``xp`` from
the data; on a GPU the whole vector is one block).
"""
from __future__ import annotations

import inspect
import weakref
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..backend import elementwise_kernel, to_numpy, xp_of
from .schedules import Schedule, as_schedule, schedule_from_config

BLOCK = 1 << 16
_POOL = None


def _pool():
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1),
                                   thread_name_prefix="dpnet-opt")
    return _POOL


def _check(name, v, lo=0.0, hi=math.inf, lo_open=False, hi_open=False):
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lo_b = "(" if lo_open else "["
        hi_b = ")" if hi_open or hi == math.inf else "]"
        raise ValueError(f"{name} must be in {lo_b}{lo}, {hi}{hi_b}, got {v!r}")
    return float(v)


class Optimizer:
    name = "?"
    state_names = ()                      # per-parameter state vectors, same size as params

    def __getstate__(self):
        # the update's scratch vector is not state: a copy makes its own (a read-only
        # one, as joblib's memory maps give, could not be written)
        state = dict(self.__dict__)
        state.pop("_tmp", None)
        return state

    def __init__(self, lr, threads=None):
        if not isinstance(lr, Schedule):
            _check("lr", lr, lo=0.0, lo_open=True)
        self.schedule = as_schedule(lr)
        self.t = 0
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = threads
        self.state = {}

    @property
    def lr(self):
        """The learning rate the next step will use."""
        return self.schedule(self.t)

    def hyperparams(self):
        return {}

    # -- the update ----------------------------------------------------------------
    def step(self, params, grads):
        if params.shape != grads.shape:
            raise ValueError(f"params {params.shape} and grads {grads.shape} differ in shape")
        xp = xp_of(params)
        if not self.state:
            if self.t and self.state_names:
                raise ValueError(f"optimizer {self.name!r} is at step {self.t} but has no state")
            self.state = {k: xp.zeros_like(params) for k in self.state_names}
        for k, v in self.state.items():
            if v.shape != params.shape or v.dtype != params.dtype:
                # silently restarting the moments would bias every later step
                raise ValueError(f"optimizer state {k!r} is {v.shape} {v.dtype}, params are "
                                 f"{params.shape} {params.dtype}")
        if getattr(self, "_tmp", None) is None or self._tmp.shape != params.shape \
                or self._tmp.dtype != params.dtype:
            self._tmp = xp.empty_like(params)
        lr = self.schedule(self.t)
        self.t += 1
        n = params.shape[0]
        if xp is not np or n <= BLOCK:
            self._update(lr, params, grads, self._tmp, **self.state)
            return
        blocks = [slice(i, min(i + BLOCK, n)) for i in range(0, n, BLOCK)]

        def run(sl):
            self._update(lr, params[sl], grads[sl], self._tmp[sl],
                         **{k: v[sl] for k, v in self.state.items()})

        if (self.threads or 1) <= 1:
            for sl in blocks:
                run(sl)
        else:
            for f in [_pool().submit(run, sl) for sl in blocks]:
                f.result()

    def _update(self, lr, p, g, tmp, **state):
        """One block of the update, in place. ``tmp`` is scratch of the block's size."""
        raise NotImplementedError

    # -- checkpointing -------------------------------------------------------------
    def config(self):
        return {"name": self.name, "schedule": self.schedule.config(), **self.hyperparams()}

    def state_dict(self):
        """JSON-able scalars plus host copies of the state vectors."""
        return {"config": self.config(), "t": self.t,
                "arrays": {k: np.array(to_numpy(v), copy=True) for k, v in self.state.items()}}

    def load_state_dict(self, sd, like=None):
        """Restore ``t`` and the state vectors; ``like`` (the params) picks the backend."""
        t = sd.get("t")
        if not isinstance(t, int) or t < 0:
            raise ValueError(f"optimizer state has an invalid step count t={t!r}")
        arrays = sd.get("arrays", {})
        missing = [k for k in self.state_names if k not in arrays] if t > 0 else []
        if missing:
            raise ValueError(f"optimizer {self.name!r} state lacks {', '.join(missing)}")
        xp = xp_of(like) if like is not None else np
        self.t = t
        self.state = {k: xp.asarray(arrays[k]).copy() for k in self.state_names if k in arrays}
        if like is not None:
            for k, v in self.state.items():
                if v.shape != like.shape or v.dtype != like.dtype:
                    raise ValueError(f"optimizer state {k!r} has shape {v.shape} {v.dtype}, "
                                     f"params are {like.shape} {like.dtype}")

    def __repr__(self):
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparams().items())
        return f"{type(self).__name__}(lr={self.schedule.config()}{', ' + hp if hp else ''})"


class SGD(Optimizer):
    """p <- p - lr * g"""
    name = "sgd"

    def __init__(self, lr=0.01, threads=None):
        super().__init__(lr, threads)

    def _update(self, lr, p, g, tmp):
        xp_of(p).multiply(g, lr, out=tmp)
        p -= tmp


class Momentum(Optimizer):
    """Classical momentum (Polyak): v <- mu * v - lr * g;  p <- p + v"""
    name = "momentum"
    state_names = ("v",)

    def __init__(self, lr=0.01, momentum=0.9, threads=None):
        super().__init__(lr, threads)
        self.momentum = _check("momentum", momentum, 0.0, 1.0, hi_open=True)

    def hyperparams(self):
        return {"momentum": self.momentum}

    def _update(self, lr, p, g, tmp, v):
        xp = xp_of(p)
        v *= self.momentum
        xp.multiply(g, lr, out=tmp)
        v -= tmp
        p += v


class Nesterov(Momentum):
    """Nesterov accelerated gradient, in the form that evaluates the gradient at the
    current parameters (Sutskever et al. 2013; Bengio et al. 2012):
        v_prev <- v;  v <- mu * v - lr * g;  p <- p - mu * v_prev + (1 + mu) * v"""
    name = "nesterov"

    def _update(self, lr, p, g, tmp, v):
        xp = xp_of(p)
        mu = self.momentum
        xp.multiply(v, -mu, out=tmp)          # -mu * v_prev
        p += tmp
        v *= mu
        xp.multiply(g, lr, out=tmp)
        v -= tmp                              # v = mu * v_prev - lr * g
        xp.multiply(v, 1 + mu, out=tmp)
        p += tmp


def _divide_by_rms(lr, p, g, tmp, cache, eps):
    """p -= lr * g / (sqrt(cache) + eps): AdaGrad's and RMSProp's shared last step."""
    xp = xp_of(p)
    xp.sqrt(cache, out=tmp)
    tmp += eps
    xp.divide(g, tmp, out=tmp)
    tmp *= lr
    p -= tmp


class AdaGrad(Optimizer):
    """Duchi et al. (2011): c <- c + g²;  p <- p - lr * g / (sqrt(c) + eps)"""
    name = "adagrad"
    state_names = ("cache",)

    def __init__(self, lr=0.01, eps=1e-8, threads=None):
        super().__init__(lr, threads)
        self.eps = _check("eps", eps, 0.0)

    def hyperparams(self):
        return {"eps": self.eps}

    def _update(self, lr, p, g, tmp, cache):
        xp_of(p).multiply(g, g, out=tmp)
        cache += tmp
        _divide_by_rms(lr, p, g, tmp, cache, self.eps)


class RMSProp(Optimizer):
    """Tieleman & Hinton (2012): c <- rho * c + (1 - rho) * g²;
    p <- p - lr * g / (sqrt(c) + eps)"""
    name = "rmsprop"
    state_names = ("cache",)

    def __init__(self, lr=0.001, rho=0.9, eps=1e-8, threads=None):
        super().__init__(lr, threads)
        self.rho = _check("rho", rho, 0.0, 1.0, hi_open=True)
        self.eps = _check("eps", eps, 0.0)

    def hyperparams(self):
        return {"rho": self.rho, "eps": self.eps}

    def _update(self, lr, p, g, tmp, cache):
        cache *= self.rho
        xp_of(p).multiply(g, g, out=tmp)
        tmp *= 1 - self.rho
        cache += tmp
        _divide_by_rms(lr, p, g, tmp, cache, self.eps)


class Adam(Optimizer):
    """Kingma & Ba (2015), Algorithm 1, with t counting from 1:
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g²
        m_hat = m / (1 - b1^t);   v_hat = v / (1 - b2^t)
        p <- p - lr * m_hat / (sqrt(v_hat) + eps)"""
    name = "adam"
    state_names = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, threads=None):
        super().__init__(lr, threads)
        self.beta1 = _check("beta1", beta1, 0.0, 1.0, hi_open=True)
        self.beta2 = _check("beta2", beta2, 0.0, 1.0, hi_open=True)
        self.eps = _check("eps", eps, 0.0)

    def hyperparams(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def _moments(self, g, tmp, m, v):
        xp = xp_of(g)
        m *= self.beta1
        xp.multiply(g, 1 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        xp.multiply(g, g, out=tmp)
        tmp *= 1 - self.beta2
        v += tmp

    def _apply(self, lr, p, tmp, m, second):
        """p -= lr * m_hat / (sqrt(second_hat) + eps), with t already incremented."""
        xp = xp_of(p)
        t = self.t
        xp.sqrt(second, out=tmp)
        tmp *= 1.0 / math.sqrt(1 - self.beta2 ** t)
        tmp += self.eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / (1 - self.beta1 ** t)
        p -= tmp

    def _update(self, lr, p, g, tmp, m, v):
        k = elementwise_kernel(xp_of(p), "dpnet_adam", _ADAM_IN, _ADAM_OUT, _ADAM_OP) \
            if type(self) is Adam else None
        if k is not None:              # one pass over the four vectors on a CUDA device
            t = self.t
            k(g, lr / (1 - self.beta1 ** t), self.beta1, 1 - self.beta1, self.beta2,
              1 - self.beta2, self.eps, 1.0 / math.sqrt(1 - self.beta2 ** t), p, m, v)
            return
        self._moments(g, tmp, m, v)
        self._apply(lr, p, tmp, m, v)


# Adam's update as one CUDA kernel: the same operations, in the same order, as
# _moments and _apply above (the reference it is tested against).
_ADAM_IN = "T g, T lr_c, T b1, T omb1, T b2, T omb2, T eps, T s2"
_ADAM_OUT = "T p, T m, T v"
_ADAM_OP = """
    m = m * b1 + g * omb1;
    v = v * b2 + (g * g) * omb2;
    p -= (m / (sqrt(v) * s2 + eps)) * lr_c;
"""


class AMSGrad(Adam):
    """Reddi et al. (2018), with Adam's bias corrections (as PyTorch's amsgrad=True):
    Adam's m and v, then v_max <- max(v_max, v) and
    p <- p - lr * m_hat / (sqrt(v_max / (1 - b2^t)) + eps)"""
    name = "amsgrad"
    state_names = ("m", "v", "v_max")

    def _update(self, lr, p, g, tmp, m, v, v_max):
        self._moments(g, tmp, m, v)
        xp_of(p).maximum(v_max, v, out=v_max)
        self._apply(lr, p, tmp, m, v_max)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSProp, "adam": Adam, "amsgrad": AMSGrad}


def get_optimizer(name, **kwargs):
    if isinstance(name, Optimizer):
        return name
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; choose one of "
                         f"{', '.join(OPTIMIZERS)}") from None
    return cls(**kwargs)


def model_optimizer(spec):
    """``get_optimizer`` for a model's constructor. An Optimizer instance serves ONE
    model -- its step count (which drives the learning rate's schedule) and its state
    vectors are that model's -- so a second model given the same instance is refused,
    not silently started at the end of the first one's schedule with its moments."""
    opt = get_optimizer(spec)
    if len(_OPT_OWNERS.get(opt, ())):
        raise ValueError(f"optimizer {opt!r} already belongs to a model (its step count "
                         f"and state are that model's): give each model an optimizer of "
                         f"its own")
    return opt


def claim_optimizer(opt, model):
    """Mark ``opt`` as ``model``'s, while the model lives (once its constructor has
    succeeded: a model that failed to be built claims nothing)."""
    _OPT_OWNERS.setdefault(opt, weakref.WeakSet()).add(model)


_OPT_OWNERS = weakref.WeakKeyDictionary()      # optimizer -> the models that use it


def optimizer_from_config(cfg):
    if not isinstance(cfg, dict):
        raise ValueError(f"an optimizer's settings are a JSON object, got {cfg!r}"[:200])
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r} in checkpoint")
    lr = schedule_from_config(cfg.pop("schedule", None))
    try:
        return OPTIMIZERS[name](lr=lr, **cfg)
    except TypeError:
        need = [p for p in inspect.signature(OPTIMIZERS[name]).parameters if p != "lr"]
        raise ValueError(f"the {name!r} optimizer takes {', '.join(need)}; got "
                         f"{', '.join(sorted(cfg)) or 'nothing'}") from None
