"""The grouped evaluator: one evaluation of `f` perturbs a whole group of columns at once.

A task is a group of structurally independent columns (`engine.fd._grouping`): every
column of group k is moved by its own step in the same evaluation, and since no row
depends on two of them, each changed row of ``f`` is the difference of one column. A
task returns an (m,) row: at every row some column of the group touches, that column's
derivative; 0 elsewhere.

Steps, per column of a group: the loop evaluator's, entry by entry. Away from bounds the
scheme itself; near a bound the scheme and step of `engine.fd._schemes.fit_to_bounds` (the
one-sided scheme of the same order toward the side with room, or a step shrunk to fit),
so the columns of one group each take their own side in the same evaluations. The
differences are the schemes' own `combine` (nominal h: the teaching text's formula) and
`combine_stored` (``h="auto"``: the steps actually stored), evaluated on each column's
rows: with groups of one column, or for an `f` whose each output is computed from its
own inputs alone, the numbers are bit for bit the loop evaluator's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._calling import ON_FAILURE, EvaluationFailed, Report, checked_output, loss_at
from ._evaluators import _inside
from ._grouping import Pattern
from ._schemes import SCHEMES, Scheme, auto_step
from ._space import ParamSpace

__all__ = ["GroupedOptions", "grouped_evaluate", "GROUPED_SCHEMES"]

GROUPED_SCHEMES = tuple(SCHEMES)   # the real-valued schemes: forward, central, central4


@dataclass(frozen=True, eq=False)
class GroupedOptions:
    """What the grouped evaluator needs beyond the scheme: the pattern and the groups.

    Attributes
    ----------
    pattern : Pattern
        The Jacobian's structure, shape (m, n), n the flat size of `x`.
    group_ptr, group_columns : ndarray, int64
        Group k is ``group_columns[group_ptr[k]:group_ptr[k + 1]]``.
    on_failure : {"raise", "one-sided", "nan"}
        An evaluation of `f` that fails concerns every column of its group: ends the call;
        is replaced by the group's first evaluation that succeeded, as a first-order
        difference with ``f(x)`` (forward: by ``x_j - h`` where the bounds allow), else
        NaN; makes the group's entries NaN.
    bounds : (lower, upper), ndarray float64 of shape (n,) each, or None
        `f` is never evaluated outside them.
    """

    pattern: Pattern
    group_ptr: np.ndarray
    group_columns: np.ndarray
    on_failure: str = ON_FAILURE[0]
    bounds: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n_groups(self) -> int:
        return int(self.group_ptr.size - 1)


def grouped_evaluate(
    f: Callable[[Any], Any],
    space: ParamSpace,
    steps: list[float | None],
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    options: GroupedOptions | None = None,
    report: Report | None = None,
) -> np.ndarray:
    """The differences of the groups ``start .. stop-1``, one (m,) row per group.

    `space`'s arrays are perturbed in place, a group at a time, and restored by
    assignment to their exact original values, also when `f` raises. `cache` holds
    ``f(x)`` (``cache["center"]``) for the differences that use it.

    Returns
    -------
    ndarray, float64, shape (stop - start, m)
        Row k - start holds, at each row i of the pattern touched by a column j of group
        k, the derivative of ``f_i`` with respect to ``x_j``; 0 at the other rows.

    Raises
    ------
    ValueError
        If `space` does not have the pattern's n entries, `f` does not return m values,
        ``x_j + h`` rounds back to ``x_j``, or an entry has no room inside its bounds.
    """
    cache = {} if cache is None else cache
    report = Report() if report is None else report
    m, n = options.pattern.shape
    if space.size != n:
        raise ValueError(f"`sparsity` has {n} columns but `x` has {space.size} entries")
    out = np.zeros((stop - start, m), dtype=np.float64)
    for k in range(start, stop):
        columns = options.group_columns[options.group_ptr[k]:options.group_ptr[k + 1]]
        if columns.size:
            _Group(f, space, steps, scheme, cache, options, report, k, columns).into(out[k - start])
    return out


class _Group:
    """One group's evaluations: place its columns, evaluate, restore, combine per row."""

    def __init__(self, f, space: ParamSpace, steps, scheme: Scheme, cache: dict,
                 options: GroupedOptions, report: Report, number: int, columns: np.ndarray):
        self.f, self.space, self.cache, self.options, self.report = f, space, cache, options, report
        self.number, self.columns = number, columns
        self.places = _places(space, columns)
        self.saved = [np.array(space.arrays[p][i], copy=True) for p, _, i in self.places]
        self.base = np.concatenate([np.asarray(space.arrays[p][i], dtype=np.float64).reshape(-1)
                                    for p, _, i in self.places])
        h, self.relative = _steps(space, steps, scheme, self.places, self.base)
        bounds = options.bounds
        lower, upper = (None, None) if bounds is None else (bounds[0][columns], bounds[1][columns])
        self.schemes, self.which, self.h = _plan(scheme, self.base, h, lower, upper, space, columns)
        self.multiples = np.array([self.schemes[w].multiples for w in self.which.tolist()])
        self.lower, self.upper = lower, upper

    def into(self, row: np.ndarray) -> None:
        """Write the group's derivatives into its rows of `row`."""
        rows, owner = self.options.pattern.entries(self.columns)
        values, stored = [], []
        for k in range(self.multiples.shape[1]):   # every column has as many points
            multiples = self.multiples[:, k]
            value, steps = self._evaluate(multiples * self.h, multiples)
            values.append(value)
            stored.append(steps)
        if all(value is not None for value in values):
            row[rows] = self._combine(values, stored, rows, owner)
        elif self.options.on_failure == "one-sided":
            row[rows] = self._fallback(rows, owner, values, stored)
        else:
            row[rows] = math.nan

    def _combine(self, values, stored, rows, owner) -> np.ndarray:
        """Each entry by its column's scheme: `combine` with h, or `combine_stored` (h="auto")."""
        out = np.empty(rows.size)
        kind = self.which[owner] * 2 + self.relative[owner]
        for key in np.unique(kind).tolist():
            scheme, relative = self.schemes[key // 2], bool(key % 2)
            take = kind == key
            r, o = rows[take], owner[take]
            losses = [value[r] for value in values]
            center = self._center()[r] if scheme.uses_center else None
            if relative:
                out[take] = scheme.combine_stored(losses, center, [steps[o] for steps in stored])
            else:
                out[take] = scheme.combine(losses, center, self.h[o])
        return out

    def _fallback(self, rows, owner, values, stored) -> np.ndarray:
        """The first evaluation that succeeded, with f(x), to first order; else (a forward
        scheme) ``x_j - h``, for the columns the bounds allow; else NaN."""
        f0 = self._center()
        for k, value in enumerate(values):
            if value is not None:
                step = np.where(self.relative, stored[k], self.multiples[:, k] * self.h)
                return (value[rows] - f0[rows]) / step[owner]
        out = np.full(rows.size, math.nan)
        if self.multiples.shape[1] == 1:   # forward: the other side
            back = -self.multiples[:, 0] * self.h
            inside = np.ones(back.size, bool) if self.lower is None else (
                (self.lower <= self.base + back) & (self.base + back <= self.upper))
            value, steps = self._evaluate(np.where(inside, back, 0.0), -self.multiples[:, 0],
                                          moved=inside)
            if value is not None:
                step = np.where(self.relative, steps, back)
                take = inside[owner]
                out[take] = (value[rows[take]] - f0[rows[take]]) / step[owner[take]]
        return out

    def _evaluate(self, offsets, multiples, moved=None):
        """``f`` with the group's columns at ``base + offsets``: (values, stored steps), or
        (None, stored) when it failed and failures are tolerated. `multiples` (of h, per
        column) name the side in the failures reported."""
        moved = np.ones(offsets.size, bool) if moved is None else moved
        stored = self._place(offsets)
        try:
            self._check_steps(offsets, stored, moved)
            where = lambda: self._describe(offsets, moved)  # noqa: E731
            if self.options.on_failure == "raise":
                return self._checked(loss_at(self.f, self.space, where, checked_output)), stored
            try:
                return self._checked(loss_at(self.f, self.space, where, checked_output,
                                             failures=True)), stored
            except EvaluationFailed as failed:
                error = failed.__cause__
                for column, m in zip(self.columns[moved].tolist(), multiples[moved].tolist()):
                    self.report.failures.append((column, int(m), type(error).__name__, str(error)))
                return None, stored
        finally:
            self._restore()

    def _place(self, offsets: np.ndarray) -> np.ndarray:
        """Move the columns to ``base + offsets``; the steps actually stored."""
        points = self.base + offsets
        stored = np.empty(offsets.size)
        for position, selected, index in self.places:
            array = self.space.arrays[position]
            array[index] = points[selected].reshape(np.shape(array[index]))
            stored[selected] = np.asarray(array[index], dtype=np.float64).reshape(-1) - self.base[selected]
        return stored

    def _restore(self) -> None:
        for (position, _, index), original in zip(self.places, self.saved):
            self.space.arrays[position][index] = original

    def _check_steps(self, offsets, stored, moved) -> None:
        lost = np.flatnonzero(moved & (stored == 0))
        if lost.size:
            j = int(lost[0])
            raise ValueError(
                f"{self.space.describe(int(self.columns[j]))} = {float(self.base[j])!r} + "
                f"{float(offsets[j])!r} rounds back to {float(self.base[j])!r}: nothing would be "
                "perturbed. Use a larger `h`, h='auto' (a step relative to |x_i| and the dtype), "
                "or float64")
        fixed = moved & ~self.relative
        if fixed.any():
            deviation = np.abs(stored[fixed] - offsets[fixed]) / np.abs(offsets[fixed])
            self.report.step_deviation = max(self.report.step_deviation, float(deviation.max()))

    def _checked(self, value: np.ndarray) -> np.ndarray:
        value = value.reshape(-1)
        m = self.options.pattern.shape[0]
        if value.size != m:
            raise ValueError(f"`f` returned {value.size} values but `sparsity` has {m} rows "
                             "(one per output of f, flattened in C order)")
        return value

    def _center(self) -> np.ndarray:
        if "center" not in self.cache:
            self.cache["center"] = loss_at(self.f, self.space, "the unperturbed x", checked_output)
        return self._checked(np.asarray(self.cache["center"], dtype=np.float64))

    def _describe(self, offsets, moved) -> str:
        """E.g. ``group 2 (x[2] + 0.0001, x[5] + 0.0001, x[8] + 0.0001 and 30 more)``."""
        shown = np.flatnonzero(moved)
        named = ", ".join(f"{self.space.describe(int(self.columns[j]))} {'+' if offsets[j] > 0 else '-'} "
                          f"{abs(float(offsets[j]))!r}" for j in shown[:3])
        more = f" and {shown.size - 3} more" if shown.size > 3 else ""
        return f"group {self.number} ({named}{more})"


def _places(space: ParamSpace, columns: np.ndarray) -> list[tuple[int, np.ndarray, Any]]:
    """Where the columns live: (array position, which of `columns`, index into that array)."""
    positions = np.searchsorted(space.offsets, columns, side="right") - 1
    places = []
    for position in np.unique(positions).tolist():
        selected = np.flatnonzero(positions == position)
        local = columns[selected] - space.offsets[position]
        shape = space.arrays[position].shape
        index = () if not shape else np.unravel_index(local, shape)
        places.append((position, selected, index))
    return places


def _steps(space: ParamSpace, steps, scheme: Scheme, places, base) -> tuple[np.ndarray, np.ndarray]:
    """Each column's step h and whether it is relative (``h="auto"``)."""
    h = np.empty(base.size)
    relative = np.zeros(base.size, bool)
    for position, selected, _ in places:
        step = steps[position]
        if step is None:
            relative[selected] = True
            h[selected] = auto_step(scheme, space.arrays[position].dtype) * np.maximum(
                1.0, np.abs(base[selected]))
        else:
            h[selected] = step
    return h, relative


def _plan(scheme: Scheme, base, h, lower, upper, space: ParamSpace, columns):
    """Per column, the scheme and step whose points stay within the bounds, as the loop
    evaluator chooses them: ``(schemes, which of them per column, steps)``."""
    if scheme.name not in GROUPED_SCHEMES:
        raise ValueError(f"grouped (sparse) differences take `scheme` in {GROUPED_SCHEMES}, "
                         f"got {scheme.name!r}")
    which = np.zeros(base.size, dtype=np.int64)
    if lower is None:
        return [scheme], which, h
    fits = np.ones(base.size, bool)
    for m in scheme.multiples:
        fits &= (lower <= base + m * h) & (base + m * h <= upper)
    schemes, names, h = [scheme], {scheme.name: 0}, h.copy()
    for j in np.flatnonzero(~fits).tolist():
        chosen, h[j] = _inside(scheme, float(base[j]), float(h[j]),
                               (float(lower[j]), float(upper[j])), space, int(columns[j]))
        if chosen.name not in names:
            names[chosen.name] = len(schemes)
            schemes.append(chosen)
        which[j] = names[chosen.name]
    return schemes, which, h
