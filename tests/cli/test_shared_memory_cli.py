"""Shared memory end to end, as a user meets it: a terminal that closes (SIGHUP to the
whole group, output to a hung-up terminal), a run killed with its group, a small
/dev/shm (Docker's 64 MB default)."""
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dpnet.parallel.monitor import child_processes
from conftest import ROOT, run_leftovers

pytestmark = pytest.mark.timeout(240)
DNN = str(ROOT / "scripts" / "runDnn.py")
LSTM = str(ROOT / "scripts" / "runLstm.py")


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k != "__meta__"}


def hang_up_mid_run(cmd, marker):
    """Run ``cmd`` on a pseudo-terminal in its own session; once ``marker`` appears,
    close the terminal and send SIGHUP to the whole group (what a closing terminal or
    ssh connection does). Returns the exit code and what was shown before."""
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                         start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    os.close(slave)
    seen, deadline = b"", time.monotonic() + 120
    while marker not in seen and time.monotonic() < deadline and p.poll() is None:
        try:
            seen += os.read(master, 4096)
        except OSError:
            break
    os.close(master)                         # the terminal is gone: writes now fail
    os.killpg(p.pid, signal.SIGHUP)
    return p.wait(timeout=60), seen.decode(errors="replace"), p.pid


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_a_closed_terminal_stops_cleanly_and_the_checkpoint_resumes_exactly(tmp_path, kind):
    if kind == "mlp":
        base = [sys.executable, DNN, "--workers", "2", "--limit-train", "6000", "--hidden",
                "256", "--batch-size", "100", "--validation", "1000"]
        whole, marker = ["--epochs", "6"], b"epoch   1/6"
    else:
        base = [sys.executable, LSTM, "--workers", "2", "--hidden", "64", "--batch-size",
                "8", "--seq-len", "32", "--print-every", "5", "--eval-every", "0",
                "--sample-every", "0", "--save-every", "1000000"]
        whole, marker = ["--steps", "300"], b"step  10/300"
    code, shown, pid = hang_up_mid_run(base + whole + ["--save", str(tmp_path / "hup.npz")],
                                       marker)
    assert code == 128 + signal.SIGHUP, shown
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (child_processes() or run_leftovers(pid)):
        time.sleep(0.05)
    assert child_processes() == [] and run_leftovers(pid) == []
    # the checkpoint of the hang-up continues to the very end of an uninterrupted run
    r = subprocess.run(base + whole + ["--save", str(tmp_path / "straight.npz"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(base + whole + ["--load", str(tmp_path / "hup.npz"), "--save",
                                       str(tmp_path / "hup.npz"), "--quiet"],
                       capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert r.returncode == 0, r.stderr
    a, b = arrays(tmp_path / "straight.npz"), arrays(tmp_path / "hup.npz")
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k


SWEEP_SCENARIO = """
import json, os, signal, subprocess, sys, time
DNN = sys.argv[1]
p = subprocess.Popen([sys.executable, DNN, "--workers", "2", "--limit-train", "20000",
                      "--epochs", "50", "--batch-size", "1000"], stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True, start_new_session=True)
import psutil
for line in p.stdout:
    if line.startswith("epoch   1/50"):
        break
workers = [c for c in psutil.Process(p.pid).children()
           if "dpnet.workers" in " ".join(c.cmdline())]
os.killpg(p.pid, signal.SIGKILL)             # coordinator and resource tracker; the
p.wait()                                     # workers (a session of their own) follow
_, alive = psutil.wait_procs(workers, timeout=10)
time.sleep(0.5)
dead = sorted(s for s in os.listdir("/dev/shm") if s.startswith(f"dpnet_{p.pid}_"))
clean = subprocess.run([sys.executable, "-m", "dpnet", "clean", "--dry-run"],
                       capture_output=True, text=True, timeout=60)
nxt = subprocess.run([sys.executable, DNN, "--workers", "2", "--limit-train", "1000",
                      "--epochs", "1", "--hidden", "16", "--quiet"], capture_output=True,
                     text=True, timeout=120)
left = sorted(s for s in os.listdir("/dev/shm") if s.startswith(f"dpnet_{p.pid}_"))
print(json.dumps({"dead": dead, "clean": clean.stdout, "code": nxt.returncode,
                  "err": nxt.stderr, "left": left, "workers": len(workers),
                  "workers_alive": len(alive)}))
"""


def test_a_run_killed_with_its_group_is_swept_by_the_next(tmp_path):
    # in a /dev/shm of its own: any dpnet run beside this test (a benchmark, another
    # suite) would sweep the dead run's segments first, as it should
    script = tmp_path / "scenario.py"
    script.write_text(SWEEP_SCENARIO)
    r, _ = small_shm([sys.executable, str(script), DNN], size="1g")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    dead = got["dead"]
    assert len(dead) >= 6, got               # what nobody was left to remove
    assert "would remove" in got["clean"]
    assert all(f"/dev/shm/{s}" in got["clean"] for s in dead)
    assert got["code"] == 0, got["err"]
    assert f"dpnet: removed {len(dead)} shared-memory segments (" in got["err"], got["err"]
    assert "left by runs that are gone" in got["err"]
    assert got["left"] == []
    # the killed run's workers noticed their coordinator was gone, and exited
    assert got["workers"] == 2 and got["workers_alive"] == 0, got
    assert child_processes() == []


def small_shm(cmd, size="64m"):
    """``cmd`` in a private mount namespace whose /dev/shm is a tmpfs of ``size``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to give a run a small /dev/shm")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot make a mount namespace here: {probe.stderr.decode().strip()}")
    import shlex
    p = subprocess.Popen(["unshare", "-m", "sh", "-c",
                          f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "
                          + " ".join(map(shlex.quote, cmd))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out, err = p.communicate(timeout=120)
    # unshare execs sh, which execs the command: one process, one pid
    return subprocess.CompletedProcess(p.args, p.returncode, out, err), p.pid


def test_a_small_dev_shm_is_one_line_naming_both_sizes():
    r, pid = small_shm([sys.executable, DNN, "--workers", "2", "--epochs", "1"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Bus error" not in r.stderr, r.stderr
    assert "needs 186 MiB in /dev/shm, which has 64 MiB free" in lines[0]
    assert "--workers 0" in lines[0] and "--shm-size" in lines[0]
    assert child_processes() == [] and run_leftovers(pid) == []


def test_segments_are_backed_when_made_so_no_write_can_raise_sigbus():
    """Past the room check (a segment bigger than what is free, made directly): the
    allocation fails with the same one line, not with SIGBUS at the first write."""
    code = ("from dpnet.parallel.shm import SharedArray, SharedMemoryFull\n"
            "import os\n"
            "try:\n"
            "    SharedArray.create((25_000_000,), 'float32')\n"
            "except SharedMemoryFull as e:\n"
            "    print('refused:', e)\n"
            "print('left:', [f for f in os.listdir('/dev/shm') if f.startswith('dpnet_')])\n")
    r, _ = small_shm([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert "refused: shared memory: this run needs 95 MiB" in r.stdout
    assert "left: []" in r.stdout
