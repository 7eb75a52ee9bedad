"""MNIST from its original IDX files (gzip or raw), checked on the way in.

IDX: a big-endian header -- two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions -- then one uint32 per dimension, then the data.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundled import bundled, missing

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


class DataError(ValueError):
    """A data file that is missing, corrupt or inconsistent."""


MAX_IDX_BYTES = 1 << 31          # 2 GiB: MNIST's largest file holds 47 MB


def read_idx(path, max_bytes=MAX_IDX_BYTES):
    """The array stored in an IDX file of unsigned bytes (gzip-compressed or not).

    The header is read first and nothing beyond what it declares: a file (or a gzip
    that inflates) shorter or longer than its header says, or a header that claims more
    than ``max_bytes``, is refused naming the sizes, without allocating the claim."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            f = gzip.GzipFile(fileobj=raw) if gz else raw
            return _read_idx(path, f, gz, max_bytes)
    except OSError as e:                     # gzip.BadGzipFile is an OSError too
        what = "a corrupt gzip file" if isinstance(e, gzip.BadGzipFile) else None
        raise DataError(f"{path} is {what}: {e}" if what else
                        f"cannot read {path}: {e.strerror or e}") from None
    except EOFError as e:
        raise DataError(f"{path} is a corrupt gzip file: {e}") from None


def _read_idx(path, f, gz, max_bytes):
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {head.hex() or 'empty'})")
    if head[2] != _UBYTE:
        raise DataError(f"{path}: IDX type code 0x{head[2]:02x} is not unsigned byte (0x08)")
    ndim = head[3]
    dims = f.read(4 * ndim)
    if ndim == 0 or len(dims) < 4 * ndim:
        raise DataError(f"{path}: IDX header is truncated ({ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    expected = int(np.prod(shape, dtype=np.int64))
    if expected > max_bytes:
        raise DataError(f"{path}: header says shape {shape} ({expected:,} bytes of data), "
                        f"more than the {max_bytes:,} a dataset may have")
    if not gz:                               # a plain file: its size says it all
        have = os.fstat(f.fileno()).st_size - 4 - 4 * ndim
        if have != expected:
            raise DataError(f"{path}: header says shape {shape} ({expected} bytes of "
                            f"data), file has {have}")
    data = bytearray()                       # grows with what is really there
    while len(data) < expected:
        chunk = f.read(min(1 << 22, expected - len(data)))
        if not chunk:
            raise DataError(f"{path}: header says shape {shape} ({expected} bytes of data), "
                            f"file has {len(data)}")
        data += chunk
    if f.read(1):
        raise DataError(f"{path}: the data goes on past the {expected} bytes its header "
                        f"declares (shape {shape})")
    return np.frombuffer(bytes(data), dtype=np.uint8).reshape(shape)


def default_mnist_dir():
    """$DPNET_DATA (or its mnist/ subfolder), else the bundled MNIST (a checkout's
    data/mnist, or the installed package's copy), wherever the current directory is."""
    env = os.environ.get("DPNET_DATA")
    if env:
        p = Path(env)
        return p / "mnist" if (p / "mnist").is_dir() else p
    return bundled("mnist")


def _find(directory, stem):
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        p = directory / name
        if p.is_file():
            return p
    raise DataError(f"MNIST file {stem}(.gz) not found in {directory}")


@dataclass
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int = 10
    # CRC-32 of the source's bytes as stored (MNIST's training images and labels, a
    # table's file): what a resumed run checks its data against -- of the raw bytes, not
    # the prepared floats, whose last bit may differ between NumPy builds
    source_crc32: int | None = None


def load_mnist(path=None, scale=True, standardize=False, validation=10_000,
               limit_train=None, dtype=np.float32):
    """MNIST as flat (n, 784) float arrays and int64 labels.

    scale: divide by 255 to [0, 1]. standardize: then zero mean, unit variance per
    pixel with statistics of the training part only (constant pixels are left at 0).
    validation: how many of the LAST training images to hold out (0 for none).
    limit_train: keep only the first N of the remaining training images.
    """
    directory = Path(path) if path is not None else default_mnist_dir()
    if not directory.is_dir():
        if path is None and not os.environ.get("DPNET_DATA"):
            raise DataError(f"the bundled MNIST is {missing('mnist')}; give a directory "
                            f"(--data DIR, or DPNET_DATA)")
        raise DataError(f"MNIST directory {directory} "
                        + ("is not a directory" if directory.exists() else "does not exist"))
    arr = {k: read_idx(_find(directory, stem)) for k, stem in FILES.items()}
    # the training files' (gzip or not: the same arrays); the test set plays no part in
    # training
    crc = zlib.crc32(arr["train_labels"], zlib.crc32(arr["train_images"]))   # (no copies)
    for part in ("train", "test"):
        imgs, labels = arr[f"{part}_images"], arr[f"{part}_labels"]
        if imgs.ndim != 3 or imgs.shape[1:] != (28, 28):
            raise DataError(f"MNIST {part} images have shape {imgs.shape}, expected (n, 28, 28)")
        if labels.ndim != 1 or labels.shape[0] != imgs.shape[0]:
            raise DataError(f"MNIST {part}: {imgs.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise DataError(f"MNIST {part} labels contain {int(labels.max())}, expected 0..9")
    n_train = arr["train_images"].shape[0]
    if not isinstance(validation, int) or not 0 <= validation < n_train:
        raise ValueError(f"validation must be an integer in [0, {n_train}), got {validation!r}")

    def flat(a):
        x = a.reshape(a.shape[0], -1).astype(dtype)
        if scale:
            x *= 1.0 / 255.0
        return x

    x_all, y_all = flat(arr["train_images"]), arr["train_labels"].astype(np.int64)
    cut = n_train - validation
    x_train, y_train = x_all[:cut], y_all[:cut]
    x_val, y_val = x_all[cut:], y_all[cut:]
    if limit_train is not None:
        if not isinstance(limit_train, int) or limit_train <= 0:
            raise ValueError(f"limit_train must be a positive integer, got {limit_train!r}")
        x_train, y_train = x_train[:limit_train], y_train[:limit_train]
    x_test, y_test = flat(arr["test_images"]), arr["test_labels"].astype(np.int64)
    if standardize:
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        std[std < 1e-8] = 1.0
        mean, inv = mean.astype(dtype), (1.0 / std).astype(dtype)
        for x in (x_train, x_val, x_test):
            x -= mean
            x *= inv
    return Dataset(np.ascontiguousarray(x_train), y_train, x_val, y_val, x_test, y_test,
                   source_crc32=crc)
