"""Training loops: ``fit`` (epochs of minibatches), ``fit_text`` (global steps over
stream chunks), both on one loop core (``loop``); ``minimize`` (scipy's full-batch
methods); histories, callbacks and the text checkpoint."""
from .callbacks import EarlyStopping, ModelCheckpoint
from .epochs import fit, save_training_checkpoint
from .fullbatch import minimize, minimize_minibatches
from .history import History, TextHistory
from .text import fit_text

__all__ = ["EarlyStopping", "ModelCheckpoint", "History", "TextHistory", "fit", "fit_text", "minimize", "minimize_minibatches",
           "save_training_checkpoint"]
