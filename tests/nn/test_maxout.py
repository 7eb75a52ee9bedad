"""Maxout units and the max-norm constraint: gradients by finite differences in
float64 (ties included), the constraint after every update whichever engine computed
the gradient, configs and checkpoints."""
import numpy as np
import pytest

import dpnet
from dpnet import Dense, Dropout, Maxout, Sequential
from dpnet.optim.optimizers import SGD
from conftest import numeric_grad, rel_error


def net(pieces=3, max_norm=None, dtype=np.float64, seed=2, **kw):
    return Sequential([Dropout(0.2), Maxout(6, 5, pieces=pieces, max_norm=max_norm),
                       Dropout(0.3), Maxout(5, 4, pieces=2, max_norm=max_norm),
                       Dense(4, 3, activation="softmax", max_norm=max_norm)],
                      dtype=dtype, seed=seed, **kw)


def data(b=9, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, 6)), rng.integers(0, 3, size=b)


def test_forward_is_the_max_over_each_units_pieces():
    m = net()
    x, _ = data()
    layer = m.layers[1]
    z = x @ layer.W + layer.b                                   # (B, 5 * 3)
    want = z.reshape(len(x), 5, 3).max(axis=2)
    assert np.array_equal(layer.forward(x), want)


def test_gradient_matches_finite_differences_with_dropout():
    m = net()
    x, y = data()

    def f():
        m.seed_step(4, 2)                          # the same dropout masks every time
        return m.loss_and_grad(x, y)[0]

    f()
    analytic = m.grads.copy()
    assert rel_error(analytic, numeric_grad(f, m.params)) < 1e-6


def test_on_a_tie_the_gradient_is_a_subgradient():
    """Two pieces of every unit made identical: the loss is not differentiable in
    either alone, but moving both together is smooth and its derivative is the sum of
    their gradients; the input gradient is well defined and matches; the winner is the
    first of the tied pieces and the other gets nothing."""
    m = Sequential([Maxout(6, 5, pieces=2), Dense(5, 3, activation="softmax")],
                   dtype=np.float64, seed=7)
    first = m.layers[0]
    first.W[:, 1::2] = first.W[:, 0::2]            # piece 1 := piece 0, for every unit
    first.b[1::2] = first.b[0::2]
    x, y = data()
    m.loss_and_grad(x, y)
    g = m.grads.copy()
    assert (first.winner == 0).all()
    sl = m.layout.slice_of("0.W")
    gw = g[sl].reshape(6, 10)
    assert np.all(gw[:, 1::2] == 0) and np.any(gw[:, 0::2] != 0)
    # the smooth direction: both pieces of unit 2's weight from input 3 together
    eps = 1e-6
    i0, i1 = 3 * 10 + 2 * 2, 3 * 10 + 2 * 2 + 1
    w = m.params[sl]
    w[i0] += eps
    w[i1] += eps
    up = m.loss_and_correct(x, y)[0]
    w[i0] -= 2 * eps
    w[i1] -= 2 * eps
    down = m.loss_and_correct(x, y)[0]
    w[i0] += eps
    w[i1] += eps
    assert (up - down) / (2 * eps) == pytest.approx(gw.ravel()[i0] + gw.ravel()[i1], rel=1e-6)
    # the input gradient: d loss / d x by finite differences
    dx = first.backward(m.layers[1].backward(_dout(m, x, y), activate=False))
    num = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + eps
        a = m.loss_and_correct(x, y)[0]
        x[idx] = old - eps
        b = m.loss_and_correct(x, y)[0]
        x[idx] = old
        num[idx] = (a - b) / (2 * eps)
    assert rel_error(dx, num) < 1e-6


def _dout(m, x, y):
    """d (mean loss) / d (pre-softmax output) after a forward pass at training time."""
    m.loss_and_grad(x, y)
    p = m.predict_proba(x)
    m._forward(x, training=True)                     # the layers hold this batch again
    d = p.copy()
    d[np.arange(len(y)), y] -= 1
    return d / len(y)


def test_max_norm_holds_after_every_update():
    m = net(max_norm=0.5, optimizer=SGD(lr=5.0))       # steps big enough to break it
    x, y = data(b=64)
    constrained = [l for l in m.layers if isinstance(l, Dense)]
    for step in range(20):
        m.seed_step(0, step)
        m.loss_and_grad(x, y)
        m.apply_gradients()
        for l in constrained:
            norms = np.linalg.norm(l.W, axis=0)
            assert norms.max() <= 0.5 * (1 + 1e-12), (step, l)
    assert any(np.isclose(np.linalg.norm(l.W, axis=0), 0.5).any() for l in constrained)


def test_max_norm_leaves_short_columns_alone():
    layer = Dense(4, 3, max_norm=10.0)
    m = Sequential([layer], loss="mse", dtype=np.float64)
    before = layer.W.copy()
    layer.constrain()
    assert np.array_equal(layer.W, before)
    with pytest.raises(ValueError, match="max_norm must be a positive number or None, got 0"):
        Dense(4, 3, max_norm=0)
    with pytest.raises(ValueError, match="Maxout pieces must be a positive integer, got 0"):
        Maxout(4, 3, pieces=0)
    assert m.n_params == 15


def test_config_and_checkpoint_round_trip(tmp_path):
    m = net(max_norm=2.0, dtype=np.float32)
    path = tmp_path / "m.npz"
    m.save(path)
    back = dpnet.load(path)
    assert [l.config() for l in back.layers] == [l.config() for l in m.layers]
    assert repr(back.layers[1]) == "Maxout(6, 5, pieces=3, max_norm=2)"
    x, _ = data()
    np.testing.assert_array_equal(back.predict_proba(x.astype(np.float32)),
                                  m.predict_proba(x.astype(np.float32)))


def test_engines_agree_with_maxout_and_max_norm():
    """Two worker processes against the in-process engine, over a few epochs: the
    same weights to float32 rounding, the constraint applied once per update by the
    coordinator."""
    from dpnet.engines.coordinator import MultiprocessEngine
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = rng.integers(0, 3, 600)
    ref, par = net(max_norm=1.0, dtype=np.float32), net(max_norm=1.0, dtype=np.float32)
    ref.fit(x, y, epochs=3, batch_size=50, verbose=0)
    with MultiprocessEngine(workers=2) as eng:
        par.fit(x, y, epochs=3, batch_size=50, verbose=0, engine=eng)
    np.testing.assert_allclose(par.params, ref.params, rtol=1e-4, atol=1e-6)
    for l in par.layers:
        if isinstance(l, Dense):
            assert np.linalg.norm(l.W, axis=0).max() <= 1.0 + 1e-6


def test_on_the_stand_in_device_the_maths_is_the_hosts(monkeypatch):
    """Forward, the winners' scatter, backward and the constraint on device arrays:
    the stand-in raises on any silent trip between host and device."""
    from dpnet import backend
    monkeypatch.setenv("DPNET_DEVICE", "standin")
    xp = backend.device_xp()
    host = net(max_norm=0.3, dtype=np.float32, optimizer=SGD(lr=1.0))
    dev = net(max_norm=0.3, dtype=np.float32, optimizer=SGD(lr=1.0), xp=xp)
    dev.params[...] = xp.asarray(host.params)
    x, y = data(b=32)
    x = x.astype(np.float32)
    for m, xx, yy in ((host, x, y), (dev, xp.asarray(x), xp.asarray(y))):
        m.seed_step(1, 1)
        m.loss_and_grad(xx, yy)
        m.apply_gradients()
    np.testing.assert_allclose(xp.asnumpy(dev.params), host.params, rtol=1e-5, atol=1e-6)
