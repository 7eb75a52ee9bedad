#!/usr/bin/env python
"""Train a character-level LSTM on a text file (default: tiny Shakespeare), continue
from a checkpoint, or generate text from one. See --help.

  --workers N   shard each batch's streams over N worker processes (default: 0 = in
                this process, which is as fast on 2 cores; see scripts/bench_lstm.py)
"""
import os
import sys


def _preset_blas_threads(argv):
    # BLAS reads its thread count once, when NumPy loads it: set it before the import.
    # (Worker processes get theirs from the engine, whatever is set here.)
    for i, a in enumerate(argv):
        v = a.split("=", 1)[1] if a.startswith("--blas-threads=") else (
            argv[i + 1] if a == "--blas-threads" and i + 1 < len(argv) else None)
        if v is not None and v.isdigit() and int(v) > 0:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = v


_preset_blas_threads(sys.argv[1:])
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.lstm import run_lstm  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_lstm(prog="runLstm.py"))
