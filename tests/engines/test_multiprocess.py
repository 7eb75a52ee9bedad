"""The multiprocess engine against the in-process one, with real worker processes,
real shared memory and real ZeroMQ sockets -- and real failures."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from dpnet import Dense, Dropout, Sequential
from dpnet.optim.optimizers import Momentum
from dpnet.engines import LocalEngine
from dpnet.engines.errors import WorkerError
from dpnet.engines.coordinator import MultiprocessEngine
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def no_leftovers(nothing_left):
    """Every test here: no worker process, segment or socket left (conftest)."""


def mlp(seed=0, dropout=0.0):
    layers = [Dense(784, 32, activation="relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(32, 16, activation="tanh"), Dense(16, 10, activation="softmax")]
    # Momentum, not Adam: worker counts sum the gradient in different orders, and Adam's
    # g / sqrt(v) can turn a last-bit difference in a near-zero gradient into a whole
    # step of either sign; a rule linear in g keeps differences at rounding level.
    return Sequential(layers, seed=seed, optimizer=Momentum(lr=0.05, momentum=0.9))


@pytest.fixture(scope="module")
def data(mnist_small):
    return mnist_small.x_train[:600], mnist_small.y_train[:600], \
        mnist_small.x_val[:500], mnist_small.y_val[:500]


def train(engine, data, batch_size=64, epochs=1, dropout=0.0, n=None):
    x, y, xv, yv = data
    x, y = x[:n], y[:n]
    m = mlp(dropout=dropout)
    h = m.fit(x, y, epochs=epochs, batch_size=batch_size, validation_data=(xv, yv),
              engine=engine, verbose=0)
    return m, h


def close_to(a, b):
    return np.allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("workers,batch_size,n", [(1, 64, None), (2, 64, None), (3, 50, None),
                                                 (3, 2, 40)])
def test_same_weights_as_the_in_process_engine(data, workers, batch_size, n):
    """Includes batches not divisible by the worker count and smaller than it (few
    steps there: hundreds of 2-sample steps are chaotic enough that a ReLU flipped by a
    last-bit difference changes the path)."""
    ref, href = train(LocalEngine(), data, batch_size=batch_size, n=n)
    with MultiprocessEngine(workers=workers) as eng:
        m, h = train(eng, data, batch_size=batch_size, n=n)
    assert close_to(m.params, ref.params)
    assert h.history["val_loss"][0] == pytest.approx(href.history["val_loss"][0], rel=1e-5)
    assert h.history["val_accuracy"] == href.history["val_accuracy"]
    assert h.history["loss"][0] == pytest.approx(href.history["loss"][0], rel=1e-5)
    assert h.history["accuracy"] == href.history["accuracy"]


def test_one_engine_serves_one_fit_after_another(data):
    """fit(engine=eng) again -- a loop over settings with one engine: the earlier run is
    wound up (its weights back in its model) and the next starts afresh (it was a
    RuntimeError: "already started")."""
    ref, _ = train(LocalEngine(), data)
    with MultiprocessEngine(workers=2) as eng:
        first, _ = train(eng, data)
        eng.respawns, eng._failures_in_a_row = 3, 4   # as after "giving up after 3 ..."
        second, _ = train(eng, data)
        assert eng.respawns == 0 and eng._failures_in_a_row == 0   # this run's own counts
    assert close_to(first.params, ref.params) and close_to(second.params, ref.params)


def test_dropout_results_do_not_depend_on_the_worker_count(data):
    ref, _ = train(LocalEngine(), data, dropout=0.3)
    with MultiprocessEngine(workers=3) as eng:
        m, _ = train(eng, data, dropout=0.3)
    assert close_to(m.params, ref.params)


def test_averaging_uneven_shards_has_the_closed_form_answer():
    """Shards [0,3) [3,5) [5,7) of 7 samples: the combined gradient must be the
    n-weighted mean of the three shard means, i.e. the full-batch mean."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 784)).astype(np.float32)
    y = rng.integers(0, 10, 7)
    ref = mlp()
    ref.loss_and_grad(x, y)
    shard_means = []
    for a, b in [(0, 3), (3, 5), (5, 7)]:
        ref.loss_and_grad(x[a:b], y[a:b])
        shard_means.append((b - a, ref.grads.copy()))
    expect = sum(n * g for n, g in shard_means) / 7
    m = mlp()
    with MultiprocessEngine(workers=3) as eng:
        eng.start(m, {"train": (x, y)})
        loss, n, _ = eng.gradient(0, np.arange(7))
    assert n == 7
    assert np.allclose(m.grads, expect, rtol=1e-5, atol=1e-7)


class KillingEngine(MultiprocessEngine):
    """Fault injection: SIGKILL a worker just as step ``at`` is sent to it."""

    def __init__(self, at, rank=1, times=1, **kw):
        super().__init__(**kw)
        self.at, self.rank, self.times = at, rank, times

    def gradient(self, step, idx):
        if self.at <= step < self.at + self.times:
            os.kill(self.group.pid(self.rank), signal.SIGKILL)
        return super().gradient(step, idx)


def test_killed_worker_is_respawned_and_the_result_is_unchanged(data, capfd):
    with MultiprocessEngine(workers=2) as eng:
        clean, _ = train(eng, data, epochs=2)
    with KillingEngine(at=5, workers=2) as eng:
        m, h = train(eng, data, epochs=2)
        assert eng.respawns == 1
    assert np.array_equal(m.params, clean.params)
    assert "worker 1" in capfd.readouterr().err


def test_abort_policy_names_the_worker_and_keeps_the_weights(data):
    eng = KillingEngine(at=3, workers=2, on_failure="abort")
    m = mlp()
    x, y, _, _ = data
    with pytest.raises(WorkerError, match=r"worker 1 \(pid \d+\) killed by SIGKILL"):
        try:
            m.fit(x, y, epochs=1, batch_size=64, engine=eng, verbose=0)
        finally:
            eng.close()
    assert m.optimizer.t == 3
    ref = mlp()                                   # the same 3 steps in process
    order = np.random.default_rng([0, 0]).permutation(len(x))
    eng = LocalEngine()
    eng.start(ref, {"train": (x, y)}, seed=0)
    for step in range(3):
        eng.gradient(step, order[step * 64:(step + 1) * 64])
        ref.apply_gradients()
    assert close_to(m.params, ref.params)


class DoomedReplacements(KillingEngine):
    """Every replacement worker is killed as soon as it starts (say, an OOM at import)."""

    def start(self, model, datasets, seed=0):
        replace = self.group.replace

        def doomed(rank):
            replace(rank)
            os.kill(self.group.pid(rank), signal.SIGKILL)
        self.group.replace = doomed
        super().start(model, datasets, seed)


def test_repeated_failures_end_in_abort(data):
    eng = DoomedReplacements(at=2, workers=2, max_respawns=2)
    with pytest.raises(WorkerError, match="giving up after 2 respawns in a row"):
        try:
            train(eng, data)
        finally:
            eng.close()
    assert eng.respawns == 2


class StoppingEngine(MultiprocessEngine):
    """Fault injection: SIGSTOP worker 0 before step 3 -- alive, but not answering."""

    def gradient(self, step, idx):
        if step == 3:
            os.kill(self.group.pid(0), signal.SIGSTOP)
        return super().gradient(step, idx)


def test_a_suspended_worker_is_replaced_within_seconds(data):
    with MultiprocessEngine(workers=2) as eng:
        clean, _ = train(eng, data)
    eng = StoppingEngine(workers=2, stall_timeout=0.5)
    t0 = time.monotonic()
    with eng:
        m, _ = train(eng, data)
        assert eng.respawns == 1
    assert time.monotonic() - t0 < 10
    assert np.array_equal(m.params, clean.params)


class BadIndexEngine(MultiprocessEngine):
    """Writes an out-of-range sample index: a real exception inside worker 0."""

    def gradient(self, step, idx):
        idx = np.array(idx)
        if step == 2:
            idx[0] = 10 ** 9
        return super().gradient(step, idx)


def test_exception_in_a_worker_comes_back_with_its_traceback(data):
    eng = BadIndexEngine(workers=2)
    with pytest.raises(WorkerError, match="worker 0 raised IndexError") as e:
        try:
            train(eng, data)
        finally:
            eng.close()
    assert "Traceback" in e.value.traceback and "take" in e.value.traceback


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_workers_leave_group_signals_to_the_coordinator(data, sig):
    """Workers have a session of their own, so a terminal's signals never reach them;
    one sent to a worker by pid (SIGINT, SIGTERM) must not kill it either (the
    coordinator would take that for a crash): only the coordinator acts."""
    x, y, _, _ = data
    with MultiprocessEngine(workers=1, on_failure="abort") as eng:
        m = mlp()
        eng.start(m, {"train": (x, y)})
        eng.gradient(0, np.arange(32))
        os.kill(eng.group.pid(0), sig)
        time.sleep(0.3)
        assert eng.group.children[0].popen.poll() is None, "the worker died of the signal"
        eng.gradient(1, np.arange(32, 64))      # and still serves steps
        assert eng.respawns == 0


def test_workers_exit_when_the_coordinator_dies(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        import numpy as np
        from dpnet import Dense, Sequential
        from dpnet.engines.coordinator import MultiprocessEngine
        m = Sequential([Dense(4, 3, activation="softmax")])
        eng = MultiprocessEngine(workers=2)
        eng.start(m, {"train": (np.zeros((10, 4), np.float32), np.zeros(10, np.int64))})
        print(" ".join(str(eng.group.pid(r)) for r in range(2)), flush=True)
        time.sleep(60)
    """)
    coord = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
    pids = [int(p) for p in coord.stdout.readline().split()]
    assert len(pids) == 2
    coord.kill()
    coord.wait()
    deadline = time.monotonic() + 5
    import psutil
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.05)
    assert alive == [], "workers outlived their coordinator by more than 5 s"


def test_parameterized_activation_reaches_the_workers(data):
    from dpnet.nn.activations import LeakyReLU
    x, y, _, _ = data

    def leaky():
        return Sequential([Dense(784, 16, activation=LeakyReLU(0.3)),
                           Dense(16, 10, activation="softmax")], optimizer=Momentum(lr=0.05))

    ref, m = leaky(), leaky()
    ref.fit(x, y, epochs=1, batch_size=100, verbose=0)
    with MultiprocessEngine(workers=2) as eng:
        m.fit(x, y, epochs=1, batch_size=100, verbose=0, engine=eng)
    assert close_to(m.params, ref.params)


def test_engine_validates_its_arguments():
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        MultiprocessEngine(workers=0)
    with pytest.raises(ValueError, match="on_failure must be 'respawn' or 'abort'"):
        MultiprocessEngine(workers=1, on_failure="retry")


def test_stats_report_worker_memory_and_cpu(data):
    with MultiprocessEngine(workers=2) as eng:
        train(eng, data)
        s = eng.stats()
    assert s["workers"] == 2 and len(s["per_worker"]) == 2
    for w in s["per_worker"]:
        assert w["alive"] and w["rss"] > 0 and w["uss"] > 0 and w["cpu_percent"] is not None
    # 600 samples / batch 64 = 10 training steps, each timed; evaluations are not steps
    t = s["step_seconds"]
    assert t["steps"] == 10
    assert t["gradient"] >= t["slowest_worker"] > 0
    assert t["overhead"] == pytest.approx(t["gradient"] - t["slowest_worker"])
    assert eng.step_timing(reset=True)["steps"] == 10 and eng.step_timing() == {}
