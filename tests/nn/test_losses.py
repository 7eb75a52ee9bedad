import numpy as np
import pytest

from dpnet.nn.activations import get_activation
from dpnet.nn.losses import LOSSES, get_loss
from conftest import numeric_grad, rel_error


def _targets(name, rng, B, K):
    if name in ("binary_crossentropy", "bce"):
        return (rng.random((B, K)) > 0.5).astype(np.float64)
    return rng.integers(0, K, size=B)


@pytest.mark.parametrize("name", ["mse", "binary_crossentropy", "categorical_crossentropy"])
def test_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(0)
    B, K = 5, 4
    z = rng.normal(0, 3, size=(B, K))
    y = _targets(name, rng, B, K)
    loss = get_loss(name)
    value, grad = loss.value_and_grad(z.copy(), y)
    num = numeric_grad(lambda: loss.value(z.copy(), y), z)
    assert rel_error(grad, num) < 1e-6
    assert value == pytest.approx(loss.value(z.copy(), y))


def test_one_hot_and_integer_labels_agree():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 3))
    y = rng.integers(0, 3, size=6)
    onehot = np.eye(3)[y]
    loss = get_loss("categorical_crossentropy")
    v1, g1 = loss.value_and_grad(z.copy(), y)
    v2, g2 = loss.value_and_grad(z.copy(), onehot)
    assert v1 == pytest.approx(v2)
    assert np.allclose(g1, g2)


def test_values_match_the_textbook_formulas():
    z = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]])
    y = np.array([1, 2])
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    cce = -np.log(p[[0, 1], y]).mean()
    assert get_loss("cce").value(z.copy(), y) == pytest.approx(cce)
    t = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    s = 1 / (1 + np.exp(-z))
    bce = -(t * np.log(s) + (1 - t) * np.log(1 - s)).mean()
    assert get_loss("bce").value(z.copy(), t) == pytest.approx(bce)
    assert get_loss("mse").value(z.copy(), t) == pytest.approx(((z - t) ** 2).mean())


@pytest.mark.parametrize("name", ["binary_crossentropy", "categorical_crossentropy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_give_finite_loss_and_gradient(name, dtype):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5e3]], dtype=dtype)
    y = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]) if name.startswith("binary") \
        else np.array([1, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grad = get_loss(name).value_and_grad(z.copy(), y)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert value > 1e3                     # confidently wrong is very costly, not inf/NaN
    assert grad.dtype == dtype


def test_mse_through_saturated_sigmoid_is_finite():
    act = get_activation("sigmoid")
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        a = act.forward(np.array([[1e4, -1e4]], dtype=np.float32))
        v, g = get_loss("mse").value_and_grad(a, np.array([[0.0, 1.0]]))
        dz = act.backward(a, g)
    assert np.isfinite(v) and np.isfinite(dz).all()


def test_shape_mismatch_and_unknown_names():
    with pytest.raises(ValueError, match="shape"):
        get_loss("mse").value(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")
    assert "mse" in LOSSES
