"""Richardson extrapolation with an error estimate: several steps per entry, one batch.

For each entry the evaluator takes central differences at the steps
``h_k = base * max(1, |x_i|) * ratio**-k`` (k = 0 .. levels-1), all in the same task, and
returns them with the rounding each carries. `extrapolate` (run by the caller on every
row at once, so the numbers do not depend on where a row was computed) combines them.

Central differences have the error expansion ``D(h) = f' + c1 h**2 + c2 h**4 + ...``.
On each window of ``terms + 1`` consecutive steps, ``terms`` rounds of
``(r**2j D(h/r) - D(h)) / (r**2j - 1)`` remove the terms up to ``h**(2 terms)``. Each
window's *error estimate* is the change made by its last round (what the last term
removed: an estimate of the next) plus ten times the rounding carried through the
rounds (``eps * (|f(x+h)| + |f(x-h)|) / 2h`` per difference, the rounds' weights applied
to it). The window with the smallest estimate gives the value and the error. The
estimate is a heuristic (as DERIVEST's and `scipy.differentiate`'s are): steps so large
that a periodic `f` aliases can fool it, which is why the largest step is 1/8 of
``max(1, |x_i|)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._calling import EvaluationFailed, Report, loss_at
from ._schemes import Scheme
from ._space import ParamSpace

__all__ = ["RichardsonOptions", "richardson_evaluate", "extrapolate", "RICHARDSON"]

RICHARDSON = "richardson"   # the evaluator's name in engine.run._job.EVALUATORS
_ROUNDING_SAFETY = 10.0     # the rounding term of the estimate, in units of its model


@dataclass(frozen=True)
class RichardsonOptions:
    """The steps of the extrapolation.

    Attributes
    ----------
    levels : int
        Central differences per entry (2 evaluations of `f` each).
    base : float
        The largest step, relative to ``max(1, |x_i|)``.
    ratio : float
        Each step is the previous one divided by `ratio`.
    terms : int
        Rounds of extrapolation per window (error terms h**2 .. h**(2 terms) removed).
    """

    levels: int = 12
    base: float = 0.125
    ratio: float = 2.0
    terms: int = 3

    def check(self) -> None:
        """Raise `ValueError` (naming the field) unless the options make sense."""
        if not (isinstance(self.terms, int) and self.terms >= 1):
            raise ValueError(f"`terms` must be an int >= 1, got {self.terms!r}")
        if not (isinstance(self.levels, int) and self.levels >= self.terms + 2):
            raise ValueError(f"`levels` must be an int >= terms + 2 = {self.terms + 2} (two "
                             f"windows to compare at least), got {self.levels!r}")
        for name in ("base", "ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
        if self.ratio <= 1:
            raise ValueError(f"`ratio` must be > 1, got {self.ratio!r}")


def richardson_evaluate(
    f: Callable[[Any], Any],
    space: ParamSpace,
    steps: list,
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    options: RichardsonOptions | None = None,
    report: Report | None = None,
) -> np.ndarray:
    """Central differences at every step of `options`, for the entries ``start .. stop-1``.

    `steps` and `scheme` are not used (the steps are the options'). Each entry is
    restored by assignment after each evaluation. A step at which `f` returns a
    non-finite value (or raises `FloatingPointError`) gives NaN and is left out by
    `extrapolate`; any other exception from `f` ends the call.

    Returns
    -------
    ndarray, float64, shape (stop - start, 2 * levels)
        Per entry: the `levels` differences, then the rounding of each.
    """
    options = RichardsonOptions() if options is None else options
    rows = np.empty((stop - start, 2 * options.levels), dtype=np.float64)
    eps = float(np.finfo(np.float64).eps)
    for segment in space.segments(start, stop):
        array = space.arrays[segment.position]
        for k, index in enumerate(space.multi_indices(segment.position, segment.start,
                                                      segment.stop)):
            flat = segment.offset + k
            original = array[index]
            base = float(original)
            row = rows[flat - start]
            try:
                for level in range(options.levels):
                    h = options.base * max(1.0, abs(base)) / options.ratio ** level
                    up, s_up = _at(f, space, array, index, base, h, flat)
                    down, s_down = _at(f, space, array, index, base, -h, flat)
                    width = s_up - s_down
                    row[level] = (up - down) / width
                    row[options.levels + level] = eps * (abs(up) + abs(down)) / width
            finally:
                array[index] = original
    return rows


def _at(f, space, array, index, base, offset, flat):
    """``f`` with entry `index` at ``base + offset``: (value or NaN, the step stored)."""
    array[index] = base + offset
    stored = float(array[index]) - base
    if stored == 0:
        raise ValueError(f"{space.describe(flat)} = {base!r} + {offset!r} rounds back to "
                         f"{base!r} in {array.dtype}: use a larger `base` or float64")
    where = lambda: f"{space.describe(flat)} (x_i {'+' if offset > 0 else '-'} {abs(offset):.3g})"  # noqa: E731
    try:
        return loss_at(f, space, where, failures=True), stored
    except EvaluationFailed as failed:
        if isinstance(failed.__cause__, FloatingPointError):
            return np.nan, stored
        raise failed.__cause__ from None


def extrapolate(rows: np.ndarray, options: RichardsonOptions) -> tuple[np.ndarray, np.ndarray]:
    """The extrapolated derivative and its error estimate for every row of `richardson_evaluate`.

    Returns
    -------
    value, error : ndarray, float64, shape (len(rows),)
        NaN and inf where no window had finite differences.
    """
    levels, terms, ratio = options.levels, options.terms, options.ratio
    differences, rounding = rows[:, :levels], rows[:, levels:]
    values, estimates = [], []
    for first in range(levels - terms):
        table = [differences[:, first + i] for i in range(terms + 1)]
        noise = [rounding[:, first + i] for i in range(terms + 1)]
        for j in range(1, terms + 1):
            r = ratio ** (2 * j)
            last = table[-1]
            table = [(r * table[i + 1] - table[i]) / (r - 1) for i in range(len(table) - 1)]
            noise = [(r * noise[i + 1] + noise[i]) / (r - 1) for i in range(len(noise) - 1)]
        values.append(table[-1])
        estimates.append(np.abs(table[-1] - last) + _ROUNDING_SAFETY * noise[-1])
    values, estimates = np.array(values), np.array(estimates)
    # a window must also agree with its neighbours: two windows agreeing by accident (a
    # noisy f) should not pass for a converged one
    spread = np.zeros_like(values)
    spread[:-1] = np.abs(values[1:] - values[:-1])
    spread[1:] = np.maximum(spread[1:], np.abs(values[1:] - values[:-1]))
    estimates = estimates + spread
    estimates[~(np.isfinite(estimates) & np.isfinite(values))] = np.inf
    best = np.argmin(estimates, axis=0)
    columns = np.arange(len(rows))
    value, error = values[best, columns], estimates[best, columns]
    value[~np.isfinite(error)] = np.nan
    return value, error
