"""Workers on other machines: the ``remote`` kind (``dpnet/workers/remote_worker.py``).

The coordinator does not start these workers -- ssh, Slurm, Ray or a person does
(``python -m workers.remote --connect tcp://HOST:PORT --keys DIR``) -- it listens on a
TCP endpoint and lets them join:

    worker                              coordinator (this group)
    JOIN  (its heartbeat identity) ->
                                    <-  ADMIT (a free rank; the run's config: model,
                                        task, seed, every array's dtype, shape, checksum)
    FETCH (array, offset, size)    ->   (only for arrays not on the worker's own disk)
                                    <-  DATA  (one chunk, a raw uint8 frame)
    HELLO (model signature, data checksum) -> the coordinator's usual handshake, WELCOME

From then on it is a worker like any other, except that nothing is shared: the step's
indices and the weights (when they changed) go as raw frames, the gradient comes back
as one. There is no pid to watch, so liveness is heartbeats and silence; and there is
nothing to restart, so the group is *elastic*: a lost worker's rank is vacated, the
coordinator re-shards the step over the workers that remain (the same batch gradient,
summed in another order), and whoever joins next takes the free rank at the next step.

Security: over anything but loopback the socket is a CURVE server (``keys``, see
``dpnet.parallel.keys``) with a running ZAP authenticator that admits only the allowed
public keys. Whoever gets in is held to the same rules as a local worker (identities,
ranks, counts; docs/ARCHITECTURE.md, "Who can reach the socket"); a JOIN, FETCH or
HELLO that does not fit is refused -- the peer is told why and forgotten, the run goes on.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import zmq

from ..parallel import protocol as P
from ..parallel.transport import ZMTP_TIMEOUT_S, Router, is_loopback, split_tcp
from .errors import WorkerUserError
from .group import _ROOT, Ranked, WorkerGroup, blas_env


class _Member:
    def __init__(self, identity, heartbeat_identity, host, pid):
        self.identity, self.heartbeat_identity = identity, heartbeat_identity
        self.host, self.pid = host, pid
        self.fetched = 0                   # bytes of data streamed to it
        self.heard = time.monotonic()      # its last word (while joining)
        self.introduced = False            # its HELLO came: the coordinator watches it


class RemoteWorkers(WorkerGroup):
    """``size`` workers that join over TCP at ``listen`` (``tcp://HOST:PORT``, port 0:
    any free one); ``keys``: a key directory (``python -m dpnet keys DIR``), required
    unless HOST is loopback. ``say``: where the one-line notices go (joins, losses)."""
    kind = "remote"
    elastic = True
    # a member admitted but silent this long before its HELLO (no FETCH either) is gone:
    # its rank is freed for a spare. As long as one frame may take on the wire.
    join_silence_s = ZMTP_TIMEOUT_S

    def __init__(self, size, listen=None, keys=None, say=None, launcher=None, local=0,
                 blas_threads=1):
        super().__init__(size + local)
        if not isinstance(local, int) or isinstance(local, bool) or local < 0:
            raise ValueError(f"local must be a non-negative integer, got {local!r}")
        self.remote, self.local, self.blas_threads = size, local, blas_threads
        self.children = []                 # the local workers' processes
        self.launcher = launcher           # starts the workers itself (Ray), or None
        self._worker_curve = None
        if launcher is not None:
            listen = listen or launcher.listen_address()
            if keys is None:               # keys for this run only, handed to the workers
                keys, self._worker_curve = launcher.keys()
        listen = listen or "tcp://127.0.0.1:0"
        host, _ = split_tcp(listen)
        if keys is None and not is_loopback(host):
            raise ValueError(f"listening on {host} lets other machines connect: give a key "
                             f"directory (--keys DIR; make one with: python -m dpnet keys DIR)")
        self.listen = listen
        self.curve = None
        if isinstance(keys, tuple):        # (public, secret, allowed public keys)
            self.curve = keys
        elif keys is not None:
            from ..parallel.keys import server_keys
            self.curve = server_keys(keys)
        self._local_curve = None
        if local and self.curve is not None:
            # the local workers get a keypair of their own, for this run only
            import zmq
            public, secret = zmq.curve_keypair()
            self.curve = (self.curve[0], self.curve[1], set(self.curve[2]) | {public})
            self._local_curve = (public, secret, self.curve[0])
        self.say = say or (lambda line: print(f"dpnet: {line}", file=sys.stderr, flush=True))
        self.router = None
        self.failed_handshakes = 0         # connections refused at the CURVE handshake
        self.members, self._rank_of = {}, {}
        self._left = {}                    # rank -> why its last member left
        self._departed = set()             # identities of members that left (bounded)
        self._spares = []                  # (identity, heartbeat identity, JOIN header)
        self.refused = 0
        self.streamed = 0                  # data bytes sent to workers, all of them
        self.endpoint = None

    # -- the interface ----------------------------------------------------------------
    def start(self, config_of, arrays=None):
        self._config_of = config_of
        self.arrays = {k: np.ascontiguousarray(v) for k, v in (arrays or {}).items()}
        self.table = {k: {"dtype": a.dtype.str, "shape": list(a.shape),
                          "checksum": P.array_checksum(a)} for k, a in self.arrays.items()}
        self.data_checksum = P.table_checksum(self.table)
        # the largest thing a worker sends is its gradient: a bigger message is
        # refused by ZeroMQ itself (the peer is dropped before anything is allocated)
        biggest = int(config_of(0).get("params_bytes", P.MAX_ARRAY_BYTES))
        try:
            self.router = Router(bind=self.listen, curve=self.curve,
                                 max_message=biggest + P.MAX_HEADER_BYTES + 4096)
        except zmq.ZMQError as e:      # a port in use, an address not of this machine
            raise WorkerUserError(f"cannot listen at {self.listen}: "
                                  f"{zmq.strerror(e.errno)} (give --listen another "
                                  f"address, or port 0 for a free one)") from None
        self.endpoint = self.router.endpoint
        self._start_local()
        if self.launcher is not None:
            self.say(f"starting {self.size} worker{'s' if self.size > 1 else ''} with "
                     f"{type(self.launcher).__name__}; listening at {self.endpoint}")
            self.launcher.start(self, self._worker_curve)
            return
        import shutil
        command = "dpnet-worker" if shutil.which("dpnet-worker") else "python -m dpnet worker"
        self.say(f"waiting for {self.remote} remote worker{'s' if self.remote > 1 else ''} at "
                 f"{self.endpoint} ({'CURVE' if self.curve else 'plain TCP, loopback only'}); "
                 f"start each with: {command} --connect "
                 f"{self._public_endpoint()}{' --keys DIR' if self.curve else ''}")

    def _start_local(self):
        """``local`` worker processes of this machine, joining like the others (they
        fetch the data over loopback; BLAS threads as asked)."""
        import subprocess
        if not self.local:
            return
        host, port = split_tcp(self.endpoint)
        if host in ("0.0.0.0", "*", "::", "[::]"):
            host = "127.0.0.1"
        env = dict(os.environ, **blas_env(self.blas_threads))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "dpnet.workers.remote_worker", "--connect",
               f"tcp://{host}:{port}", "--wait", "10", "--quiet"]
        if self._local_curve is not None:
            cmd += ["--keys", "-"]
        for _ in range(self.local):
            p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE,
                                 start_new_session=True)    # (as group.py's workers)
            if self._local_curve is not None:
                p.stdin.write(b" ".join(self._local_curve))
            p.stdin.close()
            self.children.append(p)

    def _public_endpoint(self):
        host, port = split_tcp(self.endpoint)
        if host in ("0.0.0.0", "*", "::", "[::]"):
            import socket
            host = socket.gethostname()
        return f"tcp://{host}:{port}"

    def send(self, rank, kind, header, *arrays):
        self.router.send(self.members[rank].identity, kind, header, *arrays)

    def _handshakes(self, n):
        """Connections that failed the CURVE handshake: said (the first three), for the
        worker is told but the operator at the coordinator would see nothing."""
        if not n:
            return
        self.failed_handshakes += n
        if self.failed_handshakes - n < 3:
            self.say(f"refused a connection that failed the CURVE handshake "
                     f"({self.failed_handshakes} so far): a worker with another run's keys "
                     f"(copy this run's --keys directory to it) or with none, or a client "
                     f"that is no dpnet worker")

    def recv(self, timeout_s):
        """The next message from a member, with its rank; JOIN and FETCH are served
        here (returning None), and a HELLO whose data does not match is refused."""
        msg = self.router.recv_valid(timeout_s, on_bad=lambda e: self.drops(str(e)))
        self._handshakes(self.router.failed_handshakes())
        self._lost_while_joining()
        if msg is None:
            return None
        rank = self._rank_of.get(msg.identity)
        if rank is not None:
            m = self.members[rank]
            m.heard = time.monotonic()
            m.introduced = m.introduced or msg.kind == P.HELLO
        if rank is None and msg.identity in self._departed:
            return None                    # a former member's last words: not a stranger
        if msg.kind == P.JOIN and rank is None:
            self._join(msg)
            return None
        if rank is not None and msg.kind == P.FETCH:
            self._fetch(rank, msg)
            return None
        if rank is not None and msg.kind == P.BYE:
            self._vacate(rank)             # it left by itself: problem() says so now
            self._left[rank] = msg.header.get("reason", "left")
        if rank is not None and msg.kind == P.HELLO and \
                msg.header.get("data") != self.data_checksum:
            self.refuse(rank, f"its data checksum {msg.header.get('data')!r} is not the "
                              f"run's {self.data_checksum}")
            return None
        return Ranked(rank, msg)

    def _lost_while_joining(self):
        """Members admitted but silent for ``join_silence_s`` before their HELLO (died
        while fetching, or after JOIN): their ranks are freed, for a spare to take --
        the coordinator only watches the workers that said HELLO."""
        now = time.monotonic()
        for rank, m in list(self.members.items()):
            if not m.introduced and now - m.heard > self.join_silence_s:
                self.say(f"remote worker {rank} ({m.host} pid {m.pid}) sent nothing for "
                         f"{now - m.heard:.0f} s while joining: its rank is free again")
                self._left[rank] = "silent while joining"
                self._tell(m.identity, "dropped from the run (silent while joining)")
                self._vacate(rank)

    MAX_SPARES = 64

    def _join(self, msg):
        """Admit a joining worker to the lowest free rank; with none free it waits as
        a spare (no answer yet) and takes the next rank that is vacated."""
        h = msg.header
        beat = h["heartbeat_identity"].encode()
        where = f"{h.get('host', '?')} pid {h['pid']}"
        if beat in self._rank_of or beat == msg.identity or \
                any(beat == b for _, b, _ in self._spares):
            self.drops(f"refused a JOIN from {where}: its heartbeat identity is in use")
            self._tell(msg.identity, "its heartbeat identity is in use")
            return
        vacant = [r for r in range(self.size) if r not in self.members]
        if not vacant:
            if len(self._spares) >= self.MAX_SPARES:
                self.drops(f"refused a JOIN from {where}: {self.MAX_SPARES} spares wait")
                self._tell(msg.identity, "this run has all its workers and spares")
                return
            self._spares.append((msg.identity, beat, h))
            self.say(f"a worker from {where} waits as a spare")
            return
        self._admit(vacant[0], msg.identity, beat, h)

    def _admit(self, rank, identity, beat, h):
        where = f"{h.get('host', '?')} pid {h['pid']}"
        self.members[rank] = _Member(identity, beat, h.get("host", "?"), h["pid"])
        self._left.pop(rank, None)
        self._rank_of[identity] = self._rank_of[beat] = rank
        cfg = dict(self._config_of(rank), arrays=self.table, data=self.data_checksum)
        cfg.pop("shm", None)
        try:
            self.router.send(identity, P.ADMIT, {"rank": rank, "config": cfg})
        except Exception:                  # gone while it waited: the rank stays free
            self._vacate(rank)
            return
        self.say(f"remote worker {rank} joined from {where}")

    def _fetch(self, rank, msg):
        h = msg.header
        a = self.arrays.get(h["name"])
        if a is None or h["offset"] >= max(a.nbytes, 1):
            self.refuse(rank, f"it asked for {h['size']} bytes at {h['offset']} of "
                              f"{h['name']!r}, which the run does not have")
            return
        raw = np.frombuffer(memoryview(a).cast("B"), np.uint8)
        chunk = raw[h["offset"]:h["offset"] + h["size"]]
        self.members[rank].fetched += len(chunk)
        self.streamed += len(chunk)
        self.router.send(msg.identity, P.DATA, {"name": h["name"], "offset": h["offset"],
                                                "total": a.nbytes}, chunk)

    def _tell(self, identity, reason):
        try:
            self.router.send(identity, P.STOP, {"reason": reason})
        except Exception:                  # gone already: nothing to tell
            pass

    def refuse(self, rank, reason):
        """Tell a member why it is refused, forget it; the run goes on without it."""
        m = self.members.get(rank)
        if m is None:
            return
        self.refused += 1
        self._left[rank] = f"refused: {reason}"
        self.drops(f"refused worker {rank} ({m.host} pid {m.pid}): {reason}")
        self._tell(m.identity, f"refused: {reason}")
        self._vacate(rank)

    def _vacate(self, rank):
        m = self.members.pop(rank, None)
        if m is not None:
            self._rank_of.pop(m.identity, None)
            self._rank_of.pop(m.heartbeat_identity, None)
            if len(self._departed) > 10_000:
                self._departed.clear()
            self._departed.update((m.identity, m.heartbeat_identity))
        if self._spares and self.router is not None and rank not in self.members:
            identity, beat, h = self._spares.pop(0)
            self._admit(rank, identity, beat, h)

    def problem(self, rank, now):
        m = self.members.get(rank)
        if m is not None:
            # a worker of this machine that exited is seen at once, not after silence
            for p in self.children:
                if p.pid == m.pid and p.poll() is not None:
                    from .group import exit_reason
                    return exit_reason(p.returncode)
            return None
        if rank not in self._left:
            return None
        return f"left the run ({self._left[rank]})"

    def pid(self, rank):
        """The pid a member said it has (on its own host)."""
        return self.members[rank].pid

    def who(self, rank):
        m = self.members.get(rank)
        return f"{m.host} pid {m.pid}" if m is not None else "gone"

    def replace(self, rank):
        """Nothing to restart here: the rank is vacated for the next worker to join
        (a live but late worker is told to leave; it may join again)."""
        m = self.members.get(rank)
        if m is not None:
            self._tell(m.identity, "dropped from the run (too late or silent)")
        self._vacate(rank)

    def stop(self, stop_message=None):
        if self.router is None:
            return
        if stop_message is not None:
            for identity in [m.identity for m in self.members.values()] + \
                    [identity for identity, _, _ in self._spares]:
                try:
                    self.router.send(identity, *stop_message)
                except Exception:
                    pass
        # let the STOPs leave before the socket goes (linger is 0 otherwise)
        self.router.socket.close(linger=500)
        self.router.socket = None
        self.router.close()
        self.router = None
        self.members, self._rank_of, self._spares = {}, {}, []
        if self.launcher is not None:
            self.launcher.stop()
        deadline = time.monotonic() + 2.0
        for p in self.children:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                p.kill()
                p.wait()
        self.children = []

    def describe(self):
        here = f" and {self.local} of this machine" if self.local else ""
        return (f"{self.remote} remote worker{'s' if self.remote > 1 else ''}{here} at "
                f"{self.endpoint or self.listen}")

    def stats(self):
        gate = None if self.router is None else self.router.gate
        if self.router is not None:            # (those since the last message too)
            self._handshakes(self.router.failed_handshakes())
        return {"per_worker": [{"rank": r, "host": m.host, "pid": m.pid,
                                "data_bytes_streamed": m.fetched}
                               for r, m in sorted(self.members.items())],
                "endpoint": self.endpoint, "curve": self.curve is not None,
                "data_bytes_streamed": self.streamed,
                "refused_peers": self.refused,
                **({"refused_keys": gate.refused} if gate is not None else {}),
                "failed_handshakes": self.failed_handshakes,
                **self.drops.summary(), "coordinator_pid": os.getpid()}
