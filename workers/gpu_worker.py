"""Launcher: the GPU worker is ``dpnet.workers.gpu_worker``."""
import sys

from dpnet.workers.gpu_worker import main

if __name__ == "__main__":
    sys.exit(main())
