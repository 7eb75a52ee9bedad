from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT / "data" / "mnist"


def interrupt_when(cmd, fires, cwd=None, timeout=120):
    """Run ``cmd`` (a new session, so the signal reaches it alone) and, at the first line
    of its stdout for which ``fires(line)`` is true, send it SIGINT -- a Ctrl-C, after
    ``fires`` returned (it may sleep). Returns (exit code, all its stdout, stderr)."""
    import os
    import signal
    import subprocess
    import tempfile
    import threading
    env = dict(os.environ, PYTHONUNBUFFERED="1")         # each line as it is printed
    with tempfile.TemporaryFile("w+") as err:             # (no pipe to fill meanwhile)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=cwd,
                             env=env, start_new_session=True)
        killer = threading.Timer(timeout, p.kill)         # a hung run ends the test
        killer.start()
        out, sent = [], False
        try:
            for line in p.stdout:                         # one reader, to the end
                out.append(line)
                if not sent and fires(line):
                    p.send_signal(signal.SIGINT)
                    sent = True
            p.wait()
        finally:
            killer.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()
        err.seek(0)
        return p.returncode, "".join(out), err.read()


def write_idx(path, arr, gz=False, magic_type=0x08):
    """``arr`` as an IDX file (MNIST's format), gzipped if asked."""
    import gzip
    import struct
    raw = bytes([0, 0, magic_type, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.fixture(scope="session")
def mnist_small():
    """The first 10,000 training images, the standard validation split and test set."""
    from dpnet.data import load_mnist
    return load_mnist(MNIST_DIR, limit_train=10_000)


def numeric_grad(f, x, eps=1e-5):
    """Centred finite differences of scalar f() with respect to every entry of x
    (modified in place and restored), by the five-point stencil: its error is O(eps^4),
    so a small eps is not needed, and the rounding noise ~ 1e-16 |f| / eps stays far
    below the tolerances of the gradient checks on any NumPy build (the three-point
    stencil with eps 1e-6 came within 3x of them, and past one with NumPy 1.24)."""
    g = np.zeros_like(x, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        fs = []
        for k in (2, 1, -1, -2):
            flat[i] = old + k * eps
            fs.append(f())
        flat[i] = old
        gflat[i] = (8 * (fs[1] - fs[2]) - (fs[0] - fs[3])) / (12 * eps)  # 0 where f ignores x
    return g


def rel_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need a real CUDA device; elsewhere they are skipped (the GPU
    code path itself runs everywhere on the stand-in device)."""
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from dpnet.backend import gpu_available
    if not gpu_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (cupy and a device)")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def no_workers_left():
    """After the test: every worker process it started has exited (within 5 s)."""
    yield
    import time
    from dpnet.parallel.monitor import child_processes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and child_processes():
        time.sleep(0.05)
    assert child_processes() == [], "worker processes left running"


@pytest.fixture
def nothing_left():
    """After the test: no worker process left, and none of the shared-memory segments
    or socket directories this process made."""
    yield
    import os
    import time
    from dpnet.parallel.monitor import child_processes
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (child_processes() or run_leftovers(os.getpid())):
        time.sleep(0.05)
    assert child_processes() == [], "worker processes left running"
    assert run_leftovers(os.getpid()) == [], "shared memory or sockets left behind"


def run_leftovers(pid):
    """What the run of process ``pid`` made and left: its shared-memory segments and
    ipc socket directories (both named ``dpnet_<creator pid>_...``). Checking a run's
    own leftovers, not the machine's, keeps the check true while other dpnet runs (a
    benchmark, another suite) come and go beside it."""
    import os
    from dpnet.parallel.transport import _ipc_base
    prefix = f"dpnet_{pid}_"
    segs = [f for f in os.listdir("/dev/shm") if f.startswith(prefix)]
    try:
        dirs = [d for d in os.listdir(_ipc_base()) if d.startswith(prefix)]
    except (OSError, RuntimeError):
        dirs = []
    return sorted(segs + dirs)
