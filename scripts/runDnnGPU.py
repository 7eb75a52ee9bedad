#!/usr/bin/env python
"""Train an MLP on MNIST on a CUDA GPU: one GPU worker process (the only one that loads
CUDA), the data uploaded once, the optimizer on the device by default.

Every flag of runDnnDebug.py, plus --device N and --update {worker,coordinator}; see
--help. Needs the GPU extra: pip install -e ".[gpu]".
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.mnist import run_dnn  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_dnn(prog="runDnnGPU.py", gpu=True))
