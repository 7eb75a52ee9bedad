import json
import os

import numpy as np
import pytest

import dpnet
from dpnet import Dense, Sequential
from dpnet.models import load_weights_into
from dpnet.storage.checkpoint import (CheckpointError, read_checkpoint, read_checkpoint_meta,
                                      write_checkpoint)


def model(hidden=8, opt="adam", seed=0):
    return Sequential([Dense(5, hidden, activation="relu"), Dense(hidden, 3, activation="softmax")],
                      optimizer=opt, seed=seed)


def trained(steps=3, **kw):
    m = model(**kw)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        m.train_on_batch(rng.normal(size=(4, 5)), rng.integers(0, 3, 4))
    return m


def test_round_trip_restores_weights_optimizer_and_continues_identically(tmp_path):
    a = trained()
    p = tmp_path / "m.npz"
    a.save(p, note="hello")
    b = dpnet.load(p)
    assert np.array_equal(a.params, b.params) and b.params.dtype == np.float32
    assert b.optimizer.t == 3 and b.optimizer.name == "adam"
    assert b.checkpoint_meta["note"] == "hello"
    assert b.config() == a.config()
    x, y = np.ones((4, 5)), np.array([0, 1, 2, 0])
    a.train_on_batch(x, y)
    b.train_on_batch(x, y)
    assert np.array_equal(a.params, b.params)      # optimizer state came back exactly


def test_file_is_plain_npz_without_pickles(tmp_path):
    p = tmp_path / "m.npz"
    trained().save(p)
    with np.load(p, allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
        meta = json.loads(z["__meta__"].tobytes())
    assert meta["format"] == "dpnet-checkpoint" and meta["model"]["type"] == "Sequential"
    assert meta["dpnet_version"] == dpnet.__version__


def test_truncated_and_corrupt_files_give_one_line_errors(tmp_path):
    p = tmp_path / "m.npz"
    trained().save(p)
    raw = p.read_bytes()
    (tmp_path / "t.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        dpnet.load(tmp_path / "t.npz")
    bad = bytearray(raw)
    i = raw.find(b"params.npy") + 200            # inside the parameter data
    bad[i] ^= 0xFF
    (tmp_path / "c.npz").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError) as e:
        dpnet.load(tmp_path / "c.npz")
    assert "\n" not in str(e.value)
    (tmp_path / "x.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        dpnet.load(tmp_path / "x.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        dpnet.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", params=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a dpnet checkpoint"):
        dpnet.load(tmp_path / "plain.npz")


UNREADABLE = """
import os, sys
import dpnet
from dpnet.storage.checkpoint import CheckpointError
if os.geteuid() == 0:            # root reads anything: read as nobody
    os.setgid(65534); os.setuid(65534)
try:
    dpnet.load(sys.argv[1])
except CheckpointError as e:
    print(e)
"""


def test_a_checkpoint_that_cannot_be_read_says_so_not_corrupt():
    import subprocess
    import sys
    import tempfile
    place = tempfile.mkdtemp()              # a place any user may enter
    try:
        os.chmod(place, 0o755)
        p = os.path.join(place, "m.npz")
        trained().save(p)
        os.chmod(p, 0)
        root = os.path.dirname(os.path.dirname(os.path.abspath(dpnet.__file__)))
        r = subprocess.run([sys.executable, "-c", UNREADABLE, p], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, PYTHONPATH=root))
        assert r.stdout.strip() == f"checkpoint {p!r} cannot be read (permission denied)", \
            r.stdout + r.stderr
    finally:
        for f in os.listdir(place):
            os.unlink(os.path.join(place, f))
        os.rmdir(place)


def test_the_metadata_alone_is_read_with_the_same_checks_and_no_array(tmp_path):
    p = tmp_path / "m.npz"
    trained().save(p, note="hello")
    assert read_checkpoint_meta(p) == read_checkpoint(p)[1]
    big = tmp_path / "big.npz"
    write_checkpoint(big, {"params": np.zeros(1 << 22, np.float32)}, {"n": 1})  # 16 MiB
    import tracemalloc
    tracemalloc.start()
    assert read_checkpoint_meta(big)["n"] == 1
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20, peak                       # the 16 MiB array was never read
    np.savez(tmp_path / "plain.npz", params=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a dpnet checkpoint"):
        read_checkpoint_meta(tmp_path / "plain.npz")
    (tmp_path / "x.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint_meta(tmp_path / "x.npz")


def test_object_arrays_in_a_file_are_refused_not_unpickled(tmp_path):
    import json
    p = tmp_path / "evil.npz"
    meta = {"format": "dpnet-checkpoint", "format_version": 1, "crc32": {"params": 0},
            "arrays": {"params": ["<f4", [1]]}}
    np.savez(p, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
             params=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"member 'params' is \|O\[1\], its metadata "
                                              r"says <f4\[1\]"):
        read_checkpoint(p)
    np.savez(p, __meta__=np.frombuffer(b"{}", np.uint8), params=np.array([{"a": 1}],
                                                                         dtype=object))
    with pytest.raises(CheckpointError, match="not a dpnet checkpoint"):
        read_checkpoint(p)


def test_architecture_mismatch_names_the_difference(tmp_path):
    p = tmp_path / "m.npz"
    trained().save(p)
    other = model(hidden=9)
    # the first layer that differs, and how
    with pytest.raises(CheckpointError, match=r"layer 0 \(dense\): the checkpoint has n_out 8; "
                                              r"this model n_out 9"):
        load_weights_into(other, p)
    # another number of layers: both lists in brief
    with pytest.raises(CheckpointError, match=r"layers \[dense\(5, 8, relu\), .*\] != \[dense"):
        load_weights_into(dpnet.Sequential([dpnet.Dense(5, 3, activation="softmax")]), p)
    same = model(seed=7)
    load_weights_into(same, p)
    assert np.array_equal(same.params, dpnet.load(p).params)


def test_lstm_layer_count_is_checked_and_old_files_mean_one_layer(tmp_path):
    from dpnet.models.saving import model_arrays_and_meta
    from dpnet.models.lstm import CharLSTM
    p = tmp_path / "lstm.npz"
    CharLSTM(6, 4, seed=1, num_layers=2).save(p)
    with pytest.raises(CheckpointError, match="num_layers 2 != 1"):
        load_weights_into(CharLSTM(6, 4), p)
    # a file written before num_layers existed: the same one-layer model, no key
    one = CharLSTM(6, 4, seed=2)
    arrays, meta = model_arrays_and_meta(one)
    del meta["model"]["num_layers"]
    old = tmp_path / "old.npz"
    write_checkpoint(old, arrays, meta)
    fresh = CharLSTM(6, 4, seed=9)
    load_weights_into(fresh, old)
    assert np.array_equal(fresh.params, one.params)
    with pytest.raises(CheckpointError, match="num_layers 1 != 2"):
        load_weights_into(CharLSTM(6, 4, num_layers=2), old)


def test_wrong_size_dtype_and_nonfinite_params(tmp_path):
    m = trained()
    arrays = {"params": m.params}
    meta = {"model": m.config(), "n_params": m.n_params, "dtype": "float32",
            "optimizer": {"config": m.optimizer.config(), "t": 0}}
    write_checkpoint(tmp_path / "short.npz", {"params": m.params[:-1]}, meta)
    with pytest.raises(CheckpointError, match=f"describes a model of {m.n_params} parameters "
                                              f"but holds {m.n_params - 1}"):
        dpnet.load(tmp_path / "short.npz")
    write_checkpoint(tmp_path / "f64.npz", {"params": m.params.astype(np.float64)}, meta)
    with pytest.raises(CheckpointError, match="holds float64 parameters, expected float32"):
        dpnet.load(tmp_path / "f64.npz")
    nan = m.params.copy()
    nan[0] = np.nan
    write_checkpoint(tmp_path / "nan.npz", {"params": nan}, meta)
    with pytest.raises(CheckpointError, match="non-finite"):
        dpnet.load(tmp_path / "nan.npz")
    write_checkpoint(tmp_path / "ok.npz", arrays, meta)
    assert dpnet.load(tmp_path / "ok.npz").optimizer.t == 0


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    p = tmp_path / "m.npz"
    trained(steps=1).save(p)
    first = p.read_bytes()

    def disk_full(f, **arrays):        # fault injection: half a file, then an error
        f.write(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        trained(steps=2).save(p)
    monkeypatch.undo()
    assert p.read_bytes() == first                       # old checkpoint intact
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]     # no temporary left behind
    assert dpnet.load(p).optimizer.t == 1


def test_atomic_write_follows_links_and_writes_special_files_in_place(tmp_path):
    import stat
    import threading
    from dpnet.storage.atomic import atomic_write
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write(link, lambda f: f.write("new"), binary=False)
    assert link.is_symlink() and target.read_text() == "new"   # the link is kept
    # A FIFO (like /dev/stdout) is written to, not renamed over.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    atomic_write(fifo, lambda f: f.write("through the pipe"), binary=False)
    reader.join(timeout=10)
    assert got == ["through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    # ... and through a link to it, as /dev/stdout -> /proc/self/fd/1 -> a pipe
    via = tmp_path / "stdout"
    via.symlink_to(fifo)
    reader = threading.Thread(target=lambda: got.append(open(fifo).read()))
    reader.start()
    atomic_write(via, lambda f: f.write("via the link"), binary=False)
    reader.join(timeout=10)
    assert got[-1] == "via the link" and via.is_symlink()
