"""Sparse Jacobians: the column groups of a sparsity pattern as the tasks of a `Jacobian`.

With ``sparsity=`` a Jacobian's tasks are not x's entries but groups of structurally
independent columns (`engine.fd._grouping`); each task perturbs its whole group at once
(`engine.fd._grouped`), so a tridiagonal Jacobian of any size costs 3 groups. The rows
of the groups are scattered into a ``scipy.sparse.csr_array`` holding exactly the
pattern's entries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..fd._evaluators import LoopOptions, loop_evaluate
from ..fd._grouped import GROUPED_SCHEMES, GroupedOptions
from ..fd._grouping import Pattern, check_groups, group_columns, members, scipy_sparse
from ..fd._space import ParamSpace

__all__ = ["Sparsity", "resolve_sparsity", "assemble_csr", "missed_nonzero"]


@dataclass(frozen=True, eq=False)
class Sparsity:
    """A checked pattern and its groups: what a sparse Jacobian's tasks are."""

    pattern: Pattern
    groups: np.ndarray        # the group of each column, 0..G-1
    group_ptr: np.ndarray     # group k is group_columns[group_ptr[k]:group_ptr[k + 1]]
    group_columns: np.ndarray

    @property
    def n_groups(self) -> int:
        return int(self.group_ptr.size - 1)

    def options(self, on_failure: str, bounds: tuple | None) -> GroupedOptions:
        return GroupedOptions(self.pattern, self.group_ptr, self.group_columns, on_failure, bounds)


def resolve_sparsity(sparsity: Any) -> Sparsity:
    """`sparsity` as a pattern with checked groups.

    Parameters
    ----------
    sparsity : scipy.sparse matrix or array, array_like of shape (m, n), or (pattern, groups)
        The pattern (its nonzeros), grouped by `engine.group_columns`; or a pair of a
        pattern and the group of each column (a tuple of two), checked.

    Raises
    ------
    ImportError
        Without SciPy (the result is a ``scipy.sparse.csr_array``), naming the extra.
    TypeError, ValueError
        A pattern that is not 2-D bools / numbers; groups that are not one integer per
        column, or that put two columns sharing a row into one group (naming them).
    """
    scipy_sparse()
    if isinstance(sparsity, tuple):
        if len(sparsity) != 2:
            raise ValueError("`sparsity` as a tuple must be (pattern, groups), got a tuple of "
                             f"{len(sparsity)} items; pass a dense pattern as an array")
        pattern = Pattern.from_any(sparsity[0], "sparsity")
        groups = check_groups(pattern, sparsity[1], "sparsity[1] (the groups)")
    else:
        pattern = Pattern.from_any(sparsity, "sparsity")
        groups = group_columns(pattern)
    ptr, columns = members(groups)
    return Sparsity(pattern, groups, ptr, columns)


def check_scheme(scheme: str) -> None:
    if scheme not in GROUPED_SCHEMES:
        raise ValueError(f"a sparse Jacobian (`sparsity=`) takes `scheme` in {GROUPED_SCHEMES}, "
                         f"got {scheme!r}")


def check_shape(sparsity: Sparsity, space: ParamSpace) -> None:
    """Raise ValueError unless the pattern has one column per entry of `x`."""
    m, n = sparsity.pattern.shape
    if n != space.size:
        raise ValueError(f"`sparsity` has shape ({m}, {n}): {n} columns, but `x` has {space.size} "
                         "entries (one column per entry of x, flattened in C order)")


def flat_bounds(bounds_per_array: tuple | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-array ``(lower, upper)`` pairs as two float64 vectors over x's flat index."""
    if bounds_per_array is None:
        return None
    lower = np.concatenate([np.asarray(lo, dtype=np.float64).reshape(-1) for lo, _ in bounds_per_array])
    upper = np.concatenate([np.asarray(up, dtype=np.float64).reshape(-1) for _, up in bounds_per_array])
    return lower, upper


def assemble_csr(sparsity: Sparsity, values: np.ndarray):
    """The groups' rows, shape (G, m), scattered into a ``csr_array`` of the pattern's entries.

    Entry (i, j) of the result is ``values[groups[j], i]``; every entry of the pattern is
    stored (a derivative that is 0 is an explicit zero), no other.
    """
    pattern = sparsity.pattern
    m, n = pattern.shape
    row_of = np.repeat(np.arange(m), np.diff(pattern.row_ptr))
    data = values.reshape(sparsity.n_groups, m)[sparsity.groups[pattern.cols], row_of] if m else (
        np.zeros(0))
    return scipy_sparse().csr_array((data, pattern.cols.copy(), pattern.row_ptr.copy()), shape=(m, n))


def dense_jacobian(f, space: ParamSpace, steps: list, scheme, loop: LoopOptions) -> np.ndarray:
    """The dense (m, n) Jacobian by the loop evaluator, in this process (x restored)."""
    with space.restored():
        return loop_evaluate(f, space, steps, scheme, 0, space.size, {}, loop).reshape(space.size, -1).T


def missed_nonzero(sparsity: Sparsity, dense: np.ndarray, space: ParamSpace) -> None:
    """Raise ValueError naming an entry of `dense` outside the pattern that is not exactly 0."""
    pattern = sparsity.pattern
    inside = np.zeros(pattern.shape, dtype=bool)
    inside[np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.row_ptr)), pattern.cols] = True
    outside = (dense != 0) & ~inside
    if outside.any():
        rows, cols = np.nonzero(outside)
        worst = int(np.argmax(np.abs(dense[rows, cols])))
        i, j = int(rows[worst]), int(cols[worst])
        raise ValueError(
            f"`sparsity` misses a nonzero: output {i} depends on {space.describe(j)} (column {j}; "
            f"the dense Jacobian's entry ({i}, {j}) is {float(dense[i, j])!r}), and {rows.size} "
            "entries outside the pattern are not zero in all. The grouped differences would be "
            "wrong there and in the columns grouped with it: add the entries to the pattern")
