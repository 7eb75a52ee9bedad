"""Mini-batch CG and L-BFGS-B (issue 13, the 002 blog's way): scipy on one minibatch at
a time, K iterations each -- in the library and through runDnn.py --mb-maxiter."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dpnet
from dpnet import Dense, Sequential
from dpnet.engines import LocalEngine
from dpnet.storage.checkpoint import read_checkpoint
from dpnet.training import minimize, minimize_minibatches
from dpnet.training.fullbatch import STOPPED
from conftest import ROOT, interrupt_when

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
    run = minimize_minibatches(m, x, y, method=method, batch_size=100, mb_maxiter=4,
                               epochs=3, callback=lambda e, mt: seen.append((e, mt)) and False)
    evals = run.evals
    assert [e for e, _ in seen] == [1, 2, 3] and run.step == 18 and not run.interrupted
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


class CtrlC(LocalEngine):
    """The in-process engine, sending this process a real SIGINT (as Ctrl-C in a
    terminal) when asked for its ``at``-th gradient -- in the middle of scipy's work."""

    def __init__(self, at):
        super().__init__()
        self.at, self.calls = at, 0

    def gradient(self, step, batch):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().gradient(step, batch)


def test_ctrl_c_stops_after_the_minibatch_and_a_resume_is_the_uninterrupted_run():
    a, x, y = problem()
    whole = minimize_minibatches(a, x, y, batch_size=100, mb_maxiter=3, epochs=2)
    assert whole.step == 12 and not whole.interrupted
    b, _, _ = problem()
    epochs = []
    cut = minimize_minibatches(b, x, y, batch_size=100, mb_maxiter=3, epochs=2,
                               engine=CtrlC(at=20), callback=lambda e, mt: epochs.append(e),
                               on_interrupt="return")
    # stopped after the minibatch that the signal came in, inside the first epoch
    assert cut.interrupted and cut.evals >= 20 and 0 < cut.step < 6 and epochs == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored
    rest = minimize_minibatches(b, x, y, batch_size=100, mb_maxiter=3, epochs=2,
                                initial_step=cut.step, callback=lambda e, mt: epochs.append(e))
    assert rest.step == 12 and not rest.interrupted and epochs == [1, 2]
    assert np.array_equal(b.params, a.params)
    assert whole.samples == cut.samples + rest.samples == 2 * 600
    # 600 in batches of 250: 250, 250, 100; from step 2 (the short one) to the end
    c, _, _ = problem()
    tail = minimize_minibatches(c, x, y, batch_size=250, mb_maxiter=1, epochs=2,
                                initial_step=2)
    assert (tail.step, tail.samples) == (6, 100 + 600)
    with pytest.raises(ValueError, match="initial_step must be"):
        minimize_minibatches(c, x, y, initial_step=-1)


@pytest.mark.parametrize("method", ["L-BFGS-B", "CG"])
def test_ctrl_c_stops_a_full_batch_run_after_the_iteration(method):
    m, x, y = problem()
    seen = []
    engine = CtrlC(at=8)              # (the callback never asks to stop)
    res = minimize(m, x, y, method=method, maxiter=50, engine=engine,
                   callback=lambda it, mt: seen.append(mt["loss"]), on_interrupt="return")
    assert (res.status, res.message) == (STOPPED, "stopped by SIGINT")
    # every gradient evaluated is counted, the half line search after the signal too
    assert res.nit == len(seen) and res.nfev == engine.calls >= 8
    assert 0 < len(seen) < 8 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the model holds the last whole iterate: the one the last callback measured
    assert m.evaluate(x, y)["loss"] == pytest.approx(seen[-1], rel=1e-12)
    # by default the signal goes on, carrying the result
    m, x, y = problem()
    with pytest.raises(KeyboardInterrupt) as e:
        minimize(m, x, y, method=method, maxiter=50, engine=CtrlC(at=8))
    assert e.value.result.status == STOPPED and e.value.result.nfev >= 8
    with pytest.raises(KeyboardInterrupt) as e:
        minimize_minibatches(m, x, y, batch_size=100, mb_maxiter=3, epochs=2,
                             engine=CtrlC(at=5))
    assert e.value.result.interrupted


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
    # the one mode's checkpoint given to the other: the flag that differs, named
    debug = [sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"), "--limit-train",
             "3000", "--validation", "500", "--hidden", "32", "--optimizer", "lbfgs",
             "--quiet"]
    full = tmp_path / "full.npz"
    r = subprocess.run(debug + ["--epochs", "4", "--load", str(part)], capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "on minibatches of 500: give --mb-maxiter K " \
        "--batch-size 500 to go on" in r.stderr, r.stderr
    # (a checkpoint of 0 iterations, written by the end of the run, records full batch
    # steps as every iteration's does: it goes on)
    assert subprocess.run(debug + ["--epochs", "0", "--save", str(full)], timeout=60,
                          cwd=ROOT, capture_output=True).returncode == 0
    r = subprocess.run(debug + ["--epochs", "2", "--load", str(full), "--save", str(full)],
                       timeout=60, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = cli("--epochs", "3", "--load", full)
    assert r.returncode == 2 and "full batch: drop --mb-maxiter to go on" in r.stderr, \
        r.stderr
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"),
                        "--mb-maxiter", "3", "--limit-train", "100", "--epochs", "1"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--mb-maxiter is for --optimizer lbfgs or cg, not adam" \
        in r.stderr


def ctrl_c_after_first(line_start, *args):
    """Run the CLI and press Ctrl-C once the first progress line starting with
    ``line_start`` is out; returns (exit code, all its stdout, stderr)."""
    return interrupt_when([sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"),
                           "--limit-train", "3000", "--validation", "500", "--hidden", "32",
                           *map(str, args)], lambda line: line.startswith(line_start),
                          cwd=ROOT, timeout=110)


def test_through_the_cli_ctrl_c_on_minibatches_saves_the_minibatch_and_resumes(tmp_path):
    cut, whole = tmp_path / "cut.npz", tmp_path / "whole.npz"
    # 30 minibatches an epoch, each with real work: a stop lands inside an epoch far
    # more often than in the epoch's end (its metrics and checkpoint)
    run = [sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"), "--limit-train", "3000",
           "--validation", "100", "--hidden", "256", "--optimizer", "cg", "--mb-maxiter",
           "3", "--batch-size", "100"]
    epoch_line = re.compile(r"^epoch\s+1/60 .* ([\d.]+)s$")

    def half_an_epoch_after_the_first(line):
        m = epoch_line.match(line.strip())
        if m:
            time.sleep(float(m.group(1)) / 2)
        return m is not None
    for _ in range(5):                    # a stop exactly on a boundary: try again
        code, out, err = interrupt_when(run + ["--epochs", "60", "--save", str(cut)],
                                        half_an_epoch_after_the_first, cwd=ROOT,
                                        timeout=110)
        assert code == 130, err
        step = int(re.search(r"stopped by SIGINT after minibatch (\d+)", out).group(1))
        if step % 30:
            break
    assert step % 30, "five stops in a row landed on an epoch boundary"
    assert "test accuracy" in out and f"saved the last weights (step {step})" in err
    assert read_checkpoint(cut)[1]["training"]["step"] == step
    # go on to the end of the next epoch, as one run does
    epochs = str(step // 30 + 1)
    r = subprocess.run(run + ["--epochs", epochs, "--load", str(cut), "--save", str(cut),
                              "--quiet"], capture_output=True, text=True, cwd=ROOT,
                       timeout=110)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(run + ["--epochs", epochs, "--save", str(whole), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=110)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(dpnet.load(whole).params, dpnet.load(cut).params)


def test_through_the_cli_ctrl_c_in_a_full_batch_run_reports_and_saves(tmp_path):
    cut = tmp_path / "cut.npz"
    summary = tmp_path / "run.json"
    code, out, err = ctrl_c_after_first("iter", "--optimizer", "lbfgs", "--epochs", "500",
                                        "--save", cut, "--json", summary)
    assert code == 130, err
    it = int(re.search(r"stopped by SIGINT after iteration (\d+)", out).group(1))
    assert "test accuracy" in out and f"saved the last weights (step {it})" in err
    assert len(re.findall(r"^iter ", out, re.M)) == it
    assert read_checkpoint(cut)[1]["training"]["step"] == it
    # samples/s counts every full-batch gradient evaluated (scipy's first one, before
    # iteration 1, too), not the iterations
    s = json.loads(summary.read_text())
    evals = s["samples_per_second"] * s["train_seconds"] / 3000
    assert evals == pytest.approx(round(evals), abs=1e-6) and round(evals) > it
