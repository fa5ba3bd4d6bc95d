"""What runs inside a worker: one private copy of ``(f, x)`` per call, chunks evaluated on it.

A worker (a process, a thread, a Dask task slot) unpickles the call's bundle the
first time it meets that call, keeps it for the call's later chunks, and drops it
when the next call arrives. The copy lives in a thread-local slot so that threads
of one process never share, and so never see each other's perturbations.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._threads import one_blas_thread
from .evaluators import get_evaluator
from .payload import loads_bundle
from .schemes import get_scheme
from .space import ParamSpace

__all__ = ["Job", "FilePayload", "InlinePayload", "evaluate_chunk"]

_resident = threading.local()   # per worker thread: the current call's (f, space, cache)


@dataclass(frozen=True)
class Job:
    """What every chunk of one call shares: its id and how to evaluate."""

    call_id: str
    evaluator: str
    scheme: str
    steps: tuple[float, ...]
    options: tuple[tuple[str, Any], ...] = ()   # keyword arguments of the evaluator


@dataclass(frozen=True)
class FilePayload:
    """The bundle written once to a file that every worker process reads."""

    path: str

    def read(self) -> bytes:
        return Path(self.path).read_bytes()


@dataclass(frozen=True)
class InlinePayload:
    """The bundle carried in the task itself (threads, Dask futures)."""

    data: bytes

    def read(self) -> bytes:
        return self.data


def evaluate_chunk(job: Job, payload: Any, start: int, stop: int) -> np.ndarray:
    """Derivatives for the flat entries ``start .. stop-1``, on this worker's copy.

    Returns
    -------
    ndarray, shape (stop - start,), float64
    """
    f, space, cache = _resident_copy(job.call_id, payload)
    evaluate = get_evaluator(job.evaluator)
    with one_blas_thread():
        return evaluate(f, space, list(job.steps), get_scheme(job.scheme), start, stop, cache,
                        **dict(job.options))


def _resident_copy(call_id: str, payload: Any):
    if getattr(_resident, "call_id", None) != call_id:
        _resident.bundle = None  # drop the previous call's copy before loading the next
        f, x = loads_bundle(payload.read())
        _resident.bundle = (f, ParamSpace(x), {})
        _resident.call_id = call_id
    return _resident.bundle
