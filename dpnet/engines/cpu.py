"""The first kind of worker: CPU processes on this machine (``dpnet/workers/cpu_worker.py``).

They attach the coordinator's shared memory for everything: the data, the weights
(read in place, version-stamped), the step's indices and their own gradient slot, so
only msgpack headers cross the socket. Each runs ``blas_threads`` BLAS threads.
"""
from __future__ import annotations

from .group import ProcessGroup, blas_env


class CpuProcesses(ProcessGroup):
    kind = "cpu"
    module = "dpnet.workers.cpu_worker"
    weights_in_shm = True
    grads_in_shm = True
    index_in_shm = True

    def __init__(self, size, blas_threads=1, stall_timeout=2.0):
        super().__init__(size, stall_timeout=stall_timeout)
        if not isinstance(blas_threads, int) or isinstance(blas_threads, bool) \
                or blas_threads <= 0:
            raise ValueError(f"blas_threads must be a positive integer, got {blas_threads!r}")
        self.blas_threads = blas_threads

    def describe(self):
        return (f"{self.size} worker process{'es' if self.size > 1 else ''}, "
                f"{self.blas_threads} BLAS thread{'s' if self.blas_threads > 1 else ''} each")

    def env(self):
        return blas_env(self.blas_threads)

    def stats(self):
        return dict(super().stats(), blas_threads=self.blas_threads)
