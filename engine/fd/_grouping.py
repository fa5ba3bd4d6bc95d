"""Column grouping for sparse Jacobians: which inputs can be perturbed together.

Two columns of a Jacobian may be perturbed in the same evaluation of `f` when no row
(output) depends on both: each changed output then belongs to one perturbed input, and one
evaluation yields a difference for every column of the group. Finding few groups is
colouring the columns' intersection graph (columns adjacent when they share a row); the
greedy colouring depends on the order the columns are visited in, so several orders are
tried and the fewest groups kept.

SciPy is not needed here: a pattern is held as index arrays (CSC and CSR). A
``scipy.sparse`` pattern is read through its own ``tocoo()``.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Pattern", "group_columns", "check_groups", "members", "scipy_sparse", "SPARSE_EXTRA"]

SPARSE_EXTRA = "numgrad-engine[sparse]"   # the extra that installs SciPy
_GRAPH_PAIRS = 4_000_000   # most column pairs the intersection graph is built from


def scipy_sparse():
    """``scipy.sparse``, imported on first use; a clear error naming the extra without it.

    Raises
    ------
    ImportError
        If SciPy is not installed.
    """
    try:
        import scipy.sparse
    except ImportError:
        raise ImportError(f"a sparse Jacobian needs SciPy (its result is a scipy.sparse.csr_array): "
                          f"pip install '{SPARSE_EXTRA}' (or pip install scipy)") from None
    return scipy.sparse


@dataclass(frozen=True, eq=False)
class Pattern:
    """A Jacobian's structure, shape (m, n): the rows of each column and the columns of each row.

    ``rows[col_ptr[j]:col_ptr[j + 1]]`` are column j's rows, sorted (CSC);
    ``cols[row_ptr[i]:row_ptr[i + 1]]`` are row i's columns, sorted (CSR). int64.
    """

    shape: tuple[int, int]
    col_ptr: np.ndarray
    rows: np.ndarray
    row_ptr: np.ndarray
    cols: np.ndarray

    @classmethod
    def from_coordinates(cls, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> Pattern:
        """The pattern holding the entries ``(rows[k], cols[k])`` (duplicates merged)."""
        m, n = shape
        key = np.unique(np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64))
        r, c = key // n, key % n
        by_col = np.lexsort((r, c))
        col_ptr = np.concatenate([[0], np.cumsum(np.bincount(c, minlength=n))]).astype(np.int64)
        row_ptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=m))]).astype(np.int64)
        return cls((m, n), col_ptr, r[by_col], row_ptr, c)

    @classmethod
    def from_any(cls, pattern: Any, name: str = "sparsity") -> Pattern:
        """Read a ``scipy.sparse`` matrix or array (its stored nonzeros) or a dense 2-D array
        of bools or numbers (its nonzeros).

        Raises
        ------
        TypeError
            If `pattern` is neither, or holds something other than bools or real numbers.
        ValueError
            If it is not 2-D, or holds NaN or infinity.
        """
        if isinstance(pattern, Pattern):
            return pattern
        if hasattr(pattern, "tocoo") and hasattr(pattern, "nnz"):
            coo = pattern.tocoo()
            if coo.ndim != 2:
                raise ValueError(f"`{name}` must be 2-D (m outputs, n inputs), got shape {coo.shape}")
            keep = np.asarray(coo.data) != 0
            return cls.from_coordinates(tuple(map(int, coo.shape)), coo.row[keep], coo.col[keep])
        try:
            dense = np.asarray(pattern)
        except Exception:
            dense = None
        if dense is None or not (dense.dtype == np.bool_ or np.issubdtype(dense.dtype, np.integer)
                                 or np.issubdtype(dense.dtype, np.floating)):
            raise TypeError(f"`{name}` must be a scipy.sparse matrix or array, or a 2-D array of "
                            f"bools or 0/1 numbers, got {type(pattern).__name__}"
                            + ("" if dense is None else f" of dtype {dense.dtype}"))
        if dense.ndim != 2:
            raise ValueError(f"`{name}` must be 2-D (m outputs, n inputs), got shape {dense.shape}")
        if dense.dtype != np.bool_ and not np.all(np.isfinite(dense)):
            raise ValueError(f"`{name}` holds NaN or infinity: mark the structural nonzeros with 1 "
                             "(or True) and the rest with 0")
        rows, cols = np.nonzero(dense)
        return cls.from_coordinates(dense.shape, rows, cols)

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    def max_row_count(self) -> int:
        """The most columns in one row: no grouping has fewer groups (they pairwise conflict)."""
        return int(np.diff(self.row_ptr).max(initial=0))

    def entries(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, owner)`` of every entry of `columns`: row, and the position in `columns`."""
        counts = self.col_ptr[columns + 1] - self.col_ptr[columns]
        owner = np.repeat(np.arange(columns.size), counts)
        within = np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.rows[self.col_ptr[columns][owner] + within], owner


def group_columns(pattern: Any) -> np.ndarray:
    """Group the columns of a sparse Jacobian so that each group costs one evaluation of `f`.

    The greedy colouring of the columns' intersection graph, in several orders (natural,
    DSatur's, largest-first, smallest-last, incidence-degree); the grouping with the
    fewest groups is kept. (Patterns whose graph
    would have more than 4 million edges get only the natural order and a largest-first
    order by an upper bound on the degree.)

    Parameters
    ----------
    pattern : scipy.sparse matrix or array, or array_like, shape (m, n)
        The structural nonzeros of the Jacobian (a dense pattern: its nonzero or True
        entries; a sparse one: its stored nonzeros). Entry (i, j) says output i may
        depend on input j.

    Returns
    -------
    groups : ndarray, int64, shape (n,)
        The group of each column, numbered 0, 1, ... in the order of their first column.

    Guarantees: no two columns of one group have an entry in the same row; the number
    of groups is at least the most entries in any row (those columns pairwise conflict)
    and the search stops when it reaches that bound. Found here: 3 groups for any
    tridiagonal pattern, 5 for the 5-point stencil on a k x k grid (k >= 3), the largest
    block's width for a block-diagonal pattern with dense blocks. Deterministic: the same
    pattern always gives the same groups. Columns with no entries join group 0.

    Raises
    ------
    TypeError, ValueError
        If `pattern` is not a 2-D sparse matrix or array of bools / numbers.

    Examples
    --------
    >>> import numpy as np
    >>> tridiagonal = np.eye(6) + np.eye(6, k=1) + np.eye(6, k=-1)
    >>> group_columns(tridiagonal)
    array([0, 1, 2, 0, 1, 2])
    """
    pattern = Pattern.from_any(pattern, "pattern")
    m, n = pattern.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bound = max(1, pattern.max_row_count())
    csc = (pattern.col_ptr.tolist(), pattern.rows.tolist())
    best = None
    for order in _orders(pattern):
        colours = _greedy(order, csc, m)
        if best is None or colours.max() < best.max():
            best = colours
        if best.max() + 1 == bound:
            break
    return _renumber(best)


def _orders(pattern: Pattern):
    """Column orders to colour in, the cheapest first; graph-based ones where the graph is small."""
    n = pattern.shape[1]
    yield np.arange(n)
    row_counts = np.diff(pattern.row_ptr)
    pairs = int((row_counts.astype(np.int64) ** 2).sum())
    if pairs > _GRAPH_PAIRS:   # a graph this large would cost more than it saves: bounds only
        # a 0 after the last entry: an empty last column's start (nnz) stays a valid index
        weight = np.add.reduceat(np.append(row_counts[pattern.rows], 0), pattern.col_ptr[:-1])
        weight = np.where(np.diff(pattern.col_ptr) > 0, weight, 0)
        yield np.argsort(-weight, kind="stable")
        return
    ptr, neighbours = _intersection_graph(pattern)
    degree = np.diff(ptr)
    adjacency = _lists(ptr, neighbours)
    yield _saturation(adjacency, degree.tolist())
    yield np.argsort(-degree, kind="stable")
    yield _smallest_last(adjacency, degree.tolist())
    yield _incidence_degree(adjacency, degree)


def _intersection_graph(pattern: Pattern) -> tuple[np.ndarray, np.ndarray]:
    """Columns sharing a row, as CSR ``(ptr, neighbours)`` over the columns, without self-loops."""
    n = pattern.shape[1]
    counts = np.diff(pattern.row_ptr)
    per_entry = np.repeat(counts, counts)          # entries of the row of each CSR entry
    left = np.repeat(pattern.cols, per_entry)
    row_start = np.repeat(pattern.row_ptr[:-1], counts)
    within = np.arange(left.size) - np.repeat(np.cumsum(per_entry) - per_entry, per_entry)
    right = pattern.cols[np.repeat(row_start, per_entry) + within]
    keep = left != right
    key = np.unique(left[keep] * n + right[keep])
    source, target = key // n, key % n
    ptr = np.concatenate([[0], np.cumsum(np.bincount(source, minlength=n))]).astype(np.int64)
    return ptr, target


def _lists(ptr: np.ndarray, neighbours: np.ndarray) -> list[list[int]]:
    flat, bounds = neighbours.tolist(), ptr.tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _greedy(order: np.ndarray, csc: tuple[list, list], m: int) -> np.ndarray:
    """Each column in `order` takes the lowest group not yet used in any of its rows."""
    col_ptr, rows = csc
    used = [0] * m                  # per row, a bit mask of the groups already in it
    colours = np.zeros(len(col_ptr) - 1, dtype=np.int64)
    for j in order.tolist():
        its_rows = rows[col_ptr[j]:col_ptr[j + 1]]
        taken = 0
        for i in its_rows:
            taken |= used[i]
        colour = (~taken & (taken + 1)).bit_length() - 1   # the lowest clear bit
        bit = 1 << colour
        for i in its_rows:
            used[i] |= bit
        colours[j] = colour
    return colours


def _saturation(adjacency: list[list[int]], degree: list[int]) -> np.ndarray:
    """DSatur (Brelaz): next, the column whose neighbours already use the most groups (ties: the
    largest degree, then the lowest index). The greedy colouring in this order is Brelaz's."""
    n = len(adjacency)
    colour = [-1] * n
    seen: list[set] = [set() for _ in range(n)]     # groups used by each column's neighbours
    heap = [(0, -d, v) for v, d in enumerate(degree)]
    heapq.heapify(heap)
    order = []
    while heap:
        saturation, _, v = heapq.heappop(heap)
        if colour[v] >= 0 or -saturation != len(seen[v]):
            continue                                 # a stale entry: v was pushed again since
        c = 0
        while c in seen[v]:
            c += 1
        colour[v] = c
        order.append(v)
        for u in adjacency[v]:
            if colour[u] < 0 and c not in seen[u]:
                seen[u].add(c)
                heapq.heappush(heap, (-len(seen[u]), -degree[u], u))
    return np.array(order, dtype=np.int64)


def _smallest_last(adjacency: list[list[int]], degree: list[int]) -> np.ndarray:
    """Matula-Beck: repeatedly take out a column of least remaining degree; colour in reverse."""
    n = len(degree)
    buckets: list[dict] = [dict() for _ in range(max(degree, default=0) + 1)]
    for v, d in enumerate(degree):
        buckets[d][v] = None       # dicts keep insertion order: a deterministic pick
    removed = [False] * n
    order, low = [], 0
    for _ in range(n):
        while not buckets[low]:
            low += 1
        v = next(iter(buckets[low]))
        del buckets[low][v]
        removed[v] = True
        order.append(v)
        for u in adjacency[v]:
            if not removed[u]:
                del buckets[degree[u]][u]
                degree[u] -= 1
                buckets[degree[u]][u] = None
        low = max(low - 1, 0)
    return np.array(order[::-1], dtype=np.int64)


def _incidence_degree(adjacency: list[list[int]], degree: np.ndarray) -> np.ndarray:
    """Next, the column with the most neighbours already ordered (ties: the first to reach that
    count; at the start, the largest degree)."""
    n = len(adjacency)
    buckets: list[dict] = [dict() for _ in range(int(degree.max(initial=0)) + 1)]
    for v in np.argsort(-degree, kind="stable").tolist():
        buckets[0][v] = None
    count = [0] * n
    done = [False] * n
    order, high = [], 0
    for _ in range(n):
        while not buckets[high]:
            high -= 1
        v = next(iter(buckets[high]))
        del buckets[high][v]
        done[v] = True
        order.append(v)
        for u in adjacency[v]:
            if not done[u]:
                del buckets[count[u]][u]
                count[u] += 1
                buckets[count[u]][u] = None
                high = max(high, count[u])
    return np.array(order, dtype=np.int64)


def _renumber(colours: np.ndarray) -> np.ndarray:
    """Groups numbered in the order of their first column."""
    _, first = np.unique(colours, return_index=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[colours]


def check_groups(pattern: Pattern, groups: Any, name: str = "groups") -> np.ndarray:
    """`groups` as int64 group numbers 0..G-1 (same partition), checked against `pattern`.

    Raises
    ------
    TypeError
        If `groups` is not integers.
    ValueError
        If it has not one entry per column, holds a negative number, or puts two columns
        that share a row into one group (naming them and the row).
    """
    n = pattern.shape[1]
    array = np.asarray(groups)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"`{name}` must be integers (the group of each column), got dtype {array.dtype}")
    if array.shape != (n,):
        raise ValueError(f"`{name}` must have one entry per column of the pattern, shape ({n},), "
                         f"got shape {array.shape}")
    if n and array.min() < 0:
        raise ValueError(f"`{name}` must be non-negative group numbers, got {int(array.min())}")
    _, numbered = np.unique(array, return_inverse=True)
    numbered = numbered.astype(np.int64).reshape(-1)
    row_of = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.row_ptr))
    key = row_of * max(n, 1) + numbered[pattern.cols]
    order = np.argsort(key, kind="stable")
    clash = np.flatnonzero(np.diff(key[order]) == 0)
    if clash.size:
        first, second = pattern.cols[order[clash[0]]], pattern.cols[order[clash[0] + 1]]
        raise ValueError(
            f"`{name}` puts columns {int(first)} and {int(second)} in one group (group "
            f"{int(array[first])}), but both have an entry in row {int(row_of[order[clash[0]]])}: "
            "perturbed together, their differences in that row cannot be told apart. Split "
            "the group, or let engine.group_columns(pattern) choose the groups")
    return numbered


def members(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The columns of each group, as CSR ``(ptr, columns)``: group k is
    ``columns[ptr[k]:ptr[k + 1]]``, ascending."""
    order = np.argsort(groups, kind="stable")
    counts = np.bincount(groups, minlength=int(groups.max(initial=-1)) + 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), order.astype(np.int64)
