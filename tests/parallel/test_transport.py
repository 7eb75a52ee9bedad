"""ROUTER/DEALER over real sockets and a real spawned process: round trips, timeouts, garbage."""
import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import zmq

from dpnet.parallel import protocol as P
from dpnet.parallel import transport as T


def _worker(endpoint, rank, ident):
    # A miniature worker: handshake, one gradient per STEP, exit on STOP.
    with T.Dealer(endpoint, ident) as d:
        d.send(P.HELLO, {"rank": rank, "pid": os.getpid(), "signature": P.model_signature("toy", 5, "float32")})
        while True:
            msg = d.recv(10.0)
            if msg is None or msg.kind == P.STOP:
                d.send(P.BYE, {"rank": rank})
                return
            h, (idx,) = msg.header, msg.arrays
            grad = (idx.astype(np.float32)[:, None] * np.ones(5, np.float32)).sum(axis=0) * h["step"]
            d.send(P.GRAD, {"step": h["step"], "rank": rank, "n": len(idx), "loss": float(idx.sum()),
                            "correct": 0}, grad)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_round_trip_with_a_spawned_worker(transport):
    ctx = mp.get_context("spawn")
    with T.Router(transport) as r:
        ident = T.new_identity(3)
        p = ctx.Process(target=_worker, args=(r.endpoint, 3, ident))
        p.start()
        try:
            hello = r.recv(20.0)
            assert hello.identity == ident and hello.kind == P.HELLO
            assert hello.header["pid"] == p.pid
            P.check_signature(P.model_signature("toy", 5, "float32"), hello.header["signature"])
            for step in (1, 2):
                idx = np.array([4, 0, 6], np.int64)
                r.send(ident, P.STEP, {"step": step, "rank": 3, "start": 0, "stop": 3,
                                   "weights_version": step, "indices": True}, idx)
                m = r.recv(10.0)
                assert m.kind == P.GRAD and m.header["step"] == step and m.header["n"] == 3
                (g,) = m.arrays
                np.testing.assert_array_equal(g, np.full(5, 10.0 * step, np.float32))
            r.send(ident, P.STOP, {"reason": "done"})
            assert r.recv(10.0).kind == P.BYE
            p.join(10)
            assert p.exitcode == 0
        finally:
            if p.is_alive():
                p.kill()
                p.join()
    if transport == "ipc":
        assert not os.path.exists(r.endpoint[len("ipc://"):].rsplit("/", 1)[0])


@pytest.mark.timeout(30)
def test_recv_timeout_returns_none_after_the_deadline():
    """Never early; late only by what a busy machine's scheduler adds (the bound here
    is generous on purpose: a latency claim belongs to a benchmark, not a test)."""
    with T.Router() as r:
        for timeout in (0.0, 0.2):
            t0 = time.monotonic()
            assert r.recv(timeout) is None
            elapsed = time.monotonic() - t0
            assert timeout <= elapsed < timeout + 5
        t0 = time.monotonic()
        assert r.recv_valid(0.2) is None
        assert 0.2 <= time.monotonic() - t0 < 5


@pytest.mark.timeout(10)
@pytest.mark.parametrize("garbage", [
    [b"junk"],
    [P.GRAD, b"\xc1"],
    [P.STOP, b"\x81\xa1v\x01"],                                   # {"v": 1}: fields missing
    P.encode(P.GRAD, {"step": 1, "rank": 0, "n": 1, "loss": 0.0, "correct": 0},
             np.zeros(4, np.float32))[:2],                        # gradient frame lost
])
def test_garbage_is_refused_and_the_next_good_message_still_arrives(garbage):
    with T.Router() as r, T.Dealer(r.endpoint, b"w0") as d:
        d.socket.send_multipart(garbage)
        d.send(P.HEARTBEAT, {"rank": 0})
        with pytest.raises(T.BadMessage) as e:
            r.recv(5.0)
        assert e.value.peer == b"w0" and "b'w0'" in str(e.value)
        assert isinstance(e.value, P.ProtocolError)
        good = r.recv(5.0)
        assert good.kind == P.HEARTBEAT and good.identity == b"w0"
        # Same again through recv_valid, which logs and drops on its own.
        d.socket.send_multipart(garbage)
        d.send(P.HEARTBEAT, {"rank": 0, "busy": True})
        bad = []
        good = r.recv_valid(5.0, on_bad=bad.append)
        assert good.header["busy"] is True and len(bad) == 1


@pytest.mark.timeout(10)
def test_coordinator_to_worker_and_addressing_errors():
    with T.Router("tcp") as r, T.Dealer(r.endpoint, b"w1") as d:
        d.send(P.HEARTBEAT, {"rank": 1})
        assert r.recv(5.0).identity == b"w1"        # the ROUTER now knows w1
        w = np.arange(6, dtype=np.float64).reshape(2, 3)
        r.send(b"w1", P.SYNC, {"weights_version": 9, "weights": True}, w)
        m = d.recv(5.0)
        assert m.identity is None and m.header["weights_version"] == 9
        np.testing.assert_array_equal(m.arrays[0], w)
        with pytest.raises(zmq.ZMQError):             # ROUTER_MANDATORY: no such worker
            r.send(b"w7", P.STOP, {"reason": "x"})
        with pytest.raises(ValueError, match="peer identity"):
            T.send(r.socket, P.STOP, {"reason": "x"})
        with pytest.raises(ValueError, match="only a ROUTER"):
            T.send(d.socket, P.STOP, {"reason": "x"}, to=b"w0")
        with pytest.raises(P.ProtocolError):
            d.send(P.GRAD, {"step": 1})                 # refused before it is sent
    with pytest.raises(ValueError, match="transport must be"):
        T.Router("udp")


@pytest.mark.timeout(10)
def test_a_second_peer_cannot_take_a_connected_identity():
    """No handover: a peer that claims the identity of a connected worker is refused,
    and messages for that identity still reach the worker."""
    ident = T.new_identity(2)
    with T.Router() as r:
        real = T.Dealer(r.endpoint, ident)
        real.send(P.HEARTBEAT, {"rank": 2})
        assert r.recv(5.0).identity == ident
        thief = T.Dealer(r.endpoint, ident)
        thief.send(P.HELLO, {"rank": 2, "pid": 1, "signature": {}})
        assert r.recv(0.5) is None                     # refused at the door
        r.send(ident, P.STOP, {"reason": "x"})
        assert real.recv(5.0).kind == P.STOP and thief.recv(0.3) is None
        with pytest.raises(ValueError, match="identity must be 1-255 bytes"):
            T.Dealer(r.endpoint, 3)
        real.close()
        thief.close()


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_ticker_ticks_once_per_interval():
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        T.Ticker(0)
    clock = FakeClock()
    t = T.Ticker(0.05, clock=clock)
    assert not t.due() and t.remaining() == pytest.approx(0.05)
    clock.now += 0.049
    assert not t.due() and t.remaining() == pytest.approx(0.001)
    clock.now += 0.001
    assert t.due() and not t.due()                     # once, then the next interval
    assert t.remaining() == pytest.approx(0.05)
    clock.now += 1.0                                   # a long stall: one tick, not 20
    assert t.due() and not t.due() and t.remaining() == pytest.approx(0.05)


def test_ticker_on_the_real_clock_is_never_early():
    t = T.Ticker(0.05)
    t0 = time.monotonic()
    while not t.due():
        time.sleep(0.005)
    assert time.monotonic() - t0 >= 0.05


def test_coordinator_watch_parent_and_silence():
    assert T.CoordinatorWatch(parent_pid=os.getppid()).lost() is None
    assert "is gone" in T.CoordinatorWatch(parent_pid=os.getppid() + 1).lost()
    clock = FakeClock()
    w = T.CoordinatorWatch(silence_s=0.05, clock=clock)
    assert w.lost() is None
    clock.now += 0.05
    assert w.lost() is None                            # "longer than", not "as long as"
    clock.now += 0.01
    assert w.lost() == "no message from the coordinator for 0.1 s"
    w.saw_message()
    assert w.lost() is None
    clock.now += 10
    assert "for 10.0 s" in w.lost()
    assert T.CoordinatorWatch(silence_s=None, clock=clock).lost() is None


def test_ipc_dir_is_short_private_and_stale_ones_are_swept(tmp_path, monkeypatch):
    import os
    import stat
    from dpnet.parallel.transport import Router
    long_tmp = tmp_path / ("x" * 120)
    long_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)       # re-read TMPDIR
    with Router("ipc") as r:
        path = r.endpoint[len("ipc://"):]
        assert len(path) <= 107 and not path.startswith(str(long_tmp))
        d = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        base = os.path.dirname(d)
    stale = os.path.join(base, "dpnet_999999999_abc")       # no such pid
    os.mkdir(stale)
    from dpnet.parallel.transport import sweep_stale_dirs
    with Router("ipc") as live:
        live_dir = os.path.dirname(live.endpoint[len("ipc://"):])
        assert sweep_stale_dirs(dry_run=True) == [stale] and os.path.exists(stale)
        assert sweep_stale_dirs() == [stale]
        assert not os.path.exists(stale) and os.path.isdir(live_dir)
