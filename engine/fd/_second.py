"""Second differences: the pair index space of a Hessian and the evaluator of its entries.

A Hessian of n entries has n(n+1)/2 distinct entries (i <= j), each computed once and
mirrored. Task index k enumerates them row by row over the upper triangle, diagonal
included: k = 0 is (0, 0), k = 1 is (0, 1), ..., k = n is (1, 1). Each task's value
depends only on its index (and `f`, `x`), so a chunked, parallel run gives the same
bits at any worker count.

Every entry is a difference over a small *stencil*: per coordinate, the multiples of
its step at which `f` is evaluated. Off the diagonal, two multiples (a0, a1) for i and
(b0, b1) for j give the cross difference

    H_ij ~ ((f(a1, b1) - f(a1, b0)) - (f(a0, b1) - f(a0, b0))) / ((a1 - a0) h_i (b1 - b0) h_j)

and on the diagonal three multiples m0 < m1 < m2 give the divided second difference
``2 ((f2 - f1) / d2 - (f1 - f0) / d1) / (d1 + d2)`` over the spacings d1, d2. The central
scheme uses (-1, 1) and (-1, 0, 1): four evaluations off the diagonal, two on it, with
f(x) shared, 2n^2 + 1 in all. The forward scheme uses (0, 1) and (0, 1, 2): with f(x)
and the n values f(x + h_i e_i) computed first (the "shifts" phase, its own task index
space of n entries), each entry then costs one evaluation, 1 + n + n(n+1)/2 in all.
Near a bound, and after a failed evaluation with ``on_failure="one-sided"``, the
one-sided stencils (0, 1) / (-1, 0) and (0, 1, 2) / (-2, -1, 0) take over.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any, Callable

import numpy as np

from ._calling import ON_FAILURE, EvaluationFailed, LoopOptions, Report, checked_output, loss_at
from ._evaluators import loop_evaluate
from ._schemes import Scheme
from ._space import ParamSpace

__all__ = ["PairOptions", "pair_evaluate", "pair_count", "pair_of", "pairs_to_matrix",
           "second_step", "evaluation_count", "describe_point",
           "gradient_rows_evaluate", "SECOND_SCHEMES", "SHIFTS", "PAIRS"]

SECOND_SCHEMES = ("central", "forward")
SHIFTS, PAIRS = "shifts", "pairs"   # the phases: f(x + h_i e_i) for each i (forward), the entries
# h="auto": eps ** (1 / root) * max(1, |x_i|). A second difference's truncation error is
# O(h^2) (central) or O(h) (forward) and its rounding error O(eps |f| / h^2); the sum is
# smallest near h ~ eps^(1/4) and eps^(1/3) respectively.
_ROOTS = {"central": 4, "forward": 3}
_VECTOR = LoopOptions(vector=True)
# Per coordinate, the stencils in the order they are tried: the scheme's own first.
_CROSS = {"central": ((-1, 1), (0, 1), (-1, 0)), "forward": ((0, 1), (-1, 0))}
_DIAGONAL = {"central": ((-1, 0, 1), (0, 1, 2), (-2, -1, 0)), "forward": ((0, 1, 2), (-2, -1, 0))}


@dataclass(frozen=True)
class PairOptions:
    """What the pair evaluator does beyond the scheme's formula.

    Attributes
    ----------
    on_failure : {"raise", "one-sided", "nan"}
        An evaluation of `f` that raises an ``Exception`` or returns a non-finite value:
        ends the call; makes the entry take the next stencil (in the order of `_CROSS`
        and `_DIAGONAL`) whose points all evaluate, NaN if none does; makes the entry NaN.
    bounds : tuple of (lower, upper) arrays, or None
        Per parameter array, bounds broadcast to its shape; `f` is never evaluated
        outside them (a coordinate takes the first stencil that stays inside).
    phase : {"pairs", "shifts"}
        ``"pairs"``: task k is entry `pair_of(k, n)` of the Hessian. ``"shifts"`` (forward
        scheme only): task i is f(x + h_i e_i), NaN where it failed.
    shifts : tuple of float, or None
        The forward scheme's pairs phase: the shifts phase's values, one per entry.
    """

    on_failure: str = ON_FAILURE[0]
    bounds: tuple | None = None
    phase: str = PAIRS
    shifts: tuple | None = None


def pair_count(n: int) -> int:
    """The number of distinct entries of an (n, n) symmetric matrix: n(n+1)/2."""
    return n * (n + 1) // 2


def pair_of(k: int, n: int) -> tuple[int, int]:
    """The entry ``(i, j)``, ``i <= j``, of task index `k` over the upper triangle of (n, n)."""
    # Row i starts at k = i*n - i*(i-1)/2, so i is the largest integer with
    # (2n + 1 - 2i)^2 >= (2n + 1)^2 - 8k: exact in integers, for any n.
    d = (2 * n + 1) ** 2 - 8 * k
    root = math.isqrt(d)
    i = (2 * n + 1 - (root if root * root == d else root + 1)) // 2
    return i, i + k - (i * n - i * (i - 1) // 2)


def pairs_to_matrix(values: np.ndarray, n: int) -> np.ndarray:
    """The (n, n) float64 matrix whose upper triangle, row by row, is `values`, mirrored."""
    matrix = np.empty((n, n), dtype=np.float64)
    rows, cols = np.triu_indices(n)
    matrix[rows, cols] = values
    matrix[cols, rows] = values
    return matrix


def evaluation_count(n: int, scheme: str) -> int:
    """Evaluations of `f` for an (n, n) Hessian without bounds or failures."""
    return 2 * n * n + 1 if scheme == "central" else 1 + n + pair_count(n)


def second_step(scheme: Scheme, dtype: Any) -> float:
    """The relative step of ``h="auto"`` for second differences: eps^(1/4) (central) or
    eps^(1/3) (forward) of `dtype`, to be multiplied by ``max(1, |x_i|)``."""
    return float(np.finfo(dtype).eps) ** (1.0 / _ROOTS[scheme.name])


def pair_evaluate(f: Callable[[Any], Any], space: ParamSpace, steps: list[float | None],
                  scheme: Scheme, start: int, stop: int, cache: dict | None = None,
                  options: PairOptions = PairOptions(), report: Report | None = None
                  ) -> np.ndarray:
    """Hessian entries (or the forward scheme's shifts) for the task indices ``start .. stop-1``.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``, called with ``space.structure``.
    space : ParamSpace
        The arrays of `x`, perturbed in place and restored by assignment after every
        evaluation (also when `f` raises).
    steps : list of float or None
        One step per array of `x`; None is ``h="auto"``: ``second_step(scheme, dtype) *
        max(1, |x_i|)``, the differences divided by the steps actually stored.
    scheme : Scheme
        ``"central"`` or ``"forward"``.
    start, stop : int
        A range of the task index space: `pair_count(space.size)` tasks for the pairs
        phase, `space.size` for the shifts phase.
    cache : dict, optional
        Kept for one call: ``cache["center"]`` is f(x), computed here if absent.
    options : PairOptions
    report : Report, optional
        Collects failed evaluations as ``(i, ((i, m_i), (j, m_j)), error type, message)``
        and the largest relative deviation of a stored step from a numeric `h`.

    Returns
    -------
    ndarray, float64, shape (stop - start,)

    Raises
    ------
    ValueError
        If ``x_i + m*h_i`` rounds back to ``x_i``, or a coordinate has no stencil
        within its bounds.
    """
    pairs = _Pairs(f, space, steps, scheme, {} if cache is None else cache, options,
                   Report() if report is None else report)
    if options.phase == SHIFTS:
        return np.array([pairs.shift(i) for i in range(start, stop)], dtype=np.float64)
    n = space.size
    return np.array([pairs.entry(*pair_of(k, n)) for k in range(start, stop)], dtype=np.float64)


@dataclass(frozen=True)
class _Coordinate:
    array: np.ndarray
    index: tuple
    original: Any      # the element as stored, put back by assignment
    base: float
    h: float
    relative: bool
    lower: float
    upper: float


class _Pairs:
    """The pair evaluator's work on one chunk: stencils, evaluations, restoring, combining."""

    def __init__(self, f, space: ParamSpace, steps, scheme: Scheme, cache: dict,
                 options: PairOptions, report: Report):
        self.f, self.space, self.steps, self.scheme = f, space, steps, scheme
        self.cache, self.options, self.report = cache, options, report
        self.coordinates: dict[int, _Coordinate] = {}

    def coordinate(self, i: int) -> _Coordinate:
        if i not in self.coordinates:
            position, index = self.space.locate(i)
            array = self.space.arrays[position]
            original = array[index]
            base = float(original)
            step = self.steps[position]
            relative = step is None
            h = second_step(self.scheme, array.dtype) * max(1.0, abs(base)) if relative else step
            lower, upper = -math.inf, math.inf
            if self.options.bounds is not None:
                low, up = self.options.bounds[position]
                lower, upper = float(low[index]), float(up[index])
            self.coordinates[i] = _Coordinate(array, index, original, base, h, relative,
                                              lower, upper)
        return self.coordinates[i]

    def stencils(self, i: int, table: dict) -> list[tuple[int, ...]]:
        """The stencils of coordinate i that stay within its bounds, in the order tried."""
        c = self.coordinate(i)
        inside = [s for s in table[self.scheme.name]
                  if all(c.lower <= c.base + m * c.h <= c.upper for m in s)]
        if not inside:
            raise ValueError(
                f"{self.space.describe(i)} = {c.base!r} has no room for a second difference "
                f"within its bounds [{c.lower!r}, {c.upper!r}] with step {c.h!r}: every "
                "stencil needs 2 steps on one side or 1 on each. Pass a smaller `h` or "
                "wider bounds")
        return inside

    def offset(self, i: int, m: int) -> float:
        """The step multiple m of coordinate i as used in the formula: stored, or nominal."""
        c = self.coordinate(i)
        if m == 0:
            return 0.0
        stored = float(c.array.dtype.type(c.base + m * c.h)) - c.base
        if stored == 0:
            raise ValueError(
                f"{self.space.describe(i)} = {c.base!r} + {m * c.h!r} rounds back to {c.base!r} "
                f"in {c.array.dtype}: nothing would be perturbed. Use a larger `h`, h='auto' "
                "(a step relative to |x_i| and the dtype), or float64")
        if c.relative:
            return stored
        self.report.step_deviation = max(self.report.step_deviation,
                                         abs(stored - m * c.h) / abs(m * c.h))
        return m * c.h

    # -- the two phases ---------------------------------------------------------------------

    def shift(self, i: int) -> float:
        """f(x + d h_i e_i), d the first multiple of i's forward stencil; NaN if it failed."""
        d = self.stencils(i, _DIAGONAL)[0][1]
        value = self.value({}, ((i, d),))
        return math.nan if value is None else value

    def entry(self, i: int, j: int) -> float:
        """H_ij from the first stencil tried whose points all evaluate; NaN if none does.

        Only the first stencil within the bounds is tried, but with ``on_failure="one-sided"``.
        """
        memo = self._shared(i, j)
        if i == j:
            tries = [(s, [((i, m),) if m else () for m in s]) for s in self.stencils(i, _DIAGONAL)]
        else:
            tries = [((a, b), [_point(i, p, j, q) for p in a[::-1] for q in b[::-1]])
                     for a, b in product(self.stencils(i, _CROSS), self.stencils(j, _CROSS))]
        if self.options.on_failure != "one-sided":
            tries = tries[:1]
        for stencil, points in tries:
            values = [self.value(memo, point) for point in points]
            if any(v is None for v in values):
                continue
            return self._diagonal(i, stencil, values) if i == j else self._cross(i, j, stencil, values)
        return math.nan

    def _shared(self, i: int, j: int) -> dict:
        """The forward scheme's shifts of i and j, from its first phase (None where they failed)."""
        memo = {}
        if self.options.shifts is not None:
            for k in {i, j}:
                d = self.stencils(k, _DIAGONAL)[0][1]
                value = self.options.shifts[k]
                memo[((k, d),)] = None if math.isnan(value) else value
        return memo

    def _diagonal(self, i: int, stencil: tuple[int, int, int], values: list[float]) -> float:
        p0, p1, p2 = (self.offset(i, m) for m in stencil)
        f0, f1, f2 = values
        d1, d2 = p1 - p0, p2 - p1
        return 2.0 * ((f2 - f1) / d2 - (f1 - f0) / d1) / (d1 + d2)

    def _cross(self, i: int, j: int, stencil: tuple, values: list[float]) -> float:
        (a0, a1), (b0, b1) = stencil
        f11, f10, f01, f00 = values
        di = self.offset(i, a1) - self.offset(i, a0)
        dj = self.offset(j, b1) - self.offset(j, b0)
        return ((f11 - f10) - (f01 - f00)) / (di * dj)

    # -- evaluations ----------------------------------------------------------------------------

    def center(self) -> float:
        if "center" not in self.cache:
            self.cache["center"] = loss_at(self.f, self.space, "the unperturbed x")
        return self.cache["center"]

    def value(self, memo: dict, point: tuple) -> float | None:
        """f at `point` (``((i, m_i), ...)``, nonzero multiples), once per task; None if it failed."""
        if not point:
            return self.center()
        if point not in memo:
            memo[point] = self._evaluate(point)
        return memo[point]

    def _evaluate(self, point: tuple) -> float | None:
        for i, m in point:
            self.offset(i, m)   # refuses a step that rounds away, before f is called
        where = lambda: describe_point(self.space, point)  # noqa: E731
        try:
            for i, m in point:
                c = self.coordinate(i)
                c.array[c.index] = c.base + m * c.h
            if self.options.on_failure == "raise":
                return loss_at(self.f, self.space, where)
            try:
                return loss_at(self.f, self.space, where, failures=True)
            except EvaluationFailed as failed:
                error = failed.__cause__
                self.report.failures.append((point[0][0], point, type(error).__name__, str(error)))
                return None
        finally:
            for i, _ in point:
                c = self.coordinate(i)
                c.array[c.index] = c.original


def _point(i: int, p: int, j: int, q: int) -> tuple:
    return tuple((k, m) for k, m in ((i, p), (j, q)) if m)


def describe_point(space: ParamSpace, point: tuple) -> str:
    """A perturbed point, e.g. ``x[0] + 1*h, x[3] - 1*h``."""
    return ", ".join(f"{space.describe(i)} {'+' if m > 0 else '-'} {abs(m)}*h" for i, m in point)


def gradient_rows_evaluate(grad: Callable[[Any], Any], space: ParamSpace, steps: list[float | None],
                           scheme: Scheme, start: int, stop: int, cache: dict | None = None,
                           options: LoopOptions = _VECTOR,
                           report: Report | None = None) -> np.ndarray:
    """Rows i = start .. stop-1 of the derivative of a gradient callable: d grad / d x_i.

    The loop evaluator over `grad` (a vector `f`), after checking that ``cache["center"]``,
    ``grad(x)``, has one entry per entry of `x`, so that a gradient of the wrong size is
    refused before anything is perturbed.

    Returns
    -------
    ndarray, float64, shape (stop - start, space.size)

    Raises
    ------
    ValueError
        If ``grad(x)`` does not have ``space.size`` entries.
    """
    cache = {} if cache is None else cache
    if "center" not in cache:
        cache["center"] = loss_at(grad, space, "the unperturbed x", checked_output)
    size = int(np.size(cache["center"]))
    if size != space.size:
        raise ValueError(f"`grad` must return one derivative per entry of `x` ({space.size} values, "
                         f"any shape), got {size} (shape {np.shape(cache['center'])}) at the "
                         "unperturbed x")
    rows = loop_evaluate(grad, space, steps, scheme, start, stop, cache, options, report)
    return rows.reshape(stop - start, space.size)

