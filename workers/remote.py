"""Launcher: a worker on another machine is ``dpnet.workers.remote_worker``
(``python -m workers.remote --connect tcp://HOST:PORT --keys DIR``)."""
import sys

from dpnet.workers.remote_worker import main

if __name__ == "__main__":
    sys.exit(main())
