"""Launcher: the CPU worker is ``dpnet.workers.cpu_worker``."""
import sys

from dpnet.workers.cpu_worker import main

if __name__ == "__main__":
    sys.exit(main())
