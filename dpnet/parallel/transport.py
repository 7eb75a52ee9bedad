"""ZeroMQ plumbing: a ROUTER for the coordinator, a DEALER per worker, timed receives.

Every process makes its own ``zmq.Context`` (contexts do not survive ``spawn``, and a
shared one would couple the processes' lifetimes). Sockets linger 0 ms: at the end of a
run, or after a crash, undelivered messages are worthless and must not block exit.

Liveness (see ``Ticker`` and ``CoordinatorWatch``):
- the coordinator treats ANY message from a worker as a sign of life;
- every worker sends a HEARTBEAT every ``HEARTBEAT_S`` from a thread with a socket of
  its own (identity ``h<rank>.<random>``), busy or idle, so that silence means a hung or
  unreachable worker even where the coordinator has no pid to look at (remote
  workers); local workers are also watched by pid (``dpnet.engines.group``);
- a worker watches its coordinator by parent pid (local) and, optionally, by silence
  (remote: the coordinator must then send heartbeats too).
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time

import zmq

from . import protocol
from .protocol import ProtocolError

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5
ZMTP_PING_S = 1.0             # ZeroMQ's own keepalive on each connection ...
# ... and how long without a whole message after a ping before it drops it: libzmq
# counts a message received once its last byte is in, so this bounds the time one frame
# may take on the wire -- 5 s dropped every step's weights (1.9 MB) on a 2 Mbit/s
# link, and the first 16 MiB of data below 25 Mbit/s. A dead peer is found by the
# coordinator's silence timeout (30 s) long before.
ZMTP_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 5.0          # a send that blocks this long means the peer is gone or stuck
_MAX_MSG = protocol.MAX_ARRAY_BYTES + protocol.MAX_HEADER_BYTES


def new_identity(rank, heartbeat=False):
    """A fresh, unguessable identity for one incarnation of worker ``rank`` (``w<rank>.``
    or, for its heartbeat socket, ``h<rank>.``, then 64 random bits). The coordinator
    gives it to the worker it starts and acts only on messages from the identities it
    gave out; a replacement gets new ones, and the ROUTER refuses a second peer that
    claims an identity in use (no handover), so nobody can take a worker's place."""
    return b"%s%d.%s" % (b"h" if heartbeat else b"w", rank, secrets.token_hex(8).encode())


class Message(tuple):
    """``(identity, kind, header, arrays)``; identity is None on a worker's socket."""
    __slots__ = ()

    def __new__(cls, ident, kind, header, arrays):
        return super().__new__(cls, (ident, kind, header, arrays))

    identity = property(lambda self: self[0])
    kind = property(lambda self: self[1])
    header = property(lambda self: self[2])
    arrays = property(lambda self: self[3])


class BadMessage(ProtocolError):
    """A refused message, with the identity of the peer that sent it (None if unknown)."""

    def __init__(self, message, peer=None):
        super().__init__(message if peer is None else f"from {peer!r}: {message}")
        self.peer = peer


def _configure(sock):
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, _MAX_MSG)   # zmq drops the peer instead of allocating
    sock.setsockopt(zmq.SNDTIMEO, int(SEND_TIMEOUT_S * 1000))
    # Over TCP, a peer whose host died or whose link went down sends nothing, not even
    # a FIN: ZMTP pings find that out and drop the connection (what a worker's
    # CoordinatorWatch(monitor=...) sees, and what frees a lost worker's identity).
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(ZMTP_PING_S * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(ZMTP_TIMEOUT_S * 1000))


def split_tcp(endpoint):
    """("host", port) of ``tcp://host:port`` (port 0 or * = any free port), or a
    ValueError naming what is wrong."""
    if not isinstance(endpoint, str) or not endpoint.startswith("tcp://"):
        raise ValueError(f"a TCP endpoint looks like tcp://HOST:PORT, got {endpoint!r}")
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    if not sep or not host:
        raise ValueError(f"a TCP endpoint looks like tcp://HOST:PORT, got {endpoint!r}")
    if port == "*":
        port = "0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"the port in {endpoint!r} must be 0-65535 (0 or *: any free one)")
    return host, int(port)


def is_loopback(host):
    """Whether binding ``host`` exposes the socket to this machine only."""
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Gate:
    """The ZAP credentials check for CURVE: only the allowed public keys get in; the
    refused ones are counted (and the first few logged by key)."""

    def __init__(self, allowed):
        self.allowed = {bytes(k) for k in allowed}
        self.refused = 0

    def callback(self, domain, key):
        if bytes(key) in self.allowed:
            return True
        self.refused += 1
        if self.refused <= 3:
            log.warning("refused a peer with an unknown CURVE key %s", bytes(key).decode())
        return False


def send(sock, kind, header, *arrays, to=None, copy=False):
    """Encode and send one message. ``to``: the peer identity (ROUTER sockets only).

    With ``copy=False`` large arrays go without copying: do not modify them until the
    peer has answered (dpnet's lockstep protocol guarantees that for gradients).
    Raises ``ProtocolError`` for an unencodable message, ``zmq.Again`` when the peer
    does not take it within ``SEND_TIMEOUT_S`` and ``zmq.ZMQError`` (EHOSTUNREACH) when
    a ROUTER's peer is not connected.
    """
    frames = protocol.encode(kind, header, *arrays)
    if sock.type == zmq.ROUTER:
        if to is None:
            raise ValueError("a ROUTER socket needs the peer identity: send(..., to=identity)")
        frames.insert(0, to)
    elif to is not None:
        raise ValueError(f"only a ROUTER socket addresses peers, got to={to!r}")
    sock.send_multipart(frames, copy=copy)


def recv(sock, timeout_s):
    """The next message within ``timeout_s`` seconds, or None.

    A malformed message is consumed and raises ``BadMessage`` (a ``ProtocolError``)
    naming the sender where known; call again to go on receiving.
    """
    if not isinstance(timeout_s, (int, float)):
        raise ValueError(f"timeout_s must be a number of seconds (every receive has one), got {timeout_s!r}")
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        if sock.poll(remaining_ms, zmq.POLLIN):
            break
        if time.monotonic() >= deadline:
            return None
    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
    peer = None
    if sock.type == zmq.ROUTER:
        peer = frames.pop(0).bytes
    try:
        kind, header, arrays = protocol.decode([f.buffer for f in frames])
    except ProtocolError as e:
        raise BadMessage(str(e), peer) from None
    return Message(peer, kind, header, arrays)


def recv_valid(sock, timeout_s, on_bad=None):
    """Like ``recv``, but logs and drops malformed messages until a good one or the deadline.

    ``on_bad(error)`` is called for each refused message (default: log a warning).
    """
    deadline = time.monotonic() + max(0.0, timeout_s)
    while True:
        try:
            return recv(sock, deadline - time.monotonic())
        except ProtocolError as e:
            (on_bad or (lambda err: log.warning("dropped a bad message: %s", err)))(e)


_IPC_PATH_MAX = 100      # sun_path holds 107 bytes; keep a margin for the socket's name


def _ipc_base():
    """Where ipc socket directories go: a path short enough for a Unix socket (107
    bytes), so a long $TMPDIR is passed over for $XDG_RUNTIME_DIR or /tmp."""
    for base in (tempfile.gettempdir(), os.environ.get("XDG_RUNTIME_DIR"), "/tmp"):
        if base and os.path.isdir(base) and len(base) + 40 <= _IPC_PATH_MAX:
            return base
    raise RuntimeError("no directory with a path short enough for an ipc socket; "
                       "set TMPDIR to a short path")


def _private_ipc_dir():
    """A fresh 0700 directory for the ipc socket, named after this pid so that one left
    by a coordinator killed with SIGKILL can be recognised and removed later."""
    return tempfile.mkdtemp(prefix=f"dpnet_{os.getpid()}_", dir=_ipc_base())


def sweep_stale_dirs(dry_run=False):
    """Remove dpnet_<pid>_* socket directories whose coordinator is gone; returns their
    paths (with ``dry_run``, those it would remove)."""
    try:
        base = _ipc_base()
        names = os.listdir(base)
    except (OSError, RuntimeError):
        return []
    removed = []
    for name in sorted(names):
        parts = name.split("_")
        if len(parts) < 3 or parts[0] != "dpnet" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        try:
            os.kill(pid, 0)
            continue                      # its coordinator still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue                      # someone else's, and alive
        path = os.path.join(base, name)
        if not os.path.isdir(path):
            continue
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class _Socket:
    """What both ends share: timed receives, closing, context management."""
    socket = context = None

    def recv(self, timeout_s):
        return recv(self.socket, timeout_s)

    def recv_valid(self, timeout_s, on_bad=None):
        return recv_valid(self.socket, timeout_s, on_bad)

    def close(self, linger_s=0.0):
        """Close the socket and the context. Idempotent. ``linger_s``: how long queued
        messages may still take to leave (a last word before exiting)."""
        if self.socket is not None:
            self.socket.close(linger=int(linger_s * 1000))
            self.socket = None
        if self.context is not None:
            self.context.term()
            self.context = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Router(_Socket):
    """The coordinator's socket: bound, addresses workers by identity.

    ``transport``: "ipc" (a private directory) or "tcp" (``host``, a free port), or
    ``bind="tcp://HOST:PORT"`` (port 0: a free one). ``curve=(public, secret, allowed)``
    makes it a CURVE server that lets in only the allowed public keys (z85), checked
    by a running ZAP authenticator -- without one, libzmq would accept ANY key, so the
    socket also enforces the ZAP domain: if the authenticator is not there, nobody
    gets in."""

    def __init__(self, transport="ipc", host="127.0.0.1", bind=None, curve=None,
                 max_message=None):
        self._dir = None
        self.auth = self.gate = self._monitor = None
        self.context = zmq.Context()
        self.socket = None
        try:
            self.socket = self.context.socket(zmq.ROUTER)
            _configure(self.socket)
            if max_message is not None:
                # the largest message a peer may send (ZeroMQ drops a peer that sends
                # more, before allocating it): for a run, its gradient frame
                self.socket.setsockopt(zmq.MAXMSGSIZE, int(max_message))
            # Sending to a worker that is not connected must fail, not vanish silently.
            self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # No handover: a second peer claiming a connected identity is refused, so a
            # stranger cannot take a worker's routing (replacements get new identities).
            self.socket.setsockopt(zmq.ROUTER_HANDOVER, 0)
            if curve is not None:
                from zmq.auth.thread import ThreadAuthenticator
                public, secret, allowed = curve
                self.gate = _Gate(allowed)
                self.auth = ThreadAuthenticator(self.context, log=log.getChild("zap"))
                self.auth.start()
                self.auth.configure_curve_callback("dpnet", credentials_provider=self.gate)
                self.socket.curve_server = True
                self.socket.curve_publickey = public
                self.socket.curve_secretkey = secret
                self.socket.zap_domain = b"dpnet"
                self.socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
                # a peer with another run's coordinator key (or none) fails the
                # handshake before ZAP sees a key: only a monitor tells of it
                self._monitor = self.socket.get_monitor_socket(
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
            if bind is not None:
                host, port = split_tcp(bind)
                if port == 0:
                    port = self.socket.bind_to_random_port(f"tcp://{host}")
                else:
                    self.socket.bind(f"tcp://{host}:{port}")
                self.endpoint = f"tcp://{host}:{port}"
            elif transport == "ipc":
                # A private (0700) directory: no other local user can connect (an
                # abstract socket would be visible, and connectable, by anyone).
                self._dir = _private_ipc_dir()
                self.endpoint = f"ipc://{self._dir}/{secrets.token_hex(4)}.sock"
                self.socket.bind(self.endpoint)
            elif transport == "tcp":
                port = self.socket.bind_to_random_port(f"tcp://{host}")
                self.endpoint = f"tcp://{host}:{port}"
            else:
                raise ValueError(f"transport must be 'ipc' or 'tcp', got {transport!r}")
        except BaseException:
            self.close()
            raise

    def send(self, identity, kind, header, *arrays, copy=False):
        """One message to the peer ``identity`` (bytes)."""
        send(self.socket, kind, header, *arrays, to=identity, copy=copy)

    def failed_handshakes(self):
        """How many connections failed the CURVE handshake since the last call (a
        worker holding another run's keys, or none)."""
        n = 0
        while self._monitor is not None and self._monitor.poll(0):
            self._monitor.recv_multipart()
            n += 1
        return n

    def close(self):
        """Close the socket and context, remove the ipc directory. Idempotent."""
        if self._monitor is not None:
            if self.socket is not None:      # (a group may close the socket first)
                self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        super().close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class Dealer(_Socket):
    """A worker's socket, connected to the coordinator's endpoint as ``identity`` (bytes:
    the one the coordinator gave this worker, see ``new_identity``). ``curve=(public,
    secret, server_public)``: a CURVE client that talks only to the server holding the
    secret of ``server_public``. ``monitor``: also open a monitor socket that reports
    disconnections (``poll_events``), for a worker that must notice a lost
    coordinator without a pid to watch."""

    def __init__(self, endpoint, identity, curve=None, monitor=False):
        if not isinstance(identity, bytes) or not 0 < len(identity) <= 255:
            raise ValueError(f"identity must be 1-255 bytes, got {identity!r}")
        self.identity = identity
        self.context = zmq.Context()
        self.socket = self._monitor = None
        try:
            self.socket = self.context.socket(zmq.DEALER)
            _configure(self.socket)
            self.socket.setsockopt(zmq.IDENTITY, identity)
            if curve is not None:
                public, secret, server_public = curve
                self.socket.curve_publickey = public
                self.socket.curve_secretkey = secret
                self.socket.curve_serverkey = server_public
            if monitor:
                self._monitor = self.socket.get_monitor_socket(
                    zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                    | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            self.socket.connect(endpoint)
        except BaseException:
            self.close()
            raise

    def send(self, kind, header, *arrays, copy=False):
        send(self.socket, kind, header, *arrays, copy=copy)

    def poll_events(self):
        """Read the monitor's pending events; returns the names of those seen now
        ("connected", "disconnected", "refused": the handshake failed on the keys or the
        protocol, "dropped": the peer left in the middle of it)."""
        from zmq.utils.monitor import recv_monitor_message
        seen = []
        while self._monitor is not None and self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)["event"]
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                seen.append("connected")
            elif ev == zmq.EVENT_DISCONNECTED:
                seen.append("disconnected")
            elif ev in (zmq.EVENT_HANDSHAKE_FAILED_AUTH, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                seen.append("refused")
            elif ev == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # the peer cut the handshake: a server refusing a plaintext client, or
                # a coordinator closing at the end of its run -- the caller tells them
                # apart (a remote worker: by whether that coordinator admitted it before)
                seen.append("dropped")
        return seen

    def close(self, linger_s=0.0):
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        super().close(linger_s)


class Ticker:
    """True from ``due()`` once every ``interval_s`` (monotonic), e.g. to send heartbeats.
    ``clock`` is for tests: any function returning seconds."""

    def __init__(self, interval_s=HEARTBEAT_S, clock=time.monotonic):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s, self._clock = interval_s, clock
        self._next = clock() + interval_s

    def due(self):
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        return True

    def remaining(self):
        """Seconds until the next tick: a good receive timeout for an idle loop."""
        return max(0.0, self._next - self._clock())


class CoordinatorWatch:
    """A worker's view of whether its coordinator is still there.

    ``parent_pid``: the coordinator's pid for local workers (``os.getppid()`` at start);
    if the parent dies the worker is re-parented and the pid changes. ``silence_s``:
    for remote workers, the longest quiet spell tolerated (None: ignore silence).
    Call ``saw_message()`` on every receive and check ``lost()`` outside the receive
    branch, so a worker that hears nothing still notices. ``clock`` is for tests.
    """

    def __init__(self, parent_pid=None, silence_s=None, dealer=None, clock=time.monotonic):
        self.parent_pid = parent_pid
        self.silence_s = silence_s
        self.dealer = dealer                # a Dealer(monitor=True): its connection
        self._clock = clock
        self._last = clock()

    def saw_message(self):
        self._last = self._clock()

    def lost(self):
        """None while the coordinator seems alive, else a reason."""
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            return f"coordinator (pid {self.parent_pid}) is gone"
        if self.dealer is not None and "disconnected" in self.dealer.poll_events():
            return "lost the connection to the coordinator"
        if self.silence_s is not None:
            quiet = self._clock() - self._last
            if quiet > self.silence_s:
                return f"no message from the coordinator for {quiet:.1f} s"
        return None
