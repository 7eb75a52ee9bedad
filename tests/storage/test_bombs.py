"""Files that claim more than they hold, or hold more than they claim: checkpoints,
MNIST's IDX files, text corpora -- each crafted small here, each refused in one line,
quickly, without allocating what it claims (peak memory measured in a fresh process)."""
import gzip
import io
import json
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from dpnet import Dense, Sequential
from conftest import ROOT

pytestmark = pytest.mark.timeout(120)
GIB = 1 << 30


def npy(a, shape=None, dtype=None):
    """A .npy member: the header of ``shape``/``dtype`` (default: ``a``'s), then a's bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {
        "descr": np.dtype(dtype or a.dtype).str, "fortran_order": False,
        "shape": tuple(a.shape if shape is None else shape)})
    return buf.getvalue() + np.ascontiguousarray(a).tobytes()


def members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def rezip(path, ms, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compress) as z:
        for name, data in ms.items():
            z.writestr(name, data)


@pytest.fixture
def ck(tmp_path):
    p = tmp_path / "small.npz"
    Sequential([Dense(4, 3, activation="softmax")]).save(p)     # 15 parameters
    return p


def params(path):
    return np.load(path, allow_pickle=False)["params"]


def load_in_a_fresh_process(code):
    """(stdout, seconds the call took, peak resident MiB) of ``code`` in a new process
    (VmHWM: the peak of this process's own memory, which exec starts afresh)."""
    prog = ("import time, sys\n"
            "import dpnet, dpnet.data, dpnet.data.text\n"
            "t = time.perf_counter()\n"
            "try:\n"
            f"    {code}\n"
            "    print('LOADED')\n"
            "except ValueError as e:\n"
            "    print('REFUSED', e)\n"
            "print('SECONDS', time.perf_counter() - t)\n"
            "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('PEAK', int(peak.split()[1]) / 1024)\n")
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    return out, float(out["SECONDS"]), float(out["PEAK"])


def refused(code, words):
    out, seconds, peak = load_in_a_fresh_process(code)
    assert "REFUSED" in out, out
    for w in words:
        assert w in out["REFUSED"], (w, out["REFUSED"])
    assert seconds < 5, seconds            # reading it all would take far longer
                                           # (and the peak memory below catches it too)
    assert peak < 300, f"peak resident memory {peak:.0f} MiB"


def test_an_extra_member_is_refused_by_name(ck):
    ms = members(ck)
    ms["extra.npy"] = npy(np.zeros(8, np.float32))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["holds a member 'extra.npy'", "does not list"])


def test_a_member_header_claiming_two_gib_is_refused_unread(ck):
    ms = members(ck)
    ms["params.npy"] = npy(params(ck), shape=(GIB // 2,))      # 2 GiB of float32 claimed
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["'params' has shape [536870912]", "says [15]"])


def test_a_deflate_bomb_is_refused_before_inflating(ck):
    ms = members(ck)
    ms["params.npy"] = npy(params(ck)) + bytes(256 << 20)       # inflates to 256 MiB
    rezip(ck, ms, zipfile.ZIP_DEFLATED)
    assert ck.stat().st_size < 2 << 20
    refused(f"dpnet.load({str(ck)!r})", ["'params' declares 268,4", "its array holds"])


def patch_sizes(path, name, size):
    """Make the zip's local and central headers of ``name`` declare ``size``."""
    raw = bytearray(path.read_bytes())
    n = name.encode()
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        i = raw.find(sig)
        while i >= 0:
            name_at = 30 if sig == b"PK\x03\x04" else 46
            if raw[i + name_at:i + name_at + len(n)] == n:
                raw[i + off:i + off + 4] = struct.pack("<I", size)
            i = raw.find(sig, i + 4)
    path.write_bytes(bytes(raw))


def test_a_bomb_that_lies_about_its_size_is_refused(ck):
    ms = members(ck)
    ms["params.npy"] = npy(params(ck)) + bytes(64 << 20)
    rezip(ck, ms, zipfile.ZIP_DEFLATED)
    patch_sizes(ck, "params.npy", len(npy(params(ck))))          # as if it held the array
    refused(f"dpnet.load({str(ck)!r})", ["truncated or corrupt"])


def test_a_shape_or_dtype_that_disagrees_with_the_metadata_is_refused(ck):
    ms = members(ck)
    ms["params.npy"] = npy(np.zeros(16, np.float32))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["'params' has shape [16], its metadata says [15]"])
    ms["params.npy"] = npy(np.zeros(15, np.float64))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["'params' is <f8[15]", "metadata says <f4[15]"])


def test_metadata_that_declares_more_than_the_machine_holds_is_refused(ck):
    ms = members(ck)
    meta = json.loads(np.load(io.BytesIO(ms["__meta__.npy"])).tobytes())
    meta["arrays"]["params"] = ["<f4", [1 << 50]]
    ms["__meta__.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["declares 4,194,304.0 GiB of arrays"])


def test_a_model_description_claiming_a_huge_network_is_refused_before_building_it(ck):
    """Only the JSON edited: its layers claim 300,000 x 300,000 weights (335 GiB) beside
    the file's 15 real ones -- refused before the model is built (MemoryError, or a
    smaller lie really allocated and initialised)."""
    ms = members(ck)
    meta = json.loads(np.load(io.BytesIO(ms["__meta__.npy"])).tobytes())
    meta["model"]["layers"][0].update(n_in=300_000, n_out=300_000)
    ms["__meta__.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})",
            ["describes a model of 90,000,300,000 parameters but holds 15"])
    # ... and with no parameter array at all, refused before building too
    ms.pop("params.npy")
    meta["arrays"].pop("params")
    meta["crc32"].pop("params")
    ms["__meta__.npy"] = npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))
    rezip(ck, ms)
    refused(f"dpnet.load({str(ck)!r})", ["has no parameter array"])


def test_the_clis_refuse_a_bomb_in_one_line(ck):
    ms = members(ck)
    ms["params.npy"] = npy(params(ck)) + bytes(256 << 20)
    rezip(ck, ms, zipfile.ZIP_DEFLATED)
    for script, args in (("runDnnDebug.py", ["--load", str(ck), "--epochs", "0"]),
                         ("runLstm.py", ["--load", str(ck), "--sample", "5"])):
        r = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "'params' declares 268,4" in r.stderr


def idx(shape, data):
    return struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(f">{len(shape)}I",
                                                                   *shape) + data


def test_an_idx_gzip_that_inflates_past_its_header_is_refused(tmp_path):
    p = tmp_path / "labels.gz"
    p.write_bytes(gzip.compress(idx((10,), bytes(10) + bytes(256 << 20))))
    refused(f"dpnet.data.read_idx({str(p)!r})", ["goes on past the 10 bytes its header "
                                                 "declares"])
    p.write_bytes(gzip.compress(idx((60000, 28, 28), bytes(1000))))
    refused(f"dpnet.data.read_idx({str(p)!r})", ["(47040000 bytes of data), file has 1000"])
    p.write_bytes(gzip.compress(idx((65535, 65535, 65535), b"")))
    refused(f"dpnet.data.read_idx({str(p)!r})", ["more than the 2,147,483,648 a dataset"])


def test_the_mnist_cli_refuses_a_bad_idx_in_one_line(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (d / (stem + ".gz")).write_bytes((ROOT / "data" / "mnist" / (stem + ".gz"))
                                         .read_bytes())
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx((10000,), bytes(10000) + bytes(1 << 20))))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "runDnnDebug.py"), "--data",
                        str(d), "--epochs", "0"], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "goes on past the 10000 bytes" in r.stderr


def test_a_text_larger_than_the_limit_is_refused_before_it_is_read(tmp_path):
    p = tmp_path / "big.txt"
    with open(p, "wb") as f:
        f.truncate(3 << 20)                                      # 3 MiB, sparse
    refused(f"dpnet.data.text.read_text({str(p)!r}, max_bytes=1 << 20)",
            ["is 3.0 MiB, more than the 1 MiB limit", "--max-text-mb"])
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "runLstm.py"), "--text", str(p),
                        "--max-text-mb", "2", "--steps", "1"], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "more than the 2 MiB limit" in r.stderr


def test_each_integrity_check_is_reached_and_named(ck):
    """dpnet's own checks, past the zip layer's: a member rewritten with a valid zip CRC
    but not the metadata's checksum, a missing member, another format version,
    metadata that is not JSON."""
    from dpnet.storage.checkpoint import CheckpointError, read_checkpoint
    good = members(ck)
    p = params(ck)

    def variant(**changes):
        ms = dict(good)
        for k, v in changes.items():
            if v is None:
                ms.pop(k)
            else:
                ms[k] = v
        rezip(ck, ms)

    def meta_with(**kv):
        meta = json.loads(np.load(io.BytesIO(good["__meta__.npy"])).tobytes())
        meta.update(kv)
        return npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))

    variant(**{"params.npy": npy(p + 1)})
    with pytest.raises(CheckpointError, match="array 'params' fails its checksum"):
        read_checkpoint(ck)
    variant(**{"params.npy": None})
    with pytest.raises(CheckpointError, match="lacks array 'params'"):
        read_checkpoint(ck)
    variant(**{"__meta__.npy": meta_with(format_version=2)})
    with pytest.raises(CheckpointError, match="format version 2; this dpnet reads 1"):
        read_checkpoint(ck)
    variant(**{"__meta__.npy": npy(np.frombuffer(b"{not json", np.uint8))})
    with pytest.raises(CheckpointError, match="unreadable metadata"):
        read_checkpoint(ck)
    variant()
    assert np.array_equal(read_checkpoint(ck)[0]["params"], p)     # the untouched file
