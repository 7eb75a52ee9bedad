"""Every initializer draws from the distribution its paper gives (issue 14): for a
400 x 600 matrix (240,000 draws), the mean is within 4 standard errors of 0, the
standard deviation within 1% of the formula's, and a uniform's draws fill (-a, a)
without leaving it; a normal is not a uniform (its kurtosis is 3, a uniform's 1.8)."""
import numpy as np
import pytest
from scipy import stats

from dpnet.nn.initializers import INITIALIZERS, get_initializer

FAN_IN, FAN_OUT = 400, 600
# name -> (kind, the standard deviation the paper gives)
EXPECTED = {
    "xavier_uniform": ("uniform", np.sqrt(6 / (FAN_IN + FAN_OUT)) / np.sqrt(3)),
    "xavier_normal": ("normal", np.sqrt(2 / (FAN_IN + FAN_OUT))),
    "he_normal": ("normal", np.sqrt(2 / FAN_IN)),
    "he_uniform": ("uniform", np.sqrt(6 / FAN_IN) / np.sqrt(3)),
    "lecun_normal": ("normal", np.sqrt(1 / FAN_IN)),
    "lecun_uniform": ("uniform", np.sqrt(3 / FAN_IN) / np.sqrt(3)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_distribution_is_the_papers(name):
    kind, std = EXPECTED[name]
    w = np.empty((FAN_IN, FAN_OUT))
    get_initializer(name)(np.random.default_rng(0), w)
    n = w.size
    assert abs(w.mean()) < 4 * std / np.sqrt(n)
    assert w.std() == pytest.approx(std, rel=0.01)
    k = stats.kurtosis(w.ravel(), fisher=False)
    if kind == "uniform":
        a = std * np.sqrt(3)
        assert np.abs(w).max() <= a and np.abs(w).max() > 0.999 * a
        assert k == pytest.approx(1.8, abs=0.02)
    else:
        assert k == pytest.approx(3.0, abs=0.05)
        assert np.abs(w).max() > 4 * std          # tails a uniform would not have


def test_aliases_and_zeros_and_a_wrong_name():
    assert INITIALIZERS["glorot_uniform"] is INITIALIZERS["xavier_uniform"]
    assert INITIALIZERS["he"] is INITIALIZERS["he_normal"]
    w = np.ones((3, 4))
    get_initializer("zeros")(np.random.default_rng(0), w)
    assert not w.any()
    with pytest.raises(ValueError, match="unknown initializer 'xavier2'; choose one of"):
        get_initializer("xavier2")


def test_the_draws_depend_on_the_generator_only():
    a, b, c = (np.empty((50, 30), np.float32) for _ in range(3))
    get_initializer("he_normal")(np.random.default_rng(5), a)
    get_initializer("he_normal")(np.random.default_rng(5), b)
    get_initializer("he_normal")(np.random.default_rng(6), c)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
