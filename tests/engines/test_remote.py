"""Workers on other machines (the ``remote`` kind), here over TCP loopback with real
worker processes (``python -m workers.remote``): the same weights as local workers,
CURVE keys that keep strangers out, peers that lie refused while the run goes on, a
lost worker's share re-run by the others, lost and repeated replies counted and never
folded twice. (tests/engines/test_remote_hosts.py runs them across network namespaces.)"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from dpnet import Dense, Dropout, Sequential
from dpnet.engines import worker_group
from dpnet.engines.coordinator import Coordinator, MultiprocessEngine
from dpnet.engines.errors import WorkerError
from dpnet.optim.optimizers import Momentum
from dpnet.parallel import protocol as P
from dpnet.parallel.keys import KeysError, make_keys
from dpnet.parallel.transport import Dealer

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_workers_left")]
ROOT = Path(__file__).resolve().parents[2]


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 64)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] > 0)
    return x, y


def mlp():
    return Sequential([Dense(64, 32, activation="relu"), Dropout(0.2),
                       Dense(32, 4, activation="softmax")],
                      optimizer=Momentum(lr=0.05), seed=3)


def train(engine, epochs=3, callbacks=()):
    x, y = data()
    m = mlp()
    h = m.fit(x, y, epochs=epochs, batch_size=50, validation_data=(x[:200], y[:200]),
              engine=engine, verbose=0, callbacks=list(callbacks))
    return m, h


def worker_cmd(endpoint, *extra):
    return [sys.executable, "-m", "workers.remote", "--connect", endpoint,
            "--blas-threads", "1", *extra]


class Launcher(threading.Thread):
    """Starts worker processes once the group listens (the coordinator blocks in
    start() until they join); ``extra[i]`` are worker i's further arguments."""

    def __init__(self, group, extra, env=None, go=None):
        super().__init__(daemon=True)
        self.group, self.extra, self.env = group, extra, env
        self.go = go                     # an Event to wait for before launching
        self.procs = []

    def run(self):
        while self.group.endpoint is None:
            time.sleep(0.02)
        if self.go is not None:
            self.go.wait(60)
        for args in self.extra:
            self.procs.append(subprocess.Popen(
                worker_cmd(self.group.endpoint, *args), cwd=ROOT,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=dict(os.environ, **(self.env or {}))))

    def finish(self, timeout=20):
        self.join(10)
        return finish(self.procs, timeout)


def finish(procs, timeout=20):
    """Each process's (exit code, stderr) once it has exited (killed after ``timeout``)."""
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err))
    return out


def rounds_until(eng, done, seconds=60):
    """Evaluation rounds until ``done()`` -- rounds are where the coordinator reads
    joins and admits workers; returns ``done()``."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        eng.evaluate("val")
    return done()


def remote_engine(n, extra=None, env=None, keys=None, listen="tcp://127.0.0.1:0", go=None,
                  **kw):
    group = worker_group("remote", n, listen=listen, keys=keys, say=lambda line: None)
    kw.setdefault("start_timeout", 60)
    eng = Coordinator(group, **kw)
    launcher = Launcher(group, extra if extra is not None else [()] * n, env, go)
    launcher.start()
    return eng, launcher


@pytest.fixture(scope="module")
def local2():
    """The reference: two local CPU worker processes (one BLAS thread each)."""
    with MultiprocessEngine(workers=2) as eng:
        m, h = train(eng)
    return m.params.copy(), h


def test_two_remote_workers_give_the_local_workers_weights_bit_for_bit(local2):
    eng, launcher = remote_engine(2)
    with eng:
        m, h = train(eng)
        stats = eng.stats()
        # its workers leave when the run is over: a second run is refused, not waited for
        with pytest.raises(RuntimeError, match="remote workers were told its run is over: "
                           "make a new engine for another run"):
            train(eng)
    codes = launcher.finish()
    assert np.array_equal(m.params, local2[0])
    assert h.history["val_loss"] == local2[1].history["val_loss"]
    assert [c for c, _ in codes] == [0, 0], codes
    assert stats["stale_replies"] == 0 and stats["respawns"] == 0
    # each worker fetched the run's arrays once (train and validation, x and y)
    x, y = data()
    want = x.nbytes + y.nbytes + x[:200].nbytes + y[:200].nbytes
    assert [w["data_bytes_streamed"] for w in stats["per_worker"]] == [want, want]


def test_a_worker_reads_its_own_copy_of_the_data_once_it_has_one(tmp_path, local2):
    store = tmp_path / "data"
    for run in range(2):
        eng, launcher = remote_engine(1, extra=[("--data", str(store))])
        with eng:
            m, _ = train(eng, epochs=1)
            streamed = eng.stats()["per_worker"][0]["data_bytes_streamed"]
        assert launcher.finish()[0][0] == 0
        assert (streamed > 0) if run == 0 else (streamed == 0)
    assert len(list(store.glob("*.npy"))) == 4
    # a damaged copy is noticed by its checksum and fetched again
    victim = sorted(store.glob("*.npy"))[0]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    eng, launcher = remote_engine(1, extra=[("--data", str(store))])
    with eng:
        train(eng, epochs=1)
        streamed = eng.stats()["per_worker"][0]["data_bytes_streamed"]
    code, err = launcher.finish()[0]
    assert code == 0 and "does not match the run's array; fetching it" in err
    x, y = data()
    assert 0 < streamed < x.nbytes + y.nbytes + x[:200].nbytes + y[:200].nbytes
    # a copy that cannot be kept (here its name taken by a directory: root writes
    # anywhere else) is said once, and the run goes on with what was fetched
    victim.unlink()
    victim.mkdir()
    eng, launcher = remote_engine(1, extra=[("--data", str(store))])
    with eng:
        m, _ = train(eng, epochs=1)
    code, err = launcher.finish()[0]
    assert code == 0 and f"note: --data {str(store)!r}: not kept for the next run" in err, err


def test_curve_lets_in_allowed_keys_only(tmp_path, local2):
    keys, other = tmp_path / "keys", tmp_path / "other"
    make_keys(str(keys))
    make_keys(str(other))
    # a stranger: its own keypair, but it knows the coordinator's public key
    (other / "coordinator.key").unlink()
    (other / "coordinator.key").write_bytes((keys / "coordinator.key").read_bytes())
    eng, launcher = remote_engine(
        2, keys=str(keys),
        extra=[("--keys", str(keys)), ("--keys", str(other), "--wait", "5"),
               ("--wait", "5"), ("--keys", str(keys))])
    with eng:
        m, _ = train(eng)
        stats = eng.stats()
    codes = launcher.finish()
    assert np.array_equal(m.params, local2[0])
    assert codes[0][0] == 0 and codes[3][0] == 0
    # the unknown key and the plaintext client were refused, and said so in one line
    for code, err in (codes[1], codes[2]):
        assert code == 1 and "refused" in err and "Traceback" not in err, err
    assert stats["refused_keys"] >= 1 and stats["curve"]
    # (the plaintext client fails the handshake before any key is seen; whether that
    # happens before the run ends is timing: tests/cli/test_remote_cli.py waits for it)
    assert "failed_handshakes" in stats


def test_listening_beyond_loopback_needs_keys_and_keys_must_be_private(tmp_path):
    with pytest.raises(ValueError, match="lets other machines connect"):
        worker_group("remote", 2, listen="tcp://0.0.0.0:0")
    with pytest.raises(KeysError, match="no key file"):
        worker_group("remote", 2, listen="tcp://0.0.0.0:0", keys=str(tmp_path))
    make_keys(str(tmp_path / "k"))
    os.chmod(tmp_path / "k" / "coordinator.key_secret", 0o644)
    with pytest.raises(KeysError, match="can be read by other users"):
        worker_group("remote", 2, listen="tcp://0.0.0.0:0", keys=str(tmp_path / "k"))
    with pytest.raises(KeysError, match="never overwritten"):
        make_keys(str(tmp_path / "k"))


def test_a_worker_finds_its_keypair_among_several(tmp_path):
    """`keys DIR --workers N` names the pairs worker-0 .. worker-N-1: a host given its
    own pair finds it unnamed; one given several must say which (--key-name)."""
    import shutil
    from dpnet.parallel.keys import client_keys, worker_key_name
    make_keys(str(tmp_path / "k"), workers=3)
    host = tmp_path / "host"
    host.mkdir()
    for f in ("coordinator.key", "worker-2.key", "worker-2.key_secret"):
        shutil.copy(tmp_path / "k" / f, host / f)
    assert worker_key_name(str(host)) == "worker-2"
    assert client_keys(str(host))[0] == client_keys(str(tmp_path / "k"), "worker-2")[0]
    with pytest.raises(KeysError, match=r"holds 3 worker keypairs \(worker-0, worker-1, "
                                        r"worker-2\): choose this worker's with --key-name"):
        client_keys(str(tmp_path / "k"))
    make_keys(str(tmp_path / "one"))
    assert worker_key_name(str(tmp_path / "one")) == "worker"


class Impostor(threading.Thread):
    """Peers that reach the socket during a run and lie: garbage bytes on a raw TCP
    connection, a message of another protocol version, an oversized frame, a JOIN
    whose HELLO claims another model, and one whose HELLO claims other data."""

    def __init__(self, group, done):
        super().__init__(daemon=True)
        self.group, self.done = group, done
        self.told = {}
        self.error = None

    def run(self):
        try:
            while self.group.endpoint is None:
                time.sleep(0.02)
            self._attack(self.group.endpoint)
        except Exception as e:          # pragma: no cover - reported by the test
            self.error = e
        finally:
            self.done.set()

    def _attack(self, ep):
        host, port = ep[len("tcp://"):].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s:       # not even ZMTP
            s.sendall(os.urandom(4096))
        ctx = zmq.Context()
        try:
            raw = ctx.socket(zmq.DEALER)
            raw.linger = 0
            raw.connect(ep)
            header = msgpack.packb({"v": 99, "arrays": [], "pid": 1,
                                    "heartbeat_identity": "x"})
            raw.send_multipart([P.JOIN, header])                      # another version
            big = np.zeros(4 << 20, np.uint8)                          # > the gradient
            raw.send_multipart([P.GRAD, msgpack.packb({"v": 1, "arrays": [
                ["|u1", [len(big)]]]}), big])
            raw.close()
        finally:
            ctx.term()
        for lie in ("signature", "data"):
            d = Dealer(ep, f"imp-{lie}".encode())
            try:
                d.send(P.JOIN, {"pid": 1, "heartbeat_identity": f"imp-{lie}-h"})
                admit = d.recv(30)
                assert admit is not None and admit.kind == P.ADMIT, admit
                cfg = admit.header["config"]
                sig = P.signature_of(mlp()) if lie == "data" else {
                    "architecture": "other", "n_params": 1, "dtype": "<f4"}
                d.send(P.HELLO, {"rank": admit.header["rank"], "pid": 1, "signature": sig,
                                 "data": cfg["data"] if lie == "signature" else "0" * 32})
                stop = d.recv(30)
                self.told[lie] = stop.header["reason"] if stop is not None else None
            finally:
                d.close()


def test_peers_that_lie_are_refused_and_the_run_goes_on(local2):
    # the impostors come first: each JOIN is admitted to a free rank and refused at
    # its HELLO; then the two real workers join and train exactly as local workers do
    go = threading.Event()
    eng, launcher = remote_engine(2, go=go)
    imp = Impostor(eng.group, go)
    imp.start()
    with eng:
        m, _ = train(eng)
        stats = eng.stats()
    imp.join(30)
    launcher.finish()
    assert imp.error is None, imp.error
    assert np.array_equal(m.params, local2[0])
    assert stats["dropped"] >= 1                 # the other protocol version
    assert imp.told["signature"].startswith("refused: model signature mismatch on "
                                            "'architecture'"), imp.told
    assert imp.told["data"].startswith("refused: its data checksum '0000"), imp.told
    assert stats["refused_peers"] == 2


def test_a_lost_worker_s_share_is_rerun_and_a_newcomer_takes_its_rank(capfd):
    # after epoch 1 the worker holding rank 1 is killed; the other re-runs the step's
    # shards (the same batch gradient, summed in another order: equal to float32
    # rounding); after epoch 3 a new worker joins the vacated rank and serves to the end
    eng, launcher = remote_engine(2, silence_timeout=1.0)
    events = []

    def chaos(epoch, metrics):
        if epoch == 1:                           # (epochs count from 1)
            os.kill(eng.group.members[1].pid, signal.SIGKILL)
            events.append("killed")
        elif epoch == 3:
            assert eng.respawns == 1 and not eng._ready[1]
            launcher.procs.append(subprocess.Popen(
                worker_cmd(eng.group.endpoint), cwd=ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True))
            back = rounds_until(eng, lambda: eng._ready[1])
            events.append("rejoined" if back else "no newcomer")
        return False

    with eng:
        m, _ = train(eng, epochs=5, callbacks=[chaos])
        stats = eng.stats()
    codes = sorted(c for c, _ in launcher.finish())
    assert events == ["killed", "rejoined"]
    assert eng.respawns == 1
    assert codes == [-signal.SIGKILL, 0, 0], codes
    assert "its share goes to the other workers" in capfd.readouterr().err
    assert [w["rank"] for w in stats["per_worker"]] == [0, 1]
    with MultiprocessEngine(workers=2) as ref_eng:
        m2, _ = train(ref_eng, epochs=5)
    np.testing.assert_allclose(m.params, m2.params, rtol=1e-4, atol=1e-5)


def test_a_spare_waits_and_takes_the_first_rank_that_is_vacated(local2):
    # three workers for two ranks: the third waits (no answer, no refusal) and takes
    # the rank of the worker killed after the first epoch
    eng, launcher = remote_engine(2, extra=[(), (), ()], silence_timeout=1.0)
    events = []

    def chaos(epoch, metrics):
        if epoch == 1:
            rounds_until(eng, lambda: eng.group._spares)     # the third one's JOIN
            assert len(eng.group._spares) == 1
            os.kill(eng.group.members[0].pid, signal.SIGKILL)
            events.append("killed")
        elif epoch == 3:
            served = rounds_until(eng, lambda: all(eng._ready.values()))
            events.append("spare serves" if served else "no spare")
        return False

    with eng:
        m, _ = train(eng, epochs=5, callbacks=[chaos])
    codes = sorted(c for c, _ in launcher.finish())
    assert events == ["killed", "spare serves"] and eng.respawns == 1
    assert codes == [-signal.SIGKILL, 0, 0], codes


def test_a_worker_lost_while_joining_frees_its_rank_for_a_spare(local2):
    # a peer JOINs, is admitted to rank 0, and is never heard again (died while
    # fetching): after join_silence_s its rank goes to the spare that waits, and the
    # run starts -- not a wait for --join-timeout
    go = threading.Event()
    eng, launcher = remote_engine(2, extra=[(), ()], go=go, start_timeout=30)
    eng.group.join_silence_s = 1.5
    said = []
    eng.group.say = said.append
    told = []

    def silent_peer():
        while eng.group.endpoint is None:
            time.sleep(0.02)
        d = Dealer(eng.group.endpoint, b"r.mute")
        try:
            d.send(P.JOIN, {"pid": 4242, "host": "mute", "heartbeat_identity": "rh.mute"})
            admit = d.recv(30)
            assert admit is not None and admit.kind == P.ADMIT and admit.header["rank"] == 0
            go.set()                         # then the two real workers
            stop = d.recv(30)
            told.append(None if stop is None else stop.header["reason"])
        finally:
            d.close()
            go.set()

    peer = threading.Thread(target=silent_peer, daemon=True)
    peer.start()
    t0 = time.monotonic()
    with eng:
        m, _ = train(eng)
        stats = eng.stats()
    peer.join(30)
    codes = [c for c, _ in launcher.finish()]
    assert codes == [0, 0], codes
    assert told == ["dropped from the run (silent while joining)"], told
    assert any("remote worker 0 (mute pid 4242) sent nothing for" in s and
               "while joining: its rank is free again" in s for s in said), said
    assert sorted(w["pid"] for w in stats["per_worker"]) == \
        sorted(p.pid for p in launcher.procs)
    assert time.monotonic() - t0 < 25
    assert np.array_equal(m.params, local2[0])


def injected(codes):
    """(dropped, duplicated) summed over the workers' own reports."""
    import re
    found = [tuple(map(int, m)) for _, err in codes
             for m in re.findall(r"faults injected: dropped (\d+), duplicated (\d+)", err)]
    return tuple(map(sum, zip(*found))) if found else (0, 0)


def test_repeated_replies_are_counted_and_never_folded_twice(local2):
    eng, launcher = remote_engine(2, env={"DPNET_FAULTS": "duplicate=0.3,seed=4"})
    with eng:
        m, _ = train(eng)
        stats = eng.stats()
    dropped, duplicated = injected(launcher.finish())
    assert dropped == 0 and duplicated > 10
    # every repeat is read and set aside, except those still on the way when the run
    # ends: each worker's last one or two (a busy machine delays a repeat sent during
    # the last rounds past the coordinator's last read -- seen once: 3 of 37 unread)
    assert duplicated - 4 <= stats["stale_replies"] <= duplicated
    assert stats["respawns"] == 0
    assert np.array_equal(m.params, local2[0])


def test_lost_replies_move_the_share_and_the_worker_rejoins(local2):
    # a reply that never comes times the step out: the worker is dropped (it joins
    # again at once), its share re-run by the other worker
    # (a worker dropped just before the run ends may be joining again when it ends:
    # it then waits --wait seconds for a coordinator and says none answered)
    eng, launcher = remote_engine(2, step_timeout=1.0, extra=[("--wait", "3")] * 2,
                                  env={"DPNET_FAULTS": "drop=0.05,seed=4"})
    with eng:
        m, _ = train(eng)
        stats = eng.stats()
    codes = launcher.finish()
    dropped, _ = injected(codes)
    # a worker that joins again keeps the data it fetched: each fetched it once
    x, y = data()
    assert stats["data_bytes_streamed"] == 2 * (x.nbytes + y.nbytes + x[:200].nbytes
                                                + y[:200].nbytes)
    # each lost reply costs one drop of its worker, unless it answered an attempt that
    # was already re-sent elsewhere (stale anyway)
    assert dropped >= 1 and 1 <= stats["respawns"] <= dropped
    for code, err in codes:
        assert code == 0 or (code == 1 and "no coordinator answered" in err), codes
    assert "dropped" not in stats                # its late words were not a stranger's
    np.testing.assert_allclose(m.params, local2[0], rtol=1e-4, atol=1e-5)


def test_local_workers_of_a_remote_run_have_a_session_of_their_own(local2):
    """--workers K beside --remote-workers: the coordinator starts K worker commands
    itself, each in a session of its own (a terminal's Ctrl-C reaches the coordinator
    alone, never a worker still importing); the weights are the local workers'."""
    group = worker_group("remote", 1, listen="tcp://127.0.0.1:0", say=lambda line: None,
                         local=1)
    eng = Coordinator(group, start_timeout=60)
    launcher = Launcher(group, [()])             # and one the coordinator did not start
    launcher.start()
    sessions = []

    def look(epoch, metrics):                    # while it serves the run
        sessions.extend((p.pid, os.getsid(p.pid)) for p in group.children)
        return False
    with eng:
        m, _ = train(eng, callbacks=[look])
    assert [c for c, _ in launcher.finish()] == [0]
    assert len(sessions) == 3 and all(pid == sid != os.getsid(0) for pid, sid in sessions)
    assert np.array_equal(m.params, local2[0])


def test_no_worker_joins_one_line_not_a_hang():
    group = worker_group("remote", 2, say=lambda line: None)
    eng = Coordinator(group, start_timeout=1.0)
    with pytest.raises(WorkerError, match="0 of 2 remote workers joined within 1 s"):
        train(eng)


def test_the_worker_command_refuses_bad_input_in_one_line(tmp_path):
    for args, want in (
            (["--connect", "tcp://example.org:5555"], "give --keys DIR"),
            (["--connect", "udp://x:1"], "tcp://HOST:PORT"),
            (["--connect", "tcp://127.0.0.1:0"], "needs the coordinator's port"),
            (["--connect", "tcp://127.0.0.1:5555", "--keys", str(tmp_path)], "no key file"),
            (["--connect", "tcp://127.0.0.1:5555", "--wait", "0"], "--wait must be"),
            # --data: checked before joining, not when the first copy is kept
            (["--connect", "tcp://127.0.0.1:5555", "--data", "/dev/null"],
             "--data '/dev/null' is not a directory"),
            (["--connect", "tcp://127.0.0.1:5555", "--data", "/proc/nope"],
             "--data '/proc/nope': cannot make the directory")):
        r = subprocess.run([sys.executable, "-m", "workers.remote", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, \
            (args, r.stderr)
    # a host name that does not resolve: said at once, not after --wait
    keys = tmp_path / "keys"
    assert subprocess.run([sys.executable, "-m", "dpnet", "keys", str(keys)], cwd=ROOT,
                          capture_output=True, timeout=60).returncode == 0
    r = subprocess.run([sys.executable, "-m", "workers.remote", "--connect",
                        "tcp://no-such-host.invalid:5555", "--keys", str(keys)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown host 'no-such-host.invalid'" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    # nobody there: it says it is joining, that nothing answers yet, then gives up
    r = subprocess.run([sys.executable, "-m", "workers.remote", "--connect",
                        "tcp://127.0.0.1:9", "--wait", "1.5"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    said = r.stderr.splitlines()
    assert len(said) == 3 and "joining the run at tcp://127.0.0.1:9" in said[0], said
    assert "no connection to tcp://127.0.0.1:9 after 0.75 s" in said[1], said
    assert "no coordinator answered" in said[2], said
    r = subprocess.run([sys.executable, "-m", "workers.remote", "--connect",
                        "tcp://127.0.0.1:9", "--wait", "1", "--quiet"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr


def test_sixteen_workers_a_thousand_steps_no_gradient_lost_or_doubled():
    """Load: 16 worker processes on a tiny model for 1,000 steps. Every step's replies
    must cover the batch exactly (a missing or extra shard fails the count check), none
    is stale or repeated, no worker is lost, and the weights are those of the
    in-process engine to float32 rounding."""
    from dpnet.engines import LocalEngine
    from dpnet.optim.optimizers import SGD
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6400, 8)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def model():
        return Sequential([Dense(8, 16, activation="tanh"), Dense(16, 2, activation="softmax")],
                          optimizer=SGD(lr=0.05), seed=5)

    eng, launcher = remote_engine(16, start_timeout=120)
    with eng:
        m = model()
        h = m.fit(x, y, epochs=10, batch_size=64, engine=eng, verbose=0)
        stats = eng.stats()
    codes = launcher.finish()
    assert [c for c, _ in codes] == [0] * 16
    assert stats["step_seconds"]["steps"] == 1000
    assert stats["stale_replies"] == 0 and stats["respawns"] == 0 and "dropped" not in stats
    assert sorted(w["rank"] for w in stats["per_worker"]) == list(range(16))
    ref = model()
    ref_h = ref.fit(x, y, epochs=10, batch_size=64, engine=LocalEngine(), verbose=0)
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h.history["loss"], ref_h.history["loss"], rtol=1e-5)


def test_the_character_lstm_on_remote_workers_is_bit_for_bit_local_workers():
    """The LSTM's carried (h, c) lives in the coordinator; each STEP brings a remote
    worker its rows and the GRAD takes the new ones back: the same weights, losses and
    validation as two local workers reading it in shared memory -- also after a worker
    is lost mid-epoch and its streams re-run by the other (then to rounding)."""
    from test_lstm_engines import run as lstm_run
    ref, ref_losses, ref_val = lstm_run(MultiprocessEngine(workers=2), layers=2)
    eng, launcher = remote_engine(2)
    m, losses, val = lstm_run(eng, layers=2)
    launcher.finish()
    assert np.array_equal(m.params, ref.params)
    assert losses == ref_losses and val == ref_val
    eng, launcher = remote_engine(2, silence_timeout=1.0)
    m, losses, val = lstm_run(eng, layers=2, kill_at=5)
    launcher.finish()
    assert eng.respawns == 1
    np.testing.assert_allclose(m.params, ref.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)


def test_a_libzmq_without_curve_is_one_line(monkeypatch, tmp_path):
    """Where the installed libzmq lacks CURVE, making or using keys says so in one
    line (what zmq.has reports is the library's own answer; here it is made to say no)."""
    import zmq
    from dpnet.parallel import keys as K
    monkeypatch.setattr(zmq, "has", lambda what: what != "curve")
    with pytest.raises(KeysError, match="has no CURVE security"):
        K.make_keys(str(tmp_path / "k"))
    with pytest.raises(KeysError, match="has no CURVE security"):
        worker_group("remote", 1, listen="tcp://0.0.0.0:0", keys=str(tmp_path))
