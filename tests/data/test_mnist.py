import gzip

import numpy as np
import pytest

from dpnet.data import DataError, load_mnist, one_hot, read_idx
from dpnet.data.mnist import FILES
from conftest import MNIST_DIR, write_idx


def fake_mnist(tmp_path, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    sfx = ".gz" if gz else ""
    write_idx(tmp_path / (FILES["train_images"] + sfx),
              rng.integers(0, 256, (n_train, 28, 28)), gz)
    write_idx(tmp_path / (FILES["train_labels"] + sfx), rng.integers(0, 10, n_train), gz)
    write_idx(tmp_path / (FILES["test_images"] + sfx), rng.integers(0, 256, (n_test, 28, 28)), gz)
    write_idx(tmp_path / (FILES["test_labels"] + sfx), rng.integers(0, 10, n_test), gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.idx", a, gz=gz)), a)


def test_bad_magic_truncated_and_wrong_type_are_named(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="not an IDX file.*bad magic"):
        read_idx(p)
    write_idx(p, np.zeros((5, 4)))
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"header says shape \(5, 4\) \(20 bytes of data\), file has 17"):
        read_idx(p)
    write_idx(p, np.zeros(3), magic_type=0x0D)
    with pytest.raises(DataError, match="type code 0x0d"):
        read_idx(p)
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03abc")[:-6])
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(p)
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "missing")


def test_load_checks_counts_and_missing_files(tmp_path):
    d = fake_mnist(tmp_path)
    ds = load_mnist(d, validation=10)
    assert ds.x_train.shape == (20, 784) and ds.x_val.shape == (10, 784)
    assert ds.x_test.shape == (10, 784) and ds.x_train.dtype == np.float32
    assert 0 <= ds.x_train.min() and ds.x_train.max() <= 1
    write_idx(d / (FILES["train_labels"] + ".gz"), np.zeros(29), gz=True)
    with pytest.raises(DataError, match="30 images but 29 labels"):
        load_mnist(d)
    (d / (FILES["test_images"] + ".gz")).unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*not found"):
        load_mnist(d)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_raw_files_and_env_variable(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    fake_mnist(tmp_path / "mnist", gz=False)
    monkeypatch.setenv("DPNET_DATA", str(tmp_path))      # a data root with mnist/ inside
    assert load_mnist(validation=5).x_train.shape == (25, 784)
    monkeypatch.setenv("DPNET_DATA", str(tmp_path / "mnist"))   # or the folder itself
    assert load_mnist(validation=10).x_train.shape == (20, 784)


def test_real_mnist_split_standardize_and_limit():
    ds = load_mnist(MNIST_DIR, limit_train=1000)
    assert ds.x_train.shape == (1000, 784) and ds.x_val.shape == (10_000, 784)
    assert ds.x_test.shape == (10_000, 784) and ds.y_test.shape == (10_000,)
    assert set(np.unique(ds.y_train)) == set(range(10))
    st = load_mnist(MNIST_DIR, limit_train=1000, standardize=True)
    assert abs(st.x_train.mean(axis=0)).max() < 1e-4
    sd = st.x_train.std(axis=0)
    assert np.allclose(sd[sd > 0], 1, atol=1e-3)
    # validation is the LAST 10,000 training images: same as the unlimited split's
    full = load_mnist(MNIST_DIR, validation=10_000)
    assert np.array_equal(full.x_val, ds.x_val) and full.x_train.shape[0] == 50_000
    with pytest.raises(ValueError, match="validation must be"):
        load_mnist(MNIST_DIR, validation=-1)


def test_one_hot():
    assert np.array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        one_hot(np.array([3]), 3)
