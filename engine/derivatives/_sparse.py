"""`engine.Jacobian`: the dense Jacobian of `engine.derivatives._gradient`, or a sparse one.

With ``sparsity=`` a Jacobian's tasks are not x's entries but groups of structurally
independent columns (`engine.fd._grouping`); each task perturbs its whole group at once
(`engine.fd._grouped`), so a tridiagonal Jacobian of any size costs 3 groups. The rows
of the groups are scattered into a ``scipy.sparse.csr_array`` holding exactly the
pattern's entries. The chunking, the pool, the plan and the state check are the
`Gradient`'s, through its hooks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..batched._detect import AUTO_EVALUATOR, bind
from ..fd._bounds import bounds_per_array
from ..fd._evaluators import LoopOptions, loop_evaluate
from ..fd._grouped import GROUPED_SCHEMES, GroupedOptions
from ..fd._grouping import Pattern, check_groups, group_columns, members, scipy_sparse
from ..fd._schemes import SCHEMES, resolve_steps
from ..fd._space import ParamSpace
from ._gradient import Jacobian as DenseJacobian

__all__ = ["Jacobian", "Sparsity", "resolve_sparsity", "assemble_csr", "missed_nonzero"]

GROUPED = "grouped"   # the evaluator of a sparse Jacobian (engine.run._job.EVALUATORS)


class Jacobian(DenseJacobian):
    """The Jacobian of a vector-valued ``f(x, *args)`` with respect to `x`, dense or sparse.

    Without `sparsity`, exactly the dense `Jacobian` described below the parameters.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> array`` of m outputs (any shape, flattened in C order).
    sparsity : scipy.sparse matrix or array, array_like of shape (m, n), or (pattern, groups), optional
        Which outputs may depend on which inputs: entry (i, j) nonzero (a dense array of
        bools or 0/1 numbers, or the stored nonzeros of a sparse one) where output i may
        depend on entry j of `x` (x's entries in flat C order over all its arrays). The
        columns are grouped by `engine.group_columns`, or by the given ``groups`` (one
        integer per column, checked: two columns sharing a row in one group are refused,
        naming them). Each group costs one evaluation of `f` (forward), two (central) or
        four (central4), plus ``f(x)`` once per call; the groups are the tasks spread over
        the workers.
        Needs SciPy (``pip install 'numgrad-engine[sparse]'``).
    check_sparsity : bool, default False
        On the first call, compute the dense Jacobian once, in this process, by the loop
        evaluator with forward differences (n + 1 evaluations of `f`; exactly 0 where an
        output does not move) and raise `ValueError` naming an output and an entry of `x`
        where it is not 0 outside the pattern. A debugging aid:
        a pattern that misses a real nonzero silently mixes that column into the others
        of its group.
    **options
        As `engine.Gradient` (``h``, ``scheme``, ``on_failure``, ``bounds``, ``check_state``,
        ``execution`` and the execution keywords). With `sparsity`: ``scheme`` is
        ``"forward"``, ``"central"``, ``"central4"`` or ``"complex"`` (each group's columns
        at ``x_j + i h_j`` at once; bounds do not apply to it); near a bound
        each column of a group takes the loop evaluator's one-sided scheme and step on its
        own side, in the same evaluations (central: ``(-3 f(x) + 4 f(x + h) - f(x + 2h)) /
        2h`` or its mirror); with ``on_failure`` a failed evaluation concerns every column
        of its group: ``"nan"`` makes all their entries NaN, ``"one-sided"`` takes the
        group's first evaluation that succeeded with ``f(x)``, to first order (forward:
        ``x_j - h`` for the columns the bounds allow), NaN where none did (the loop
        evaluator goes to second order there; a group does not). `evaluator` does not apply.

    Returns (calling)
    -----------------
    ``J(x, *args)`` with `sparsity`: a ``scipy.sparse.csr_array`` of shape (m, n), float64,
    holding exactly the pattern's entries (sorted indices; a derivative that is 0 is
    stored as an explicit 0), whatever `x`'s structure. ``J.value_and_grad(x, *args)``:
    ``(f(x), that array)``.

    Exactness: the same bits at any worker count, in this process or not. For an `f`
    whose each output is computed from its own inputs alone (elementwise NumPy,
    stencils), each entry is bit for bit the dense Jacobian's, bounds included (the rows
    see the same numbers whether a column moves alone or with its group).

    Raises
    ------
    ImportError
        `sparsity` without SciPy, at construction.
    TypeError, ValueError
        A bad pattern or groups, a scheme other than forward / central, or `evaluator`
        with `sparsity`, at construction; a pattern whose n is not x's size, before any
        work; an `f` whose number of outputs is not the pattern's m, at its first
        evaluation; a missed nonzero with ``check_sparsity=True``.

    Examples
    --------
    >>> import numpy as np
    >>> pattern = np.eye(5) + np.eye(5, k=1) + np.eye(5, k=-1)        # tridiagonal
    >>> f = lambda v: v ** 2 + np.roll(v, 1) * (np.arange(5) > 0)      # r_i = v_i^2 + v_(i-1)
    >>> with Jacobian(f, sparsity=pattern, workers=1) as J:
    ...     result = J(np.arange(5.0))
    >>> type(result).__name__, result.nnz
    ('csr_array', 13)
    >>> np.round(result.toarray(), 6)
    array([[0., 0., 0., 0., 0.],
           [1., 2., 0., 0., 0.],
           [0., 1., 4., 0., 0.],
           [0., 0., 1., 6., 0.],
           [0., 0., 0., 1., 8.]])
    """

    def __init__(self, f: Any, *, sparsity: Any = None, check_sparsity: bool = False, **options: Any):
        super().__init__(f, **options)
        if not isinstance(check_sparsity, (bool, np.bool_)):
            raise ValueError(f"`check_sparsity` must be True or False, got {check_sparsity!r}")
        if sparsity is None:
            if check_sparsity:
                raise ValueError("`check_sparsity=True` checks a pattern: pass `sparsity` too")
            self.sparsity, self._check_pending = None, False
            return
        if self.evaluator != AUTO_EVALUATOR:
            raise ValueError(f"`evaluator` does not apply with `sparsity` (the column groups have "
                             f"their own evaluator), got evaluator={self.evaluator!r}")
        if self.scheme.name not in GROUPED_SCHEMES and not self.scheme.complex_step:
            raise ValueError(f"a sparse Jacobian (`sparsity=`) takes `scheme` in {GROUPED_SCHEMES} "
                             f"or 'complex', got {self.scheme.name!r}")
        self.sparsity = resolve_sparsity(sparsity)
        self._check_pending = bool(check_sparsity)

    # -- the hooks of a derivative kind --------------------------------------------------------

    def _evaluator_name(self, x: Any, steps: list) -> str:
        return super()._evaluator_name(x, steps) if self.sparsity is None else GROUPED

    def _task_count(self, space: ParamSpace) -> int:
        return super()._task_count(space) if self.sparsity is None else self.sparsity.n_groups

    def _options(self, space: ParamSpace, evaluator: str) -> Any:
        if evaluator != GROUPED:
            return super()._options(space, evaluator)
        check_shape(self.sparsity, space)
        return self.sparsity.options(self.on_failure,
                                     flat_bounds(bounds_per_array(self.bounds, space)))

    def _needs_center(self, evaluator: str) -> bool:
        if evaluator != GROUPED:
            return super()._needs_center(evaluator)
        return self.scheme.uses_center or self.bounds is not None or self.on_failure == "one-sided"

    def _assemble(self, space: ParamSpace, rows: np.ndarray, center: Any) -> Any:
        if self.sparsity is None:
            return super()._assemble(space, rows, center)
        return assemble_csr(self.sparsity, rows)

    def _compute(self, x: Any, args: tuple, want_value: bool) -> tuple[Any, Any]:
        if self._check_pending:
            self._check_pattern(x, args)
        return super()._compute(x, args, want_value)

    def _check_pattern(self, x: Any, args: tuple) -> None:
        """The first call's `check_sparsity`: the dense Jacobian here, by the loop evaluator."""
        space = ParamSpace(x)
        check_shape(self.sparsity, space)
        steps = resolve_steps(self.h, space.keys, space.labels)
        loop = LoopOptions(bounds=bounds_per_array(self.bounds, space), vector=True)
        # forward differences: (f_i(x + h) - f_i(x)) / h is exactly 0 where f_i does not move,
        # where the longer stencils (-3 f + 4 f - f, central4) can leave a rounding residue
        dense = dense_jacobian(bind(self.f, args, x), space, steps, SCHEMES["forward"], loop)
        missed_nonzero(self.sparsity, dense, space)
        self._check_pending = False


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
