"""Remote workers on other "hosts": the coordinator and each worker in its own Linux
network namespace, joined by veth pairs (tests/netns.py), talking CURVE over TCP on
addresses of the benchmarking range 198.18.0.0/15. Skipped, with the reason, where
namespaces cannot be made (not root)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpnet.engines.coordinator import MultiprocessEngine
from dpnet.parallel.keys import make_keys
from netns import Hosts, can_make_namespaces
from test_remote import finish

ROOT = Path(__file__).resolve().parents[2]
WHY_NOT = can_make_namespaces()
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_workers_left"),
              pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")]
PORT = 5555          # each test gets fresh namespaces: nothing else listens there


@pytest.fixture
def hosts():
    h = Hosts(2)
    yield h
    h.close()


@pytest.fixture
def keys(tmp_path):
    make_keys(str(tmp_path / "keys"))
    return str(tmp_path / "keys")


def start_workers(hosts, keys):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return [subprocess.Popen(
        hosts.run(ns, [sys.executable, "-m", "workers.remote", "--connect",
                       f"tcp://{hosts.coordinator_address(i)}:{PORT}", "--keys", keys,
                       "--blas-threads", "1", "--wait", "60"]),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i, ns in enumerate(hosts.workers)]


def remote_and_local(hosts, keys, tmp_path, flags, *coordinator_flags):
    """runDnn.py with ``flags`` on the two worker hosts, then with two local workers:
    (the coordinator's stderr, its checkpoint, the local run's checkpoint)."""
    coord = subprocess.Popen(
        hosts.run(hosts.coordinator, [sys.executable, "scripts/runDnn.py", *flags,
                                      "--remote-workers", "2", "--listen",
                                      f"tcp://0.0.0.0:{PORT}", "--keys", keys,
                                      *coordinator_flags,
                                      "--save", str(tmp_path / "remote.npz")]),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = start_workers(hosts, keys)
    _, err = coord.communicate(timeout=240)
    codes = finish(workers)
    assert coord.returncode == 0, err
    assert [c for c, _ in codes] == [0, 0], codes
    ref = subprocess.run([sys.executable, "scripts/runDnn.py", *flags, "--workers", "2",
                          "--save", str(tmp_path / "local.npz")],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert ref.returncode == 0, ref.stderr
    return err, np.load(tmp_path / "remote.npz"), np.load(tmp_path / "local.npz")


def test_runDnn_with_workers_on_two_hosts_matches_local_workers(hosts, keys, tmp_path):
    flags = ["--limit-train", "1000", "--epochs", "1", "--hidden", "64", "--quiet"]
    err, a, b = remote_and_local(hosts, keys, tmp_path, flags)
    assert err.count("joined from") == 2 and "CURVE" in err, err
    for name in ("params", "opt.m", "opt.v"):
        assert np.array_equal(a[name], b[name]), name


def test_a_link_cut_mid_run_moves_the_share_and_the_worker_comes_back(hosts, keys, tmp_path):
    out = str(tmp_path / "run")
    coord = subprocess.Popen(
        hosts.run(hosts.coordinator, [sys.executable, "tests/remote_coordinator.py", keys,
                                      str(PORT), out, "--cut-link", hosts.links[1],
                                      "--epochs", "5"]),
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = start_workers(hosts, keys)
    _, err = coord.communicate(timeout=240)
    codes = finish(workers)
    assert coord.returncode == 0, err
    report = json.loads(Path(out + ".json").read_text())
    assert report["events"] == ["down", "respawns=1", "rejoined"], (report, err)
    assert "its share goes to the other workers" in err
    assert [c for c, _ in codes] == [0, 0], codes
    assert "joining again" in codes[1][1]                # the cut-off worker came back
    sys.path.insert(0, str(ROOT / "tests" / "engines"))
    from test_remote import train
    with MultiprocessEngine(workers=2) as eng:
        m, _ = train(eng, epochs=5)
    np.testing.assert_allclose(np.load(out + ".npz")["params"], m.params,
                               rtol=1e-4, atol=1e-5)


def test_a_slow_link_carries_frames_that_take_longer_than_a_ping_timeout(hosts, keys,
                                                                          tmp_path):
    """On a 1 Mbit/s link the data (0.9 MB) and each step's weights (0.9 MB) take ~7 s
    on the wire: longer than ZeroMQ's ping timeout was (5 s: the connection dropped in
    the middle of every such frame, and the run never trained). Now the run ends as
    the same run on fast links does."""
    hosts.slow(1, "1mbit")
    flags = ["--limit-train", "300", "--validation", "0", "--epochs", "1", "--batch-size",
             "300", "--hidden", "256", "64", "--augment", "none", "--quiet"]
    err, a, b = remote_and_local(hosts, keys, tmp_path, flags, "--join-timeout", "90")
    assert "left the run" not in err and "sent nothing" not in err, err
    assert np.array_equal(a["params"], b["params"])
