"""Errors and warnings the engine raises on top of the standard ones (TypeError, ValueError...)."""
from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_user", "PayloadError", "StateNotShippedError", "WorkerLostError", "WorkerError",
           "NotDeterministicError", "RemoteTraceback", "WorkerDied", "NumericalFallbackWarning",
           "StepSizeWarning"]


class PayloadError(TypeError):
    """`f` or `x` could not be pickled for another worker."""


class StateNotShippedError(RuntimeError):
    """The workers' copy of `f` does not compute what `f` computes here: their gradient would be wrong."""


class NotDeterministicError(ValueError):
    """`f` gave two different values at the same `x`: its differences would be noise, not derivatives."""


class WorkerLostError(RuntimeError):
    """Worker processes died and the chunks they held could not be recomputed within `retries`."""


class WorkerError(RuntimeError):
    """An exception raised by `f` in a worker that could not be sent back as itself.

    Some exceptions cannot be pickled or unpickled (one whose ``__init__`` needs other
    arguments than its ``args``, one holding a lock). This one carries what they said:
    ``type_name`` (e.g. ``"mymodule.SolverError"``), the message, where it happened, and
    the worker's traceback as text (also its ``__cause__``).
    """

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self):
        return type(self), (self.type_name, self.message, self.traceback), self.__dict__


class RemoteTraceback(Exception):
    """The traceback of an error in a worker, as text: set as the ``__cause__`` of that error."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


class WorkerDied(Exception):
    """Internal: a worker process died; the tasks it held are lost (the engine retries).

    `exit_code` is the process's exit status as multiprocessing gives it (negative: the
    signal that ended it), or None when it is not known yet.
    """

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code


class NumericalFallbackWarning(UserWarning):
    """Evaluations of `f` failed and were replaced (``on_failure="one-sided"`` or ``"nan"``).

    One per call; its message lists the entries, and ``Gradient.failures`` holds them.
    """


class StepSizeWarning(UserWarning):
    """The step actually stored, ``dtype(x_i + h) - x_i``, differs from `h` by more than 1%."""


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Warn, attributed to the first caller outside this package (the user's own line)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
