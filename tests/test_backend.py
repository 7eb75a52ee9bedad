"""The array backend and the stand-in device: CuPy's host/device rules, kept strictly,
so that the GPU path's transfer bugs fail on machines without a GPU."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dpnet import backend, strictdevice as sd
from conftest import ROOT


@pytest.fixture(scope="module")
def xp():
    os.environ["DPNET_DEVICE"] = "standin"
    try:
        yield backend.device_xp()
    finally:
        os.environ.pop("DPNET_DEVICE", None)


def test_device_arrays_never_become_host_arrays_by_themselves(xp):
    d = xp.asarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    for pull in (np.asarray, np.array, np.tanh, lambda a: np.add(a, 1),
                 lambda a: np.concatenate([a, a])):
        with pytest.raises(TypeError):
            pull(d)
    host = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError):
        host[...] = d
    assert np.array_equal(d.get(), np.arange(6).reshape(2, 3))
    assert np.array_equal(backend.to_numpy(d), d.get())
    assert float(d.sum()) == 15.0 and int(d[1, 2]) == 5 and bool(d.max() > 4)


def test_host_arrays_never_enter_device_arithmetic(xp):
    d = xp.ones((2, 3), dtype=np.float32)
    host = np.ones((2, 3), np.float32)
    for mix in (lambda: d + host, lambda: host + d, lambda: host * d, lambda: d @ host.T,
                lambda: xp.matmul(d, host.T), lambda: xp.multiply(d, host, out=d),
                lambda: d.__setitem__(Ellipsis, host), lambda: d[np.array([0, 1])],
                lambda: xp.zeros_like(host), lambda: xp.add.at(d, np.array([0]), 1)):
        with pytest.raises(TypeError):
            mix()
    # scalars mix freely, and asarray is the explicit way up
    e = d * 2.0 + np.float32(1)
    e += xp.asarray(host)
    assert np.array_equal(e.get(), np.full((2, 3), 4.0))


def test_reductions_stay_on_the_device(xp):
    d = xp.asarray(np.array([[1.0, 5.0], [3.0, 2.0]]))
    for r in (d.sum(), d.max(), xp.count_nonzero(d > 2), d.argmax(axis=1), d @ d[0]):
        assert isinstance(r, sd.ndarray)
    out = xp.empty(2, dtype=d.dtype)
    assert d.sum(axis=0, out=out) is out and np.array_equal(out.get(), [4.0, 7.0])
    assert xp.matmul(d, d, out=xp.empty((2, 2))).get().tolist() == [[16, 15], [9, 19]]


def test_views_write_through(xp):
    d = xp.zeros((3, 4), dtype=np.float32)
    v = d[:, 1:3]
    v += 1
    d.T[0] = 7
    assert d.get().tolist() == [[7, 1, 1, 0], [7, 1, 1, 0], [7, 1, 1, 0]]


def test_a_formula_that_pulls_data_to_the_host_fails_on_the_stand_in(xp):
    """What the stand-in is for: the same formula, written the wrong way, must fail."""
    def leaky_softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))      # np., not xp.
        return e / e.sum(axis=1, keepdims=True)

    def softmax(z):
        e = backend.xp_of(z).exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    z = np.random.default_rng(0).normal(size=(4, 3))
    assert np.allclose(leaky_softmax(z), softmax(z))       # identical on the host
    with pytest.raises(TypeError):
        leaky_softmax(xp.asarray(z))
    assert np.allclose(softmax(xp.asarray(z)).get(), softmax(z))


def test_xp_of_knows_each_array_module(xp):
    assert backend.xp_of(np.zeros(2)) is np
    assert backend.xp_of(np.zeros(2), xp.zeros(2)) is xp
    assert backend.elementwise_kernel(xp, "k", "T x", "T y", "y = x;") is None


def run_py(code, **env):
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DPNET_DEVICE")}
    e.update(env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=e,
                          capture_output=True, text=True, timeout=120)


def test_importing_dpnet_does_not_import_cupy():
    """The coordinator never loads CUDA: only a GPU worker's device_xp imports cupy."""
    r = run_py("import sys, dpnet, dpnet.engines.coordinator, dpnet.cli.mnist, dpnet.cli.lstm;"
               "print('cupy' in sys.modules)")
    assert r.stdout.strip() == "False", r.stderr


def test_missing_cupy_is_named_with_the_install_command(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['cupy'] = None\n")
    r = run_py("from dpnet.backend import device_xp\ndevice_xp()", PYTHONPATH=str(tmp_path))
    assert "DeviceError: cupy is not installed" in r.stderr
    assert 'pip install -e ".[gpu]"' in r.stderr


def test_cupy_without_a_usable_device_is_named():
    """For real where cupy is installed but no GPU or driver is (this project's CI)."""
    pytest.importorskip("cupy")
    if backend.gpu_available():
        pytest.skip("a CUDA device is usable here")
    r = run_py("from dpnet.backend import device_xp\ndevice_xp()")
    assert "DeviceError: cupy is installed but no CUDA device is usable" in r.stderr, r.stderr
