"""The worker seam: a group of workers of one kind, as the coordinator drives it.

The coordinator (``coordinator.py``) writes a step once -- send each rank its shard,
collect the replies, fold the gradients in rank order, apply the failure policy --
against this small interface. A kind of worker is a ``WorkerGroup`` subclass:

    group.start(config_of, arrays)  start ranks 0..n-1; config_of(rank) -> JSON-able dict;
                                    arrays: the run's data (name -> array), for kinds
                                    whose workers do not read it in shared memory
    group.send(rank, kind, header, *arrays)
    group.recv(timeout_s)           the next message from any peer, with its rank
                                    resolved from the sender (None: not a worker of this
                                    run); refused messages are counted in ``group.drops``
    group.problem(rank, now)        what the kind itself knows is wrong with a rank
                                    (exited, suspended), or None
    group.replace(rank)             stop what is left of a rank and start a new one
    group.stop()                    stop every rank; ``stats()`` what they used

and a few facts the coordinator plans by: ``size``; ``local`` (the workers attach
the coordinator's shared memory for data and stream state); ``weights_in_shm`` (they
read the weights in place, version-stamped; else each STEP/EVAL carries them as a raw
frame when they changed); ``grads_in_shm`` (a gradient lands in the rank's shared
slot; else it comes back as the GRAD reply's raw frame); ``index_in_shm`` (a step's
sample indices are read from a shared block; else they are the STEP's frame);
``update_on_worker`` (the worker holds the weights and applies the optimizer itself;
one rank only); ``elastic`` (ranks come and go: the group cannot restart a lost
worker, so the coordinator re-shards a round over the ranks that remain and a
newcomer takes a free rank -- workers on other machines).

Liveness that needs no pid -- heartbeats and silence, step and start deadlines -- is
the coordinator's, for every kind; ``problem`` adds what a kind can see beyond that.

``ProcessGroup`` is the base of the kinds that run as local child processes
(``python -m <worker module> CONFIG_JSON``): the CPU workers (``cpu.py``) and the GPU
worker (``gpu.py``).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

from ..parallel.monitor import WorkerMonitor, self_stats
from ..parallel.transport import Router, new_identity

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
log = logging.getLogger(__name__)


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_env(threads):
    """The environment that gives a new process ``threads`` BLAS threads (BLAS reads it
    once, when it loads)."""
    return {var: str(threads) for var in BLAS_THREAD_VARS}


class Drops:
    """Messages refused before use -- undecodable, from a peer that is no worker of the
    run, or not what was asked for -- counted; the first few logged, then only counted,
    so that a flood can neither steer a run nor fill a terminal."""
    LOGGED = 3

    def __init__(self):
        self.count = 0
        self.reasons = {}

    def __call__(self, reason):
        self.count += 1
        key = reason.split(":")[0]
        self.reasons[key] = self.reasons.get(key, 0) + 1
        if self.count <= self.LOGGED:
            log.warning("dropped a message: %s", reason)
        elif self.count == self.LOGGED + 1:
            log.warning("dropping more messages: they are counted, not logged")

    def summary(self):
        return {"dropped": self.count, "why": dict(self.reasons)} if self.count else {}


def exit_reason(code):
    """How a child process ended, in words."""
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Ranked(tuple):
    """A received message with the rank of its sender: ``(rank, msg)``; rank is None
    for a peer that is not a worker of this group."""
    __slots__ = ()

    def __new__(cls, rank, msg):
        return super().__new__(cls, (rank, msg))

    rank = property(lambda self: self[0])
    msg = property(lambda self: self[1])
    kind = property(lambda self: self[1].kind)
    header = property(lambda self: self[1].header)
    arrays = property(lambda self: self[1].arrays)


class WorkerGroup:
    """The interface (see the module docstring). Subclasses set the class facts."""
    kind = "?"
    local = False
    weights_in_shm = False
    grads_in_shm = False
    index_in_shm = False
    update_on_worker = False
    elastic = False

    def __init__(self, size):
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"workers must be a positive integer, got {size!r}")
        self.size = size
        self.drops = Drops()

    def describe(self):
        """A short phrase for the user: "2 CPU worker processes"."""
        return f"{self.size} {self.kind} worker{'s' if self.size > 1 else ''}"

    def start(self, config_of, arrays=None):
        raise NotImplementedError

    def send(self, rank, kind, header, *arrays):
        raise NotImplementedError

    def recv(self, timeout_s):
        raise NotImplementedError

    def problem(self, rank, now):
        return None

    def replace(self, rank):
        raise NotImplementedError

    def stop(self, stop_message=None):
        """Stop every rank (``stop_message`` = (kind, header) first, where a rank can
        still take it). Idempotent."""
        raise NotImplementedError

    def stats(self):
        return {}


class _Child:
    """One child process (one incarnation of a rank) and what is known of it."""

    def __init__(self, rank, popen, identity, heartbeat_identity):
        self.rank, self.popen, self.pid = rank, popen, popen.pid
        self.identity, self.heartbeat_identity = identity, heartbeat_identity
        self.checked_at, self.stopped_since = 0.0, None


class ProcessGroup(WorkerGroup):
    """Workers that are child processes of the coordinator, on an ipc socket in a
    private directory. Subclasses name the ``module`` and may add to the environment
    (``env``) and to each rank's config (``extra_config``)."""
    local = True
    module = None

    def __init__(self, size, stall_timeout=2.0):
        super().__init__(size)
        if not isinstance(stall_timeout, (int, float)) or not stall_timeout > 0:
            raise ValueError(f"stall_timeout must be a positive number of seconds, "
                             f"got {stall_timeout!r}")
        self.stall_timeout = stall_timeout
        self.children = {}
        self._rank_of = {}                  # identity -> rank, for live incarnations only
        self.router = None
        self.monitor = WorkerMonitor()
        self._config_of = None

    # -- what subclasses adapt --------------------------------------------------------
    def env(self):
        return {}

    def extra_config(self, rank):
        return {}

    # -- the interface ----------------------------------------------------------------
    def start(self, config_of, arrays=None):
        self._config_of = config_of        # (arrays: the workers find them in shared memory)
        self.monitor.add(os.getpid())      # primes CPU% so the summary covers the run
        self.router = Router("ipc")
        for rank in range(self.size):
            self._spawn(rank)

    def _spawn(self, rank):
        env = dict(os.environ)
        env.update(self.env())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        ident, beat = new_identity(rank), new_identity(rank, heartbeat=True)
        cfg = dict(self._config_of(rank), rank=rank, endpoint=self.router.endpoint,
                   coordinator_pid=os.getpid(), identity=ident.decode(),
                   heartbeat_identity=beat.decode(), **self.extra_config(rank))
        # the config (with the worker's identities) goes through a pipe, not the
        # command line, where any process of the machine could read it. A session of
        # its own: a Ctrl-C in the terminal (SIGINT to the foreground process group)
        # reaches the coordinator alone, never a worker still starting up, before it
        # can ignore signals (tracebacks from its imports, a "crashed" worker).
        popen = subprocess.Popen([sys.executable, "-m", self.module, "-"], env=env,
                                 stdin=subprocess.PIPE, cwd=_ROOT, start_new_session=True)
        try:
            popen.stdin.write(json.dumps(cfg).encode())
            popen.stdin.close()
        except OSError:                     # it died at once: problem() will say so
            pass
        self.children[rank] = _Child(rank, popen, ident, beat)
        self._rank_of[ident] = self._rank_of[beat] = rank
        self.monitor.add(popen.pid)

    def send(self, rank, kind, header, *arrays):
        self.router.send(self.children[rank].identity, kind, header, *arrays)

    def recv(self, timeout_s):
        msg = self.router.recv_valid(timeout_s, on_bad=lambda e: self.drops(str(e)))
        if msg is None:
            return None
        return Ranked(self._rank_of.get(msg.identity), msg)

    def pid(self, rank):
        return self.children[rank].pid

    def problem(self, rank, now):
        """Exited (seen from the pid at once), or suspended (SIGSTOP, a debugger) for
        longer than ``stall_timeout``."""
        child = self.children[rank]
        code = child.popen.poll()
        if code is not None:
            return exit_reason(code)
        if self._stalled(child, now):
            return "was suspended"
        return None

    def _stalled(self, child, now):
        # reading /proc is cheap, but not free: every ~0.25 s per worker
        if now - child.checked_at < 0.25:
            return False
        child.checked_at = now
        if not self.monitor.is_stopped(child.pid):
            child.stopped_since = None
            return False
        if child.stopped_since is None:
            child.stopped_since = now
        return now - child.stopped_since > self.stall_timeout

    def replace(self, rank):
        child = self.children[rank]
        if child.popen.poll() is None:
            child.popen.kill()
        child.popen.wait()
        self.monitor.remove(child.pid)
        # the old incarnation's identities die with it: a late message is a stranger's
        self._rank_of.pop(child.identity, None)
        self._rank_of.pop(child.heartbeat_identity, None)
        self._spawn(rank)

    def stop(self, stop_message=None):
        """STOP (``stop_message`` = (kind, header)) to every live child, then SIGKILL
        whatever has not exited within 2 s. Idempotent."""
        if stop_message is not None and self.router is not None:
            for rank, child in self.children.items():
                if child.popen.poll() is None:
                    try:
                        self.router.send(child.identity, *stop_message)
                    except Exception:
                        pass
        deadline = time.monotonic() + 2.0
        for child in self.children.values():
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        self.children, self._rank_of = {}, {}
        if self.router is not None:
            self.router.close()
            self.router = None

    def stats(self):
        per = self.monitor.stats(full=True)
        workers = [{"rank": rank, "pid": c.pid, **per.get(c.pid, {})}
                   for rank, c in sorted(self.children.items())]
        return {"per_worker": workers, **self.drops.summary(),
                "coordinator": per.get(os.getpid()) or self_stats(full=True)}
