"""Engines: HOW a step's gradient is computed -- in process, or by a coordinator over a
group of workers of one kind. Every training loop talks to every engine the same way:

    engine.start(model, datasets)        # datasets: {"train": ..., "val": ...}
    loss, n, correct = engine.step(step, batch)      # gradient and update
    loss, n, correct = engine.gradient(step, batch)  # the mean gradient into model.grads
    engine.weights_changed(step); engine.sync_to_host()
    loss, n, correct = engine.evaluate("val")
    engine.close()

The kinds of worker a coordinator can drive are registered in ``WORKER_KINDS``
(docs/ARCHITECTURE.md, "Adding a kind of worker").
"""
from .local import LocalEngine

__all__ = ["LocalEngine", "make_engine", "gpu_engine", "worker_group", "WORKER_KINDS"]

# kind name -> "module:class" of its WorkerGroup (imported when first asked for)
WORKER_KINDS = {
    "cpu": "dpnet.engines.cpu:CpuProcesses",
    "gpu": "dpnet.engines.gpu:GpuProcesses",
    "remote": "dpnet.engines.remote:RemoteWorkers",
}


def worker_group(kind, *args, **kwargs):
    """A WorkerGroup of a registered kind."""
    import importlib
    if kind not in WORKER_KINDS:
        raise ValueError(f"unknown kind of worker {kind!r}; known: {', '.join(WORKER_KINDS)}")
    module, cls = WORKER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)(*args, **kwargs)


def make_engine(workers=0, **kwargs):
    """The in-process engine for workers=0, else a coordinator over that many CPU
    worker processes."""
    if workers is None or workers == 0:
        return LocalEngine(**kwargs)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    from .coordinator import MultiprocessEngine
    return MultiprocessEngine(workers=workers, **kwargs)


def gpu_engine(devices=(0,), update="worker", **kwargs):
    """A coordinator over GPU worker processes, one per CUDA device (``update``: where
    the optimizer runs -- "worker", on the one device, or "coordinator")."""
    from .coordinator import Coordinator
    return Coordinator(worker_group("gpu", devices, update=update), **kwargs)
