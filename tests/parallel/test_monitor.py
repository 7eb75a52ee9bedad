"""WorkerMonitor and reap_children on real spawned processes."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from dpnet.parallel.monitor import (WorkerMonitor, child_processes, is_alive, reap_children,
                                    self_stats)


def _sleeper(ready, ignore_term=False):
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ready.set()
    time.sleep(60)


def _start(ctx, **kwargs):
    ready = ctx.Event()
    p = ctx.Process(target=_sleeper, args=(ready,), kwargs=kwargs)
    p.start()
    assert ready.wait(20), "child did not start"
    return p


@pytest.fixture
def ctx():
    c = mp.get_context("spawn")
    yield c
    reap_children(timeout=2.0)
    assert child_processes() == []


@pytest.mark.timeout(30)
def test_a_sigkilled_worker_is_reported_dead(ctx):
    p = _start(ctx)
    mon = WorkerMonitor([p.pid])
    assert mon.is_alive(p.pid) and mon.dead() == []
    os.kill(p.pid, signal.SIGKILL)
    t0 = time.monotonic()
    while mon.is_alive(p.pid) and time.monotonic() - t0 < 10.0:   # latency: bench_failures
        time.sleep(0.01)
    # Not joined yet: the child is a zombie, and a zombie counts as dead.
    assert not mon.is_alive(p.pid) and mon.dead() == [p.pid] and not is_alive(p.pid)
    row = mon.stats()[p.pid]
    assert row["alive"] is False and row["rss"] is None
    reap_children(timeout=2.0)
    assert p.exitcode == -signal.SIGKILL            # reaped through multiprocessing's own API
    assert child_processes() == []


@pytest.mark.timeout(30)
def test_stats_report_cpu_and_memory(ctx):
    p = _start(ctx)
    mon = WorkerMonitor([p.pid])
    row = mon.stats()[p.pid]
    assert row["alive"] and row["rss"] > 1_000_000 and row["num_threads"] >= 1
    assert row["cpu_percent"] is not None and row["cpu_percent"] >= 0.0
    if sys.platform.startswith("linux"):
        assert 0 < row["uss"] <= row["rss"] and row["pss"] > 0
    assert mon.stats(full=False)[p.pid]["uss"] is None
    assert self_stats()["rss"] > 0
    mon.remove(p.pid)
    assert mon.pids == []
    with pytest.raises(KeyError, match="not monitored"):
        mon.is_alive(p.pid)


@pytest.mark.timeout(30)
def test_reap_kills_children_that_ignore_sigterm(ctx):
    stubborn = _start(ctx, ignore_term=True)
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.monotonic()
    ended = reap_children(timeout=0.5)
    assert time.monotonic() - t0 < 4 * 0.5 + 5        # its bound, and a busy machine's slack
    assert {stubborn.pid, plain.pid} <= set(ended)
    assert stubborn.exitcode == -signal.SIGKILL
    assert plain.poll() is not None                 # waited for: not a zombie
    assert child_processes() == []
    assert reap_children(timeout=0.5) == []         # nothing left to do


def test_vanished_and_foreign_pids_never_raise():
    gone_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_pid.wait()
    mon = WorkerMonitor([gone_pid.pid, 1])
    assert mon.dead() == [gone_pid.pid] and not is_alive(gone_pid.pid)
    assert mon.stats()[gone_pid.pid]["alive"] is False
    assert mon.is_alive(1) and isinstance(mon.stats()[1], dict)   # init: maybe AccessDenied
