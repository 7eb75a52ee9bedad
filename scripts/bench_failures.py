#!/usr/bin/env python
"""Benchmark: how fast the failure handling the README promises reacts, measured.

The tests prove *what* happens (a killed or suspended worker is replaced and the
result is unchanged; workers exit on STOP, not by SIGKILL; orphans exit by
themselves); the *how fast* is measured here, because a busy machine stretches any
timing and a timed test would fail on it:

  kill     SIGKILL a worker in the middle of a step -> the coordinator starts its
           replacement (README: "noticed within 50 ms", the coordinator's poll)
  suspend  SIGSTOP a worker in the middle of a step -> replacement (README: 2 s,
           ``stall_timeout``, checked every ~0.25 s)
  close    ``close()`` of an engine with idle workers: STOP, each exits 0
  orphans  SIGKILL the coordinator of a ``runDnn.py --workers 2`` run -> both of its
           workers have exited (README: "within a second")

Each is repeated; min / median / max in milliseconds.

    python scripts/bench_failures.py [--repeats 5]
"""
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from dpnet import Dense, Sequential  # noqa: E402
from dpnet.cli.common import Parser, positive_int  # noqa: E402
from dpnet.engines.coordinator import Coordinator  # noqa: E402
from dpnet.engines.cpu import CpuProcesses  # noqa: E402
from dpnet.optim import SGD  # noqa: E402
from dpnet.parallel.cleanup import sweep  # noqa: E402


class TimedWorkers(CpuProcesses):
    """CPU workers that note when the coordinator asks for a replacement."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.replaced_at = []

    def replace(self, rank):
        self.replaced_at.append(time.monotonic())
        super().replace(rank)


def slow_step_model():
    """A step of several hundred ms per worker, so a fault lands inside it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 1024)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    m = Sequential([Dense(1024, 2048, activation="relu"), Dense(2048, 2048, activation="relu"),
                    Dense(2048, 10, activation="softmax")], optimizer=SGD(lr=0.01))
    return m, x, y


def fault_in_a_step(sig):
    """Milliseconds from ``sig`` sent to worker 1, 100 ms into a step, to the
    coordinator's request for its replacement."""
    m, x, y = slow_step_model()
    group = TimedWorkers(2)
    with Coordinator(group, max_respawns=10) as eng:
        eng.start(m, {"train": (x, y)})
        eng.gradient(0, np.arange(len(x)))                   # warm
        pid = group.pid(1)
        sent = []

        def hit():
            time.sleep(0.1)
            sent.append(time.monotonic())
            os.kill(pid, sig)
        t = threading.Thread(target=hit)
        t.start()
        eng.gradient(1, np.arange(len(x)))
        t.join()
        if sig == signal.SIGSTOP:
            try:
                os.kill(pid, signal.SIGKILL)                  # replaced, but still stopped
            except ProcessLookupError:
                pass
    if not group.replaced_at:
        raise SystemExit(f"the step ended before the {signal.Signals(sig).name} landed: "
                         f"a faster machine needs a larger model here")
    return (group.replaced_at[0] - sent[0]) * 1000


def close_idle():
    m, x, y = slow_step_model()
    eng = Coordinator(CpuProcesses(2))
    eng.start(m, {"train": (x[:256], y[:256])})
    eng.gradient(0, np.arange(256))
    popens = [c.popen for c in eng.group.children.values()]
    t0 = time.monotonic()
    eng.close()
    took = (time.monotonic() - t0) * 1000
    codes = [p.returncode for p in popens]
    if codes != [0, 0]:
        raise SystemExit(f"workers did not exit on STOP: exit codes {codes}")
    return took


def orphans_exit():
    import psutil
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "runDnn.py"),
                          "--workers", "2", "--limit-train", "20000", "--epochs", "50",
                          "--batch-size", "1000"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    for line in p.stdout:
        if line.startswith("epoch   1/50"):
            break
    workers = [c for c in psutil.Process(p.pid).children() if "dpnet" in " ".join(c.cmdline()[1:])]
    if len(workers) != 2:
        p.kill()
        raise SystemExit(f"expected 2 workers, found {len(workers)}")
    p.kill()
    t0 = time.monotonic()
    p.wait()
    while any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers):
        if time.monotonic() - t0 > 30:
            raise SystemExit("orphaned workers still running after 30 s")
        time.sleep(0.005)
    took = (time.monotonic() - t0) * 1000
    # the killed coordinator's segments and socket directory, as its successor would
    sweep()
    return took


def main():
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=positive_int, default=5)
    args = ap.parse_args()
    cases = [("kill", "50 ms", lambda: fault_in_a_step(signal.SIGKILL)),
             ("suspend", "2 s", lambda: fault_in_a_step(signal.SIGSTOP)),
             ("close", "-", close_idle),
             ("orphans", "1 s", orphans_exit)]
    print(f"{'what':10s}{'claim':>8s}{'min ms':>10s}{'median ms':>11s}{'max ms':>10s}")
    for name, claim, fn in cases:
        ms = [fn() for _ in range(args.repeats)]
        print(f"{name:10s}{claim:>8s}{min(ms):10.0f}{np.median(ms):11.0f}{max(ms):10.0f}",
              flush=True)


if __name__ == "__main__":
    main()
