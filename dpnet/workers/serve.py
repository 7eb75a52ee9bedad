"""The worker's serve loop, the same for every kind of worker.

A worker is this loop over a *binding*: where its weights, data and gradient live
(``cpu_worker.SharedMemoryBinding``: all in the coordinator's shared memory;
``gpu_worker.DeviceBinding``: on a CUDA device). The loop introduces the worker with
HELLO, serves STEP and EVAL until STOP, answers an exception with ERROR (and its
traceback) and goes on serving, exits when its coordinator is gone, and says BYE.
A thread with a socket of its own sends a HEARTBEAT every ``HEARTBEAT_S``, busy or
idle, so that silence means trouble even where the coordinator cannot see a pid.

A binding provides: ``model`` and ``task`` (bound to wherever the arrays live),
``signature`` (for the handshake), and

    binding.use_weights(header, arrays)  make the model's weights those the header names
    binding.index(header, arrays)        the shard's sample indices (None for stream tasks)
    binding.gradient_reply(header, loss) after the task's step: (reply fields, frames)
    binding.hello()                      optional: more HELLO fields (a device's name)
    binding.device_errors                optional: exception types that mean the device
                                         failed (reported in one line, no traceback)
    binding.extra(msg)                   messages beyond STEP/EVAL/STOP: (kind, header,
                                         *frames) to reply, or None
    binding.close()
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback


def quiet_process():
    """What every worker process does first. Workers run in a session of their own, so
    a terminal's Ctrl-C, SIGHUP or SIGQUIT, or `kill -- -PGID`, reaches the coordinator
    alone; a signal sent to a worker by name is ignored as well: only the coordinator
    decides what they mean (a clean stop, not a crashed worker). It stops
    workers with STOP, or SIGKILL after 2 s, and a worker whose coordinator is gone
    exits by itself. A diverging run is the coordinator's to report (a non-finite loss,
    one line), not a stream of overflow warnings from every worker."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    import numpy as np
    np.seterr(over="ignore", invalid="ignore", divide="ignore")


def main(argv, module, binding_cls, user_errors=()):
    """A worker process's entry point: ``python -m <module> -`` reads its JSON config
    from stdin (``CONFIG_JSON`` as the argument works too) and serves its coordinator
    with ``binding_cls(config)``. Returns the exit code."""
    import json
    import sys
    if len(argv) != 1:
        print(f"usage: python -m {module} - (the JSON config on stdin) | CONFIG_JSON",
              file=sys.stderr)
        return 2
    quiet_process()
    cfg = json.loads(sys.stdin.read() if argv[0] == "-" else argv[0])
    from dpnet.parallel.transport import CoordinatorWatch
    return serve(lambda: binding_cls(cfg), cfg["endpoint"], int(cfg["rank"]),
                 (cfg["identity"].encode(), cfg["heartbeat_identity"].encode()),
                 CoordinatorWatch(parent_pid=int(cfg["coordinator_pid"])),
                 heartbeat_s=cfg.get("heartbeat_s"), user_errors=user_errors)


class FrameWeights:
    """For bindings whose weights do not sit in shared memory: they come as the last
    frame of a STEP or EVAL whenever they changed (``put_weights`` stores them), and
    otherwise the version held must be the one the coordinator asks for."""
    version = None                 # the weights this worker holds (None: none yet)

    def use_weights(self, h, arrays):
        if h.get("weights", False):
            self.put_weights(arrays[-1])
            self.version = h["weights_version"]
        elif self.version != h["weights_version"]:
            raise RuntimeError(f"this worker holds weights version {self.version}, the "
                               f"coordinator asked for {h['weights_version']} without "
                               f"sending them")


class Faults:
    """Faults injected for tests of the coordinator, off unless ``DPNET_FAULTS`` is set
    (``"key=value,..."``):

    ``drop=P``, ``duplicate=P``  that share of GRAD / EVAL_RESULT replies is not sent,
                                 or sent twice (draws seeded per rank by ``seed``)
    ``start_delay=S``            wait S seconds before saying HELLO (a slow start)
    ``start_exit=CODE``          exit with CODE instead of saying HELLO
    ``die_on=step|eval``         exit (code 3) on receiving that request, once ``after``
                                 of them have been answered (default 0)
    ``hang_on=step|eval``        the same, but stay alive (heartbeats go on) and never
                                 answer: what a step timeout is for
    ``when=PATH``                the start and die faults only while PATH exists; with
                                 ``consume=1`` the one worker that fires removes it
                                 first, so its replacement (or the other ranks) go on
    """

    def __init__(self, drop=0.0, duplicate=0.0, seed=0, rank=0, start_delay=0.0,
                 start_exit=None, die_on=None, hang_on=None, after=0, when=None,
                 consume=0):
        import random
        self.drop, self.duplicate = float(drop), float(duplicate)
        self._rng = random.Random(int(seed) * 1009 + rank)
        self.dropped = self.duplicated = 0
        self.start_delay = float(start_delay)
        self.start_exit = None if start_exit is None else int(start_exit)
        if die_on is not None and hang_on is not None:
            raise ValueError("DPNET_FAULTS: die_on and hang_on exclude each other")
        self.die_on, self.after, self.seen = die_on or hang_on, int(after), 0
        self.hang = hang_on is not None
        self.when, self.consume = when, bool(int(consume))

    @classmethod
    def from_env(cls, rank):
        spec = os.environ.get("DPNET_FAULTS", "")
        if not spec:
            return cls(rank=rank)
        return cls(rank=rank, **dict(kv.split("=", 1) for kv in spec.split(",")))

    def _armed(self):
        """Whether a start or die fault may fire now (and, consuming, claim it)."""
        if self.when is None:
            return True
        if not self.consume:
            return os.path.exists(self.when)
        try:
            os.unlink(self.when)           # atomic: exactly one process wins the claim
            return True
        except FileNotFoundError:
            return False

    def at_start(self):
        if (self.start_delay or self.start_exit is not None) and self._armed():
            time.sleep(self.start_delay)
            if self.start_exit is not None:
                os._exit(self.start_exit)

    def on_request(self, kind, P):
        want = {"step": P.STEP, "eval": P.EVAL}.get(self.die_on)
        if want is None or kind != want:
            return
        self.seen += 1
        if self.seen > self.after and self._armed():
            if self.hang:
                # until the coordinator kills it (or is gone: no orphan left behind)
                parent = os.getppid()
                while os.getppid() == parent:
                    time.sleep(0.2)
            os._exit(3)

    def copies(self, kind, P):
        """How many times to send a reply of ``kind``: 1, or 0 / 2 when a fault hits."""
        if kind not in (P.GRAD, P.EVAL_RESULT) or not (self.drop or self.duplicate):
            return 1
        u = self._rng.random()
        if u < self.drop:
            self.dropped += 1
            return 0
        if u < self.drop + self.duplicate:
            self.duplicated += 1
            return 2
        return 1


class Heartbeat:
    """A daemon thread that sends HEARTBEAT on its own DEALER until ``stop()``."""

    def __init__(self, connect, rank, identity, interval_s):
        from dpnet.parallel import protocol as P
        self._stop = threading.Event()
        self._sock = connect(identity)
        self._rank, self._P, self._interval = rank, P, interval_s
        self._thread = threading.Thread(target=self._run, name="dpnet-heartbeat", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.wait(self._interval):
                self._sock.send(self._P.HEARTBEAT, {"rank": self._rank})
        except Exception:                  # the coordinator is gone: the main loop sees it
            pass

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._sock.close()


def serve(make_binding, endpoint, rank, identities, watch, heartbeat_s=None,
          user_errors=(), connect=None, sock=None, outcome=None):
    """Serve the coordinator at ``endpoint`` as ``rank`` until STOP or until ``watch``
    (a ``CoordinatorWatch``) says it is gone; heartbeats every ``heartbeat_s`` seconds
    (the coordinator's choice; default ``HEARTBEAT_S``). ``make_binding()`` builds the
    binding once the socket is up, so that a binding that cannot start (no device,
    data too large, a segment gone) is reported as an ERROR -- with ``user=True`` for
    the exception types in ``user_errors`` -- not as a bare exit code. Returns the
    process exit code.

    ``connect(identity)``: makes a connected Dealer (default: plain, to ``endpoint``;
    a remote worker's adds CURVE); ``sock``: the main socket if it is already open (a
    remote worker joined on it); ``outcome``: a dict that gets ``reason``, why the loop
    ended (the STOP's reason, or what the watch saw)."""
    from dpnet.parallel import protocol as P
    from dpnet.parallel.transport import HEARTBEAT_S, Dealer

    ident, beat = identities              # given by the coordinator (see new_identity)
    connect = connect or (lambda identity: Dealer(endpoint, identity))
    sock = sock if sock is not None else connect(ident)
    outcome = {} if outcome is None else outcome
    faults = Faults.from_env(rank)
    try:
        binding = make_binding()
    except Exception as e:
        user = isinstance(e, tuple(user_errors))
        sock.send(P.ERROR, {"rank": rank, "message": str(e) if user else
                            f"{type(e).__name__}: {e}", "user": user,
                            "traceback": "" if user else traceback.format_exc()})
        sock.close(linger_s=2.0)
        return 1
    faults.at_start()
    heartbeat = Heartbeat(connect, rank, beat, heartbeat_s or HEARTBEAT_S)
    hello = getattr(binding, "hello", dict)()
    sock.send(P.HELLO, {"rank": rank, "pid": os.getpid(), "signature": binding.signature,
                        **hello})
    reason = "stopped"
    try:
        while True:
            lost = watch.lost()                   # checked every pass, message or not
            if lost:
                # the coordinator's last word may be queued behind the news of its going
                last = _last_stop(sock, P)
                reason = outcome["reason"] = last if last is not None else lost
                return 0
            try:
                msg = sock.recv_valid(0.5)
            except Exception:                     # the socket itself failed: give up
                reason = outcome["reason"] = "socket error"
                return 1
            if msg is None:
                continue
            watch.saw_message()
            if msg.kind == P.STOP:
                outcome["reason"] = msg.header["reason"]
                return 0
            faults.on_request(msg.kind, P)
            reply = _answer(binding, rank, msg, P)
            if reply is not None:
                for _ in range(faults.copies(reply[0], P)):
                    sock.send(*reply)
    finally:
        if faults.drop or faults.duplicate:
            print(f"dpnet worker {rank}: faults injected: dropped {faults.dropped}, "
                  f"duplicated {faults.duplicated}", file=sys.stderr, flush=True)
        heartbeat.stop()
        try:
            sock.send(P.BYE, {"rank": rank, "reason": reason})
        except Exception:
            pass
        sock.close()
        binding.close()


def _answer(binding, rank, msg, P):
    """The reply to one message (None for those that need none: WELCOME, HEARTBEAT);
    an exception becomes an ERROR reply with the traceback."""
    h = msg.header
    t0 = time.perf_counter()
    try:
        if msg.kind == P.STEP:
            binding.use_weights(h, msg.arrays)
            loss, n, correct = binding.task.step(h, binding.index(h, msg.arrays))
            fields, frames = binding.gradient_reply(h, loss)
            return (P.GRAD, {"step": h["step"], "rank": rank, "n": n, "loss": float(loss),
                             "correct": int(correct), **fields, **_attempt(h),
                             "seconds": time.perf_counter() - t0}, *frames)
        if msg.kind == P.EVAL:
            binding.use_weights(h, msg.arrays)
            loss, n, correct = binding.task.evaluate(h)
            return (P.EVAL_RESULT, {"step": h["step"], "rank": rank, "n": n,
                                    "loss": float(loss), "correct": int(correct),
                                    **_attempt(h), "seconds": time.perf_counter() - t0})
        return binding.extra(msg)
    except Exception as e:
        # a failed device (a CUDA error, out of device memory) is one line for the
        # user; anything else is a bug, and comes with its traceback
        device = isinstance(e, getattr(binding, "device_errors", ()))
        return (P.ERROR, {"rank": rank, "step": int(h.get("step", 0)),
                          "message": f"{type(e).__name__}: {e}", "device": device,
                          "traceback": "" if device else traceback.format_exc()})


def _last_stop(sock, P, most=100):
    """The reason of a STOP among the messages already received, or None."""
    for _ in range(most):
        try:
            msg = sock.recv_valid(0)
        except Exception:
            return None
        if msg is None:
            return None
        if msg.kind == P.STOP:
            return msg.header["reason"]
    return None


def _attempt(h):
    """The reply echoes which sending of the shard it answers (see the coordinator)."""
    return {"attempt": h["attempt"]} if "attempt" in h else {}
