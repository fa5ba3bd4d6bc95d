"""The contract every pool keeps: what a derivative needs of a place where chunks run.

Two kinds. A *resident* pool (`engine.run._backends.ResidentPool`: loky processes,
threads) keeps each derivative's ``(f, x)`` in its workers between calls: it is shipped
once (`ship`), each call stages new values and arguments (`update`) and runs tasks
(`run`). A *per-call* pool (`PerCallPool`: Dask, other joblib backends) receives
``(f, x, args)`` with every call (`run_once`). Both stream ``(task number, result)``
pairs as tasks finish, raise `f`'s own error as itself, and raise
`engine._errors.WorkerDied` when a worker dies, so that the caller re-runs only the
lost tasks.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["Pool", "PerCallPool"]


class Pool(ABC):
    """A place where chunks run."""

    resident: bool           # keeps (f, x) in the workers between calls
    workers: int             # how many tasks run at once
    generation: int          # +1 each time the workers are replaced (residents are lost)
    lock: threading.RLock    # held for the whole of one call: one call at a time

    @property
    @abstractmethod
    def usable(self) -> bool:
        """False once the pool cannot run tasks any more (inherited by fork, broken)."""

    @abstractmethod
    def ensure_started(self) -> None:
        """Start the workers if they are not running (again)."""

    @abstractmethod
    def drop(self, key: str) -> None:
        """Forget resident `key` (no effect on a per-call pool)."""

    @abstractmethod
    def close(self) -> None:
        """Stop the workers and release what the pool holds. Idempotent."""

    # resident pools
    def holds(self, key: str) -> bool:
        raise NotImplementedError

    def ship(self, key: str, bundle: bytes, arrays: list[np.ndarray]) -> None:
        raise NotImplementedError

    def update(self, key: str, arrays: list[np.ndarray], args: tuple | None) -> None:
        raise NotImplementedError

    def run(self, key: str, job: Any, tasks: dict[int, Any],
            while_waiting: Callable[[], None] | None = None) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    # per-call pools
    def run_once(self, job: Any, bundle: bytes, tasks: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError


class PerCallPool(Pool):
    """A pool that receives ``(f, x, args)`` with every call; subclasses provide `run_once`."""

    resident = False
    generation = 0

    def __init__(self, workers: int):
        self.workers = workers
        self.lock = threading.RLock()

    @property
    def usable(self) -> bool:
        return True

    def ensure_started(self) -> None:
        pass

    def drop(self, key: str) -> None:
        pass

    @abstractmethod
    def run_once(self, job: Any, bundle: bytes, tasks: dict[int, Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(number, result)`` as tasks finish, `bundle` sent along once."""
