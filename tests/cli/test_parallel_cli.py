"""scripts/runDnn.py end to end: real worker processes, real signals."""
import json
import re
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from dpnet.parallel.monitor import child_processes
from conftest import ROOT, run_leftovers

SCRIPT = str(ROOT / "scripts" / "runDnn.py")
pytestmark = pytest.mark.timeout(180)


def test_two_workers_end_to_end(tmp_path):
    out = tmp_path / "out.json"
    r = subprocess.run([sys.executable, SCRIPT, "--workers", "2", "--limit-train", "2000",
                        "--epochs", "1", "--json", str(out)], capture_output=True, text=True,
                       timeout=150, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert s["engine"]["workers"] == 2 and len(s["engine"]["per_worker"]) == 2
    assert all(w["uss"] > 0 for w in s["engine"]["per_worker"])
    assert s["train"]["n"] == 2000 and s["test"]["n"] == 10_000
    assert "2 worker processes" in r.stdout and "test accuracy:" in r.stdout


# group: the signal goes to the whole process group -- Ctrl-C in a terminal, systemd,
# `timeout`, `kill -- -PGID` (the workers have a session of their own: it reaches the
# coordinator and its resource tracker). --on-failure abort makes a worker that died of
# anything visible (exit 1) instead of quietly replaced.
@pytest.mark.parametrize("sig, group", [(signal.SIGINT, True), (signal.SIGTERM, False),
                                        (signal.SIGTERM, True)])
def test_signal_stops_cleanly_saves_and_leaves_nothing(tmp_path, sig, group):
    ck = tmp_path / "ck.npz"
    p = subprocess.Popen([sys.executable, SCRIPT, "--workers", "2", "--limit-train", "20000",
                          "--epochs", "50", "--save", str(ck), "--hidden", "256",
                          "--batch-size", "1000", "--on-failure", "abort"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         start_new_session=True)
    for line in p.stdout:                       # wait until training is under way
        if line.startswith("epoch   1/50"):
            break
    worker_pids = [c.pid for c in child_processes() if c.ppid() == p.pid]
    assert len(worker_pids) == 2, worker_pids       # else "they are gone" would prove nothing
    time.sleep(0.1)          # mid-step (batch 1000: the workers compute ~90% of the time)
    if group:
        os.killpg(p.pid, sig)                   # the session leader's group
    else:
        p.send_signal(sig)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 5, "did not exit within 5 s"
    assert p.returncode == 128 + sig, err               # 130 for SIGINT, 143 for SIGTERM
    assert "killed by" not in err and "replacement" not in err
    assert f"stopped by {signal.Signals(sig).name}" in out
    assert ck.exists() and "saved the last weights (step" in err
    import psutil
    assert not [q for q in worker_pids if psutil.pid_exists(q)
                and psutil.Process(q).status() != psutil.STATUS_ZOMBIE]
    assert run_leftovers(p.pid) == []


def test_ctrl_c_while_the_workers_start_up_is_one_line():
    """A terminal's Ctrl-C goes to its foreground process group. Workers have a session
    of their own, so one pressed while they are still importing (before they can
    ignore it) reaches the coordinator alone: one line, exit 130, nothing left -- not
    a KeyboardInterrupt traceback from each worker's imports."""
    p = subprocess.Popen([sys.executable, SCRIPT, "--workers", "2", "--limit-train", "2000",
                          "--epochs", "1", "--hidden", "16"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and p.poll() is None and time.monotonic() < deadline:
            try:
                workers = [c for c in child_processes() if c.ppid() == p.pid
                           and "dpnet.workers" in " ".join(c.cmdline())]
            except psutil.Error:                  # a process came and went meanwhile
                workers = []
            time.sleep(0.005)
        assert len(workers) == 2, "the workers never started"
        assert all(os.getsid(w.pid) == w.pid != os.getsid(p.pid) for w in workers)
        os.killpg(p.pid, signal.SIGINT)         # as the terminal sends it, mid start-up
        out, err = p.communicate(timeout=60)
    finally:
        p.kill()
        p.wait()
    assert p.returncode == 130, err
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    said = [l for l in err.splitlines() if not l.startswith("dpnet: removed")]  # a sweep
    assert said == ["runDnn.py: interrupted"], err
    assert run_leftovers(p.pid) == []


def test_divergence_with_workers_is_one_line_and_idle_workers_are_not_started():
    r = subprocess.run([sys.executable, SCRIPT, "--workers", "2", "--limit-train", "2000",
                        "--epochs", "1", "--hidden", "32", "--optimizer", "sgd", "--lr", "1e30",
                        "--lr-final", "1e30"], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()       # no RuntimeWarnings from the workers
    assert len(lines) == 1 and "diverged" in lines[0], r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--workers", "6", "--batch-size", "2",
                        "--limit-train", "20", "--validation", "10", "--epochs", "1",
                        "--hidden", "8", "--quiet"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "--workers 6 is more than the 2 samples of a step; using 2" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--workers", str(5 * (os.cpu_count() or 1)),
                        "--limit-train", "100"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2 and "per CPU" in r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--worker-timeout", "0.5"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "--worker-timeout: expected a number in [1" in r.stderr


def test_a_flood_on_the_socket_of_a_real_run_changes_nothing(tmp_path):
    """runDnn.py with 2 workers, and 10,000 hostile messages on its socket from
    strangers: exit code 0, the very checkpoint of an undisturbed run, every message
    read refused and counted, nothing left behind."""
    import glob
    import tempfile

    import numpy as np
    from hostile import Flood

    flags = ["--workers", "2", "--limit-train", "3000", "--epochs", "4", "--hidden", "64",
             "--batch-size", "100", "--quiet", "--on-failure", "abort"]
    r = subprocess.run([sys.executable, SCRIPT, *flags, "--save", str(tmp_path / "a.npz")],
                       capture_output=True, text=True, timeout=150, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    p = subprocess.Popen([sys.executable, SCRIPT, *flags, "--save", str(tmp_path / "b.npz")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    pattern = os.path.join(tempfile.gettempdir(), f"dpnet_{p.pid}_*", "*.sock")
    deadline = time.monotonic() + 60
    while not glob.glob(pattern) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.01)
    flood = Flood("ipc://" + glob.glob(pattern)[0], 10_000)
    flood.start()
    try:
        out, err = p.communicate(timeout=150)
    finally:
        flood.release.set()
        flood.join(10)
    assert p.returncode == 0, err
    assert flood.error is None and flood.sent == 10_000
    # most were read while it trained (what is still queued when the run ends is not):
    # every one of those refused and counted
    import re
    dropped = int(re.search(r"dpnet: dropped (\d+) messages", err).group(1))
    assert 5_000 <= dropped <= 10_000, err
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        for k in ("params", "opt.m", "opt.v"):
            assert np.array_equal(a[k], b[k]), k
    assert child_processes() == [] and run_leftovers(p.pid) == []


def test_a_worker_that_dies_under_abort_ends_the_run_with_1_and_saves(tmp_path):
    """--on-failure abort with a worker that really dies (it exits mid-run, injected by
    DPNET_FAULTS): exit 1, the worker and how it ended named in one line, the weights
    of the last whole step saved and loadable."""
    ck = tmp_path / "ck.npz"
    env = dict(os.environ, DPNET_FAULTS="die_on=step,after=30")
    r = subprocess.run([sys.executable, SCRIPT, "--workers", "2", "--limit-train", "3000",
                        "--epochs", "3", "--hidden", "32", "--on-failure", "abort",
                        "--save", str(ck)], capture_output=True, text=True, timeout=150,
                       cwd=ROOT, env=env)
    assert r.returncode == 1, r.stderr
    assert re.search(r"worker [01] \(pid \d+\) exited with code 3", r.stderr), r.stderr
    assert "Traceback" not in r.stderr
    m = re.search(r"saved the last weights \(step (\d+)\)", r.stderr)
    assert m and int(m.group(1)) == 30, r.stderr
    import dpnet
    assert dpnet.load(str(ck)).n_params > 0
    assert child_processes() == []


def test_a_second_ctrl_c_exits_at_once(tmp_path):
    """The first Ctrl-C asks for a clean stop after the current step; while that step
    cannot finish (its worker is suspended) a second Ctrl-C ends the run at once: 130,
    no clean-stop report, no worker left -- and the one line says what is on disk."""
    ck = tmp_path / "ck.npz"
    p = subprocess.Popen([sys.executable, SCRIPT, "--workers", "1", "--limit-train", "20000",
                          "--epochs", "50", "--hidden", "64", "--on-failure", "abort",
                          "--save", str(ck)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         start_new_session=True)
    for line in p.stdout:
        if line.startswith("epoch   1/50"):
            break
    workers = [c.pid for c in child_processes() if c.ppid() == p.pid]
    assert len(workers) == 1, workers
    deadline = time.monotonic() + 30              # (the epoch's line comes before its save)
    while not ck.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(workers[0], signal.SIGSTOP)          # the step in flight cannot finish
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    # at once: the step is not awaited; only the close gives the (suspended) worker its
    # 2 s to take STOP before SIGKILL
    assert time.monotonic() - t0 < 4, "the second Ctrl-C did not end the run at once"
    assert "stopped by SIGINT" not in out, (out, err)
    from dpnet.storage.checkpoint import read_checkpoint_meta
    step = read_checkpoint_meta(ck)["training"]["step"]         # epoch 1's, at least
    assert f"interrupted; {ck} holds the weights of step {step}" in err, err
    assert "was suspended" not in err            # ended before the stall was judged
    deadline = time.monotonic() + 5
    while child_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child_processes() == []
