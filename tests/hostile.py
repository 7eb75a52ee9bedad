"""A hostile peer for tests: messages a coordinator never asked for, sent to its socket
from identities that are no workers of its run (and, given one, a live worker's)."""
import threading

import msgpack
import numpy as np
import zmq

from dpnet.parallel import protocol as P

KINDS = sorted(P.KINDS)


def _header(rng, kind, claim_rank):
    """A well-formed header of ``kind`` that lies: other ranks, other steps."""
    h = {"rank": claim_rank, "step": int(rng.integers(0, 10_000)), "n": 64, "loss": 0.0,
         "correct": 64, "start": 0, "stop": 64, "weights_version": int(rng.integers(0, 99)),
         "split": "val", "message": "boom", "traceback": "forged", "pid": 1,
         "signature": {"architecture": "x", "n_params": 1, "dtype": "<f4"}, "reason": "x",
         "t": 1, "optimizer": {"name": "sgd"}}
    return h


def messages(n, seed=0):
    """``n`` hostile frame lists: random bytes, every kind with random or truncated
    headers, and well-formed replies and ERRORs claiming other ranks and steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % 4
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        if k == 0:                                     # random frames
            out.append([rng.bytes(int(rng.integers(0, 40))) for _ in range(
                int(rng.integers(1, 4)))])
        elif k == 1:                                   # random header bytes
            out.append([kind, rng.bytes(int(rng.integers(0, 60)))])
        elif k == 2:                                   # a real header, cut short
            raw = msgpack.packb(dict(_header(rng, kind, 0), v=P.PROTOCOL_VERSION, arrays=[]))
            out.append([kind, raw[:int(rng.integers(1, len(raw)))]])
        else:                                          # well-formed lies
            kind = [P.GRAD, P.EVAL_RESULT, P.ERROR, P.HELLO, P.HEARTBEAT, P.BYE][i // 4 % 6]
            h = _header(rng, kind, int(rng.integers(0, 3)))
            required, optional, _ = P._SPEC[kind]
            h = {f: h[f] for f in (*required, *optional) if f in h}
            arrays = [np.zeros(3, np.float32)] if kind == P.GRAD else []
            if kind == P.GRAD and i // 24 % 2:
                h["grad_in_shm"], arrays = True, []
            try:
                out.append(P.encode(kind, h, *arrays))
            except P.ProtocolError:
                out.append([kind, b"\x80"])
    return out


class Flood(threading.Thread):
    """Sends ``n`` hostile messages to ``endpoint`` from four strangers (and, given
    ``taken``, a fifth peer that claims a live worker's identity), as fast as the
    coordinator takes them (its queues are bounded). ``sent`` counts them;
    ``delivered`` is how many can reach the coordinator (the fifth peer's cannot)."""

    def __init__(self, endpoint, n=10_000, taken=None, seed=0):
        super().__init__(daemon=True)
        self.endpoint, self.n, self.taken, self.seed = endpoint, n, taken, seed
        self.sent = 0
        self.error = None
        # a peer that goes away takes its undelivered messages with it: the sockets stay
        # open until the test has seen the coordinator read what it could
        self.release = threading.Event()
        self.delivered = n - (n // 5 if taken is not None else 0)

    def run(self):
        ctx = zmq.Context()
        socks = []
        try:
            idents = [b"stranger", b"w1", b"w0.0000000000000000", b"h1.deadbeefdeadbeef"]
            if self.taken is not None:
                idents.append(self.taken)
            for ident in idents:
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.SNDTIMEO, 20_000)
                s.setsockopt(zmq.IDENTITY, ident)
                s.connect(self.endpoint)
                socks.append(s)
            for i, frames in enumerate(messages(self.n, self.seed)):
                s = socks[i % len(socks)]
                if self.taken is not None and s is socks[-1]:
                    # the ROUTER refuses a second peer with a connected identity: what
                    # this one sends waits at the door, or is dropped when it is full
                    try:
                        s.send_multipart(frames, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                else:
                    s.send_multipart(frames)
                self.sent += 1
            self.release.wait(120)
        except Exception as e:                 # reported by the test, not swallowed
            self.error = e
        finally:
            for s in socks:
                s.close()
            ctx.term()
