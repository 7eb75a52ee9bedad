"""The coordinator: one step of data-parallel training, written once for every kind of
worker (docs/ARCHITECTURE.md, "One step, as data flows").

Per step: plan the batch with the model's task, send each rank a STEP naming its
contiguous shard (the shard's indices in shared memory, or as a raw frame; the
weights in shared memory, or as a raw frame when they changed), collect the GRAD
replies, add the gradients in rank order -- each already scaled by its shard's share
of the batch -- whether they sit in shared-memory slots or came as frames, and let
the model's optimizer apply the sum. What differs between kinds of worker is behind
``dpnet.engines.group.WorkerGroup``.

Failures: a rank that raises comes back as ``WorkerError`` with its traceback. A
rank that dies or is suspended (as its group can see), sends nothing at all for
``silence_timeout`` (workers heartbeat even while busy) or does not answer within
``step_timeout`` is replaced under the same rank and only its shard is re-sent --
the weights have not moved, so the step's result is that of an uninterrupted run
("respawn", at most ``max_respawns`` failures in a row) -- or ends the run with a
``WorkerError`` naming it ("abort").
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

import numpy as np

from ..data.batching import shard_bounds
from ..models.registry import task_for
from ..models.tasks import stateful
from ..parallel import protocol as P
from ..parallel.cleanup import describe, sweep
from ..parallel.shm import SharedArray, check_room
from ..parallel.transport import HEARTBEAT_S
from .errors import StepAbandoned, WorkerError, WorkerUserError

log = logging.getLogger(__name__)
POLL_S = 0.05
STOP_GRACE_S = 2.0    # after a stop signal, how long a step may still wait for a worker
DRAIN = 1000          # queued messages read after a round's replies are all in


def _tag(name):
    """A shared-memory name tag from an array name ("train.x" -> "trainx")."""
    return "".join(c for c in name if c.isalnum())[:16] or "arr"


def _seconds(name, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {v!r}")
    return float(v)


class Coordinator:
    """An engine over a ``WorkerGroup`` (see the module docstring)."""
    name = "coordinator"

    def __init__(self, group, on_failure="respawn", max_respawns=3, step_timeout=300.0,
                 start_timeout=60.0, silence_timeout=30.0, eval_batch_size=2048,
                 on_hello=None):
        if on_failure not in ("respawn", "abort"):
            raise ValueError(f"on_failure must be 'respawn' or 'abort', got {on_failure!r}")
        self.group = group
        self.n_workers = group.size
        self.on_failure, self.max_respawns = on_failure, max_respawns
        self.step_timeout = _seconds("step_timeout", step_timeout)
        self.start_timeout = _seconds("start_timeout", start_timeout)
        self.silence_timeout = _seconds("silence_timeout", silence_timeout)
        self.eval_batch_size = eval_batch_size
        self.on_hello = on_hello           # on_hello(rank, header): e.g. name the device
        self.stop_when(None)
        self.worker_info = {}              # rank -> what its HELLO said beyond the basics
        self.shm, self.arrays = {}, {}
        self.respawns = 0
        self._failures_in_a_row = 0
        self._final_stats = None
        self.model = None
        self._started = False
        self._sent_version, self._host_stale = {}, False
        self._attempt = 0                  # numbers each sending of a shard (see _accept)
        self.stale_replies = 0             # replies to an earlier sending, or repeated
        # Where a training step's time goes, summed over steps (see step_timing()).
        self._timing = {"steps": 0, "gradient_s": 0.0, "slowest_worker_s": 0.0}

    # -- life cycle ------------------------------------------------------------------
    def start(self, model, datasets, seed=0):
        """Place the data and weights where the group's workers find them, and start
        the workers."""
        if self.model is not None:
            # the engine of an earlier run (fit called again with engine=): that run
            # is wound up first, its weights back in its model, and this one starts
            # on fresh workers and segments, its counts from zero. Remote workers are
            # told the run is over and leave: such an engine serves one run.
            if self.group.elastic:
                raise RuntimeError("this engine's remote workers were told its run is "
                                   "over: make a new engine for another run")
            try:
                self.sync_to_host()       # (a GPU worker's newer weights, if it lives)
            except WorkerError:
                pass
            self.close()
            self.group.drops = type(self.group.drops)()
        self.respawns = self.stale_replies = self._failures_in_a_row = 0
        self.start_seconds = 0.0           # until every worker was ready (remote: joined)
        t0 = time.perf_counter()
        self.worker_info = {}
        self._final_stats = None
        self.model, self.seed = model, int(seed)
        self.step_timing(reset=True)       # a restarted engine reports this run only
        try:
            self.task_cls = task_for(model)
            arrays, self.task_options = self.task_cls.shared_arrays(
                model, {k: v for k, v in datasets.items() if v is not None})
            if self.task_cls.indexed and self.group.index_in_shm:
                arrays["index"] = np.zeros(max(len(arrays["train.x"]), 1), np.int64)
            self._place(model, arrays)
            self.version = 0
            self._sent_version = {}        # rank -> weights version it holds (frames)
            self._host_stale = False       # update_on_worker: the worker's weights are newer
            self._ready = {r: False for r in range(self.n_workers)}
            self._heard = {}
            self._signature = P.signature_of(model)
            self._started = True
            # what changes during training is not data: a worker makes its own
            self.group.start(self._worker_config,
                             {k: v for k, v in self.arrays.items()
                              if k not in self.task_cls.carried})
            self._await_ready(list(range(self.n_workers)))
            if self.group.update_on_worker:
                self._push()
            self.start_seconds = time.perf_counter() - t0
        except BaseException:
            self.close()
            raise

    def _place(self, model, arrays):
        """Shared memory for what the group's workers read in place: what dead runs
        left is removed first, and a run that cannot fit is refused in one line before
        any segment is made (each segment is backed for real when made: no SIGBUS)."""
        if not self.group.local:
            # workers elsewhere get the data from the group (their own copy): nothing
            # to share here, the coordinator's model keeps its own weights
            self.arrays = dict(arrays)
            return
        line = describe(sweep())
        if line is not None:
            print(f"dpnet: {line}", file=sys.stderr)
        need = sum(a.nbytes for a in arrays.values()) + 8
        if self.group.weights_in_shm:
            need += model.params.nbytes
        if self.group.grads_in_shm:
            need += self.n_workers * model.grads.nbytes
        check_room(need)
        for name, arr in arrays.items():
            self.shm[name] = SharedArray.from_array(arr, tag=_tag(name))
        if self.group.weights_in_shm:
            self.shm["weights"] = SharedArray.from_array(model.params, tag="weights")
            # The coordinator's model updates the shared block in place: publishing new
            # weights costs nothing (workers only read it between steps, while idle).
            # Its own array is kept, to take the weights back at the end: what holds
            # views of it (a layer's W taken before, scikit-learn's coefs_) stays true.
            self._home = model.params
            model.rebind(params=self.shm["weights"].array)
        if self.group.grads_in_shm:
            self.shm["grads"] = SharedArray.create((self.n_workers, model.n_params),
                                                   model.dtype, tag="grads")
        self.shm["version"] = SharedArray.create((1,), np.int64, tag="version")
        self.arrays = {k: s.array for k, s in self.shm.items()}

    def _worker_config(self, rank):
        return {"task": self.task_cls.name, "task_options": self.task_options,
                "seed": self.seed, "model": self.model.config(),
                "params_bytes": int(self.model.params.nbytes),
                "carried": {k: [self.arrays[k].dtype.str, list(self.arrays[k].shape)]
                            for k in self.task_cls.carried if k in self.arrays},
                "eval_batch_size": self.eval_batch_size,
                # at least four heartbeats within the silence the coordinator tolerates
                "heartbeat_s": min(HEARTBEAT_S, self.silence_timeout / 4),
                "shm": {k: s.describe() for k, s in self.shm.items()}}

    def _await_ready(self, ranks):
        """Wait for HELLO from ``ranks``, checking each worker's model signature."""
        waiting = set(ranks)
        deadline = time.monotonic() + self.start_timeout
        while waiting:
            got = self.group.recv(POLL_S)
            if got is not None and got.rank is not None:
                if got.kind == P.HELLO and got.rank in waiting:
                    if self._welcome(got):
                        waiting.discard(got.rank)
                elif got.kind == P.ERROR:
                    self._raise_worker_error(got)
            now = time.monotonic()
            for rank in sorted(waiting) if not self.group.elastic else ():
                why = self.group.problem(rank, now)
                if why is not None:
                    raise WorkerError(f"worker {rank} ({self._who(rank)}) failed to start: "
                                      f"{why}", rank=rank)
            if now > deadline:
                if self.group.elastic:
                    joined = self.n_workers - len(waiting)
                    raise WorkerError(f"{joined} of {self.n_workers} remote workers joined "
                                      f"within {self.start_timeout:g} s", rank=min(waiting))
                raise WorkerError(f"workers {sorted(waiting)} did not start within "
                                  f"{self.start_timeout:g} s", rank=min(waiting))

    def _welcome(self, got):
        """The handshake, for a first start and a replacement alike. Returns whether
        the worker was welcomed (an elastic group's peer with another model is refused
        and the run goes on; a worker this coordinator started must match)."""
        try:
            P.check_signature(self._signature, got.header["signature"])
        except P.ProtocolError as e:
            if not self.group.elastic:
                raise
            self.group.refuse(got.rank, str(e))
            return False
        self.worker_info[got.rank] = {k: v for k, v in got.header.items()
                                      if k in ("host", "device")}
        if self.on_hello is not None:
            self.on_hello(got.rank, got.header)
        self.group.send(got.rank, P.WELCOME, {"rank": got.rank,
                                              "weights_version": self.version})
        self._ready[got.rank] = True
        self._heard[got.rank] = time.monotonic()
        self._sent_version.pop(got.rank, None)
        return True

    def close(self):
        """Stop the workers and remove every shared-memory segment. Idempotent."""
        if self._started and self._final_stats is None:
            self._final_stats = self._collect_stats()
            if self.group.drops.count:
                print(f"dpnet: dropped {self.group.drops.count} message"
                      f"{'s' if self.group.drops.count > 1 else ''} that no worker of this "
                      f"run sent, or that answered nothing asked", file=sys.stderr)
        self._started = False
        self.group.stop((P.STOP, {"reason": "done"}))
        if self.model is not None and "weights" in self.shm:
            # give the model its own memory again before the segment goes away
            home = getattr(self, "_home", None)
            if home is None or not home.flags.writeable:
                home = np.empty_like(self.shm["weights"].array)
            home[...] = self.shm["weights"].array
            self.model.rebind(params=home)
            self._home = None
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
        units, extra, index = self.task_cls.plan_step(self.arrays, step, batch)
        while True:
            try:
                replies, order = self._gradient_round(step, units, extra, index)
                break
            except _Reshard:               # a worker of an elastic group was lost:
                continue                   # the same units over those that remain
        tm = self._timing
        tm["steps"] += 1
        tm["gradient_s"] += time.perf_counter() - t0
        tm["slowest_worker_s"] += max(float(replies[r].get("seconds", 0.0)) for r in order)
        n = sum(replies[r]["n"] for r in order)
        loss = sum(replies[r]["n"] * replies[r]["loss"] for r in order) / n
        return loss, n, sum(replies[r]["correct"] for r in order)

    def _gradient_round(self, step, units, extra, index):
        shards = self._shards(units, index, training=True)
        # Each unit (a sample, or a stream of T characters) weighs the same, so shard
        # r's weight n_r / n is its share of the units, known before it is sent. The
        # worker scales its gradient by it (while it is hot in its cache), and the
        # coordinator only adds them -- in rank order, never arrival order (so the sum
        # does not depend on timing), but as soon as the next rank in order has
        # answered: rank 0 is folded in while rank 1 is still computing.
        order = sorted(shards)
        fold = _Fold(self.model.grads, order, self.arrays.get("grads"))

        def message(rank):
            start, stop = shards[rank]
            return self._with_payload(rank, P.STEP, {
                "step": step, "rank": rank, "start": start, "stop": stop,
                "weights_version": self.version, "scale": (stop - start) / units, **extra},
                index)

        replies = self._round(step, P.GRAD, order, message, on_reply=fold, training=True)
        fold(replies)
        return replies, order

    def step(self, step, batch):
        """One training step: the mean gradient, the model's update, new weights
        published. Returns (loss, n, correct); a non-finite loss updates nothing."""
        if self.group.update_on_worker:
            return self._step_on_worker(step, batch)
        out = self.gradient(step, batch)
        if math.isfinite(out[0]):
            self.model.apply_gradients()
            self.weights_changed(step + 1)
        return out

    def _step_on_worker(self, step, batch):
        """The one worker computes the gradient and applies the optimizer where the
        weights live; only scalars come back."""
        t0 = time.perf_counter()
        units, extra, index = self.task_cls.plan_step(self.arrays, step, batch)
        self._shards(units, index)

        def message(rank):
            return self._with_payload(rank, P.STEP, {
                "step": step, "rank": rank, "start": 0, "stop": units,
                "weights_version": self.version, "scale": 1.0, "update": True, **extra},
                index)

        reply = self._round(step, P.GRAD, [0], message)[0]
        self._timing["steps"] += 1
        self._timing["gradient_s"] += time.perf_counter() - t0
        self._timing["slowest_worker_s"] += float(reply.get("seconds", 0.0))
        if reply.get("updated", False):
            self.version = self._sent_version[0] = step + 1
            self._host_stale = True
        return reply["loss"], reply["n"], reply["correct"]

    def _live(self, training=False):
        """The ranks to shard over: all of them, or for an elastic group those present
        now (waiting up to ``start_timeout`` for one to join if none is; for a training
        step, given up after a stop signal)."""
        if not self.group.elastic:
            return list(range(self.n_workers))
        deadline = time.monotonic() + self.start_timeout
        while True:
            live = [r for r in range(self.n_workers) if self._ready.get(r)]
            if live:
                return live
            if time.monotonic() > deadline:
                raise WorkerError(f"no {self.group.kind} worker left, and none joined "
                                  f"within {self.start_timeout:g} s", rank=0)
            if training:
                self._abandon_if_stopping(f"no {self.group.kind} worker left to serve the "
                                          f"step")
            got = self.group.recv(POLL_S)
            if got is not None and got.rank is not None and got.kind == P.HELLO \
                    and not self._ready.get(got.rank, True):
                self._welcome(got)

    def _shards(self, units, index, training=False):
        ranks = self._live(training)
        shards = {ranks[i]: b for i, b in enumerate(shard_bounds(units, len(ranks)))
                  if b[1] > b[0]}
        if index is not None and "index" in self.arrays:
            self.arrays["index"][:len(index)] = index
        return shards

    def _with_payload(self, rank, kind, header, index=None):
        """(kind, header, *frames): the shard's indices and the weights go as frames to
        workers that do not read them in shared memory."""
        frames = []
        if index is not None and "index" not in self.arrays:
            frames.append(np.ascontiguousarray(index[header["start"]:header["stop"]],
                                               dtype=np.int64))
            header["indices"] = True
        if not self.group.local:           # state the workers cannot read in place
            frames += self.task_cls.frames_out(self.arrays, header)
        if not self.group.weights_in_shm and self._sent_version.get(rank) != self.version:
            if self._host_stale:           # never send the host's older weights over
                raise RuntimeError("the worker holds newer weights than the coordinator")
            frames.append(self.model.params)
            header["weights"] = True
            self._sent_version[rank] = self.version
        return (kind, header, *frames)

    def weights_changed(self, step):
        """The model's weights changed (an update, or a load): stamp their version, so
        workers read (shared memory) or are sent (frames) the new ones."""
        self._host_stale = False           # the host's weights are the ones that count
        self._sent_version.clear()         # no worker holds them yet (frames kinds)
        self.version = int(step)
        if "version" in self.arrays:
            self.arrays["version"][0] = self.version

    def sync_to_host(self):
        """Make the coordinator's model current: where the worker applies the updates,
        PULL its weights and optimizer state (once per change); else nothing to do."""
        if not self._host_stale:
            return
        replies = self._round(self.version, P.STATE, [0],
                              lambda rank: (P.PULL, {"weights_version": self.version}),
                              match="weights_version")
        r = replies[0]
        opt = self.model.optimizer
        self.model.params[...] = r.arrays[0]
        opt.t = int(r["t"])
        if r.get("state", False):
            opt.state = {k: np.array(a) for k, a in zip(opt.state_names, r.arrays[1:])}
        self._host_stale = False

    def _push(self):
        """The coordinator's weights and optimizer state to the worker that applies the
        updates (the start of a run, a resumed one included)."""
        opt = self.model.optimizer
        frames = [self.model.params]
        if opt.state:
            frames += [np.asarray(opt.state[k]) for k in opt.state_names]
        self._send(0, P.PUSH, {"weights_version": self.version, "t": int(opt.t),
                               "optimizer": opt.config(), "state": bool(opt.state)}, *frames)
        self._sent_version[0] = self.version

    def evaluate(self, name):
        """(mean loss, n, correct) over a whole dataset, sharded over the workers."""
        units, extra = self.task_cls.plan_eval(self.arrays, name)
        while True:
            shards = self._shards(units, None)

            def message(rank, shards=shards):
                start, stop = shards[rank]
                return self._with_payload(rank, P.EVAL, {
                    "step": self.version, "rank": rank, "start": start, "stop": stop,
                    "weights_version": self.version, "split": name, **extra})

            try:
                replies = self._round(self.version, P.EVAL_RESULT, list(shards), message)
                break
            except _Reshard:
                continue
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

    # -- one round of messages, and failures ---------------------------------------------
    def _round(self, step, reply_kind, ranks, message, on_reply=None, match="step",
               training=False):
        """Send ``message(rank)`` to each rank and collect their replies -- those of
        ``reply_kind`` whose ``match`` field is ``step`` -- surviving failures by the
        policy. ``on_reply(replies)`` runs after each accepted reply. ``training``: a
        training step's gradients, which a stop signal may give up (see stop_when)."""
        pending, sent = {}, {}             # rank -> when / what its attempt was sent
        for rank in ranks:
            self._send_attempt(rank, message, pending, sent)
        replies = {}
        while len(replies) < len(ranks):
            got = self.group.recv(POLL_S)
            if got is not None:
                self._accept(got, step, reply_kind, pending, sent, replies, message,
                             on_reply, match)
            self._check(pending, replies)
            if training and len(replies) < len(ranks):
                owing = sorted(set(ranks) - set(replies))
                self._abandon_if_stopping(f"worker{'s' * (len(owing) > 1)} "
                                          f"{', '.join(map(str, owing))} owed step {step}")
        # what else is waiting (heartbeats, late or stray messages) is read now, a
        # bounded number per round, so that nothing piles up between rounds
        for _ in range(DRAIN):
            got = self.group.recv(0)
            if got is None:
                break
            self._accept(got, step, reply_kind, pending, sent, replies, message, None,
                         match)
        self._failures_in_a_row = 0
        return replies

    def stop_when(self, probe):
        """``probe() -> True`` once a stop signal came (the training loop's): a training
        step still waiting for remote workers STOP_GRACE_S after it is given up
        (StepAbandoned). None: never."""
        self.stop_requested, self._stop_seen = probe, None

    def _abandon_if_stopping(self, what):
        """A remote worker that died or went away is found out only by its silence (up
        to half a minute), and a lost one may never be replaced: once a stop signal has
        been asked for STOP_GRACE_S ago, a training step still waiting for one is given
        up -- Ctrl-C must not wait for that. Only there: local workers' deaths are seen
        at once (a step waits for them at most for a replacement to start), a GPU
        worker that applies the update holds the only weights (its step must end), and
        an evaluation given up would leave a hole in the history."""
        if self.stop_requested is None or not self.group.elastic \
                or self.group.update_on_worker or not self.stop_requested():
            return
        now = time.monotonic()
        if self._stop_seen is None:
            self._stop_seen = now
        elif now - self._stop_seen > STOP_GRACE_S:
            raise StepAbandoned(f"{what}, given up {STOP_GRACE_S:g} s after the stop signal")

    def _send_attempt(self, rank, message, pending, sent):
        kind, header, *frames = message(rank)
        if kind in (P.STEP, P.EVAL):
            self._attempt += 1
            header["attempt"] = self._attempt
        self._send(rank, kind, header, *frames)
        pending[rank], sent[rank] = time.monotonic(), header

    def _accept(self, got, step, reply_kind, pending, sent, replies, message, on_reply,
                match):
        """Act on one message -- only if it comes from a worker of this run and says
        what the coordinator asked for; the rest is dropped and counted."""
        rank, h = got.rank, got.header
        if rank is None:                   # not a worker of this run: never trusted
            self.group.drops(f"a {got.kind.decode()} from a peer that is no worker of "
                             f"this run: {got.msg.identity[:24]!r}")
            return
        if "rank" in h and h["rank"] != rank:
            raise WorkerError(f"worker {rank} sent a {got.kind.decode()} that claims to be "
                              f"from worker {h['rank']}", rank=rank)
        self._heard[rank] = time.monotonic()
        if got.kind == P.ERROR:
            self._raise_worker_error(got)
        elif got.kind == reply_kind:
            if (h[match] == step and rank in pending and rank not in replies
                    and h.get("attempt") == sent[rank].get("attempt")):
                self._check_count(rank, got, sent[rank])
                if got.kind == P.GRAD and h.get("carried", False):
                    try:
                        self.task_cls.frames_back(self.arrays, sent[rank], got.arrays[1:])
                    except ValueError as e:
                        raise WorkerError(f"worker {rank}: {e}", rank=rank) from None
                replies[rank] = _Reply(got)
                if on_reply is not None:
                    on_reply(replies)
            else:                          # late, repeated, or for an earlier sending
                self.stale_replies += 1
        elif got.kind == P.HELLO and not self._ready.get(rank, True):
            # a replacement (or, elastic, a newcomer) introducing itself: handshake,
            # then give it its shard if it owes one (a newcomer waits for the next round)
            if self._welcome(got) and rank in pending and rank not in replies:
                self._send_attempt(rank, message, pending, sent)
        # anything else (heartbeats, BYE, stale replies of an older step or attempt):
        # nothing to act on

    def _check_count(self, rank, got, header):
        """A reply must count the samples (characters) of the shard that was sent."""
        if got.kind not in (P.GRAD, P.EVAL_RESULT):
            return
        want = self.task_cls.expected_n(self.arrays, self.task_options, header)
        if got.header["n"] != want:
            raise WorkerError(f"worker {rank} answered for {got.header['n']} samples, its "
                              f"shard has {want}", rank=rank)

    def _check(self, pending, replies):
        """Liveness of the ranks still owing a reply: the group's own view (exited,
        suspended), silence, and the step and start deadlines."""
        now = time.monotonic()
        for rank, sent in pending.items():
            if rank in replies:
                continue
            why = self.group.problem(rank, now)
            if why is None and self._ready[rank]:
                # silence counts from this attempt's sending at the earliest: heartbeats
                # that queued up between rounds may not have been read yet
                quiet = now - max(self._heard.get(rank, sent), sent)
                if quiet > self.silence_timeout:
                    why = f"sent nothing for {quiet:.1f} s"
                elif now - sent > self.step_timeout:
                    why = f"did not answer within {self.step_timeout:g} s"
            elif why is None and now - sent > self.start_timeout:
                raise WorkerError(f"replacement worker {rank} did not start within "
                                  f"{self.start_timeout:g} s", rank=rank)
            if why is not None:
                self._failed(rank, why)
                pending[rank] = time.monotonic()        # the replacement's start

    def _send(self, rank, kind, header, *arrays):
        """Send, tolerating a peer that just died: the liveness check will see it."""
        try:
            self.group.send(rank, kind, header, *arrays)
        except Exception as e:             # zmq.ZMQError: the peer is not connected
            log.info("send to worker %d failed: %s", rank, e)

    def _failed(self, rank, reason):
        what = f"worker {rank} ({self._who(rank)}) {reason}"
        if self.on_failure == "abort":
            raise WorkerError(what, rank=rank)
        if self.group.update_on_worker:
            # its weights and optimizer state lived on the worker: a replacement could
            # only start from the last ones the coordinator pulled, not go on exactly
            raise WorkerError(f"{what}; the weights it held since the last checkpoint are "
                              f"lost (a worker that applies the updates is not replaced)",
                              rank=rank)
        if self.group.elastic:
            # nothing to restart: the rank is vacated (whoever joins next takes it)
            # and the round starts over, its units cut among the workers that remain
            print(f"dpnet: {what}; its share goes to the other workers", file=sys.stderr)
            self.respawns += 1
            self._ready[rank] = False
            self._sent_version.pop(rank, None)
            self.group.replace(rank)
            raise _Reshard(rank)
        self._failures_in_a_row += 1
        if self._failures_in_a_row > self.max_respawns:
            raise WorkerError(f"{what}; giving up after {self.max_respawns} respawns in a row",
                              rank=rank)
        # one line for the person at the terminal (not a logging record too: the CLI
        # leaves logging unconfigured, and a library caller's handler would print twice)
        print(f"dpnet: {what}; starting a replacement", file=sys.stderr)
        self.respawns += 1
        self._ready[rank] = False
        self._sent_version.pop(rank, None)
        self.group.replace(rank)

    def _who(self, rank):
        who = getattr(self.group, "who", None)
        if who is not None:
            return who(rank)
        pid = getattr(self.group, "pid", None)
        return f"pid {pid(rank)}" if pid is not None else self.group.kind

    def _raise_worker_error(self, got):
        # the rank is the sender's, never what the header claims
        h = got.header
        if h.get("user", False):
            raise WorkerUserError(h["message"], rank=got.rank)
        if h.get("device", False):
            raise WorkerError(f"worker {got.rank}'s device failed: {h['message']}",
                              rank=got.rank)
        raise WorkerError(f"worker {got.rank} raised {h['message']}", rank=got.rank,
                          traceback=h["traceback"])

    # -- reporting -------------------------------------------------------------------
    def _collect_stats(self):
        return {"workers": self.n_workers, "kind": self.group.kind,
                "start_seconds": self.start_seconds, "respawns": self.respawns, "stale_replies": self.stale_replies, "step_seconds": self.step_timing(),
                **({"worker_info": {str(r): i for r, i in self.worker_info.items() if i}}
                   if any(self.worker_info.values()) else {}),
                **self.group.stats()}

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
            self._collect_stats() if self._started else {})


class _Reshard(Exception):
    """Internal: an elastic group lost a worker mid-round; plan the round again."""


class _Reply(dict):
    """A reply's header (as a dict) with its array frames on ``.arrays``."""

    def __init__(self, got):
        super().__init__(got.header)
        self.arrays = got.arrays


class _Fold:
    """Adds the ranks' gradients into ``g`` in rank order, each as soon as every rank
    before it is in: a gradient is its reply's frame, or the rank's shared slot."""

    def __init__(self, g, order, slots):
        self.g, self.order, self.slots, self.done = g, order, slots, 0

    def __call__(self, replies):
        while self.done < len(self.order) and self.order[self.done] in replies:
            rank = self.order[self.done]
            reply = replies[rank]
            src = reply.arrays[0] if reply.arrays else self.slots[rank]
            if src.shape != self.g.shape or src.dtype != self.g.dtype:
                raise WorkerError(f"worker {rank} sent a {src.dtype}{list(src.shape)} "
                                  f"gradient, expected {self.g.dtype}{list(self.g.shape)}",
                                  rank=rank)
            if not self.done:
                np.copyto(self.g, src)
            else:
                np.add(self.g, src, out=self.g)
            self.done += 1


class MultiprocessEngine(Coordinator):
    """The coordinator over ``workers`` CPU processes on this machine."""
    name = "multiprocess"

    def __init__(self, workers=None, blas_threads=1, on_failure="respawn", max_respawns=3,
                 step_timeout=300.0, stall_timeout=2.0, start_timeout=60.0,
                 silence_timeout=30.0, eval_batch_size=2048):
        from .cpu import CpuProcesses
        workers = default_workers() if workers is None else workers
        super().__init__(CpuProcesses(workers, blas_threads=blas_threads,
                                      stall_timeout=stall_timeout),
                         on_failure=on_failure, max_respawns=max_respawns,
                         step_timeout=step_timeout, start_timeout=start_timeout,
                         silence_timeout=silence_timeout, eval_batch_size=eval_batch_size)


def default_workers():
    import psutil
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
