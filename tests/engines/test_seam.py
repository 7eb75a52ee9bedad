"""The worker seam: what the coordinator does for every kind of worker, seen through
real CPU worker processes -- liveness without a pid (silence and heartbeats), peers
that are not workers of the run, the group interface itself."""
import os
import signal
import time

import numpy as np
import pytest

from dpnet import Dense, Sequential
from dpnet.engines import LocalEngine, WORKER_KINDS, worker_group
from dpnet.engines.coordinator import Coordinator
from dpnet.engines.cpu import CpuProcesses
from dpnet.optim.optimizers import Momentum
from dpnet.parallel import protocol as P
from dpnet.parallel.transport import new_identity, send

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_workers_left")]


class PidBlind(CpuProcesses):
    """CPU workers seen as a remote kind sees its workers: no pid, no /proc -- only
    messages and their absence."""

    def problem(self, rank, now):
        return None


def mlp(n_in=50):
    return Sequential([Dense(n_in, 16, activation="relu"), Dense(16, 4, activation="softmax")],
                      optimizer=Momentum(lr=0.05), seed=2)


def data(n=400, n_in=50):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, n_in)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)


class Suspend(Coordinator):
    def gradient(self, step, batch):
        if step == 3:
            os.kill(self.group.pid(0), signal.SIGSTOP)
        return super().gradient(step, batch)


def test_a_silent_worker_is_replaced_without_looking_at_its_pid(capfd):
    x, y = data()
    ref = mlp()
    ref.fit(x, y, epochs=1, batch_size=50, verbose=0, engine=LocalEngine())
    m = mlp()
    with Suspend(PidBlind(2), silence_timeout=1.0) as eng:
        t0 = time.monotonic()
        m.fit(x, y, epochs=1, batch_size=50, verbose=0, engine=eng)
        took = time.monotonic() - t0
        assert eng.respawns == 1
    assert "worker 0 (pid" in capfd.readouterr().err and took > 1.0
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-7)


def test_a_busy_worker_is_not_silent():
    """One step of over a second in BLAS while the coordinator tolerates 0.25 s of
    silence: the heartbeat thread keeps the worker alive."""
    n_in, n = 2048, 8192
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, n_in)).astype(np.float32)
    y = rng.integers(0, 4, n)
    m = Sequential([Dense(n_in, 2048, activation="relu"), Dense(2048, 4, activation="softmax")],
                   optimizer=Momentum(lr=0.01))
    with Coordinator(PidBlind(1), silence_timeout=0.25, on_failure="abort") as eng:
        eng.start(m, {"train": (x, y)})
        t0 = time.monotonic()
        eng.gradient(0, np.arange(n))
        took = time.monotonic() - t0
        assert eng.respawns == 0
    if took < 0.75:
        pytest.skip(f"the step took {took:.2f} s: too fast here to tell heartbeats from replies")


def steps(eng, m, x, y, n_steps=8, before=None):
    eng.start(m, {"train": (x, y)})
    order = np.random.default_rng(5).permutation(len(x))
    if before is not None:
        before(eng)
    for step in range(n_steps):
        loss, n, _ = eng.gradient(step, order[step * 50:(step + 1) * 50])
        assert n == 50
        m.apply_gradients()
        eng.weights_changed(step + 1)
    return m


def test_messages_from_peers_that_are_not_workers_are_dropped():
    """A stranger on the coordinator's socket -- an unknown identity, or a rank this run
    does not have -- cannot end the run with a forged ERROR or answer for a worker."""
    import zmq
    x, y = data()
    ref = steps(LocalEngine(), mlp(), x, y)
    strangers = []

    def forge(eng):
        for ident in (b"stranger", b"w7", b"h9"):
            ctx = zmq.Context()
            d = ctx.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.IDENTITY, ident)
            d.connect(eng.group.router.endpoint)
            strangers.append((ctx, d))
            send(d, P.ERROR, {"rank": 0, "message": "boom", "traceback": "forged"})
            send(d, P.GRAD, {"step": 0, "rank": 1, "n": 50, "loss": 0.0, "correct": 0,
                             "grad_in_shm": True})

    try:
        with Coordinator(CpuProcesses(2), on_failure="abort") as eng:
            m = steps(eng, mlp(), x, y, before=forge)
            assert eng.respawns == 0
    finally:
        for ctx, d in strangers:
            d.close()
            ctx.term()
    assert np.allclose(m.params, ref.params, rtol=1e-5, atol=1e-7)


def test_identities_are_fresh_and_unguessable():
    ids = {new_identity(3) for _ in range(1000)} | {new_identity(3, heartbeat=True)}
    assert len(ids) == 1001
    w = new_identity(12)
    assert w.startswith(b"w12.") and len(w) == 4 + 16 and new_identity(0, True)[:3] == b"h0."


def test_kinds_are_registered_in_one_place():
    assert WORKER_KINDS["cpu"].endswith(":CpuProcesses")
    g = worker_group("cpu", 3, blas_threads=2)
    assert isinstance(g, CpuProcesses) and g.size == 3 and g.blas_threads == 2
    assert g.local and g.weights_in_shm and g.grads_in_shm
    with pytest.raises(ValueError, match="unknown kind of worker 'tpu'"):
        worker_group("tpu", 1)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        CpuProcesses(0)


def test_the_coordinator_checks_its_timeouts():
    with pytest.raises(ValueError, match="silence_timeout must be a positive number"):
        Coordinator(CpuProcesses(1), silence_timeout=0)
    with pytest.raises(ValueError, match="on_failure must be 'respawn' or 'abort'"):
        Coordinator(CpuProcesses(1), on_failure="ignore")


def test_close_stops_the_workers_by_message():
    """STOP reaches every worker (addressed by its own identity) and each exits 0 --
    not killed after the 2 s grace (that would be -9). How fast: bench_failures.py."""
    x, y = data()
    eng = Coordinator(CpuProcesses(2))
    eng.start(mlp(), {"train": (x, y)})
    eng.gradient(0, np.arange(50))
    popens = [c.popen for c in eng.group.children.values()]
    eng.close()
    assert [p.returncode for p in popens] == [0, 0]
