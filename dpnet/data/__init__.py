"""Datasets: MNIST (IDX files), character corpora (``dpnet.data.text``), batching."""
from .mnist import DataError, Dataset, load_mnist, read_idx

__all__ = ["DataError", "Dataset", "load_mnist", "read_idx", "one_hot"]


def one_hot(labels, n_classes):
    """(n,) integer labels -> (n, n_classes) float32 one-hot rows."""
    import numpy as np
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must be in [0, {n_classes}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    out = np.zeros((labels.shape[0], n_classes), dtype=np.float32)
    out[np.arange(labels.shape[0]), labels] = 1
    return out
