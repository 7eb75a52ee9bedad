"""Engines: HOW a step's gradient is computed (in process, on worker processes, on a
GPU). The training loop in ``dpnet.train`` talks to every engine the same way:

    engine.start(model, datasets)        # datasets: {"train": (x, y), "val": (x, y)}
    loss, n, correct = engine.gradient(step, indices)   # fills model.grads (mean)
    model.apply_gradients(); engine.weights_changed(step)
    loss, n, correct = engine.evaluate("val")
    engine.close()
"""
from .local import LocalEngine

__all__ = ["LocalEngine", "make_engine"]


def make_engine(workers=0, **kwargs):
    """The in-process engine for workers=0, else the multiprocess one."""
    if workers is None or workers == 0:
        return LocalEngine(**kwargs)
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    from .multiprocess import MultiprocessEngine  # noqa: F401  (added by the parallel engine)
    return MultiprocessEngine(workers=workers, **kwargs)
