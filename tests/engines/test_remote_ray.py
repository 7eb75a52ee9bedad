"""Remote workers launched by Ray (``--cluster ray``): Ray places, starts and restarts
the workers; the gradients still go over dpnet's sockets. A local Ray (one node) runs
them bit for bit as local workers; a worker whose actor process is killed is restarted
by Ray and takes its rank again; on Ray's multi-node test cluster, a lost node's worker
comes back when a node is added. Each scenario runs in a process of its own
(tests/ray_scenarios.py): Ray is shut down there, and nothing is left running."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from dpnet.engines.coordinator import MultiprocessEngine  # noqa: E402
from test_remote import train  # noqa: E402

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_workers_left")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local2():
    with MultiprocessEngine(workers=2) as eng:
        m, _ = train(eng, epochs=5)
    return m.params.copy()


def ray_processes():
    import psutil
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            line = " ".join(p.info["cmdline"] or []) or p.info["name"] or ""
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "raylet" in line or "gcs_server" in line:
            found.append(p.pid)
    return found


def scenario(name, tmp_path):
    out = tmp_path / f"{name}.npy"
    before = ray_processes()
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "ray_scenarios.py"), name,
                        str(out)], capture_output=True, text=True, timeout=280, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    # Ray shut down with the scenario: none of its processes outlive it
    deadline = time.monotonic() + 10
    while set(ray_processes()) - set(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(ray_processes()) - set(before)
    return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)


def test_without_faults_a_local_ray_is_bit_for_bit_local_workers(local2, tmp_path):
    got, params = scenario("plain", tmp_path)
    # on loopback too, CURVE with keys made for the run; the launcher shut its Ray down
    assert got["events"] == ["listen=tcp://127.0.0.1:0 curve=True",
                             "ray initialized after: False"]
    assert np.array_equal(params, local2)


def test_a_killed_actor_is_restarted_by_ray_and_takes_its_rank_again(local2, tmp_path):
    got, params = scenario("killed", tmp_path)
    assert got["events"][1:] == ["lost", "respawns=1", "back",
                                 "ray initialized after: False"], got
    assert got["ranks"] == [0, 1]
    np.testing.assert_allclose(params, local2, rtol=1e-4, atol=1e-5)


def test_a_lost_node_s_worker_returns_with_a_new_node(local2, tmp_path):
    # a cluster address: the coordinator listens on every address, CURVE with keys
    # made for this run
    got, params = scenario("node", tmp_path)
    assert got["events"] == ["listen=tcp://0.0.0.0:0 curve=True", "lost", "respawns=1",
                             "back", "ray initialized after: True"], got
    np.testing.assert_allclose(params, local2, rtol=1e-4, atol=1e-5)
