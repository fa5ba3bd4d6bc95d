"""The grouped evaluator: one evaluation of `f` perturbs a whole group of columns at once.

A task is a group of structurally independent columns (`engine.fd._grouping`): every
column of group k is moved by its own step in the same evaluation, and since no row
depends on two of them, each changed row of ``f`` is the difference of one column. A
task returns an (m,) row: at every row some column of the group touches, that column's
derivative; 0 elsewhere.

Steps, per column of a group:

- forward: ``x_j + h`` and ``f(x)``; near an upper bound ``x_j - h`` (or the larger room),
  the loop evaluator's rule.
- central: ``x_j + h`` and ``x_j - h``; where one of them leaves the bounds, a one-sided
  second-order difference on the side with more room, ``x_j + s*h'`` and ``x_j + 2*s*h'``
  with ``h' = min(h, room / 2)`` and ``f(x)`` (SciPy's rule). The columns of one group each
  take their own side in the same two evaluations.

A fixed `h` is the teaching text's formula (the difference divided by the nominal step);
``h="auto"`` divides by the steps actually stored. With groups of one column, forward and
central without bounds give bit for bit the loop evaluator's numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._evaluators import ON_FAILURE, Report, _Failed, checked_output, loss_at
from ._grouping import Pattern
from ._schemes import Scheme, auto_step
from ._space import ParamSpace

__all__ = ["GroupedOptions", "grouped_evaluate", "GROUPED_SCHEMES"]

GROUPED_SCHEMES = ("forward", "central")
_FORWARD, _CENTRAL, _ONE_SIDED = 0, 1, 2     # the difference each column takes


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
        is replaced, column by column, by the other evaluation with ``f(x)`` (forward: by
        ``x_j - h`` where the bounds allow), else NaN; makes the group's entries NaN.
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
        self.kind, self.a, self.b = _plan(scheme.name, self.base, h, lower, upper, space, columns)
        self.lower, self.upper = lower, upper

    def into(self, row: np.ndarray) -> None:
        """Write the group's derivatives into its rows of `row`."""
        rows, owner = self.options.pattern.entries(self.columns)
        f1, s1 = self._evaluate(self.a, np.sign(self.a))
        f2, s2 = (None, None) if self.b is None else self._evaluate(
            self.b, np.where(self.kind == _CENTRAL, -1, 2 * np.sign(self.b)))
        if f1 is not None and (self.b is None or f2 is not None):
            row[rows] = self._combine(f1, f2, *self._divisors(s1, s2), rows, owner)
        elif self.options.on_failure == "one-sided":
            row[rows] = self._fallback(rows, owner, f1, s1, f2, s2)
        else:
            row[rows] = math.nan

    def _divisors(self, s1, s2):
        """The steps to divide by: stored for h="auto", else nominal."""
        a = np.where(self.relative, s1, self.a)
        b = None if s2 is None else np.where(self.relative, s2, self.b)
        return a, b

    def _combine(self, f1, f2, a, b, rows, owner) -> np.ndarray:
        kind = self.kind[owner]
        out = np.empty(rows.size)
        forward, central, one_sided = (kind == _FORWARD), (kind == _CENTRAL), (kind == _ONE_SIDED)
        if forward.any() or one_sided.any():
            f0 = self._center()
        if forward.any():
            r, o = rows[forward], owner[forward]
            out[forward] = (f1[r] - f0[r]) / a[o]
        if central.any():
            r, o = rows[central], owner[central]
            out[central] = (f1[r] - f2[r]) / (a[o] - b[o])
        if one_sided.any():
            r, o = rows[one_sided], owner[one_sided]
            p, q = a[o], b[o]   # three points 0, p, q on one side: the second-order weights
            out[one_sided] = (-(p + q) / (p * q) * f0[r] + q / (p * (q - p)) * f1[r]
                              - p / (q * (q - p)) * f2[r])
        return out

    def _fallback(self, rows, owner, f1, s1, f2, s2) -> np.ndarray:
        """Per entry, the evaluation that survived with f(x), else (forward) x_j - h, else NaN."""
        f0 = self._center()
        a, b = self._divisors(s1, s2)
        if f1 is not None:
            return (f1[rows] - f0[rows]) / a[owner]
        if f2 is not None:
            return (f2[rows] - f0[rows]) / b[owner]
        out = np.full(rows.size, math.nan)
        if self.b is None:   # forward: the other side, for the columns the bounds allow
            back = -self.a
            inside = np.ones(back.size, bool) if self.lower is None else (
                (self.base + back >= self.lower) & (self.base + back <= self.upper))
            f3, s3 = self._evaluate(np.where(inside, back, 0.0), -np.sign(self.a), moved=inside)
            if f3 is not None:
                step = np.where(self.relative, s3, back)
                take = inside[owner]
                out[take] = (f3[rows[take]] - f0[rows[take]]) / step[owner[take]]
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
            except _Failed as failed:
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


def _plan(scheme: str, base, h, lower, upper, space: ParamSpace, columns):
    """Per column: its difference (`_FORWARD`, `_CENTRAL`, `_ONE_SIDED`) and its two offsets
    (the second None for the forward scheme)."""
    n = base.size
    if scheme not in GROUPED_SCHEMES:
        raise ValueError(f"grouped (sparse) differences take `scheme` in {GROUPED_SCHEMES}, got {scheme!r}")
    if lower is None:
        kind = np.full(n, _FORWARD if scheme == "forward" else _CENTRAL)
        return kind, h.copy(), (None if scheme == "forward" else -h)
    up, down = upper - base, base - lower
    room = np.maximum(up, down)
    if (room <= 0).any():
        j = int(np.flatnonzero(room <= 0)[0])
        raise ValueError(f"{space.describe(int(columns[j]))} has no room to move within its bounds "
                         f"[{float(lower[j])!r}, {float(upper[j])!r}]")
    side = np.where(up >= down, 1.0, -1.0)
    if scheme == "forward":
        a = np.where(base + h <= upper, h, np.where(base - h >= lower, -h, side * room))
        return np.full(n, _FORWARD), a, None
    fits = (base + h <= upper) & (base - h >= lower)
    short = np.minimum(h, room / 2)
    a = np.where(fits, h, side * short)
    b = np.where(fits, -h, 2 * side * short)
    return np.where(fits, _CENTRAL, _ONE_SIDED), a, b
