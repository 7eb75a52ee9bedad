"""runDnn.py with remote workers and ``python -m workers.remote`` as a user runs them:
real processes over TCP loopback, wrong input in one line, Ctrl-C on either side."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

SCRIPT = str(ROOT / "scripts" / "runDnn.py")
FLAGS = ["--limit-train", "1000", "--epochs", "2", "--hidden", "64"]
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_workers_left")]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("flags, want", [
    (["--listen", "tcp://127.0.0.1:0"], "are for remote workers: add --remote-workers"),
    (["--remote-workers", "2", "--listen", "tcp://0.0.0.0:0"], "lets other machines connect"),
    (["--remote-workers", "1", "--workers", "2", "--batch-size", "2"],
     "are more than the 2 samples of a step"),
    (["--remote-workers", "2", "--listen", "tcp://127.0.0.1:70000"], "must be 0-65535"),
    (["--remote-workers", "2", "--listen", "127.0.0.1:5555"], "tcp://HOST:PORT"),
    (["--remote-workers", "0"], "--remote-workers"),
    (["--cluster", "ray"], "are for remote workers"),
    (["--remote-workers", "2", "--cluster", "spark"], "--cluster takes ray or ray:ADDRESS"),
    (["--remote-workers", "2", "--listen", "tcp://0.0.0.0:0", "--keys", "/nonexistent"],
     "no key file"),
])
def test_wrong_remote_flags_are_one_line_and_exit_2(flags, want):
    r = run(SCRIPT, "--limit-train", "500", *flags)
    assert r.returncode == 2, r.stderr
    assert want in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_listen_address_that_cannot_be_bound_is_one_line(tmp_path):
    import zmq
    busy = zmq.Context.instance().socket(zmq.ROUTER)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        for script in (SCRIPT, str(ROOT / "scripts" / "runLstm.py")):
            r = run(script, "--remote-workers", "1", "--listen", f"tcp://127.0.0.1:{port}",
                    "--limit-train" if script == SCRIPT else "--steps", "5")
            assert r.returncode == 2 and r.stderr.strip().endswith(
                f"error: cannot listen at tcp://127.0.0.1:{port}: Address already in use "
                f"(give --listen another address, or port 0 for a free one)"), r.stderr
    finally:
        busy.close(0)
    keys = tmp_path / "keys"
    assert run("-m", "dpnet", "keys", str(keys)).returncode == 0
    # an address of no interface here (the benchmarking range, 198.18.0.0/15)
    r = run(SCRIPT, "--remote-workers", "1", "--listen", "tcp://198.18.0.77:5580", "--keys",
            str(keys), "--limit-train", "5")
    assert r.returncode == 2 and "cannot listen at tcp://198.18.0.77:5580: Cannot assign " \
        "requested address" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_workers_that_never_join_end_the_run_in_one_line():
    r = run(SCRIPT, "--limit-train", "500", "--remote-workers", "2", "--join-timeout", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "0 of 2 remote workers joined within 1 s" in r.stderr


def coordinator(*flags):
    p = subprocess.Popen([sys.executable, SCRIPT, *FLAGS, *flags], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:                       # the endpoint, printed before it waits
        m = re.search(r"--connect (tcp://\S+)", line)
        if m:
            return p, m.group(1)
    raise AssertionError(f"no endpoint printed: {p.communicate()}")


def worker(endpoint, *flags):
    return subprocess.Popen([sys.executable, "-m", "workers.remote", "--connect", endpoint,
                             "--blas-threads", "1", *flags], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.fixture(scope="module")
def local_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("local") / "local.npz"
    r = run(SCRIPT, *FLAGS, "--workers", "2", "--save", str(path))
    assert r.returncode == 0, r.stderr
    return np.load(path)["params"]


def test_two_remote_workers_through_the_cli_match_local_workers(tmp_path, local_weights):
    js = tmp_path / "run.json"
    p, ep = coordinator("--remote-workers", "2", "--save", str(tmp_path / "remote.npz"),
                        "--json", str(js))
    ws = [worker(ep)]
    time.sleep(2)                        # the second one late: not training time
    ws.append(worker(ep))
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err
    assert [w.wait(30) for w in ws] == [0, 0]
    assert "remote worker 0 joined from" in err and "remote worker 1 joined from" in err
    assert "test accuracy:" in out
    summary = json.loads(js.read_text())
    assert summary["start_seconds"] >= 2 and summary["engine"]["start_seconds"] >= 2
    assert summary["train_seconds"] <= summary["wall_seconds"] - 2, summary
    assert re.search(r"execution time: [\d.]+ s \([\d.]+ s training, [\d,]+ samples/s; "
                     r"[\d.]+ s until the workers were ready\)", out), out
    assert np.array_equal(np.load(tmp_path / "remote.npz")["params"], local_weights)


def test_local_and_remote_workers_mixed_with_keys(tmp_path, local_weights):
    # one worker of this machine (--workers 1, started by the coordinator with a key
    # made for the run) and one remote one with the key directory's key, on a socket
    # open to every address: the same weights as two local workers
    keys = tmp_path / "keys"
    assert run("-m", "dpnet", "keys", str(keys)).returncode == 0
    p, ep = coordinator("--remote-workers", "1", "--workers", "1", "--listen",
                        "tcp://0.0.0.0:0", "--keys", str(keys),
                        "--save", str(tmp_path / "mixed.npz"))
    port = ep.rsplit(":", 1)[1]
    # first a worker given another run's keys: it is told, and the coordinator says so
    # (the handshake fails before any key reaches the allowed list: it said nothing)
    assert run("-m", "dpnet", "keys", str(tmp_path / "other")).returncode == 0
    stranger = worker(f"tcp://127.0.0.1:{port}", "--keys", str(tmp_path / "other"),
                      "--wait", "5")
    assert stranger.wait(30) == 1
    w = worker(f"tcp://127.0.0.1:{port}", "--keys", str(keys))
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err
    assert w.wait(30) == 0
    assert re.search(r"refused a connection that failed the CURVE handshake \(\d+ so "
                     r"far\): a worker with another run's keys", err), err
    assert err.count("joined from") == 2, err
    assert np.array_equal(np.load(tmp_path / "mixed.npz")["params"], local_weights)


def test_workers_started_by_a_local_ray_through_the_cli(tmp_path, local_weights):
    pytest.importorskip("ray")
    r = run(SCRIPT, *FLAGS, "--remote-workers", "2", "--cluster", "ray",
            "--save", str(tmp_path / "ray.npz"), timeout=170)
    assert r.returncode == 0, r.stderr
    assert "starting 2 workers with RayLauncher" in r.stderr
    assert np.array_equal(np.load(tmp_path / "ray.npz")["params"], local_weights)


def test_ctrl_c_on_a_remote_worker_moves_its_share_and_the_run_completes(tmp_path):
    # the run is long enough (small batches) for the worker to be stopped mid-run
    p, ep = coordinator("--remote-workers", "2", "--batch-size", "10", "--worker-timeout", "2")
    ws = [worker(ep), worker(ep)]
    for line in p.stdout:
        if line.startswith("epoch   1/2"):
            break
    ws[1].send_signal(signal.SIGINT)
    assert ws[1].wait(10) == 130
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err
    assert "its share goes to the other workers" in err and "test accuracy:" in out
    assert ws[0].wait(30) == 0


def test_ctrl_c_after_the_only_worker_died_stops_within_seconds_and_saves(tmp_path):
    """The one remote worker killed (its death is only found out after 30 s of
    silence, and a replacement may never join): a Ctrl-C still ends the run at once
    -- the step under way given up, the last whole step's weights saved, exit 130."""
    ck = tmp_path / "ck.npz"
    p, ep = coordinator("--remote-workers", "1", "--batch-size", "10", "--epochs", "50",
                        "--join-timeout", "300", "--save", str(ck))
    w = worker(ep)
    try:
        for line in p.stdout:
            if line.startswith("epoch   1/50"):
                break
        w.kill()
        w.wait(10)
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        p.kill()
        w.kill()
        p.wait()
        w.wait()
    assert p.returncode == 130, err
    assert took < 15, f"{took:.1f} s to stop"
    m = re.search(r"stopped by SIGINT after step (\d+); the model keeps its last weights "
                  r"\((worker 0 owed step \d+|no remote worker left to serve the step), given "
                  r"up 2 s after the stop signal\)", out)
    assert m, out[-2000:]
    step = int(m.group(1))
    assert dpnet_step(ck) == step and "Traceback" not in err, err


def dpnet_step(path):
    from dpnet.storage.checkpoint import read_checkpoint_meta
    return read_checkpoint_meta(path)["training"]["step"]


def test_a_coordinator_stopped_by_ctrl_c_while_waiting_exits_130():
    p = subprocess.Popen([sys.executable, SCRIPT, "--limit-train", "500",
                          "--remote-workers", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in p.stderr:
        if "waiting for 2 remote workers" in line:
            break
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130 and "Traceback" not in err, err


def test_keys_command_writes_private_keys_once(tmp_path):
    r = run("-m", "dpnet", "keys", str(tmp_path / "k"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    names = sorted(os.listdir(tmp_path / "k"))
    assert names == ["allowed", "coordinator.key", "coordinator.key_secret",
                     "worker-0.key", "worker-0.key_secret", "worker-1.key",
                     "worker-1.key_secret"]
    assert sorted(os.listdir(tmp_path / "k" / "allowed")) == ["worker-0.key", "worker-1.key"]
    for n in names:
        if n.endswith("_secret"):
            assert os.stat(tmp_path / "k" / n).st_mode & 0o077 == 0
    r = run("-m", "dpnet", "keys", str(tmp_path / "k"))
    assert r.returncode == 2 and "never overwritten" in r.stderr


def test_runLstm_with_remote_workers_matches_local_workers(tmp_path):
    flags = ["--steps", "40", "--hidden", "32", "--eval-every", "20", "--sample-every", "0"]
    lstm = str(ROOT / "scripts" / "runLstm.py")
    p = subprocess.Popen([sys.executable, lstm, *flags, "--remote-workers", "2",
                          "--save", str(tmp_path / "remote.npz")], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        m = re.search(r"--connect (tcp://\S+)", line)
        if m:
            break
    ws = [worker(m.group(1)), worker(m.group(1))]
    out, err = p.communicate(timeout=150)
    assert p.returncode == 0, err
    assert [w.wait(30) for w in ws] == [0, 0]
    assert "2 remote workers" in out
    r = run(lstm, *flags, "--workers", "2", "--save", str(tmp_path / "local.npz"))
    assert r.returncode == 0, r.stderr
    a, b = np.load(tmp_path / "remote.npz"), np.load(tmp_path / "local.npz")
    for name in ("params", "state.h", "state.c"):
        assert np.array_equal(a[name], b[name]), name
    r = run(lstm, "--steps", "1", "--remote-workers", "2", "--gpu")
    assert r.returncode == 2 and "drop --remote-workers" in r.stderr


def test_runLstm_worker_timeout_drops_a_dead_remote_worker_that_soon(tmp_path):
    """runLstm.py takes runDnn.py's --worker-timeout: a killed remote worker's share
    moves to the other after min(S, 30) s of its silence, and the run goes on."""
    lstm = str(ROOT / "scripts" / "runLstm.py")
    p = subprocess.Popen([sys.executable, lstm, "--steps", "1000000", "--hidden", "16",
                          "--batch-size", "4", "--seq-len", "8", "--eval-every", "0",
                          "--sample-every", "0", "--remote-workers", "2",
                          "--worker-timeout", "2", "--save", str(tmp_path / "l.npz")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ws = []
    try:
        for line in p.stderr:
            m = re.search(r"--connect (tcp://\S+)", line)
            if m:
                break
        ws = [worker(m.group(1)), worker(m.group(1))]
        for line in p.stderr:
            if "remote worker 1 joined" in line:
                break
        time.sleep(1.0)
        ws[1].kill()
        t0 = time.monotonic()
        for line in p.stderr:
            if "sent nothing for" in line:
                break
        noticed = time.monotonic() - t0
        time.sleep(1.0)                           # steps on the one worker left
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=150)
    finally:
        p.kill()
        for w in ws:
            w.kill()
            w.wait()
    assert p.returncode == 130, err
    assert noticed < 15, f"{noticed:.1f} s"
    assert re.search(r"sent nothing for [2-9]\.\d s; its share goes to the other workers",
                     line), line


def test_a_once_worker_that_loses_its_coordinator_says_so_and_exits_1(tmp_path):
    p, ep = coordinator("--remote-workers", "1", "--batch-size", "10", "--epochs", "50")
    w = worker(ep, "--once")
    try:
        for line in p.stdout:
            if line.startswith("epoch   1/50"):
                break
        p.kill()                                  # the coordinator's host goes away
        p.wait()
        _, err = w.communicate(timeout=60)
    finally:
        p.kill()
        w.kill()
        p.wait()
        w.wait()
    assert w.returncode == 1, err
    assert "not joining again (--once)" in err and "Traceback" not in err, err
