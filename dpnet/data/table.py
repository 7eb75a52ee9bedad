"""Tabular data from a CSV file with a header row: features and one target column.

- A numeric column is a feature as it is. A column that is not numeric is one-hot
  encoded (one 0/1 feature per distinct value, named ``column=value``) when it has at
  most ``MAX_CATEGORIES`` distinct values; with more (names, ticket numbers) it is
  refused, naming it, to be dropped (``drop=[...]``, ``--drop``). A column of numbers
  with a cell that is not a finite number (``inf``, ``-``, ``1,000``) is refused naming
  that cell (``_stray_cell``).
- A missing value (an empty cell, ``NA``, ``NaN``, ``null``, ``?``) is refused, naming
  its row (as a spreadsheet numbers it: the header is row 1) and column.
- The target: class labels for classification (any values; numbers are classes by
  value, 1 and 1.0 one class; ``classes`` keeps them, sorted, and y holds their
  indices), numbers for regression (y is then (n, 1); not all the same).
- The rows are shuffled by ``seed``, then split into test (``test_fraction``),
  validation (``validation`` rows) and training parts; features (and a regression
  target) are standardized with the training part's mean and standard deviation alone;
  ``y_mean``/``y_std`` turn predictions back into the target's units.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np

from .mnist import DataError, Dataset

MAX_CATEGORIES = 32
MISSING = {"", "na", "nan", "null", "none", "?", "n/a"}
MAX_CSV_BYTES = 512 << 20


@dataclass
class Table(Dataset):
    """MNIST's ``Dataset`` with what a table adds; ``n_classes`` is 0 for a regression."""
    features: list = field(default_factory=list)     # one name per column of x
    classes: list | None = None                      # class labels; None: regression
    target: str = ""
    mean: np.ndarray | None = None                   # the training part's statistics
    std: np.ndarray | None = None
    y_mean: float = 0.0                              # a regression target's, the same way
    y_std: float = 1.0


def _number(text):
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _label(text):
    """A numeric class label's one name, by value: 1, 1.0 and 1e0 are "1", 0.5 and 0.50
    are "0.5"; integers are read exactly (long ids stay apart)."""
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return str(int(t))
    v = float(t)
    return str(int(v)) if v.is_integer() and abs(v) < 2 ** 53 else repr(v)


# a cell that was meant as a number: infinities, a dash, digits with thousands commas
_BROKEN_NUMBER = re.compile(r"[+-]?(inf|infinity)|-+|[+-]?[\d.,\s]*\d[\d.,\s]*(e[+-]?\d+)?",
                            re.IGNORECASE)


def _stray_cell(name, column, body, cells, values, levels, share=0.9):
    """A column of numbers with cells that are not finite numbers is a data error to
    name, not a category column: when those cells look like broken numbers (``inf``,
    ``1e400``, ``-``, ``1,000``), or when the numbers are ``share`` of the column and
    its values too many to one-hot encode. (A column of codes with a letter among them,
    K, 1, ..., 10, stays a category.)"""
    odd = [k for k, v in enumerate(values) if v is None]
    broken = all(_BROKEN_NUMBER.fullmatch(cells[k]) for k in odd)
    many = levels > MAX_CATEGORIES and len(values) - len(odd) >= share * len(values)
    if broken or many:
        k = odd[0]
        raise DataError(f"{name}: row {body[k][0]}, column {column!r}: {cells[k]!r} is not "
                        f"a finite number, in a column of numbers; fix or drop such rows")


def read_csv(path):
    """(header, rows, crc) of a CSV file, every row as long as the header; crc: the
    CRC-32 of the file's bytes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"CSV file {path} " + ("is a directory" if os.path.isdir(path) else
                                               "is not a regular file" if os.path.exists(path)
                                               else "does not exist"))
    size = os.path.getsize(path)
    if size > MAX_CSV_BYTES:
        raise DataError(f"CSV file {path} is {size / 2**20:.0f} MiB, more than the "
                        f"{MAX_CSV_BYTES >> 20} MiB this reader takes")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    except OSError as e:
        raise DataError(f"cannot read CSV file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"CSV file {path} is not UTF-8 text ({e.reason} at byte "
                        f"{e.start})") from None
    except csv.Error as e:
        raise DataError(f"CSV file {path} is not valid CSV: {e}") from None
    if not rows or not any(c.strip() for c in rows[0]):
        raise DataError(f"CSV file {path} is empty: expected a header row of column names")
    header = [c.strip() for c in rows[0]]
    if "" in header:
        k = header.index("")
        raise DataError(f"CSV file {path}: column {k + 1} of the header has no name"
                        + (" (a comma at the end of the lines?)" if k == len(header) - 1
                           else ""))
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(f"CSV file {path}: column names appear twice: {', '.join(dup)}")
    body = []
    for i, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue                                       # blank lines
        if len(row) != len(header):
            raise DataError(f"CSV file {path}: row {i} has {len(row)} fields, the header "
                            f"{len(header)}")
        body.append((i, [c.strip() for c in row]))
    if not body:
        raise DataError(f"CSV file {path} has a header but no rows")
    return header, body, zlib.crc32(raw)


def _statistics(x):
    """Each column's mean and standard deviation (float64), computed on the column
    divided by its largest magnitude: the squares of values near 1e300 would overflow
    (std inf: the column became all zeros), those near 1e-310 vanish (std 0). A
    constant column is divided by its magnitude instead: it stays 0 (its values are
    then all exactly 1 or -1: a spread of 1e-13 of its size is kept, timestamps in
    nanoseconds over milliseconds)."""
    scale = np.abs(x).max(axis=0)
    scale[~(scale > 0)] = 1.0
    unit = x / scale
    mean, std = unit.mean(axis=0), unit.std(axis=0)
    std[std == 0] = 1.0
    return mean * scale, std * scale


def load_table(path, target, task="classification", test_fraction=0.2, validation=None,
               seed=0, drop=(), dtype=np.float32):
    """A ``Table`` from the CSV file at ``path`` (see the module docstring).

    task: "classification" or "regression". validation: rows held out of the training
    part (default: a tenth of it)."""
    header, body, crc = read_csv(path)
    name = os.path.basename(os.fspath(path))
    if target not in header:
        raise DataError(f"{name}: no column {target!r} (columns: {', '.join(header)})")
    unknown = [c for c in drop if c not in header]
    if unknown:
        raise DataError(f"{name}: --drop names no column {', '.join(map(repr, unknown))}")
    if target in drop:
        raise DataError(f"{name}: {target!r} is the target; it cannot be dropped")
    if not 0 < test_fraction < 1:
        raise DataError(f"the test fraction must be in (0, 1), got {test_fraction!r}")
    keep = [j for j, c in enumerate(header) if c != target and c not in drop]
    if not keep:
        raise DataError(f"{name}: no feature columns left besides the target {target!r}")
    for i, row in body:
        for j in keep + [header.index(target)]:
            if row[j].lower() in MISSING:
                raise DataError(f"{name}: row {i}, column {header[j]!r}: missing value "
                                f"{row[j]!r}; fill or drop such rows first")
    columns, features, refused = [], [], []
    for j in keep:
        cells = [row[j] for _, row in body]
        values = [_number(c) for c in cells]
        if all(v is not None for v in values):
            columns.append(np.array(values, dtype=np.float64)[:, None])
            features.append(header[j])
            continue
        levels = sorted(set(cells))
        _stray_cell(name, header[j], body, cells, values, len(levels))
        if len(levels) > MAX_CATEGORIES:
            refused.append(f"{header[j]!r} ({len(levels)} distinct values)")
            continue
        codes = np.array([levels.index(c) for c in cells])
        columns.append((codes[:, None] == np.arange(len(levels))[None, :]).astype(np.float64))
        features += [f"{header[j]}={v}" for v in levels]
    if refused:
        raise DataError(f"{name}: non-numeric columns with more than {MAX_CATEGORIES} "
                        f"distinct values cannot be one-hot encoded: {', '.join(refused)}; "
                        f"drop them (--drop)")
    x = np.hstack(columns)
    cells = [row[header.index(target)] for _, row in body]
    if task == "regression":
        values = [_number(c) for c in cells]
        bad = next((k for k, v in enumerate(values) if v is None), None)
        if bad is not None:
            raise DataError(f"{name}: row {body[bad][0]}, column {target!r}: {cells[bad]!r} "
                            f"is not a number (a regression target must be)")
        # (n, 1) targets, float64 until standardized: a float32 cast first would round
        # 1.7e9 + small changes away, or 1e-46 to 0
        y, classes = np.array(values, dtype=np.float64)[:, None], None
        if min(values) == max(values):                       # (before float32 rounding)
            raise DataError(f"{name}: the target {target!r} has one value ({values[0]:g}): "
                            f"nothing to predict")
    else:
        if all(_number(c) is not None for c in cells):
            # numbers are classes by value: "1" and "1.0" are one class, named "1"
            cells = [_label(c) for c in cells]
            classes = sorted(set(cells), key=Decimal)     # (exact: long ids keep order)
        else:
            classes = sorted(set(cells))
        if len(classes) < 2:
            raise DataError(f"{name}: the target {target!r} has one value ({classes[0]!r}): "
                            f"nothing to classify")
        index = {c: k for k, c in enumerate(classes)}
        y = np.array([index[c] for c in cells], dtype=np.int64)
    n = len(body)
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    rest = order[n_test:]
    n_val = int(round(0.1 * len(rest))) if validation is None else int(validation)
    if n_test < 1 or len(rest) - n_val < 1 or n_val < 0:
        raise DataError(f"{name}: {n} rows leave no training or no test rows (test "
                        f"fraction {test_fraction}, {n_val} validation rows)")
    test, val, train = order[:n_test], rest[len(rest) - n_val:], rest[:len(rest) - n_val]
    mean, std = _statistics(x[train])
    xs = ((x - mean) / std).astype(dtype)
    y_mean, y_std = 0.0, 1.0
    if classes is None:              # the target too: the network then starts near it
        m, s = _statistics(y[train])
        y_mean, y_std = float(m[0]), float(s[0])
        y = ((y - y_mean) / y_std).astype(dtype)
    return Table(xs[train], y[train], xs[val], y[val], xs[test], y[test],
                 n_classes=0 if classes is None else len(classes), features=features,
                 classes=None if classes is None else [str(c) for c in classes],
                 target=target, mean=mean, std=std,
                 y_mean=y_mean, y_std=y_std, source_crc32=crc)
