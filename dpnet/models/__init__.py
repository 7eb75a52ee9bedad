"""Models: each keeps its parameters in one flat vector and serves ``loss_and_grad``
(docs/ARCHITECTURE.md, "The contract every engine serves"). The kinds of model are
registered in ``registry``; ``loading`` rebuilds them from checkpoints."""
from .loading import load, load_weights_into
from .lstm import CharLSTM
from .mlp import Sequential
from .registry import model_from_config, register, task_for

__all__ = ["CharLSTM", "Sequential", "load", "load_weights_into", "model_from_config",
           "register", "task_for"]
