"""A worker on another machine: ``python -m workers.remote --connect tcp://HOST:PORT
--keys DIR [--data DIR]`` (installed: ``dpnet-worker``).

Whoever starts it (ssh, Slurm's srun, Ray, a person), it joins the coordinator that
listens there (``runDnn.py --listen ... --remote-workers N``): JOIN, then ADMIT with
its rank and the run's config; it finds each of the run's arrays on its own disk
(``--data DIR``: files named by their checksum, verified) or fetches them from the
coordinator in chunks (and keeps them in ``--data`` for next time); then it is the
usual serve loop (``dpnet.workers.serve``) over a binding whose weights come as frames
and whose gradient goes back as one.

It serves until the coordinator says the run is done. If it loses the coordinator
(connection dropped, or told it was too late) it joins again, for ``--wait`` seconds;
a refusal (another dpnet's model, a key that is not allowed) ends it with one line.
Ctrl-C ends it (exit 130): the coordinator shares its work out among the others.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import time

import numpy as np

from .serve import FrameWeights

CHUNK = 1 << 20       # a data frame: seconds on a slow link, well within ZMTP_TIMEOUT_S
NOTICE_S = 10.0       # no connection after this long (or half --wait): say so, wait on
_HELD = {}            # checksum -> array: a worker that joins again does not fetch again


class Refused(Exception):
    """The coordinator will not have this worker (a key, a version, another model):
    joining again would not help."""


class RunOver(Exception):
    """The run ended while this worker was joining."""


def _stopped(msg):
    """What a STOP received while joining means."""
    reason = msg.header["reason"]
    return RunOver() if reason == "done" else Refused(reason)


class FrameBinding(FrameWeights):
    """Host memory of its own: the data fetched or read from disk, the weights from
    each STEP's frame when they changed, the gradient back as a frame."""

    def __init__(self, cfg, arrays, data_checksum):
        from dpnet.models.registry import model_from_config, task_by_name
        from dpnet.parallel.protocol import signature_of
        self.model = model_from_config(cfg["model"])
        self.signature = signature_of(self.model)
        self.task = task_by_name(cfg["task"])(self.model, arrays, int(cfg["seed"]),
                                              cfg.get("task_options"),
                                              int(cfg.get("eval_batch_size", 2048)))
        self.data_checksum = data_checksum

    def hello(self):
        return {"host": socket.gethostname(), "data": self.data_checksum}

    def use_weights(self, h, arrays):
        if h.get("carried", False):          # the rows of the state the chunk starts from
            first = int(h.get("indices", False))
            src = self.task.arrays["train.state"][h["chunk"] % 2]
            rows = slice(h["start"], h["stop"])
            src[0, rows] = arrays[first]
            src[1, rows] = arrays[first + 1]
        super().use_weights(h, arrays)

    def put_weights(self, a):
        np.copyto(self.model.params, a)

    def index(self, h, arrays):
        return arrays[0] if h.get("indices", False) else None

    def gradient_reply(self, h, loss):
        g = self.model.grads
        scale = h.get("scale", 1.0)
        if scale != 1.0:                 # this shard's weight in the batch mean
            g *= scale
        if h.get("carried", False):      # the rows of the state the chunk ended with
            dst = self.task.arrays["train.state"][(h["chunk"] + 1) % 2]
            rows = slice(h["start"], h["stop"])
            return {"carried": True}, (g, np.ascontiguousarray(dst[0, rows]),
                                     np.ascontiguousarray(dst[1, rows]))
        return {}, (g,)

    def extra(self, msg):
        return None

    def close(self):
        pass


def _cached(data_dir, spec):
    """The array named by ``spec`` from ``data_dir`` if it is there and whole, else None."""
    from dpnet.parallel.protocol import array_checksum
    if data_dir is None:
        return None
    path = os.path.join(data_dir, f"{spec['checksum']}.npy")
    if not os.path.isfile(path):
        return None
    try:
        a = np.load(path, allow_pickle=False)
    except Exception:
        return None
    if a.dtype.str != spec["dtype"] or list(a.shape) != list(spec["shape"]) \
            or array_checksum(a) != spec["checksum"]:
        print(f"dpnet-worker: {path} does not match the run's array; fetching it",
              file=sys.stderr, flush=True)
        return None
    return a


def _check_data_dir(data_dir):
    """--data: a directory (made if missing) -- checked before joining, not found out
    when the first copy is written mid-handshake. A read-only one still serves the
    copies it holds (a shared, prepared data directory); new ones are not kept."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(f"--data {data_dir!r} is not a directory")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--data {data_dir!r}: cannot make the directory "
                         f"({e.strerror or e})") from None


def _keep(data_dir, spec, a):
    from dpnet.storage.atomic import atomic_write
    try:
        atomic_write(os.path.join(data_dir, f"{spec['checksum']}.npy"),
                     lambda f: np.save(f, a, allow_pickle=False))
    except OSError as e:                   # read-only, full: the run goes on without it
        print(f"dpnet-worker: note: --data {data_dir!r}: not kept for the next run "
              f"({e.strerror or e})", file=sys.stderr, flush=True)


def _fetch(sock, rank, name, spec, timeout_s):
    """Stream one array from the coordinator, chunk by chunk, and check it."""
    from dpnet.parallel import protocol as P
    from dpnet.parallel.protocol import array_checksum
    dtype = np.dtype(spec["dtype"])
    if dtype.str not in P.ALLOWED_DTYPES or len(spec["shape"]) > P.MAX_NDIM:
        raise Refused(f"the run's array {name!r} has an unusable type {spec['dtype']}")
    a = np.empty(spec["shape"], dtype)
    raw = a.reshape(-1).view(np.uint8)
    offset = 0
    while offset < raw.nbytes:
        sock.send(P.FETCH, {"rank": rank, "name": name, "offset": offset,
                            "size": min(CHUNK, raw.nbytes - offset)})
        msg = sock.recv_valid(timeout_s)
        if msg is None:
            raise TimeoutError(f"no data from the coordinator for {timeout_s:g} s")
        if msg.kind == P.STOP:
            raise _stopped(msg)
        h = msg.header
        if msg.kind != P.DATA or h["name"] != name or h["offset"] != offset \
                or h["total"] != raw.nbytes or not len(msg.arrays[0]):
            continue                       # not the chunk asked for: ask again
        chunk = msg.arrays[0]
        raw[offset:offset + len(chunk)] = chunk
        offset += len(chunk)
    if array_checksum(a) != spec["checksum"]:
        raise Refused(f"the run's array {name!r} arrived with another checksum")
    return a


def join_and_serve(args, curve, outcome, rejoining=False, prog="dpnet-worker"):
    """One membership: JOIN, the data, the serve loop. Returns the exit code; the
    reason it ended is in ``outcome['reason']``. ``rejoining``: this process was a
    member of a run at this address before."""
    from dpnet.parallel import protocol as P
    from dpnet.parallel.transport import CoordinatorWatch, Dealer
    from .serve import serve

    ident = b"r." + secrets.token_hex(8).encode()
    beat = b"rh." + secrets.token_hex(8).encode()

    def connect(identity, monitor=False):
        return Dealer(args.connect, identity, curve=curve, monitor=monitor)

    sock = connect(ident, monitor=True)
    try:
        sock.send(P.JOIN, {"pid": os.getpid(), "host": socket.gethostname(),
                           "heartbeat_identity": beat.decode()})
        start = time.monotonic()
        deadline = start + args.wait
        say = (lambda line: None) if getattr(args, "quiet", False) else \
            (lambda line: print(line, file=sys.stderr, flush=True))
        if not rejoining:                  # (a rejoin has said "joining again")
            say(f"{prog}: joining the run at {args.connect} (waiting up to "
                f"{args.wait:g} s for its coordinator)")
        notice_s = min(NOTICE_S, args.wait / 2)
        connected = noticed = False
        admit = None
        while admit is None:
            events = sock.poll_events()
            connected = connected or "connected" in events
            if not (connected or noticed) and time.monotonic() - start > notice_s:
                noticed = True             # a wrong port, a firewall: said, not silent
                say(f"{prog}: no connection to {args.connect} after {notice_s:g} s "
                    f"(nothing listening there, or a firewall between); still trying "
                    f"for {deadline - time.monotonic():.0f} s")
            # a cut handshake is a refusal (a plaintext client, an unknown key) -- except
            # when joining again a coordinator that admitted this worker before: then it
            # is that coordinator closing at the end of its run, as the keys were good
            if "refused" in events or ("dropped" in events and not rejoining):
                raise Refused("the coordinator refused the connection: its CURVE key is "
                              "not the one in --keys, or this worker's key is not in its "
                              "allowed/ directory, or it needs --keys")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no coordinator answered at {args.connect} within "
                                   f"{args.wait:g} s")
            msg = sock.recv_valid(0.25)
            if msg is None:
                continue
            if msg.kind == P.STOP:
                raise _stopped(msg)
            if msg.kind == P.ADMIT:
                admit = msg.header
        rank, cfg = admit["rank"], admit["config"]
        # what changes during training (a character model's carried state) is the
        # worker's own, its rows sent with each step
        arrays = {name: np.zeros(shape, dtype)
                  for name, (dtype, shape) in cfg.get("carried", {}).items()}
        for name, spec in sorted(cfg.get("arrays", {}).items()):
            # kept from an earlier membership of this process, or on disk, or fetched
            a = _HELD.get(spec["checksum"])
            if a is None:
                a = _cached(args.data, spec)
            if a is None:
                a = _fetch(sock, rank, name, spec, args.wait)
                if args.data is not None:
                    _keep(args.data, spec, a)
            arrays[name] = a
        _HELD.clear()                      # only this run's arrays stay in memory
        _HELD.update((spec["checksum"], arrays[name])
                     for name, spec in cfg.get("arrays", {}).items())
        say(f"{prog}: joined as worker {rank} of the run at {args.connect}")
        return serve(lambda: FrameBinding(cfg, arrays, cfg.get("data", "")), args.connect,
                     rank, (ident, beat), CoordinatorWatch(dealer=sock),
                     heartbeat_s=cfg.get("heartbeat_s"), connect=connect, sock=sock,
                     outcome=outcome)
    except RunOver:
        sock.close()
        outcome["reason"] = "done"
        return 0
    except BaseException:
        sock.close()
        raise


def _check_host(prog, endpoint, host, port):
    """A coordinator's host name that does not resolve is an error now, not a silent
    --wait; one that cannot be resolved at the moment (the name server) is a note."""
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:
            print(f"{prog}: note: cannot resolve {host!r} now ({e.strerror}); trying "
                  f"until --wait ends", file=sys.stderr, flush=True)
            return
        raise ValueError(f"--connect {endpoint}: unknown host {host!r} "
                         f"({e.strerror})") from None
    except UnicodeError:
        raise ValueError(f"--connect {endpoint}: {host!r} is not a host name") from None


def parser(prog="python -m workers.remote"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a dpnet run on another machine: join the coordinator at "
                    "--connect, compute the gradients of the shards it sends.")
    p.add_argument("--connect", required=True, metavar="tcp://HOST:PORT",
                   help="the coordinator's endpoint (what runDnn.py --listen prints)")
    p.add_argument("--keys", metavar="DIR", default=None,
                   help="key directory from 'python -m dpnet keys DIR' (needs "
                        "coordinator.key and this worker's keypair); required unless "
                        "the coordinator is on this machine's loopback; - reads the keys "
                        "from standard input (how a coordinator starts its local ones)")
    p.add_argument("--key-name", default=None, metavar="NAME",
                   help="which keypair in --keys: NAME.key_secret (default: worker, or "
                        "the only worker keypair there, e.g. worker-3 of keys --workers N)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="keep the run's arrays here (files named by checksum) and read "
                        "them from here next time instead of fetching them")
    p.add_argument("--wait", type=float, default=300.0, metavar="S",
                   help="how long to wait for a coordinator, at start and after losing "
                        "one (default: 300)")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="BLAS threads for this worker (default: the BLAS library's own "
                        "choice, usually all cores; 1 gives results bit-identical to "
                        "runDnn.py's local workers)")
    p.add_argument("--quiet", action="store_true",
                   help="say only why it ended, not that it joined (how runDnn.py starts "
                        "the workers of its own machine: it says who joined)")
    p.add_argument("--once", action="store_true",
                   help="exit after one membership instead of joining again (exit code 0 if "
                        "its run ended, 1 if it lost its coordinator or its rank first)")
    return p


def main(argv=None, prog=None):
    from dpnet.parallel.keys import KeysError, client_keys
    from dpnet.parallel.transport import is_loopback, split_tcp

    if prog is None:                       # the installed command, or the launcher
        prog = "dpnet-worker" if os.path.basename(sys.argv[0]) == "dpnet-worker" \
            else "python -m workers.remote"
    args = parser(prog).parse_args(argv)
    try:
        host, port = split_tcp(args.connect)
        if port == 0:
            raise ValueError(f"--connect needs the coordinator's port, got {args.connect!r}")
        if not args.wait > 0:
            raise ValueError(f"--wait must be a positive number of seconds, got {args.wait}")
        curve = None
        if args.keys == "-":              # a coordinator that started this worker
            words = sys.stdin.read().split()
            if len(words) != 3:
                raise ValueError("--keys - reads three z85 keys from standard input: "
                                 "public, secret, the coordinator's public")
            curve = tuple(w.encode() for w in words)
        elif args.keys is not None:
            curve = client_keys(args.keys, args.key_name)
        elif not is_loopback(host):
            raise ValueError(f"--connect {args.connect} is another machine: give --keys DIR "
                             f"(the coordinator accepts only workers with an allowed key)")
        if args.blas_threads is not None and args.blas_threads < 1:
            raise ValueError(f"--blas-threads must be >= 1, got {args.blas_threads}")
        if args.data is not None:
            _check_data_dir(args.data)
        _check_host(prog, args.connect, host, port)
    except (ValueError, KeysError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.blas_threads is not None:
        want = str(args.blas_threads)
        if os.environ.get("OPENBLAS_NUM_THREADS") != want:
            # BLAS reads its thread count when it loads (numpy is loaded already):
            # start afresh once with it set
            from dpnet.engines.group import blas_env
            env = dict(os.environ, **blas_env(want))
            argv = sys.argv[1:] if argv is None else list(argv)
            os.execve(sys.executable, [sys.executable, "-m", "dpnet.workers.remote_worker",
                                       *argv], env)
    np.seterr(over="ignore", invalid="ignore", divide="ignore")
    # SIGTERM (srun, a scheduler, kill) ends it like Ctrl-C
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        return run(args, curve, prog)
    except KeyboardInterrupt:
        return 130


def run(args, curve, prog="dpnet-worker"):
    """Memberships until the run is over (or ``args.once``): the exit code. ``args``
    needs ``connect``, ``data``, ``wait``, ``once``; ``curve``: (public, secret,
    server public) or None. What a launcher such as a Ray actor calls in its own thread."""
    try:
        rejoining = False
        while True:
            outcome = {}
            code = join_and_serve(args, curve, outcome, rejoining, prog)
            rejoining = True
            reason = outcome.get("reason", "")
            if reason.startswith("refused"):
                raise Refused(reason[len("refused"):].lstrip(": "))
            if reason == "done" or code != 0:
                return code
            if args.once:                  # the one membership ended before its run did
                print(f"{prog}: {reason}; not joining again (--once)", file=sys.stderr,
                      flush=True)
                return 1
            print(f"{prog}: {reason}; joining again", file=sys.stderr, flush=True)
    except Refused as e:
        print(f"{prog}: refused: {e}", file=sys.stderr)
        return 1
    except TimeoutError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
