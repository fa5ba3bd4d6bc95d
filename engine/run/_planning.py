"""Deciding where a `Gradient`'s calls run (`Plan`, `Planner`) and how its index space is cut
into chunks (`plan_chunks`): the speed, never the numbers."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from ._execution import Execution, check_positive_int
from ..fd._space import split_range

__all__ = ["Plan", "Planner", "plan_chunks", "default_chunks_per_worker"]

log = logging.getLogger("engine")

_MIN_CHUNK_SECONDS = 0.01    # a chunk should carry at least this much work (a task costs ~0.1 ms)
_DEFAULT_CHUNKS_PER_WORKER = 4
_SLOW_CALL_SECONDS = 0.1     # an in-process call this slow is measured once, not twice
_CLEARLY_PARALLEL_SECONDS = 1.0   # an estimated in-process call this slow goes to the workers


@dataclass(frozen=True)
class Plan:
    """Where a `Gradient` evaluates, and why.

    Attributes
    ----------
    where : {"parallel", "in-process", "measuring"}
    workers : int
        Workers used on the parallel path.
    reason : str
    in_process_seconds, parallel_seconds : float or None
        The fastest measured call of each kind (seconds), where measured.
    """

    where: str
    workers: int
    reason: str
    in_process_seconds: float | None = None
    parallel_seconds: float | None = None

    def __str__(self) -> str:
        plural = "s" if self.workers != 1 else ""
        where = f"{self.workers} worker{plural}" if self.where == "parallel" else self.where
        return f"{where} ({self.reason})"


class Planner:
    """Decides, from the first calls, whether the workers are worth it (``dispatch="auto"``)."""

    def __init__(self, execution: Execution, workers: int):
        self.mode, self.workers = execution.dispatch, workers
        self.signature = None
        self._reset()

    def _reset(self) -> None:
        self.samples = {"in-process": [], "parallel": []}
        if self.workers == 1:
            self.plan = Plan("in-process", 1, "workers=1")
        elif self.mode == "parallel":
            self.plan = Plan("parallel", self.workers, "dispatch='parallel'")
        elif self.mode == "in-process":
            self.plan = Plan("in-process", self.workers, "dispatch='in-process'")
        else:
            self.plan = Plan("measuring", self.workers, "the first calls are timed both ways")

    def where(self, signature: tuple, size: int) -> str:
        """``"parallel"``, ``"in-process"``, or ``"estimate"`` (time one entry first)."""
        if size <= 1:
            return "in-process"
        if signature != self.signature and self.mode == "auto" and self.workers > 1:
            self.signature = signature
            self._reset()
            if signature[2] == "loop":   # an unknown f: its cost decides whether to measure
                return "estimate"
        if self.plan.where != "measuring":
            return self.plan.where
        needed_in = 1 if any(s > _SLOW_CALL_SECONDS for s in self.samples["in-process"]) else 2
        return "in-process" if len(self.samples["in-process"]) < needed_in else "parallel"

    def estimate(self, entry_seconds: float, size: int) -> str:
        estimated = entry_seconds * size
        if estimated > _CLEARLY_PARALLEL_SECONDS:
            self._decide("parallel", f"estimated {estimated:.3g} s per call in-process")
            return "parallel"
        return self.where(self.signature, size)

    def record(self, where: str, seconds: float) -> None:
        if self.plan.where != "measuring":
            return
        self.samples[where].append(seconds)
        inside, outside = self.samples["in-process"], self.samples["parallel"]
        if len(outside) >= 2 and inside:
            best_in, best_out = min(inside), min(outside)
            if best_out < best_in:
                self._decide("parallel", f"measured {best_out * 1e3:.3g} ms per call on "
                             f"{self.workers} workers vs {best_in * 1e3:.3g} ms in-process",
                             best_in, best_out)
            else:
                self._decide("in-process", f"measured {best_in * 1e3:.3g} ms per call "
                             f"in-process vs {best_out * 1e3:.3g} ms on {self.workers} workers",
                             best_in, best_out)

    def use_workers(self, workers: int) -> None:
        """The pool has `workers` workers (no more than the chunks of a call need)."""
        if workers != self.workers:
            self.workers = workers
            self.plan = replace(self.plan, workers=workers)

    def _decide(self, where: str, reason: str, inside=None, outside=None) -> None:
        self.plan = Plan(where, self.workers, reason, inside, outside)
        log.info("numerical gradient plan: %s", self.plan)


def plan_chunks(size: int, workers: int, chunks_per_worker: int = _DEFAULT_CHUNKS_PER_WORKER,
                chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges covering ``range(size)``.

    ``workers * chunks_per_worker`` chunks of near-equal length, or chunks of
    `chunk_size` entries (the last one shorter) when that is given.
    """
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
        return [(lo, min(lo + chunk_size, size)) for lo in range(0, size, chunk_size)]
    return split_range(size, workers * chunks_per_worker)


def default_chunks_per_worker(evaluator: str, entry_seconds: float | None, size: int,
                               workers: int) -> int:
    if evaluator == "batched":
        return 1
    if entry_seconds is None:
        return _DEFAULT_CHUNKS_PER_WORKER
    estimated = entry_seconds * size
    return int(np.clip(estimated / (workers * _MIN_CHUNK_SECONDS), 1, _DEFAULT_CHUNKS_PER_WORKER))
