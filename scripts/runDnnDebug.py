#!/usr/bin/env python
"""Train an MLP on MNIST in this one process (the in-process engine, for debugging).

Same flags as runDnn.py without the worker options; see --help.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dpnet.cli.mnist import run_dnn  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_dnn(prog="runDnnDebug.py"))
