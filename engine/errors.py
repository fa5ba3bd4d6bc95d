"""Errors the engine raises on top of the standard ones (TypeError, ValueError...)."""
from __future__ import annotations

__all__ = ["PayloadError", "StateNotShippedError", "WorkerLostError"]


class PayloadError(TypeError):
    """`f` or `x` could not be pickled for another worker."""


class StateNotShippedError(RuntimeError):
    """The workers' copy of `f` does not read their copy of `x`: their gradient would be wrong."""


class WorkerLostError(RuntimeError):
    """Worker processes died and the chunks they held could not be recomputed within `retries`."""
