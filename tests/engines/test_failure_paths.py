"""The failure paths the README promises, each reached for real (issue 14): a worker
that is alive but never answers, one that is slow to start or exits at start, a
replacement that never starts, and a worker that dies during an evaluation. Faults
are injected into real worker processes with DPNET_FAULTS (dpnet/workers/serve.py)."""
import os

import numpy as np
import pytest

from dpnet import Dense, Sequential
from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.engines.errors import WorkerError
from dpnet.optim.optimizers import SGD

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def model():
    return Sequential([Dense(12, 8, activation="tanh"), Dense(8, 2, activation="softmax")],
                      optimizer=SGD(lr=0.1), seed=1)


def start(eng):
    x, y = data()
    m = model()
    eng.start(m, {"train": (x, y), "val": (x[:100], y[:100])}, seed=0)
    return m


def faults(monkeypatch, spec):
    monkeypatch.setenv("DPNET_FAULTS", spec)


def test_a_worker_that_never_answers_is_replaced_then_given_up(monkeypatch):
    faults(monkeypatch, "drop=1.0")                  # alive, heartbeating, silent on work
    eng = MultiprocessEngine(workers=1, step_timeout=0.5, max_respawns=1)
    try:
        start(eng)
        with pytest.raises(WorkerError, match=r"did not answer within 0.5 s; giving up "
                                              r"after 1 respawns in a row"):
            eng.gradient(0, np.arange(32))
        assert eng.respawns == 1                     # one replacement was tried
    finally:
        eng.close()
    eng = MultiprocessEngine(workers=1, step_timeout=0.5, on_failure="abort")
    try:
        start(eng)
        with pytest.raises(WorkerError, match=r"worker 0 \(pid \d+\) did not answer within"):
            eng.gradient(0, np.arange(32))
    finally:
        eng.close()


def test_a_slow_start_and_an_exit_at_start_are_named(monkeypatch):
    faults(monkeypatch, "start_delay=10")
    eng = MultiprocessEngine(workers=2, start_timeout=1.0)
    with pytest.raises(WorkerError, match=r"workers \[0, 1\] did not start within 1 s"):
        start(eng)
    faults(monkeypatch, "start_exit=7")
    eng = MultiprocessEngine(workers=2)
    with pytest.raises(WorkerError, match=r"failed to start: exited with code 7"):
        start(eng)


def test_a_replacement_that_never_starts_ends_the_run(monkeypatch, tmp_path):
    flag = tmp_path / "slow"
    faults(monkeypatch, f"start_delay=30,when={flag}")
    eng = MultiprocessEngine(workers=2, start_timeout=1.0)
    try:
        start(eng)                                   # no flag yet: both start
        eng.gradient(0, np.arange(32))
        flag.touch()                                 # from now on a start hangs
        os.kill(eng.group.pid(1), 9)
        with pytest.raises(WorkerError, match=r"replacement worker 1 did not start within "
                                              r"1 s"):
            eng.gradient(1, np.arange(32, 64))
    finally:
        eng.close()


def test_a_worker_that_dies_during_an_evaluation_is_replaced_and_changes_nothing(
        monkeypatch, tmp_path):
    ref_eng = MultiprocessEngine(workers=2)
    try:
        start(ref_eng)
        ref_eng.gradient(0, np.arange(64))
        want = ref_eng.evaluate("val")
    finally:
        ref_eng.close()
    flag = tmp_path / "die"
    faults(monkeypatch, f"die_on=eval,when={flag},consume=1")
    eng = MultiprocessEngine(workers=2)
    try:
        start(eng)
        eng.gradient(0, np.arange(64))
        flag.touch()                                 # the first worker to evaluate dies
        got = eng.evaluate("val")
        assert eng.respawns == 1 and not flag.exists()
    finally:
        eng.close()
    assert got == want                               # the same shards, re-run: exactly
