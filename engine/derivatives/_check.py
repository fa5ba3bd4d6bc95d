"""Every call on the workers verifies itself: the workers' `f` must compute what `f` computes here.

The workers hold a copy of ``(f, x)`` made when it was shipped. Anything that makes the
copy compute something else gives a wrong gradient with no error: a closure over a
mini-batch that changed since, module state that pickle sent by reference (so the
copy reads its own import-time state instead of the resident `x`), values or arguments
that did not arrive. So each call runs one extra task, ``f(x)`` on a worker, while this
process computes ``f(x)`` itself, and the two must agree to the bit. After each
shipping, both also evaluate `f` at a point where every entry of `x` moves (`probe`):
an `f` that ignores the workers' `x` gives the unmoved value there, however many of its
single derivatives are zero.

A disagreement on a copy shipped in an earlier call ships ``(f, x)`` again and repeats
the call once (a warning says so once per gradient); a disagreement on a fresh copy
raises `StateNotShippedError`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np

from .._errors import StateNotShippedError, warn_user
from ..fd._bounds import bounds_per_array
from ..fd._evaluators import Report
from ..fd._space import ParamSpace
from ..run._blas import one_blas_thread
from ..run._job import CENTER, Job, Point, Raised, shown, value_at
from ._link import WorkerLink

__all__ = ["WorkerCall", "probe_values"]

_CENTER_TASK = -1            # task numbers of f(x), and of the check's points
_CHECK_TASK = -2
_PROBE_TASK = -3
_PROBE_SCALE = 2.0 ** -10    # the probe moves each entry by this share of max(1, |x_i|)


class _Disagreement(Exception):
    def __init__(self, what: str, ours: Any, theirs: Any, fresh: bool):
        super().__init__(what)
        self.what, self.ours, self.theirs, self.fresh = what, ours, theirs, fresh


class WorkerCall:
    """Runs a derivative's calls on its workers, each checked against this process.

    Parameters
    ----------
    link : WorkerLink
        The derivative's workers.
    check : bool
        Verify each call (``check_state``); False runs the tasks unchecked.
    """

    def __init__(self, link: WorkerLink, check: bool):
        self.link, self.check = link, check
        self._probed = None          # the signature whose shipped copy passed the probe
        self._warned = False

    def reship(self) -> None:
        self.link.reship()
        self._probed = None

    def run(self, f: Callable, bound: Callable, space: ParamSpace, args: tuple, job: Job,
            chunks: list, signature: tuple, call: int, *, needs_center: bool, want_center: bool,
            bounds: tuple | None = None, alongside: Callable[[], None] | None = None):
        """One call: ``(f(x) or None, rows, report, seconds spent shipping)``.

        `f` is the derivative's function, shipped as is; `bound` is ``f(x, *args)`` bound
        to `x` for the evaluations here. `needs_center`: ``f(x)`` runs first, alone, and
        every chunk uses it; `want_center`: ``f(x)`` is returned. `alongside` runs here
        while the workers work, after this process's own check evaluations.

        Raises
        ------
        StateNotShippedError
            If the workers' `f` disagrees with this process's on a freshly shipped copy.
        """
        for attempt in range(2):
            try:
                return self._run(f, bound, space, args, job, chunks, signature, call,
                                 needs_center, want_center, bounds, alongside)
            except _Disagreement as disagreement:
                if disagreement.fresh or attempt:
                    self.reship()
                    raise _not_shipped(disagreement) from None
                self.reship()
                self._warn_reshipped()
        raise AssertionError("unreachable")

    def _run(self, f, bound, space, args, job, chunks, signature, call, needs_center,
             want_center, bounds, alongside):
        probe = {}
        if self.check and self._probed != signature:
            probe[_PROBE_TASK] = Point(probe_values(space, bounds))
        shipping, center = 0.0, None
        if needs_center:
            # f(x) first, once, so that every chunk uses the same centre: n + 1 calls of f
            ours = {_CENTER_TASK: Point(None), **probe} if self.check else {}
            results, shipping = self._checked(f, bound, space, args, job,
                                              {_CENTER_TASK: CENTER, **probe}, ours, signature, call,
                                              alongside)
            center, probe, alongside = results[_CENTER_TASK][0], {}, None
            job = replace(job, center=center)
        tasks: dict[int, Any] = dict(enumerate(chunks))
        ours = dict(probe)
        if center is None and want_center:
            tasks[_CENTER_TASK], ours[_CENTER_TASK] = CENTER, Point(None)
        elif center is None and self.check:
            tasks[_CHECK_TASK] = ours[_CHECK_TASK] = Point(None)
        results, more = self._checked(f, bound, space, args, job, {**tasks, **probe},
                                      ours if self.check else {}, signature, call, alongside)
        if self.check:
            self._probed = signature
        if center is None and want_center:
            center = results[_CENTER_TASK][0]
        report = Report()
        for number in range(len(chunks)):
            report.merge(results[number][1])
        rows = np.concatenate([results[number][0] for number in range(len(chunks))])
        return center, rows, report, shipping + more

    def _checked(self, f, bound, space, args, job, tasks, ours, signature, call, alongside=None):
        """Run `tasks`; meanwhile evaluate the points `ours` here (and run `alongside`); compare
        the points, bit for bit."""
        mine: dict[int, Any] = {}

        def evaluate_here() -> None:
            with one_blas_thread():   # as in every worker: the same bits
                for number, point in ours.items():
                    mine[number] = value_at(bound, space, point.values, job.vector)
                if alongside is not None:
                    alongside()

        results, shipping = self.link.run(f, space, args, job, tasks, signature, call,
                                          evaluate_here if ours or alongside else None)
        fresh = self.link.shipped_now
        for number, value in mine.items():
            theirs = results[number][0]
            if not _identical(value, theirs):
                what = "f at the state probe's point" if number == _PROBE_TASK else "f(x)"
                raise _Disagreement(what, value, theirs, fresh or number == _PROBE_TASK)
        return results, shipping

    def _warn_reshipped(self) -> None:
        if self._warned:
            return
        self._warned = True
        warn_user("`f` computes another f(x) here than the workers' copy of it, shipped on an "
                  "earlier call: state that `f` reads changed since (a closure over a new "
                  "mini-batch, say). `f` and `x` were shipped again and the call repeated, so the "
                  "result is right, but each such call ships the whole of `f`. Pass what changes "
                  "between calls as arguments instead: g(x, batch, labels) with "
                  "f(x, batch, labels). (Said once per gradient.)")


def probe_values(space: ParamSpace, bounds: tuple | None) -> tuple[np.ndarray, ...]:
    """A point where every entry of `x` moves, staying inside `bounds`.

    Each entry moves up by ``max(1, |x_i|) / 1024``, or down where that leaves the
    upper bound, or not at all where both directions leave the bounds.
    """
    limits = bounds_per_array(bounds, space) if bounds is not None else None
    values = []
    for position, array in enumerate(space.arrays):
        up = array + (_PROBE_SCALE * np.maximum(1.0, np.abs(array))).astype(array.dtype)
        if limits is not None:
            lower, upper = limits[position]
            down = array - (up - array)
            up = np.where(up <= upper, up, np.where(down >= lower, down, array))
        values.append(np.asarray(up, dtype=array.dtype))
    return tuple(values)


def _identical(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, Raised) or isinstance(theirs, Raised):
        return ours == theirs
    return np.shape(ours) == np.shape(theirs) and np.array_equal(
        np.asarray(ours), np.asarray(theirs), equal_nan=True)


def _not_shipped(disagreement: _Disagreement) -> StateNotShippedError:
    return StateNotShippedError(
        f"the workers computed {shown(disagreement.theirs)} for {disagreement.what}, but this "
        f"process computes {shown(disagreement.ours)}, on a freshly shipped copy of `f` and `x`, "
        "so the workers' gradient would be wrong. Their copy of `f` does not compute what `f` "
        "computes here: `f` reads state that did not travel with it (a module-level net or "
        "array of an importable module, which pickle sends by reference, so each worker "
        "uses its own import-time copy), or `f` is not deterministic, or `f` changes state "
        "(or `x`) when called. Pass the state through `x` or `args`, or close over it in a "
        "function (a closure or lambda), which is shipped together with `x`. If `f` is not "
        "deterministic, pass check_state=False.")
