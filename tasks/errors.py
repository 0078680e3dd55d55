"""Typed training failures, each carrying the cell that failed.

The training engine returns (``train_batch``) or raises (``train_cell``) these instead of bare
exceptions, so the campaign can record a readable row and heal by class: an ``OOMError`` is
retried with a smaller batch, a ``NaNLossError`` with a lower learning rate; the other classes go
to diagnosis. ``str(error)`` is always one line naming the class, the problem and the cell.
"""
from __future__ import annotations

import contextvars
import threading

from crashsearch.lab.space import Cell

# The event a stopping campaign sets (Ctrl-C, SIGTERM): training in a context that carries it ends
# at its next step with TrainingCancelled. The pipeline's trainer threads run in copies of the
# coordinator's context, which is how the event reaches them (tasks/campaign/pipeline.py).
STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("crashsearch_stop", default=None)


class TrainingCancelled(KeyboardInterrupt):
    """Training stopped because its campaign is stopping; the batch is not recorded (a resume trains it)."""


def stopping() -> bool:
    """Whether this context's campaign is stopping."""
    event = STOP.get()
    return event is not None and event.is_set()


class TrainingError(Exception):
    """A cell that could not be trained or evaluated.

    ``cell`` is the failed cell, ``message`` the problem in one line, ``error_class`` the name the
    history records (the subclass name; for an unexpected exception wrapped as a TrainingError,
    that exception's class name), ``traceback`` the formatted traceback for diagnosis ("" if none).
    """

    def __init__(self, cell: Cell, message: str, *, error_class: str | None = None, traceback: str = ""):
        self.cell = cell
        self.message = " ".join(str(message).split())  # one line, always
        self.error_class = error_class or type(self).__name__
        self.traceback = traceback
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.error_class}: {self.message} [cell {self.cell.id}: {_describe(self.cell)}]"

    def __reduce__(self):  # keep the keyword arguments when pickled (Prefect ships results between processes)
        return (_rebuild, (type(self), self.cell, self.message, self.error_class, self.traceback))


class OOMError(TrainingError):
    """Out of device memory even when the cell trained alone; heal with a smaller batch."""


class NaNLossError(TrainingError):
    """The loss, a gradient or the evaluation scores became NaN or infinite; heal with a lower lr."""


class ShapeError(TrainingError):
    """The cell does not fit the features: a window longer than the cached history, or a head
    that returns the wrong shape."""


class MissingFeaturesError(TrainingError):
    """The features the cell needs are missing: another backbone's features, an empty split or a
    split without both classes."""


def _describe(cell: Cell) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.values.items())


def _rebuild(cls, cell, message, error_class, traceback):
    return cls(cell, message, error_class=error_class, traceback=traceback)
