"""MNIST from its original IDX files (gzip or raw), checked on the way in.

IDX: a big-endian header -- two zero bytes, a type code (0x08 = unsigned byte), the
number of dimensions -- then one uint32 per dimension, then the data.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_UBYTE = 0x08


class DataError(ValueError):
    """A data file that is missing, corrupt or inconsistent."""


def read_idx(path):
    """The array stored in an IDX file of unsigned bytes (gzip-compressed or not)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path} is a corrupt gzip file: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != _UBYTE:
        raise DataError(f"{path}: IDX type code 0x{raw[2]:02x} is not unsigned byte (0x08)")
    ndim = raw[3]
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header is truncated ({ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    have = len(raw) - 4 - 4 * ndim
    if have != expected:
        raise DataError(f"{path}: header says shape {shape} ({expected} bytes of data), "
                        f"file has {have}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def default_mnist_dir():
    """$DPNET_DATA (or its mnist/ subfolder), else the repository's data/mnist."""
    env = os.environ.get("DPNET_DATA")
    if env:
        p = Path(env)
        return p / "mnist" if (p / "mnist").is_dir() else p
    here = Path(__file__).resolve().parents[2] / "data" / "mnist"
    return here if here.is_dir() else Path("data") / "mnist"


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
        raise DataError(f"MNIST directory {directory} does not exist")
    arr = {k: read_idx(_find(directory, stem)) for k, stem in FILES.items()}
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
    return Dataset(np.ascontiguousarray(x_train), y_train, x_val, y_val, x_test, y_test)
