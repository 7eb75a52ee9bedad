"""What every model shares about its one flat parameter vector: ``params`` stays the
array its named views (a layer's W and b) are views of, through assignment, copies and
pickles."""
from __future__ import annotations

import numpy as np

from ..backend import xp_of


class FlatParams:
    """``model.params`` is the flat parameter vector that the maths reads through views.
    Assigning to it copies the values INTO it (checked for shape): replacing the array
    would leave the views, and so the model's predictions, on the old one. Engines that
    must move the vector itself (into shared memory, onto a device) use ``rebind``.

    A copy of the model (``copy.deepcopy``, ``pickle``) gets its arrays as separate
    copies; ``__setstate__`` makes the views views of the copy's own vectors again
    (``_rebind_views``), or its training would update a vector nothing reads."""

    @property
    def params(self):
        return self._params

    @params.setter
    def params(self, value):
        target = self._params
        value = xp_of(target).asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"params must have shape {target.shape} (this model's "
                             f"{target.shape[0]:,} parameters), got {value.shape}")
        target[...] = value

    def __setstate__(self, state):
        if "params" in state:            # pickled before params was a property
            state = dict(state)
            state["_params"] = state.pop("params")
        self.__dict__.update(state)
        # joblib hands models to other processes as read-only memory maps: a model
        # that comes back must still train
        for name in ("_params", "grads"):
            a = self.__dict__.get(name)
            if isinstance(a, np.ndarray) and not a.flags.writeable:
                self.__dict__[name] = a.copy()
        opt = self.__dict__.get("optimizer")
        if opt is not None and getattr(opt, "state", None):
            opt.state = {k: np.array(v) if isinstance(v, np.ndarray) and not v.flags.writeable
                         else v for k, v in opt.state.items()}
        self._rebind_views()

    def _rebind_views(self):
        raise NotImplementedError
