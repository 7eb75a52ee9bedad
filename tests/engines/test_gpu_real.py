"""On a real CUDA GPU (skipped elsewhere): the maths on CuPy against NumPy, the fused
kernels against the NumPy formulas they replace, and the GPU worker against the
in-process engine. Run with ``pytest -m gpu`` on a machine with a GPU."""
import os

import numpy as np
import pytest

from dpnet import Dense, Dropout, Sequential
from dpnet import backend
from dpnet.models.lstm import CharLSTM
from dpnet.optim.optimizers import Adam

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cp():
    return backend.device_xp(0)


@pytest.fixture
def unfused(monkeypatch):
    monkeypatch.setattr(backend, "FUSE", False)


def test_the_device_is_real(cp):
    info = backend.device_info(cp, 0)
    assert cp.__name__ == "cupy" and info["memory_total"] > 1 << 30, info


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_the_fused_adam_update_is_the_numpy_formula(cp, dtype, rtol):
    rng = np.random.default_rng(0)
    n = 300_001
    p0 = rng.normal(size=n).astype(dtype)
    host, dev = Adam(lr=3e-3), Adam(lr=3e-3)
    p, d = p0.copy(), cp.asarray(p0)
    for _ in range(20):
        g = rng.normal(size=n).astype(dtype)
        host.step(p, g)
        dev.step(d, cp.asarray(g))
    assert np.allclose(cp.asnumpy(d), p, rtol=rtol, atol=rtol * 1e-2)
    for k in ("m", "v"):
        assert np.allclose(cp.asnumpy(dev.state[k]), host.state[k], rtol=rtol, atol=1e-12)


def lstm_pair(cp, dtype, layers):
    from dpnet.models.registry import model_from_config
    host = CharLSTM(37, 48, dtype=dtype, seed=5, num_layers=layers)
    dev = model_from_config(host.config(), xp=cp)
    dev.params[...] = cp.asarray(host.params)
    return host, dev


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 2e-4), (np.float64, 1e-9)])
def test_the_fused_lstm_cell_is_the_numpy_loop(cp, dtype, rtol, layers):
    host, dev = lstm_pair(cp, dtype, layers)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 37, (16, 33))
    st = tuple(rng.normal(size=(16, 48 * layers)).astype(dtype) * 0.5 for _ in range(2))
    lh, _, sh, gh = host.loss_and_grad(ids[:, :-1], ids[:, 1:], st, return_state_grad=True)
    ld, _, sd, gd = dev.loss_and_grad(cp.asarray(ids[:, :-1]), cp.asarray(ids[:, 1:]),
                                      tuple(cp.asarray(s) for s in st),
                                      return_state_grad=True)
    assert ld == pytest.approx(lh, rel=rtol)
    assert np.allclose(cp.asnumpy(dev.grads), host.grads, rtol=rtol * 10, atol=rtol * 1e-2)
    for a, b in zip(sd + gd, sh + gh):
        assert np.allclose(cp.asnumpy(a), b, rtol=rtol * 10, atol=rtol * 1e-2)


def test_the_unfused_maths_runs_on_the_device_too(cp, unfused):
    host, dev = lstm_pair(cp, np.float64, 1)
    ids = np.random.default_rng(2).integers(0, 37, (4, 9))
    lh, _, _ = host.loss_and_grad(ids[:, :-1], ids[:, 1:])
    ld, _, _ = dev.loss_and_grad(cp.asarray(ids[:, :-1]), cp.asarray(ids[:, 1:]))
    assert ld == pytest.approx(lh, rel=1e-12)
    assert np.allclose(cp.asnumpy(dev.grads), host.grads, rtol=1e-9, atol=1e-13)


def test_an_mlp_on_the_device_matches_numpy(cp):
    from dpnet.models.registry import model_from_config
    host = Sequential([Dense(50, 40, activation="relu"), Dropout(0.3),
                       Dense(40, 5, activation="softmax")], l2=1e-3, seed=2,
                      dtype=np.float64)
    dev = model_from_config(host.config(), xp=cp)
    dev.params[...] = cp.asarray(host.params)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(64, 50)), rng.integers(0, 5, 64)
    host.seed_step(0, 7)
    dev.seed_step(0, 7)
    lh, _ = host.loss_and_grad(x, y)
    ld, _ = dev.loss_and_grad(cp.asarray(x), cp.asarray(y))
    assert ld == pytest.approx(lh, rel=1e-12)
    assert np.allclose(cp.asnumpy(dev.grads), host.grads, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("kind", ["affine", "elastic"])
def test_deformations_maxout_and_max_norm_on_the_device_match_numpy(cp, kind, mnist_small):
    """The issue-12 layers on CuPy: the same deformed images (the draws are made on the
    host and keyed alike), the same maxout winners, the same max-norm update."""
    from dpnet import Deform, Maxout
    host = Sequential([Deform((28, 28), kind=kind), Dropout(0.2),
                       Maxout(784, 24, pieces=3, max_norm=0.5), Dropout(0.5),
                       Dense(24, 10, activation="softmax", max_norm=0.5)],
                      optimizer=Adam(lr=1e-2), seed=4, dtype=np.float64)
    dev = Sequential.from_config(host.config(), optimizer=Adam(lr=1e-2), xp=cp)
    dev.params[...] = cp.asarray(host.params)
    x, y = mnist_small.x_train[:64].astype(np.float64), mnist_small.y_train[:64]
    for step in range(3):
        host.seed_step(0, step)
        dev.seed_step(0, step)
        lh, _ = host.loss_and_grad(x, y)
        ld, _ = dev.loss_and_grad(cp.asarray(x), cp.asarray(y))
        assert ld == pytest.approx(lh, rel=1e-9)
        assert np.allclose(cp.asnumpy(dev.grads), host.grads, rtol=1e-7, atol=1e-11)
        host.apply_gradients()
        dev.apply_gradients()
    assert np.allclose(cp.asnumpy(dev.params), host.params, rtol=1e-7, atol=1e-11)
    for layer in (dev.layers[2], dev.layers[4]):
        assert float(cp.sqrt((layer.W ** 2).sum(axis=0)).max()) <= 0.5 * (1 + 1e-9)


@pytest.mark.parametrize("update", ["worker", "coordinator"])
def test_the_gpu_worker_trains_as_the_in_process_engine(update, mnist_small):
    from dpnet.engines import LocalEngine, gpu_engine
    os.environ.pop("DPNET_DEVICE", None)
    d = mnist_small
    x, y, xv, yv = d.x_train[:3000], d.y_train[:3000], d.x_val[:1000], d.y_val[:1000]

    def run(engine):
        m = Sequential([Dense(784, 128, activation="relu"), Dense(128, 10,
                        activation="softmax")], optimizer=Adam(lr=1e-3), seed=1)
        h = m.fit(x, y, epochs=2, batch_size=100, validation_data=(xv, yv), engine=engine,
                  verbose=0)
        return m, h
    ref, href = run(LocalEngine())
    with gpu_engine(0, update=update) as eng:
        m, h = run(eng)
    assert np.allclose(m.params, ref.params, rtol=1e-3, atol=1e-4)
    assert h.history["val_accuracy"][-1] == pytest.approx(href.history["val_accuracy"][-1],
                                                          abs=0.01)
