"""Errors a data-parallel engine raises to the training loop."""


class WorkerError(RuntimeError):
    """A worker failed: it raised (``traceback`` holds its traceback), died, or stopped
    answering, and the failure policy says stop."""

    def __init__(self, message, rank=None, traceback=None):
        super().__init__(message)
        self.rank = rank
        self.traceback = traceback


class StepAbandoned(RuntimeError):
    """A stop signal came while a step or an evaluation could not end soon -- no
    worker left to serve it and none joining, or one owing its share silent -- so the
    engine gave it up (after ``STOP_GRACE_S``). The model holds the weights of the last
    whole step; the training loop ends as for any stop."""


class WorkerUserError(WorkerError):
    """A worker could not do what was asked -- no usable device, data that does not fit
    -- as opposed to a crash: one line for the user, no traceback."""
