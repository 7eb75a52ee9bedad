"""dpnet: neural networks from first principles on NumPy, trained data-parallel."""
__version__ = "0.1.0"

from .layers import Dense, Dropout  # noqa: E402
from .models.mlp import Sequential  # noqa: E402
from .models.lstm import CharLSTM  # noqa: E402
from .checkpoint import CheckpointError, load  # noqa: E402
from .data import one_hot  # noqa: E402
from . import optimizers, schedules  # noqa: E402

__all__ = ["Dense", "Dropout", "Sequential", "CharLSTM", "load", "one_hot", "CheckpointError",
           "optimizers", "schedules", "__version__"]
