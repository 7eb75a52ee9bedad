"""Optimizers against the textbook update rules.

The references below are written independently of dpnet.optimizers: plain Python
floats, one element at a time, in the form the papers write them (no in-place
tricks, no blocks). Literal first/second steps check the references themselves.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from dpnet.optim import optimizers as O
from dpnet.optim.schedules import Anneal, ExponentialDecay, StepDecay

RTOL = 1e-12

# Five steps of gradients on a 6-vector: zeros (a whole column for two steps),
# negatives, tiny and large magnitudes, sign changes.
G = [
    [0.5, -1.5, 0.0, 2.0, -0.25, 3.0],
    [-0.3, 0.0, 0.0, 1.0, 0.7, -2.0],
    [0.0, 2.5, -1e-3, -4.0, 0.7, 1e-4],
    [1.2, -0.6, 0.0, 0.0, -3.0, 0.5],
    [-2.0, 0.1, 5.0, 0.3, 0.0, -1e-3],
]
P0 = [0.1, -0.2, 0.3, -0.4, 0.5, 1.5]


# -- independent references (Python floats) ------------------------------------------
def ref_sgd(p, gs, lr):
    p = list(p)
    for t, g in enumerate(gs):
        p = [pi - lr(t) * gi for pi, gi in zip(p, g)]
    return p, {}


def ref_momentum(p, gs, lr, momentum):
    p, v = list(p), [0.0] * len(p)
    for t, g in enumerate(gs):
        v = [momentum * vi - lr(t) * gi for vi, gi in zip(v, g)]
        p = [pi + vi for pi, vi in zip(p, v)]
    return p, {"v": v}


def ref_nesterov(p, gs, lr, momentum):
    mu = momentum
    p, v = list(p), [0.0] * len(p)
    for t, g in enumerate(gs):
        v_prev = v
        v = [mu * vi - lr(t) * gi for vi, gi in zip(v_prev, g)]
        p = [pi - mu * vp + (1 + mu) * vi for pi, vp, vi in zip(p, v_prev, v)]
    return p, {"v": v}


def ref_adagrad(p, gs, lr, eps):
    p, c = list(p), [0.0] * len(p)
    for t, g in enumerate(gs):
        c = [ci + gi * gi for ci, gi in zip(c, g)]
        p = [pi - lr(t) * gi / (math.sqrt(ci) + eps) for pi, gi, ci in zip(p, g, c)]
    return p, {"cache": c}


def ref_rmsprop(p, gs, lr, rho, eps):
    p, c = list(p), [0.0] * len(p)
    for t, g in enumerate(gs):
        c = [rho * ci + (1 - rho) * gi * gi for ci, gi in zip(c, g)]
        p = [pi - lr(t) * gi / (math.sqrt(ci) + eps) for pi, gi, ci in zip(p, g, c)]
    return p, {"cache": c}


def ref_adam(p, gs, lr, beta1, beta2, eps, amsgrad=False):
    n = len(p)
    p, m, v, vmax = list(p), [0.0] * n, [0.0] * n, [0.0] * n
    for k, g in enumerate(gs):
        t = k + 1                                        # Algorithm 1 counts from 1
        m = [beta1 * mi + (1 - beta1) * gi for mi, gi in zip(m, g)]
        v = [beta2 * vi + (1 - beta2) * gi * gi for vi, gi in zip(v, g)]
        m_hat = [mi / (1 - beta1 ** t) for mi in m]
        if amsgrad:                                      # torch.optim.Adam(amsgrad=True)
            vmax = [max(a, b) for a, b in zip(vmax, v)]
            v_hat = [vi / (1 - beta2 ** t) for vi in vmax]
        else:
            v_hat = [vi / (1 - beta2 ** t) for vi in v]
        p = [pi - lr(k) * mh / (math.sqrt(vh) + eps) for pi, mh, vh in zip(p, m_hat, v_hat)]
    state = {"m": m, "v": v}
    if amsgrad:
        state["v_max"] = vmax
    return p, state


def ref_amsgrad(p, gs, lr, beta1, beta2, eps):
    return ref_adam(p, gs, lr, beta1, beta2, eps, amsgrad=True)


REFS = {"sgd": ref_sgd, "momentum": ref_momentum, "nesterov": ref_nesterov,
        "adagrad": ref_adagrad, "rmsprop": ref_rmsprop, "adam": ref_adam,
        "amsgrad": ref_amsgrad}

HP = {  # two hyperparameter sets each: a usual one and an unusual one
    "sgd": [{}, {}],
    "momentum": [{"momentum": 0.9}, {"momentum": 0.3}],
    "nesterov": [{"momentum": 0.9}, {"momentum": 0.3}],
    "adagrad": [{"eps": 1e-8}, {"eps": 0.1}],
    "rmsprop": [{"rho": 0.9, "eps": 1e-8}, {"rho": 0.5, "eps": 1e-3}],
    "adam": [{"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
             {"beta1": 0.5, "beta2": 0.6, "eps": 1e-3},
             {"beta1": 0.0, "beta2": 0.0, "eps": 1e-8}],
    "amsgrad": [{"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
                {"beta1": 0.5, "beta2": 0.6, "eps": 1e-3},
                {"beta1": 0.0, "beta2": 0.0, "eps": 1e-8}],
}

# Learning rates: the module's object, and the same rate written out independently.
LRS = {
    "const": (lambda: 0.1, lambda t: 0.1),
    "exp": (lambda: ExponentialDecay(0.2, 0.5, 2), lambda t: 0.2 * 0.5 ** (t / 2)),
    "anneal": (lambda: Anneal(0.1, 0.001, 4), lambda t: 0.1 * 0.01 ** (min(t, 4) / 4)),
}

CASES = [(name, i, lr) for name in REFS for i in range(len(HP[name])) for lr in LRS]


def make(name, lr, **hp):
    return O.OPTIMIZERS[name](lr=lr, **hp)


def run(opt, grads, p0=P0, dtype=np.float64):
    p = np.array(p0, dtype=dtype)
    for g in grads:
        opt.step(p, np.array(g, dtype=dtype))
    return p


# -- the update rules ------------------------------------------------------------------
@pytest.mark.parametrize("name,hp_i,lr_kind", CASES)
@pytest.mark.parametrize("n_steps", [1, 3, 5])
def test_matches_reference(name, hp_i, lr_kind, n_steps):
    hp = HP[name][hp_i]
    lr_obj, lr_fn = LRS[lr_kind]
    opt = make(name, lr_obj(), **hp)
    p = run(opt, G[:n_steps])
    want_p, want_state = REFS[name](P0, G[:n_steps], lr_fn, **hp)
    # atol: a few ulps of O(1) params, for a param that cancels to ~0 (Adam, beta1=0)
    np.testing.assert_allclose(p, want_p, rtol=RTOL, atol=1e-15)
    # the displacement too: params are O(1) and would hide an error in a small update
    np.testing.assert_allclose(p - np.array(P0), np.array(want_p) - np.array(P0),
                               rtol=RTOL, atol=1e-16)
    assert set(opt.state) == set(want_state)
    for k, v in want_state.items():
        assert opt.state[k].dtype == np.float64
        np.testing.assert_allclose(opt.state[k], v, rtol=RTOL, atol=0, err_msg=k)
    assert opt.t == n_steps


# Literal steps: p0 = [1, -2, 0.5], g1 = [2, -0.5, 0], g2 = [-1, -0.5, 4], lr = 0.1.
LP0 = [1.0, -2.0, 0.5]
LG1 = [2.0, -0.5, 0.0]
LG2 = [-1.0, -0.5, 4.0]


def two_steps(opt):
    p = np.array(LP0)
    opt.step(p, np.array(LG1))
    p1 = p.copy()
    opt.step(p, np.array(LG2))
    return p1, p


def test_sgd_literal():
    p1, p2 = two_steps(O.SGD(0.1))
    np.testing.assert_allclose(p1, [0.8, -1.95, 0.5], rtol=1e-15)
    np.testing.assert_allclose(p2, [0.9, -1.9, 0.1], rtol=1e-15)


def test_momentum_literal():
    opt = O.Momentum(lr=0.1, momentum=0.9)
    p1, p2 = two_steps(opt)
    np.testing.assert_allclose(p1, [0.8, -1.95, 0.5], rtol=1e-15)       # v1 = -lr g1
    # v2 = 0.9 v1 - 0.1 g2 = [-0.08, 0.095, -0.4]
    np.testing.assert_allclose(opt.state["v"], [-0.08, 0.095, -0.4], rtol=1e-14)
    np.testing.assert_allclose(p2, [0.72, -1.855, 0.1], rtol=1e-14)


def test_nesterov_literal():
    opt = O.Nesterov(lr=0.1, momentum=0.9)
    p1, p2 = two_steps(opt)
    # first step: p0 + (1 + mu) * (-lr g1)
    np.testing.assert_allclose(p1, [1 - 0.38, -2 + 0.095, 0.5], rtol=1e-14)
    # p2 = p1 - 0.9 v1 + 1.9 v2, v1 = [-0.2, 0.05, 0], v2 = [-0.08, 0.095, -0.4]
    np.testing.assert_allclose(p2, [0.648, -1.7695, -0.26], rtol=1e-13)


def test_nesterov_is_sutskever_lookahead():
    """The docstring's form tracks theta + mu v of Sutskever et al.'s look-ahead form
    (v <- mu v - lr grad f(theta + mu v); theta <- theta + v) on a real objective."""
    a = np.array([1.0, 3.0, 0.2, 7.0])
    b = np.array([0.5, -1.0, 2.0, 0.0])

    def grad(x):                                   # f = 0.5 a x^2 - b x
        return a * x - b

    lr, mu = 0.05, 0.8
    theta, v = np.array([1.0, -1.0, 0.5, 2.0]), np.zeros(4)
    opt = O.Nesterov(lr=lr, momentum=mu)
    p = theta.copy()
    for _ in range(6):
        opt.step(p, grad(p))
        v = mu * v - lr * grad(theta + mu * v)
        theta = theta + v
        np.testing.assert_allclose(p, theta + mu * v, rtol=1e-12, atol=1e-15)


def test_adagrad_literal():
    eps = 1e-8
    p1, p2 = two_steps(O.AdaGrad(lr=0.1, eps=eps))
    # c1 = g1^2, so the first step is lr * g / (|g| + eps) ~ lr * sign(g)
    np.testing.assert_allclose(p1, [1 - 0.1 * 2 / (2 + eps), -2 + 0.1 * 0.5 / (0.5 + eps), 0.5],
                               rtol=1e-15)
    np.testing.assert_allclose(p1, [0.9, -1.9, 0.5], rtol=1e-8)
    # c2 = [5, 0.5, 16]
    np.testing.assert_allclose(
        p2, [0.9 + 0.1 / math.sqrt(5), -1.9 + 0.1 * 0.5 / math.sqrt(0.5), 0.5 - 0.1],
        rtol=1e-8)


def test_rmsprop_literal():
    p1, _ = two_steps(O.RMSProp(lr=0.1, rho=0.9, eps=1e-8))
    # c1 = 0.1 g^2: the first step is lr * sign(g) / sqrt(0.1)
    np.testing.assert_allclose(p1, [1 - 0.1 / math.sqrt(0.1), -2 + 0.1 / math.sqrt(0.1), 0.5],
                               rtol=1e-7)


def test_adam_literal():
    eps = 1e-8
    opt = O.Adam(lr=0.1, beta1=0.9, beta2=0.999, eps=eps)
    p1, p2 = two_steps(opt)
    # bias correction makes m_hat = g and v_hat = g^2 on the first step
    np.testing.assert_allclose(p1, [1 - 0.1 * 2 / (2 + eps), -2 + 0.1 * 0.5 / (0.5 + eps), 0.5],
                               rtol=1e-15)
    np.testing.assert_allclose(p1, [0.9, -1.9, 0.5], rtol=1e-8)        # ~ lr * sign(g)
    # m2 = [0.08, -0.095, 0.4], v2 = [0.004996, 0.00049975, 0.016]; 1-b1^2 = 0.19, 1-b2^2 = 0.001999
    np.testing.assert_allclose(opt.state["m"], [0.08, -0.095, 0.4], rtol=1e-14)
    np.testing.assert_allclose(opt.state["v"], [0.004996, 0.00049975, 0.016], rtol=1e-14)
    want = [0.9 - 0.1 * (0.08 / 0.19) / (math.sqrt(0.004996 / 0.001999) + eps),
            -1.9 + 0.1,                             # same gradient twice: m_hat/sqrt(v_hat) = -1
            0.5 - 0.1 * (0.4 / 0.19) / (math.sqrt(0.016 / 0.001999) + eps)]
    np.testing.assert_allclose(p2, want, rtol=1e-8)


def test_adam_first_step_is_lr_sign_g_whatever_the_scale():
    p = np.zeros(5)
    O.Adam(lr=0.01).step(p, np.array([1e3, -1e-2, 5.0, -7e5, 0.0]))
    np.testing.assert_allclose(p, [-0.01, 0.01, -0.01, 0.01, 0.0], rtol=1e-5, atol=0)


def test_adam_constant_gradient_moves_lr_each_step():
    g = np.array([0.3, -2.0, 1e-2])
    p = np.zeros(3)
    opt = O.Adam(lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8)
    for k in range(1, 6):
        opt.step(p, g)
        np.testing.assert_allclose(p, -k * 0.05 * g / (np.abs(g) + 1e-8), rtol=1e-10)


@pytest.mark.parametrize("cls", [O.Adam, O.AMSGrad])
def test_adam_defaults_are_the_papers(cls):
    opt = cls()
    assert opt.lr == 0.001
    assert (opt.beta1, opt.beta2, opt.eps) == (0.9, 0.999, 1e-8)


def test_amsgrad_literal_uses_the_max():
    """beta2 = 0.5, g = 2 then 0: v falls from 2 to 1 but v_max stays 2."""
    kw = dict(lr=0.1, beta1=0.9, beta2=0.5, eps=0.0)
    pa, pm = np.array([1.0]), np.array([1.0])
    adam, ams = O.Adam(**kw), O.AMSGrad(**kw)
    for g in (2.0, 0.0):
        adam.step(pa, np.array([g]))
        ams.step(pm, np.array([g]))
        if g == 2.0:
            np.testing.assert_allclose(pm, [0.9], rtol=1e-15)
            np.testing.assert_array_equal(pa, pm)
    # m2 = 0.18, 1 - b1^2 = 0.19, 1 - b2^2 = 0.75
    np.testing.assert_allclose(pm, [0.9 - 0.1 * (0.18 / 0.19) / math.sqrt(2 / 0.75)], rtol=1e-14)
    np.testing.assert_allclose(pa, [0.9 - 0.1 * (0.18 / 0.19) / math.sqrt(1 / 0.75)], rtol=1e-14)
    np.testing.assert_allclose(ams.state["v_max"], [2.0], rtol=1e-15)
    np.testing.assert_allclose(ams.state["v"], [1.0], rtol=1e-15)


def test_step_is_in_place_and_views_see_it():
    p = np.array(P0)
    view = p[2:4]
    opt = O.Adam(lr=0.1)
    assert opt.step(p, np.array(G[0])) is None
    want, _ = ref_adam(P0, G[:1], lambda t: 0.1, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose(view, want[2:4], rtol=RTOL)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(6,\).*\(5,\)"):
        O.SGD(0.1).step(np.zeros(6), np.zeros(5))


# -- schedule-driven learning rates ----------------------------------------------------
def test_anneal_lr_uses_schedule_of_t_from_zero():
    """With g = 1, SGD moves by exactly the rate of that step."""
    opt = O.SGD(Anneal(1e-3, 1e-5, 100))
    p = np.zeros(1)
    moves = []
    for k in range(120):
        assert opt.t == k
        assert opt.lr == pytest.approx(1e-3 * 0.01 ** (min(k, 100) / 100), rel=1e-12)
        before = p[0]
        opt.step(p, np.ones(1))
        moves.append(before - p[0])
    assert moves[0] == pytest.approx(1e-3, rel=1e-9)        # t = 0 on the first step
    assert moves[50] == pytest.approx(1e-4, rel=1e-9)
    assert moves[100] == pytest.approx(1e-5, rel=1e-9)
    assert moves[119] == pytest.approx(1e-5, rel=1e-9)
    assert opt.t == 120


def test_exponential_decay_lr_uses_schedule_of_t_from_zero():
    opt = O.SGD(ExponentialDecay(0.1, 0.5, 2))
    p = np.zeros(1)
    moves = []
    for _ in range(5):
        before = p[0]
        opt.step(p, np.ones(1))
        moves.append(before - p[0])
    np.testing.assert_allclose(moves, [0.1, 0.1 * 0.5 ** 0.5, 0.05, 0.05 * 0.5 ** 0.5, 0.025],
                               rtol=1e-12)


@pytest.mark.parametrize("name", ["adam", "momentum", "rmsprop"])
def test_step_decay_lr_in_a_stateful_optimizer(name):
    hp = HP[name][0]
    opt = make(name, StepDecay(0.1, 0.5, 2), **hp)
    p = run(opt, G)
    want, _ = REFS[name](P0, G, lambda t: 0.1 * 0.5 ** (t // 2), **hp)
    np.testing.assert_allclose(p, want, rtol=RTOL, atol=0)


# -- the blocked, threaded path ---------------------------------------------------------
N_BIG = 200_001


def _big(dtype, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(N_BIG).astype(dtype)
    gs = []
    for _ in range(steps):
        g = rng.standard_normal(N_BIG).astype(dtype)
        g[rng.random(N_BIG) < 0.1] = 0                       # some exact zeros
        gs.append(g)
    return p0, gs


BIG_HP = {"sgd": {}, "momentum": {"momentum": 0.9}, "nesterov": {"momentum": 0.9},
          "adagrad": {}, "rmsprop": {}, "adam": {}, "amsgrad": {"beta2": 0.6}}


@pytest.mark.parametrize("name", list(REFS))
def test_blocked_threaded_equals_single_block(name):
    assert N_BIG > 3 * O.BLOCK            # several blocks and a ragged last one
    p0, gs = _big(np.float32)
    results = {}
    for threads in (1, 4, None):
        opt = make(name, 0.01, threads=threads, **BIG_HP[name])
        p = p0.copy()
        for g in gs:
            opt.step(p, g)
        results[threads] = (p, opt.state)
    # the single-block path: independent optimizers on pieces no larger than BLOCK,
    # cut where the blocks are not
    piece = 50_000
    assert piece <= O.BLOCK
    single = np.empty_like(p0)
    single_state = {k: np.empty_like(p0) for k in results[1][1]}
    for i in range(0, N_BIG, piece):
        sl = slice(i, min(i + piece, N_BIG))
        opt = make(name, 0.01, threads=4, **BIG_HP[name])
        p = p0[sl].copy()
        for g in gs:
            opt.step(p, g[sl])
        single[sl] = p
        for k, v in opt.state.items():
            single_state[k][sl] = v
    for threads, (p, state) in results.items():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, single, err_msg=f"threads={threads}")
        for k, v in state.items():
            np.testing.assert_array_equal(v, single_state[k], err_msg=f"{k}, threads={threads}")
    assert not np.array_equal(results[1][0], p0)


# -- dtypes -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(REFS))
@pytest.mark.parametrize("lr_kind", ["const", "exp"])
def test_float32_stays_float32(name, lr_kind):
    hp = HP[name][0]
    lr_obj, lr_fn = LRS[lr_kind]
    opt = make(name, lr_obj(), **hp)
    p = run(opt, G, dtype=np.float32)
    assert p.dtype == np.float32
    for k, v in opt.state.items():
        assert v.dtype == np.float32, k
    for k, v in opt.state_dict()["arrays"].items():
        assert v.dtype == np.float32, k
    want, _ = REFS[name](P0, G, lr_fn, **hp)
    np.testing.assert_allclose(p, want, rtol=2e-5, atol=2e-6)


def test_float32_params_with_float64_grads_stay_float32():
    opt = O.Adam(lr=0.1)
    p = np.array(P0, dtype=np.float32)
    for g in G:
        opt.step(p, np.array(g, dtype=np.float64))
    assert p.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state.values())


# -- checkpointing ----------------------------------------------------------------------
def _checkpoint(sd):
    """What a checkpoint does: config and scalars through JSON, arrays copied out."""
    meta = json.loads(json.dumps({"config": sd["config"], "t": sd["t"]}))
    return meta["config"], {"t": meta["t"], "arrays": {k: np.array(v) for k, v in
                                                       sd["arrays"].items()}}


@pytest.mark.parametrize("name", list(REFS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr_kind", ["const", "anneal"])
def test_state_dict_round_trip_resumes_exactly(name, dtype, lr_kind):
    hp = HP[name][1]
    lr_obj, _ = LRS[lr_kind]
    straight = make(name, lr_obj(), **hp)
    p_straight = run(straight, G, dtype=dtype)

    first = make(name, lr_obj(), **hp)
    p = run(first, G[:3], dtype=dtype)
    cfg, sd = _checkpoint(first.state_dict())
    resumed = O.optimizer_from_config(cfg)
    assert type(resumed) is type(first)
    assert resumed.config() == first.config()
    resumed.load_state_dict(sd, like=p)
    assert resumed.t == 3
    assert resumed.lr == first.lr
    for g in G[3:]:
        resumed.step(p, np.array(g, dtype=dtype))
    np.testing.assert_array_equal(p, p_straight)
    assert resumed.t == straight.t == 5
    assert set(resumed.state) == set(straight.state)
    for k in straight.state:
        assert resumed.state[k].dtype == dtype
        np.testing.assert_array_equal(resumed.state[k], straight.state[k], err_msg=k)


@pytest.mark.parametrize("name", [n for n in REFS if O.OPTIMIZERS[n].state_names])
def test_state_dict_is_a_snapshot(name):
    """The docstring promises host copies: stepping on must not change a saved state."""
    opt = make(name, 0.1, **HP[name][0])
    p = run(opt, G[:3])
    sd = opt.state_dict()
    saved = {k: v.copy() for k, v in sd["arrays"].items()}
    opt.step(p, np.array(G[3]))
    for k, v in sd["arrays"].items():
        np.testing.assert_array_equal(v, saved[k], err_msg=f"state_dict()['arrays'][{k!r}] "
                                                           f"aliases the live state")


def test_load_state_dict_refuses_bad_state():
    opt = O.Adam(lr=0.1)
    p = run(opt, G[:2])
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="-1"):
        O.Adam(lr=0.1).load_state_dict({**sd, "t": -1})
    with pytest.raises(ValueError, match=r"lacks.*\bv\b"):
        O.Adam(lr=0.1).load_state_dict({"t": 2, "arrays": {"m": sd["arrays"]["m"]}})
    with pytest.raises(ValueError, match="shape"):
        O.Adam(lr=0.1).load_state_dict(sd, like=np.zeros(7))
    with pytest.raises(ValueError, match="float32"):
        O.Adam(lr=0.1).load_state_dict(sd, like=p.astype(np.float32))


def test_optimizer_from_config_and_get_optimizer():
    for name, hps in HP.items():
        opt = make(name, ExponentialDecay(0.2, 0.5, 2), **hps[-1])
        again = O.optimizer_from_config(json.loads(json.dumps(opt.config())))
        np.testing.assert_array_equal(run(again, G), run(make(name, ExponentialDecay(0.2, 0.5, 2),
                                                             **hps[-1]), G))
        assert isinstance(O.get_optimizer(name, lr=0.1), O.OPTIMIZERS[name])
    assert O.get_optimizer(opt) is opt
    with pytest.raises(ValueError, match="'adamw'"):
        O.get_optimizer("adamw", lr=0.1)
    with pytest.raises(ValueError, match="'nope'"):
        O.optimizer_from_config({"name": "nope", "schedule": {"type": "constant", "lr": 0.1}})


# -- every argument has an effect; bad values are refused -------------------------------
EFFECTS = [
    ("sgd", {"lr": 0.1}, {"lr": 0.2}),
    ("momentum", {"lr": 0.1}, {"lr": 0.2}),
    ("momentum", {"momentum": 0.9}, {"momentum": 0.5}),
    ("nesterov", {"lr": 0.1}, {"lr": 0.2}),
    ("nesterov", {"momentum": 0.9}, {"momentum": 0.5}),
    ("adagrad", {"lr": 0.1}, {"lr": 0.2}),
    ("adagrad", {"eps": 1e-8}, {"eps": 1e-2}),
    ("rmsprop", {"lr": 0.1}, {"lr": 0.2}),
    ("rmsprop", {"rho": 0.9}, {"rho": 0.5}),
    ("rmsprop", {"eps": 1e-8}, {"eps": 1e-2}),
    ("adam", {"lr": 0.1}, {"lr": 0.2}),
    ("adam", {"beta1": 0.9}, {"beta1": 0.5}),
    ("adam", {"beta2": 0.999}, {"beta2": 0.9}),
    ("adam", {"eps": 1e-8}, {"eps": 1e-2}),
    ("amsgrad", {"lr": 0.1}, {"lr": 0.2}),
    ("amsgrad", {"beta1": 0.9}, {"beta1": 0.5}),
    ("amsgrad", {"beta2": 0.999}, {"beta2": 0.9}),
    ("amsgrad", {"eps": 1e-8}, {"eps": 1e-2}),
]


@pytest.mark.parametrize("name,a,b", EFFECTS)
def test_every_argument_has_an_effect(name, a, b):
    base = {"lr": 0.1}
    pa = run(O.OPTIMIZERS[name](**{**base, **a}), G[:3])
    pb = run(O.OPTIMIZERS[name](**{**base, **b}), G[:3])
    assert not np.array_equal(pa, pb)
    # and the effect is the textbook one
    hp = {k: v for k, v in {**HP[name][0], **b}.items() if k != "lr"}
    lr = b.get("lr", 0.1)
    want, _ = REFS[name](P0, G[:3], lambda t: lr, **hp)
    np.testing.assert_allclose(pb, want, rtol=RTOL, atol=0)


def test_amsgrad_differs_from_adam_when_v_falls():
    kw = dict(lr=0.1, beta2=0.6)
    assert not np.array_equal(run(O.Adam(**kw), G), run(O.AMSGrad(**kw), G))


BAD = (
    [(n, "lr", v) for n in REFS for v in (0, 0.0, -0.1, float("nan"), float("inf"), True, "0.1")]
    + [(n, "momentum", v) for n in ("momentum", "nesterov")
       for v in (1, 1.0, 1.5, -0.1, float("nan"))]
    + [(n, "eps", v) for n in ("adagrad", "rmsprop", "adam", "amsgrad")
       for v in (-1e-8, -1, float("nan"), float("inf"))]
    + [("rmsprop", "rho", v) for v in (1.0, -0.1, 2)]
    + [(n, b, v) for n in ("adam", "amsgrad") for b in ("beta1", "beta2")
       for v in (1.0, 1, -0.1, 1.5, float("nan"))]
)


@pytest.mark.parametrize("name,arg,value", BAD)
def test_bad_values_raise_naming_the_value(name, arg, value):
    kw = {"lr": 0.1, arg: value}
    with pytest.raises(ValueError, match=re.escape(arg) + ".*" + re.escape(repr(value))):
        O.OPTIMIZERS[name](**kw)


@pytest.mark.parametrize("name,arg,value", [("momentum", "momentum", 0.0),
                                            ("adam", "beta1", 0.0), ("adam", "beta2", 0.0),
                                            ("adagrad", "eps", 0.0), ("rmsprop", "rho", 0.0)])
def test_edge_values_at_the_closed_end_are_accepted(name, arg, value):
    opt = O.OPTIMIZERS[name](lr=0.1, **{arg: value})
    assert getattr(opt, arg) == value
