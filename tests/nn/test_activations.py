import numpy as np
import pytest

from dpnet.nn.activations import ACTIVATIONS, LECUN_A, get_activation
from conftest import numeric_grad, rel_error

NAMES = sorted(set(ACTIVATIONS) - {"identity"})


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(4, 5))
    z[z == 0] = 0.1                      # relu's kink: keep away from it
    z[np.abs(z) < 1e-3] = 0.3
    w = rng.normal(size=(4, 5))          # a random linear read-out makes a scalar

    def f():
        return float((get_activation(name).forward(z.copy()) * w).sum())

    act = get_activation(name)
    a = act.forward(z.copy())
    dz = act.backward(a, w.copy())
    num = numeric_grad(f, z)
    assert rel_error(dz, num) < 1e-6, name


def test_reference_values():
    z = np.array([[-2.0, 0.0, 3.0]])
    assert np.allclose(get_activation("sigmoid").forward(z.copy()), 1 / (1 + np.exp(-z)))
    assert np.allclose(get_activation("tanh").forward(z.copy()), np.tanh(z))
    assert np.allclose(get_activation("lecun_tanh").forward(z.copy()),
                       1.7159 * np.tanh(2 * z / 3))
    assert LECUN_A * np.tanh(2 / 3) == pytest.approx(1.0, abs=1e-4)   # f(1) ≈ 1
    assert np.allclose(get_activation("relu").forward(z.copy()), [[0, 0, 3]])
    assert np.allclose(get_activation("leaky_relu").forward(z.copy()), [[-0.02, 0, 3]])
    s = get_activation("softmax").forward(z.copy())
    assert np.allclose(s, np.exp(z) / np.exp(z).sum())


@pytest.mark.parametrize("name", NAMES)
def test_extreme_inputs_stay_finite_without_warnings(name):
    z = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=np.float32)
    act = get_activation(name)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        a = act.forward(z.copy())
        dz = act.backward(a, np.ones_like(a))
    assert np.isfinite(a).all() and np.isfinite(dz).all()
    assert a.dtype == np.float32 and dz.dtype == np.float32


def test_unknown_activation_names_choices():
    with pytest.raises(ValueError, match="unknown activation 'swishy'.*relu"):
        get_activation("swishy")


def test_leaky_relu_alpha_is_used_and_checked():
    z = np.array([[-1.0]])
    assert get_activation("leaky_relu").forward(z.copy())[0, 0] == -0.01
    from dpnet.nn.activations import LeakyReLU
    assert LeakyReLU(0.2).forward(z.copy())[0, 0] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="alpha"):
        LeakyReLU(1.5)
