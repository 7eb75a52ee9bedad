"""Worker processes seen from outside (psutil): alive or dead, CPU and memory; reaping.

A zombie counts as dead: it has stopped running, and only waits for its parent to
collect its exit status. Nothing here raises for a process that vanished or that we may
not inspect (NoSuchProcess, AccessDenied): those become "dead" or missing numbers.
"""
from __future__ import annotations

import multiprocessing
import os

import psutil

_GONE = (psutil.NoSuchProcess, psutil.ZombieProcess)
_DEAD_STATUSES = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})


def _alive(proc):
    try:
        # is_running() also notices that the pid was reused by another process.
        return proc.is_running() and proc.status() not in _DEAD_STATUSES
    except _GONE:
        return False
    except psutil.AccessDenied:
        return True      # it exists; we just may not look at it


def is_alive(pid):
    """True if ``pid`` is a running, non-zombie process."""
    try:
        return _alive(psutil.Process(pid))
    except _GONE:
        return False


class WorkerMonitor:
    """Liveness and resource use of a set of pids (typically rank -> worker pid).

    Keeps one ``psutil.Process`` per pid so that pid reuse is detected and CPU% is
    measured between successive ``stats()`` calls (the first call primes it: 0.0).
    """

    def __init__(self, pids=()):
        self._procs = {}
        for pid in pids:
            self.add(pid)

    def add(self, pid):
        pid = int(pid)
        proc = None                    # already gone: reported dead, never raises
        try:
            proc = psutil.Process(pid)
            proc.cpu_percent(None)     # prime: the next call measures from now
        except (*_GONE, psutil.AccessDenied):
            pass
        self._procs[pid] = proc

    def remove(self, pid):
        self._procs.pop(int(pid), None)

    @property
    def pids(self):
        return list(self._procs)

    def is_alive(self, pid):
        proc = self._procs.get(int(pid))
        if proc is None:
            if int(pid) not in self._procs:
                raise KeyError(f"pid {pid!r} is not monitored")
            return False
        return _alive(proc)

    def is_stopped(self, pid):
        """True if ``pid`` is suspended (SIGSTOP, a debugger, ^Z): alive but not answering."""
        proc = self._procs.get(int(pid))
        try:
            return proc is not None and proc.status() in (psutil.STATUS_STOPPED,
                                                           psutil.STATUS_TRACING_STOP)
        except (*_GONE, psutil.AccessDenied):
            return False

    def dead(self):
        """The monitored pids that are no longer running (zombies included)."""
        return [pid for pid in self._procs if not self.is_alive(pid)]

    def stats(self, full=True):
        """{pid: {alive, cpu_percent, rss, uss, pss, num_threads}}; None where unknown.

        ``full`` reads USS/PSS (``memory_full_info``, a walk over the process's page
        tables: a few ms for a large process; fine for a summary, not per step).
        """
        return {pid: _stats(proc, full) for pid, proc in self._procs.items()}


def _stats(proc, full):
    out = {"alive": False, "cpu_percent": None, "rss": None, "uss": None, "pss": None,
           "num_threads": None}
    if proc is None or not _alive(proc):
        return out
    out["alive"] = True
    try:
        with proc.oneshot():
            out["cpu_percent"] = proc.cpu_percent(None)
            out["num_threads"] = proc.num_threads()
            mem = proc.memory_info()
            out["rss"] = mem.rss
            if full:
                try:
                    info = proc.memory_full_info()
                    out["uss"] = getattr(info, "uss", None)
                    out["pss"] = getattr(info, "pss", None)   # Linux only
                except (psutil.AccessDenied, NotImplementedError):
                    pass
    except _GONE:
        out["alive"] = False
    except psutil.AccessDenied:
        pass
    return out


def self_stats(full=True):
    """The same numbers for the calling process (the coordinator's own row)."""
    proc = psutil.Process()
    proc.cpu_percent(None)
    return _stats(proc, full)


def _is_helper(proc):
    # multiprocessing's resource tracker (and forkserver) are our children too, but they
    # must outlive the workers: the tracker is what unlinks shared memory after a crash.
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False
    return "multiprocessing.resource_tracker" in cmdline or "multiprocessing.forkserver" in cmdline


def child_processes(include_helpers=False):
    """This process's live descendants (psutil.Process), helpers excluded by default."""
    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [p for p in kids if include_helpers or not _is_helper(p)]


def reap_children(timeout=3.0, processes=()):
    """Terminate, then kill, every child process left, and wait for them: no zombies.

    ``multiprocessing.Process`` children (those given in ``processes`` and all of
    ``multiprocessing.active_children()``) are ended through their own API first, so
    their ``exitcode`` stays right and multiprocessing never signals a reaped pid; then
    any other descendant (except multiprocessing's resource tracker) through psutil.
    Returns the pids that were still running. Takes at most about ``4 * timeout``.
    """
    ended = []
    candidates = {id(p): p for p in (*processes, *multiprocessing.active_children())}
    live = [p for p in candidates.values() if p.pid is not None and p.exitcode is None]
    for p in live:
        p.terminate()
    for p in live:
        p.join(timeout)
        if p.exitcode is None:
            p.kill()
            p.join(timeout)
        ended.append(p.pid)
    multiprocessing.active_children()   # lets multiprocessing reap what it started
    others = [p for p in child_processes() if p.pid != os.getpid()]
    for p in others:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(others, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)
    ended.extend(p.pid for p in others)
    return ended
