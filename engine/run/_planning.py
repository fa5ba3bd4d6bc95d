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
_CLEARLY_PARALLEL_SECONDS = 1.0   # an estimated in-process call this slow goes to the workers
# The rule of dispatch="auto": SAMPLES calls each way, interleaved (in-process first), compared by
# their medians; the workers are kept only when their median is at least MARGIN faster. After the
# decision, the median of the last DRIFT_WINDOW calls is compared with the decided median: when
# it moved by more than DRIFT_FACTOR either way, both ways are measured again.
SAMPLES = 5
MARGIN = 0.10
DRIFT_WINDOW = 5
DRIFT_FACTOR = 2.0


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
        The median of the calls measured each way (seconds), where measured.
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
    """Decides whether the workers are worth it (``dispatch="auto"``), and re-decides on drift.

    With ``dispatch="auto"`` and more than one worker, the first ``2 * SAMPLES`` calls of a
    structure alternate between this process and the workers (in-process first); the plan
    is then the way whose median call was faster, the workers only when at least `MARGIN`
    (10%) faster, since they cost more cores for the same numbers. Once decided, `record`
    keeps the last `DRIFT_WINDOW` calls: when their median is more than `DRIFT_FACTOR`
    times the decided median, or less than its inverse, both ways are measured again (the
    next plan's reason says why). A new structure (`where` with another signature) is
    measured afresh. Timings are the caller's (``record``), so the rule can be tested with
    injected seconds.
    """

    def __init__(self, execution: Execution, workers: int):
        self.mode, self.workers = execution.dispatch, workers
        self.signature = None
        self.remeasured = 0        # how many times drift restarted the measurement
        self._reset()

    def _reset(self, why: str | None = None) -> None:
        self.samples = {"in-process": [], "parallel": []}
        self.recent: list[float] = []
        if self.workers == 1:
            self.plan = Plan("in-process", 1, "workers=1")
        elif self.mode == "parallel":
            self.plan = Plan("parallel", self.workers, "dispatch='parallel'")
        elif self.mode == "in-process":
            self.plan = Plan("in-process", self.workers, "dispatch='in-process'")
        else:
            self.plan = Plan("measuring", self.workers, why or "the first calls are timed both ways")

    def where(self, signature: tuple, size: int, black_box: bool = False) -> str:
        """``"parallel"``, ``"in-process"``, or ``"estimate"`` (time one task first).

        `signature` identifies what the workers hold (a new one is measured anew);
        `size` is the call's task count; `black_box`: `f`'s cost is unknown (the loop
        evaluator), so a new signature first times one task in this process.
        """
        if size <= 1:
            return "in-process"
        if signature != self.signature and self.mode == "auto" and self.workers > 1:
            self.signature = signature
            self._reset()
            if black_box:   # an unknown f: its cost decides whether to measure
                return "estimate"
        if self.plan.where != "measuring":
            return self.plan.where
        inside, outside = self.samples["in-process"], self.samples["parallel"]
        return "in-process" if len(inside) <= len(outside) else "parallel"

    def estimate(self, entry_seconds: float, size: int) -> str:
        estimated = entry_seconds * size
        if estimated > _CLEARLY_PARALLEL_SECONDS:
            self._decide("parallel", f"estimated {estimated:.3g} s per call in-process")
            return "parallel"
        return self.where(self.signature, size)

    def record(self, where: str, seconds: float) -> None:
        """Take the duration of a call made `where` (``"in-process"`` or ``"parallel"``)."""
        if self.plan.where == "measuring":
            self._measure(where, seconds)
        elif self.plan.in_process_seconds is not None and where == self.plan.where:
            self._watch(seconds)

    def _measure(self, where: str, seconds: float) -> None:
        self.samples[where].append(seconds)
        inside, outside = self.samples["in-process"], self.samples["parallel"]
        if len(inside) < SAMPLES or len(outside) < SAMPLES:
            return
        median_in, median_out = float(np.median(inside)), float(np.median(outside))
        medians = f"medians of {SAMPLES} calls each"
        if median_out <= (1.0 - MARGIN) * median_in:
            self._decide("parallel", f"measured {median_out * 1e3:.3g} ms per call on "
                         f"{self.workers} workers vs {median_in * 1e3:.3g} ms in-process, "
                         f"{medians}", median_in, median_out)
        else:
            self._decide("in-process", f"measured {median_in * 1e3:.3g} ms per call "
                         f"in-process vs {median_out * 1e3:.3g} ms on {self.workers} workers, "
                         f"{medians}; the workers must be {MARGIN:.0%} faster", median_in, median_out)

    def _watch(self, seconds: float) -> None:
        self.recent = (self.recent + [seconds])[-DRIFT_WINDOW:]
        if len(self.recent) < DRIFT_WINDOW:
            return
        decided = self.plan.in_process_seconds if self.plan.where == "in-process" \
            else self.plan.parallel_seconds
        now = float(np.median(self.recent))
        if not decided / DRIFT_FACTOR <= now <= decided * DRIFT_FACTOR:
            self.remeasured += 1
            self._reset(f"timed both ways again: calls {self.plan.where} took "
                        f"{now * 1e3:.3g} ms, {decided * 1e3:.3g} ms when decided")
            log.info("numerical gradient plan: %s", self.plan)

    def use_workers(self, workers: int) -> None:
        """The pool has `workers` workers (no more than the chunks of a call need)."""
        if workers != self.workers:
            self.workers = workers
            self.plan = replace(self.plan, workers=workers)

    def _decide(self, where: str, reason: str, inside=None, outside=None) -> None:
        self.plan = Plan(where, self.workers, reason, inside, outside)
        self.recent = []
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
