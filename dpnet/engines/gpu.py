"""The GPU kind of worker: one process per CUDA device (``dpnet/workers/gpu_worker.py``), the
only process of a run that imports cupy.

The data goes to the device once, through shared memory; each step's indices, and the
weights when they changed, go as raw frames. ``update="coordinator"``: the gradient
comes back as a raw frame and the coordinator's optimizer applies it (the mission's
protocol, and what several devices need). ``update="worker"`` (one device): the worker
applies the same optimizer on the device, its state kept there, so only scalars cross
per step; the coordinator PUSHes weights and optimizer state at the start and PULLs
them for evaluation reports, checkpoints and the end.
"""
from __future__ import annotations

from .group import ProcessGroup

UPDATES = ("worker", "coordinator")


class GpuProcesses(ProcessGroup):
    kind = "gpu"
    module = "dpnet.workers.gpu_worker"

    def __init__(self, devices=(0,), update="worker", stall_timeout=2.0):
        devices = [devices] if isinstance(devices, int) else list(devices)
        for d in devices:
            if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                raise ValueError(f"a device must be a CUDA device index >= 0, got {d!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {', '.join(UPDATES)}, got {update!r}")
        if update == "worker" and len(devices) != 1:
            raise ValueError(f"update='worker' needs exactly one device, got {devices}")
        super().__init__(len(devices), stall_timeout=stall_timeout)
        self.devices = devices
        self.update_on_worker = update == "worker"

    def describe(self):
        where = "on the GPU" if self.update_on_worker else "in this process"
        return (f"{'a GPU worker' if self.size == 1 else f'{self.size} GPU workers'} on "
                f"device{'s' if self.size > 1 else ''} {', '.join(map(str, self.devices))}, "
                f"the optimizer {where}")

    def extra_config(self, rank):
        return {"device": self.devices[rank]}

    def stats(self):
        return dict(super().stats(), devices=self.devices,
                    update="worker" if self.update_on_worker else "coordinator")
