"""Remote workers launched by Ray (``--cluster ray``): Ray places, starts and restarts
the workers; the gradients still go over dpnet's sockets. A local Ray (one node) runs
them bit for bit as local workers; a worker whose actor process is killed is restarted
by Ray and takes its rank again; on Ray's multi-node test cluster, a lost node's worker
comes back when a node is added. Ray is always shut down, nothing left running."""
import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from dpnet.engines import worker_group  # noqa: E402
from dpnet.engines.coordinator import Coordinator, MultiprocessEngine  # noqa: E402
from dpnet.engines.ray_cluster import RayLauncher  # noqa: E402
from test_remote import data, mlp, train  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_workers_left")]


@pytest.fixture(scope="module")
def local2():
    with MultiprocessEngine(workers=2) as eng:
        m, _ = train(eng, epochs=5)
    return m.params.copy()


def wait_back(eng, rank, seconds=120):
    """Rounds (evaluations) until ``rank`` is served again: where joins are handled."""
    deadline = time.monotonic() + seconds
    while not eng._ready[rank] and time.monotonic() < deadline:
        eng.evaluate("val")
    return eng._ready[rank]


def fit(eng, callbacks=()):
    x, y = data()
    m = mlp()
    m.fit(x, y, epochs=5, batch_size=50, validation_data=(x[:200], y[:200]), engine=eng,
          verbose=0, callbacks=list(callbacks))
    return m


def test_a_local_ray_runs_the_workers_and_restarts_a_killed_one(local2, capfd):
    eng = Coordinator(worker_group("remote", 2, launcher=RayLauncher(),
                                   say=lambda line: None),
                      start_timeout=120, silence_timeout=1.0)
    events = []

    def chaos(epoch, metrics):
        if epoch == 1:
            os.kill(eng.group.members[1].pid, signal.SIGKILL)   # the actor's process
            events.append("killed")
        elif epoch == 3:
            events.append(f"respawns={eng.respawns}")
            events.append("back" if wait_back(eng, 1) else "not back")
        return False

    with eng:
        m = fit(eng, [chaos])
        stats = eng.stats()
    assert not ray.is_initialized()                      # the launcher shut its Ray down
    assert events == ["killed", "respawns=1", "back"]
    assert [w["rank"] for w in stats["per_worker"]] == [0, 1]
    np.testing.assert_allclose(m.params, local2, rtol=1e-4, atol=1e-5)


def test_without_faults_a_local_ray_is_bit_for_bit_local_workers(local2):
    eng = Coordinator(worker_group("remote", 2, launcher=RayLauncher(),
                                   say=lambda line: None), start_timeout=120)
    with eng:
        m = fit(eng)
    assert np.array_equal(m.params, local2)


def test_a_lost_node_s_worker_returns_with_a_new_node(local2):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        # a cluster address: the coordinator listens on every address, CURVE with
        # keys made for this run
        group = worker_group("remote", 2, launcher=RayLauncher(address=cluster.address),
                             say=lambda line: None)
        assert group.curve is not None and group.listen == "tcp://0.0.0.0:0"
        eng = Coordinator(group, start_timeout=120, silence_timeout=1.0)
        events = []

        def chaos(epoch, metrics):
            if epoch == 1:
                cluster.remove_node(second)              # its worker dies with it
                events.append("node lost")
            elif epoch == 3:
                events.append(f"respawns={eng.respawns}")
                cluster.add_node(num_cpus=1)             # Ray restarts the actor there
                lost = [r for r, ok in eng._ready.items() if not ok]
                events.append("back" if lost and wait_back(eng, lost[0]) else "not back")
            return False

        with eng:
            m = fit(eng, [chaos])
        assert events == ["node lost", "respawns=1", "back"]
        np.testing.assert_allclose(m.params, local2, rtol=1e-4, atol=1e-5)
    finally:
        ray.shutdown()
        cluster.shutdown()
