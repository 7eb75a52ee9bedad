"""Ray scenarios for tests/engines/test_remote_ray.py, each run in a process of its own
(Ray leaves handlers and threads in the process that started it; the test suite's own
process stays free of them). Prints one JSON line: what happened.

    python tests/ray_scenarios.py plain|killed|node
"""
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "engines"))

import numpy as np  # noqa: E402
import ray  # noqa: E402

from dpnet.engines import worker_group  # noqa: E402
from dpnet.engines.coordinator import Coordinator  # noqa: E402
from dpnet.engines.ray_cluster import RayLauncher  # noqa: E402
from test_remote import rounds_until, train  # noqa: E402


def fit(eng, callbacks=()):
    return train(eng, epochs=5, callbacks=callbacks)[0]


def main(scenario, out):
    events, stats = [], {}
    if scenario == "node":
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "include_dashboard": False})
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        launcher = RayLauncher(address=cluster.address)
    else:
        cluster, launcher = None, RayLauncher()
    try:
        group = worker_group("remote", 2, launcher=launcher, say=lambda line: None)
        events.append(f"listen={group.listen} curve={group.curve is not None}")
        eng = Coordinator(group, start_timeout=120, silence_timeout=1.0)

        def chaos(epoch, metrics):
            if scenario == "plain":
                return False
            if epoch == 1:
                if scenario == "killed":
                    os.kill(eng.group.members[1].pid, signal.SIGKILL)   # the actor's process
                else:
                    cluster.remove_node(second)  # its worker dies with it
                events.append("lost")
            elif epoch == 3:
                events.append(f"respawns={eng.respawns}")
                if scenario == "node":
                    cluster.add_node(num_cpus=1)  # Ray restarts the actor there
                # (it may be back already)
                back = rounds_until(eng, lambda: all(eng._ready.values()), seconds=120)
                events.append("back" if back else "not back")
            return False

        with eng:
            m = fit(eng, [chaos])
            stats = eng.stats()
        events.append(f"ray initialized after: {ray.is_initialized()}")
    finally:
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
    np.save(out, m.params)
    print(json.dumps({"events": events,
                      "ranks": [w["rank"] for w in stats.get("per_worker", [])]}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
