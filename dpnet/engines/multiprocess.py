"""The coordinator for N CPU worker processes (see DESIGN.md, "One step, as data flows").

Per step: write the batch's indices to shared memory, send each worker a STEP naming
its contiguous shard, collect the GRAD headers (the gradients are already in the
workers' shared slots), sum ``n_i * g_i / sum(n_i)`` in rank order, and let the model's
optimizer apply it. After the update the new weights are copied into the shared
weight block, stamped with the step number.

Failures: a dead worker is seen from its pid within one poll interval (50 ms); a
suspended one (SIGSTOP) after ``stall_timeout`` seconds; a live one that does not
answer within ``step_timeout`` is killed and treated as dead. Policy "respawn" starts a replacement under the same rank and re-sends only
that rank's shard -- the weights have not moved, so the step's result is exactly
that of an uninterrupted run. Policy "abort" raises ``WorkerError``.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import zmq

from ..data.batching import shard_bounds
from ..parallel import protocol as P
from ..parallel.monitor import WorkerMonitor, self_stats
from ..parallel.shm import SharedArray
from ..parallel.transport import Router
from .errors import WorkerError
from .tasks import signature_of, stateful, task_for

log = logging.getLogger(__name__)
POLL_S = 0.05
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def default_workers():
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def _exit_reason(code):
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _tag(name):
    """A shared-memory name tag from an array name ("train.x" -> "trainx")."""
    return "".join(c for c in name if c.isalnum())[:16] or "arr"


class _Proc:
    """One worker process and what the coordinator knows of it."""

    def __init__(self, rank, popen):
        self.rank, self.popen, self.pid = rank, popen, popen.pid
        self.ready = False
        self.checked_at, self.stopped_since = 0.0, None


class MultiprocessEngine:
    name = "multiprocess"

    def __init__(self, workers=None, blas_threads=1, on_failure="respawn", max_respawns=3,
                 step_timeout=300.0, stall_timeout=2.0, start_timeout=60.0,
                 eval_batch_size=2048):
        workers = default_workers() if workers is None else workers
        if not isinstance(workers, int) or workers <= 0:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if not isinstance(blas_threads, int) or blas_threads <= 0:
            raise ValueError(f"blas_threads must be a positive integer, got {blas_threads!r}")
        if on_failure not in ("respawn", "abort"):
            raise ValueError(f"on_failure must be 'respawn' or 'abort', got {on_failure!r}")
        self.n_workers, self.blas_threads = workers, blas_threads
        self.on_failure, self.max_respawns = on_failure, max_respawns
        for name, v in (("step_timeout", step_timeout), ("stall_timeout", stall_timeout),
                        ("start_timeout", start_timeout)):
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
        self.step_timeout, self.start_timeout = step_timeout, start_timeout
        self.stall_timeout = stall_timeout
        self.eval_batch_size = eval_batch_size
        self.procs, self.shm = {}, {}
        self.router = None
        self.monitor = WorkerMonitor()
        self.respawns = 0
        self._failures_in_a_row = 0
        self._final_stats = None
        self.model = None
        # Where a training step's time goes, summed over steps (see step_timing()).
        self._timing = {"steps": 0, "gradient_s": 0.0, "slowest_worker_s": 0.0}

    # -- life cycle ------------------------------------------------------------------
    def start(self, model, datasets, seed=0):
        """Put the data and weights in shared memory and start the workers."""
        if self.model is not None:
            raise RuntimeError("this engine is already started")
        self.model, self.seed = model, int(seed)
        self.step_timing(reset=True)       # a restarted engine reports this run only
        self.monitor.add(os.getpid())      # primes CPU% so the summary covers the run
        try:
            self.task_cls = task_for(model)
            arrays, self.task_options = self.task_cls.shared_arrays(
                model, {k: v for k, v in datasets.items() if v is not None})
            for name, arr in arrays.items():
                self.shm[name] = SharedArray.from_array(arr, tag=_tag(name))
            self.shm["weights"] = SharedArray.from_array(model.params, tag="weights")
            # The coordinator's model updates the shared block in place: publishing new
            # weights costs nothing (workers only read it between steps, while idle).
            model.rebind(params=self.shm["weights"].array)
            self.shm["grads"] = SharedArray.create((self.n_workers, model.n_params),
                                                   model.dtype, tag="grads")
            self.shm["version"] = SharedArray.create((1,), np.int64, tag="version")
            self.arrays = {k: s.array for k, s in self.shm.items()}
            self.version = 0
            self.router = Router("ipc")
            self._signature = signature_of(model)
            for rank in range(self.n_workers):
                self._spawn(rank)
            self._await_ready(list(range(self.n_workers)))
        except BaseException:
            self.close()
            raise

    def _worker_config(self, rank):
        return {"rank": rank, "task": self.task_cls.name, "task_options": self.task_options,
                "endpoint": self.router.endpoint,
                "coordinator_pid": os.getpid(), "seed": self.seed,
                "model": self.model.config(), "eval_batch_size": self.eval_batch_size,
                "shm": {k: s.describe() for k, s in self.shm.items()}}

    def _spawn(self, rank):
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(self.blas_threads)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        popen = subprocess.Popen(
            [sys.executable, "-m", "workers.cpu_worker", json.dumps(self._worker_config(rank))],
            env=env, stdin=subprocess.DEVNULL, cwd=_ROOT)
        self.procs[rank] = _Proc(rank, popen)
        self.monitor.add(popen.pid)

    def _await_ready(self, ranks):
        """Wait for HELLO from ``ranks``, checking each worker's model signature."""
        waiting = set(ranks)
        deadline = time.monotonic() + self.start_timeout
        while waiting:
            msg = self.router.recv_valid(POLL_S)
            if msg is not None:
                rank = self._rank_of(msg)
                if msg.kind == P.HELLO and rank in waiting:
                    P.check_signature(self._signature, msg.header["signature"])
                    self.router.send(rank, P.WELCOME, {"rank": rank,
                                                       "weights_version": self.version})
                    self.procs[rank].ready = True
                    waiting.discard(rank)
                elif msg.kind == P.ERROR:
                    self._raise_worker_error(msg)
            for rank in list(waiting):
                code = self.procs[rank].popen.poll()
                if code is not None:
                    raise WorkerError(f"worker {rank} (pid {self.procs[rank].pid}) failed to "
                                      f"start: {_exit_reason(code)}", rank=rank)
            if time.monotonic() > deadline:
                raise WorkerError(f"workers {sorted(waiting)} did not start within "
                                  f"{self.start_timeout:.0f} s", rank=min(waiting))

    def close(self):
        """Stop the workers and remove every shared-memory segment. Idempotent."""
        if self.procs and self._final_stats is None:
            self._final_stats = self._collect_stats()
        for rank, proc in list(self.procs.items()):
            if proc.popen.poll() is None and self.router is not None:
                try:
                    self.router.send(rank, P.STOP, {"reason": "done"})
                except Exception:
                    pass
        deadline = time.monotonic() + 2.0
        for proc in self.procs.values():
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        self.procs = {}
        if self.model is not None and "weights" in self.shm:
            # give the model private memory again before the segment goes away
            self.model.rebind(params=np.array(self.shm["weights"].array))
        if self.router is not None:
            self.router.close()
            self.router = None
        for s in self.shm.values():
            s.unlink()
            s.close()
        self.shm, self.arrays = {}, {}
        self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one step --------------------------------------------------------------------
    def gradient(self, step, batch):
        """Mean gradient of one step into model.grads: (loss, n, correct)."""
        t0 = time.perf_counter()
        units, extra = self.task_cls.plan_step(self.arrays, step, batch)
        shards = {r: b for r, b in enumerate(shard_bounds(units, self.n_workers)) if b[1] > b[0]}

        # Each unit (a sample, or a stream of T characters) weighs the same, so shard
        # r's weight n_r / n is its share of the units, known before it is sent. The
        # worker scales its gradient by it in place (while it is hot in its cache), and
        # the coordinator only adds the slots -- in rank order, never arrival order (so
        # the sum does not depend on timing), but as soon as the next rank in order has
        # answered: rank 0 is folded in while rank 1 is still computing.
        def message(rank):
            start, stop = shards[rank]
            return P.STEP, {"step": step, "rank": rank, "start": start, "stop": stop,
                            "weights_version": self.version,
                            "scale": (stop - start) / units, **extra}

        order = sorted(shards)
        done = []
        g, slots = self.model.grads, self.arrays["grads"]

        def fold(replies):
            while len(done) < len(order) and order[len(done)] in replies:
                rank = order[len(done)]
                if not done:
                    np.copyto(g, slots[rank])
                else:
                    np.add(g, slots[rank], out=g)
                done.append(rank)

        replies = self._round(step, P.GRAD, order, message, on_reply=fold)
        fold(replies)
        tm = self._timing
        tm["steps"] += 1
        tm["gradient_s"] += time.perf_counter() - t0
        tm["slowest_worker_s"] += max(float(replies[r].get("seconds", 0.0)) for r in order)
        n = sum(replies[r]["n"] for r in order)
        loss = sum(replies[r]["n"] * replies[r]["loss"] for r in order) / n
        return loss, n, sum(replies[r]["correct"] for r in order)

    def weights_changed(self, step):
        """The model updated the shared weights in place: stamp their version."""
        self.version = int(step)
        self.arrays["version"][0] = self.version

    def evaluate(self, name):
        """(mean loss, n, correct) over a whole dataset, sharded over the workers."""
        units, extra = self.task_cls.plan_eval(self.arrays, name)
        shards = {r: b for r, b in enumerate(shard_bounds(units, self.n_workers)) if b[1] > b[0]}

        def message(rank):
            start, stop = shards[rank]
            return P.EVAL, {"step": self.version, "rank": rank, "start": start, "stop": stop,
                            "weights_version": self.version, "split": name, **extra}

        replies = self._round(self.version, P.EVAL_RESULT, list(shards), message)
        total = sum(r["n"] for r in replies.values())
        loss = sum(replies[r]["n"] * replies[r]["loss"] for r in sorted(replies)) / max(total, 1)
        return loss, total, sum(r["correct"] for r in replies.values())

    def get_state(self, chunk):
        """The carried (h, c) that training chunk ``chunk`` starts from (LSTM only);
        it sits in shared memory, so the coordinator reads it directly."""
        return stateful(self.task_cls).read_state(self.arrays, chunk)

    def set_state(self, chunk, state):
        """Make training chunk ``chunk`` start from ``state`` = (h, c) (LSTM only)."""
        stateful(self.task_cls).write_state(self.arrays, chunk, state)

    def _round(self, step, reply_kind, ranks, message, on_reply=None):
        """Send ``message(rank)`` to each rank and collect their replies (headers),
        surviving worker deaths by the failure policy. ``on_reply(replies)`` runs after
        each accepted reply."""
        for rank in ranks:
            self._send(rank, *message(rank))
        replies = {}
        sent_at = {rank: time.monotonic() for rank in ranks}
        while len(replies) < len(ranks):
            msg = self.router.recv_valid(POLL_S)
            if msg is not None:
                rank = self._rank_of(msg)
                if msg.kind == P.ERROR:
                    self._raise_worker_error(msg)
                elif (msg.kind == reply_kind and msg.header["step"] == step
                      and rank in sent_at and rank not in replies):
                    replies[rank] = msg.header
                    if on_reply is not None:
                        on_reply(replies)
                elif msg.kind == P.HELLO and rank in self.procs and not self.procs[rank].ready:
                    # a replacement introducing itself: handshake, then give it its shard
                    P.check_signature(self._signature, msg.header["signature"])
                    self.router.send(rank, P.WELCOME, {"rank": rank,
                                                       "weights_version": self.version})
                    self.procs[rank].ready = True
                    if rank in sent_at and rank not in replies:
                        self._send(rank, *message(rank))
                        sent_at[rank] = time.monotonic()
                # anything else (heartbeats, BYE, stale replies of an older step): dropped
            now = time.monotonic()
            for rank in ranks:
                if rank in replies:
                    continue
                proc = self.procs[rank]
                code = proc.popen.poll()
                if code is not None:
                    self._failed(rank, _exit_reason(code))
                    sent_at[rank] = time.monotonic() + self.start_timeout   # time to start
                elif proc.ready and (now - sent_at[rank] > self.step_timeout
                                     or self._stalled(proc, now)):
                    proc.popen.kill()
                    proc.popen.wait()
                    why = ("was suspended" if proc.stopped_since is not None else
                           f"did not answer within {self.step_timeout:g} s")
                    self._failed(rank, why)
                    sent_at[rank] = time.monotonic() + self.start_timeout
                elif not proc.ready and now - sent_at[rank] > self.step_timeout:
                    raise WorkerError(f"replacement worker {rank} did not start", rank=rank)
        self._failures_in_a_row = 0
        return replies

    def _stalled(self, proc, now):
        """A worker suspended (SIGSTOP) for longer than stall_timeout. Checked only every
        ~0.25 s per worker: reading /proc is cheap, but not free."""
        if now - proc.checked_at < 0.25:
            return False
        proc.checked_at = now
        if not self.monitor.is_stopped(proc.pid):
            proc.stopped_since = None
            return False
        if proc.stopped_since is None:
            proc.stopped_since = now
        return now - proc.stopped_since > self.stall_timeout

    def _send(self, rank, kind, header):
        """Send, tolerating a peer that just died: the liveness check will see it."""
        try:
            self.router.send(rank, kind, header)
        except zmq.ZMQError as e:
            log.info("send to worker %d failed: %s", rank, e)

    def _failed(self, rank, reason):
        proc = self.procs[rank]
        what = f"worker {rank} (pid {proc.pid}) {reason}"
        self.monitor.remove(proc.pid)
        if self.on_failure == "abort":
            raise WorkerError(what, rank=rank)
        self._failures_in_a_row += 1
        if self._failures_in_a_row > self.max_respawns:
            raise WorkerError(f"{what}; giving up after {self.max_respawns} respawns in a row",
                              rank=rank)
        # one line for the person at the terminal (not a logging record too: the CLI
        # leaves logging unconfigured, and a library caller's handler would print twice)
        print(f"dpnet: {what}; starting a replacement", file=sys.stderr)
        self.respawns += 1
        self._spawn(rank)

    def _rank_of(self, msg):
        ident = msg.identity or b""
        try:
            return int(ident[1:]) if ident[:1] == b"w" else -1
        except ValueError:
            return -1

    def _raise_worker_error(self, msg):
        h = msg.header
        raise WorkerError(f"worker {h['rank']} raised {h['message']}", rank=h["rank"],
                          traceback=h["traceback"])

    # -- reporting -------------------------------------------------------------------
    def _collect_stats(self):
        per = self.monitor.stats(full=True)
        workers = []
        for rank, proc in sorted(self.procs.items()):
            s = per.get(proc.pid, {})
            workers.append({"rank": rank, "pid": proc.pid, **s})
        return {"workers": self.n_workers, "blas_threads": self.blas_threads,
                "respawns": self.respawns, "step_seconds": self.step_timing(),
                "per_worker": workers,
                "coordinator": per.get(os.getpid()) or self_stats(full=True)}

    def step_timing(self, reset=False):
        """Mean seconds per training step so far: ``gradient`` (the coordinator's wall
        time from sending the shards to holding the summed gradient), ``slowest_worker``
        (the compute time the slowest worker reported), and ``overhead``, their
        difference: messages, process wake-ups, late starts and the fold. With the
        optimizer's time this bounds what more workers can gain. ``reset`` starts the
        sums afresh after reading them."""
        tm = self._timing
        if reset:
            self._timing = {k: type(v)() for k, v in tm.items()}
        if not tm["steps"]:
            return {}
        g, w = tm["gradient_s"] / tm["steps"], tm["slowest_worker_s"] / tm["steps"]
        return {"steps": tm["steps"], "gradient": g, "slowest_worker": w, "overhead": g - w}

    def stats(self):
        return self._final_stats if self._final_stats is not None else (
            self._collect_stats() if self.procs else {})
