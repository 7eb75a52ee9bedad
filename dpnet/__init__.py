"""dpnet: neural networks from first principles on NumPy, trained data-parallel.

This module is the public facade; the layers below it are described in
docs/ARCHITECTURE.md.
"""
from ._version import __version__
from . import data
from .data import one_hot
from .models import CharLSTM, Sequential, load
from .nn.deform import Deform
from .nn.layers import Dense, Dropout
from .nn.maxout import Maxout
from .optim import optimizers, schedules
from .storage.checkpoint import CheckpointError
from .training import EarlyStopping, History, ModelCheckpoint, fit, fit_text, minimize


def _fit(self, x, y, epochs=1, batch_size=32, **kwargs):
    """Train on (x, y), Keras-style; returns the History. The options are those of
    ``dpnet.training.fit`` (validation_data, callbacks, workers or engine, checkpoint,
    initial_step, seed, shuffle, verbose, progress)."""
    return fit(self, x, y, epochs=epochs, batch_size=batch_size, **kwargs)


# The model module does not import the training layer (a model never drives its own
# training): the facade gives Sequential its fit method. Any import of a dpnet module
# runs this file first, so every Sequential has it.
Sequential.fit = _fit

__all__ = ["Dense", "Dropout", "Deform", "Maxout", "Sequential", "CharLSTM", "load", "one_hot", "CheckpointError",
           "EarlyStopping", "ModelCheckpoint", "History", "fit", "fit_text", "minimize", "optimizers",
           "schedules", "data", "__version__"]
