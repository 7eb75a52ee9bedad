"""Mini-batch CG and L-BFGS-B (issue 13, the 002 blog's way): scipy on one minibatch at
a time, K iterations each -- in the library and through runDnn.py --mb-maxiter."""
import subprocess
import sys

import numpy as np
import pytest

import dpnet
from dpnet import Dense, Sequential
from dpnet.training import minimize_minibatches
from conftest import ROOT

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("nothing_left")]


def problem(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 8))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(np.int64)
    m = Sequential([Dense(8, 16, activation="tanh"), Dense(16, 2, activation="softmax")],
                   dtype=np.float64, seed=seed)
    return m, x, y


@pytest.mark.parametrize("method", ["L-BFGS-B", "CG"])
def test_each_batch_gets_k_iterations_and_the_loss_falls(method):
    m, x, y = problem()
    before = m.evaluate(x, y)["loss"]
    seen = []
    evals = minimize_minibatches(m, x, y, method=method, batch_size=100, mb_maxiter=4,
                                 epochs=3, callback=lambda e, mt: seen.append((e, mt)) and False)
    assert [e for e, _ in seen] == [1, 2, 3]
    # 6 batches x 3 epochs, each at least one evaluation and a few per iteration
    assert 18 <= evals <= 18 * 4 * 6
    # each batch gets K = 4 iterations (scipy may stop one short on a batch it solved)
    for _, mt in seen:
        assert 0.8 * 6 * 4 <= mt["iterations"] <= 6 * 4, mt
    losses = [mt["loss"] for _, mt in seen]
    assert losses[-1] < losses[0] < before
    assert seen[-1][1]["loss"] == pytest.approx(m.evaluate(x, y)["loss"], rel=1e-9)


def test_more_iterations_per_batch_go_further_and_workers_agree():
    results = {}
    for k in (1, 5):
        m, x, y = problem()
        minimize_minibatches(m, x, y, batch_size=200, mb_maxiter=k, epochs=2)
        results[k] = m.evaluate(x, y)["loss"]
    assert results[5] < results[1]
    a, x, y = problem()
    b, _, _ = problem()
    minimize_minibatches(a, x, y, batch_size=200, mb_maxiter=2, epochs=1)
    minimize_minibatches(b, x, y, batch_size=200, mb_maxiter=2, epochs=1, workers=2)
    np.testing.assert_allclose(b.params, a.params, rtol=1e-6, atol=1e-9)


def cli(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"),
                           "--limit-train", "3000", "--validation", "500", "--hidden", "32",
                           "--optimizer", "lbfgs", "--mb-maxiter", "3", "--batch-size", "500",
                           "--quiet", *map(str, args)], capture_output=True, text=True,
                          timeout=110, cwd=ROOT)


def test_through_the_cli_a_resumed_run_is_the_uninterrupted_one(tmp_path):
    whole, part = tmp_path / "w.npz", tmp_path / "p.npz"
    r = cli("--epochs", "3", "--save", whole)
    assert r.returncode == 0, r.stderr
    assert "optimizer: lbfgs on minibatches, 3 iterations each, batch size 500" in r.stdout
    assert cli("--epochs", "2", "--save", part).returncode == 0
    r = cli("--epochs", "3", "--load", part, "--save", part)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(dpnet.load(whole).params, dpnet.load(part).params)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"),
                        "--mb-maxiter", "3", "--limit-train", "100", "--epochs", "1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--mb-maxiter is for --optimizer lbfgs or cg, not adam" \
        in r.stderr
