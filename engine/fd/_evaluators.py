"""How a chunk is evaluated: the loop evaluator, for any black-box `f`.

An evaluator takes a contiguous range of the flat index space and returns the
derivative of `f` with respect to each entry in it, as float64. The loop evaluator
does exactly what the teaching text does, one entry at a time: set the entry to
``float(x_i) + m*h`` for each multiple m of the scheme, call ``f(x)``, put the
original value back by assignment (never by arithmetic, so it is bit-exact), and
combine the losses.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ._calling import (ON_FAILURE, EvaluationFailed, LoopOptions, Report, annotate_error, checked_loss,
                       checked_output, loss_at, with_arguments)
from ._schemes import Scheme, auto_step, fit_to_bounds, one_sided
from ._space import ParamSpace

__all__ = ["loop_evaluate", "checked_loss", "checked_output", "annotate_error", "with_arguments",
           "loss_at", "LoopOptions", "Report", "ON_FAILURE"]

_PLAIN = LoopOptions()   # the teaching text's formula, nothing more


def loop_evaluate(
    f: Callable[[Any], Any],
    space: ParamSpace,
    steps: list[float | None],
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    loop: LoopOptions = _PLAIN,
    report: Report | None = None,
) -> np.ndarray:
    """Derivatives of `f` for the flat entries ``start .. stop-1`` of `space`.

    The arrays of `space` are perturbed in place, one entry at a time, and each entry
    is restored to its exact original value before the next, also when `f` raises.
    `cache` (a dict kept for one call) holds the unperturbed loss for schemes that
    use it, so it is evaluated once per worker and call, not once per chunk.
    A step of None is ``h="auto"``: ``auto_step(scheme, dtype) * max(1, |x_i|)``, and
    the difference is divided by the steps actually stored.

    Returns
    -------
    ndarray, float64, shape (stop - start,), or (stop - start, m) for a vector `f`

    Raises
    ------
    ValueError
        If ``x_i + m*h`` rounds back to ``x_i`` (nothing would be perturbed), also for a
        step shrunk to fit the bounds, or if an entry has no room between its bounds; for
        the complex step (`engine.fd._complex`).
    """
    if scheme.complex_step:
        raise ValueError("scheme='complex' is evaluated by engine.fd._complex.complex_evaluate, "
                         "not by the real-valued loop evaluator")
    cache = {} if cache is None else cache
    report = Report() if report is None else report
    loop_f = _Entries(f, space, scheme, cache, loop, report)
    values = None
    for segment in space.segments(start, stop):
        array = space.arrays[segment.position]
        step = steps[segment.position]
        if step is None:
            step = auto_step(scheme, array.dtype)
        bounds = None if loop.bounds is None else loop.bounds[segment.position]
        indices = space.multi_indices(segment.position, segment.start, segment.stop)
        for k, index in enumerate(indices):
            flat = segment.offset + k
            derivative = loop_f.derivative(array, index, step, steps[segment.position] is None,
                                           flat, bounds)
            if values is None:
                values = np.empty((stop - start,) + np.shape(derivative), dtype=np.float64)
            values[flat - start] = derivative
    return np.empty(0) if values is None else values


class _Entries:
    """The loop evaluator's work on one entry: perturb, evaluate, restore, combine."""

    def __init__(self, f, space: ParamSpace, scheme: Scheme, cache: dict, loop: LoopOptions,
                 report: Report):
        self.f, self.space, self.scheme, self.cache = f, space, scheme, cache
        self.loop, self.report = loop, report
        self.check = checked_output if loop.vector else None

    def center(self):
        if "center" not in self.cache:
            self.cache["center"] = loss_at(self.f, self.space, "the unperturbed x", self.check)
        return self.cache["center"]

    def derivative(self, array, index, h, relative, flat, bounds):
        original = array[index]
        base = float(original)
        if relative:
            h = h * max(1.0, abs(base))
        scheme, limits = self.scheme, None
        if bounds is not None:
            limits = (float(bounds[0][index]), float(bounds[1][index]))
            scheme, h = _inside(self.scheme, base, h, limits, self.space, flat)
        values, stored = {}, {}
        point = _Point(self, array, index, original, base, h, relative, flat, values, stored)
        try:
            for m in scheme.multiples:
                point.evaluate(m)
            failed = any(v is None for v in values.values())
            if failed and self.loop.on_failure == "one-sided":
                scheme = self._fallback(point, limits)
        finally:
            array[index] = original
        if scheme is None or (failed and self.loop.on_failure == "nan"):
            return self._nan()
        return self._combine(scheme, point)

    def _combine(self, scheme, point):
        losses = [point.values[m] for m in scheme.multiples]
        center = self.center() if scheme.uses_center else None
        if point.relative:
            return scheme.combine_stored(losses, center, [point.stored[m] for m in scheme.multiples])
        return scheme.combine(losses, center, point.h)

    def _fallback(self, point, limits):
        """A side failed (or lies outside the bounds): the one-sided scheme to use, or None.

        Second order (``x_i + s*h`` and ``x_i + 2s*h`` with f(x)) where the scheme is of
        order 2 or more and both points evaluate inside the bounds; first order otherwise.
        """
        values = point.values
        order = 1 if self.scheme.order < 2 else 2
        # a side whose two points have both evaluated already (central4) goes first
        for side in sorted((1, -1), key=lambda s: values.get(2 * s) is None):
            if side not in values and values.get(-side, 0) is None and point.inside(side, limits):
                point.evaluate(side)   # the side a forward scheme (or a bound) left out
            if values.get(side) is None:
                continue
            if order == 2 and 2 * side not in values and point.inside(2 * side, limits):
                point.evaluate(2 * side)
            if order == 2 and values.get(2 * side) is not None:
                return one_sided(2, side)
            return one_sided(1, side)
        return None

    def _evaluate(self, array, index, original, base, offset, relative, flat, m):
        array[index] = base + offset
        stored = float(array[index]) - base
        if stored == 0:
            array[index] = original
            raise ValueError(
                f"{self.space.describe(flat)} = {base!r} + {offset!r} rounds back to "
                f"{base!r} in {array.dtype}: nothing would be perturbed. Use a larger `h`, "
                "h='auto' (a step relative to |x_i| and the dtype), or float64")
        if not relative:
            self.report.step_deviation = max(self.report.step_deviation,
                                              abs(stored - offset) / abs(offset))
        where = lambda: _describe(self.space, flat, m)  # noqa: E731
        if self.loop.on_failure == "raise":
            return loss_at(self.f, self.space, where, self.check), stored
        try:
            return loss_at(self.f, self.space, where, self.check, failures=True), stored
        except EvaluationFailed as failed:
            error = failed.__cause__
            self.report.failures.append((flat, m, type(error).__name__, str(error)))
            return None, stored

    def _nan(self):
        if self.loop.vector:
            return np.full(np.shape(self.center()), np.nan)
        return math.nan


class _Point:
    """One entry's evaluations: ``values[m]`` (None where `f` failed), ``stored[m]``."""

    def __init__(self, entries, array, index, original, base, h, relative, flat, values, stored):
        self.entries, self.array, self.index, self.original = entries, array, index, original
        self.base, self.h, self.relative, self.flat = base, h, relative, flat
        self.values, self.stored = values, stored

    def evaluate(self, m):
        self.values[m], self.stored[m] = self.entries._evaluate(
            self.array, self.index, self.original, self.base, m * self.h, self.relative,
            self.flat, m)

    def inside(self, m, limits):
        return limits is None or limits[0] <= self.base + m * self.h <= limits[1]


def _inside(scheme, base, h, limits, space, flat):
    """The scheme and step whose points stay within the bounds (`fit_to_bounds`)."""
    lower, upper = limits
    fitted, step = fit_to_bounds(scheme, base, h, lower, upper)
    if step <= 0:
        raise ValueError(f"{space.describe(flat)} has no room to move within its bounds "
                         f"[{lower!r}, {upper!r}]")
    if step != h and base + step == base:
        raise ValueError(
            f"{space.describe(flat)} = {base!r}: the step, shrunk to {step!r} to fit its "
            f"bounds [{lower!r}, {upper!r}], is lost to rounding (x_i + step == x_i), so no "
            "derivative can be taken there; widen the bounds around it")
    return fitted, step


def _describe(space: ParamSpace, flat: int, m: int) -> str:
    return f"{space.describe(flat)} (x_i {'+' if m > 0 else '-'} {abs(m)}*h)"


