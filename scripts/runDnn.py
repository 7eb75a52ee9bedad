#!/usr/bin/env python
"""Train an MLP on MNIST, each minibatch sharded over CPU worker processes.

--workers N (default: the number of physical cores; 0 = in process), --blas-threads,
--on-failure {respawn,abort}, and every flag of runDnnDebug.py; see --help.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.mnist import run_dnn  # noqa: E402
from dpnet.engines.coordinator import default_workers  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_dnn(prog="runDnn.py", workers_flag=True, default_workers=default_workers()))
