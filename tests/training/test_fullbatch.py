import numpy as np
import pytest

from dpnet import Dense, Dropout, Sequential
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.training import minimize
from dpnet.training.fullbatch import STOPPED

# full-batch runs through workers under the same leak check as minibatch ones
pytestmark = pytest.mark.usefixtures("nothing_left")


def small(l2=0.0):
    return Sequential([Dense(784, 16, activation="tanh"), Dense(16, 10, activation="softmax")],
                      dtype=np.float64, l2=l2, seed=1)


@pytest.mark.parametrize("method", ["L-BFGS-B", "CG"])
def test_full_batch_minimizers_reduce_the_loss(mnist_small, method):
    x, y = mnist_small.x_train[:500], mnist_small.y_train[:500]
    m = small(l2=1e-4)
    before = m.evaluate(x, y)["loss"]
    seen = []
    res = minimize(m, x, y, method=method, maxiter=15,
                   callback=lambda it, met: seen.append(met["loss"]) and False)
    after = m.evaluate(x, y)["loss"]
    assert after < 0.5 * before and res.nit <= 15 and len(seen) == res.nit
    assert np.allclose(m.params, res.x)
    # scipy saw the objective including the L2 penalty
    assert res.fun == pytest.approx(after + m.l2_penalty(), rel=1e-6)


@pytest.mark.timeout(120)
def test_lbfgs_through_workers_matches_in_process(mnist_small):
    x, y = mnist_small.x_train[:300], mnist_small.y_train[:300]
    a, b = small(), small()
    minimize(a, x, y, maxiter=5)
    with MultiprocessEngine(workers=2) as eng:
        minimize(b, x, y, maxiter=5, engine=eng)
    assert np.allclose(a.params, b.params, rtol=1e-6, atol=1e-9)


def test_callback_stops_and_bad_arguments(mnist_small):
    x, y = mnist_small.x_train[:200], mnist_small.y_train[:200]
    calls = []
    res = minimize(small(), x, y, callback=lambda it, m: calls.append(it) or it == 2)
    assert calls == [1, 2]
    # marked as scipy marks a stop its callback asks for, counted so far
    assert (res.status, res.success, res.nit) == (STOPPED, False, 2)
    assert res.message == "stopped by the callback" and res.nfev >= 2
    with pytest.raises(ValueError, match="method must be one of"):
        minimize(small(), x, y, method="newton")
    with pytest.raises(ValueError, match="does not support dropout"):
        minimize(Sequential([Dense(784, 8), Dropout(0.5), Dense(8, 10, activation="softmax")]),
                 x, y)
