"""Column grouping (`engine.group_columns`): valid groups, and as few as the targets (3, 5, widest block).

A grouping is valid when no row holds two columns of one group; each test checks that
directly from the dense pattern, not through the engine's own checker.
"""
import numpy as np
import pytest

from engine.fd._grouping import Pattern, check_groups, group_columns, members


def tridiagonal(n):
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) <= 1


def stencil(k):
    """The 5-point Laplacian's pattern on a k x k grid: (k*k, k*k), unknown (a, b) at a*k + b."""
    a, b = np.divmod(np.arange(k * k), k)
    return np.abs(a[:, None] - a[None, :]) + np.abs(b[:, None] - b[None, :]) <= 1


def block_diagonal(widths, rng=None):
    """Dense blocks of the given widths (square), rows and columns shuffled when `rng` is given."""
    n = sum(widths)
    block = np.repeat(np.arange(len(widths)), widths)
    pattern = block[:, None] == block[None, :]
    if rng is not None:
        pattern = pattern[rng.permutation(n)][:, rng.permutation(n)]
    return pattern


def assert_valid(dense, groups):
    dense = np.asarray(dense) != 0
    assert groups.shape == (dense.shape[1],) and groups.dtype == np.int64
    for i, row in enumerate(dense):
        in_row = groups[row]
        assert np.unique(in_row).size == in_row.size, f"row {i} holds two columns of one group"
    used = np.unique(groups)
    assert np.array_equal(used, np.arange(used.size)), "groups are numbered 0..G-1"


class TestTargets:
    @pytest.mark.parametrize("n", [3, 4, 5, 10, 101, 10_000])
    def test_tridiagonal_takes_three_groups(self, n):
        if n <= 200:
            groups = group_columns(tridiagonal(n))
            assert_valid(tridiagonal(n), groups)
        else:   # the same pattern as a sparse matrix: a dense 10,000 x 10,000 is 100 MB
            sparse = pytest.importorskip("scipy.sparse")
            ones = np.ones(n)
            groups = group_columns(sparse.diags_array([ones[1:], ones, ones[1:]], offsets=[-1, 0, 1]))
            assert np.array_equal(groups, np.arange(n) % 3)   # valid: |i - j| <= 1 in a row
        assert groups.max() + 1 == 3

    @pytest.mark.parametrize("n", [1, 2])
    def test_a_tridiagonal_of_one_or_two_columns_takes_that_many(self, n):
        assert group_columns(tridiagonal(n)).max() + 1 == n

    @pytest.mark.parametrize("k", [3, 4, 5, 7, 12, 30])
    def test_the_five_point_stencil_takes_five_groups(self, k):
        groups = group_columns(stencil(k))
        assert_valid(stencil(k), groups)
        assert groups.max() + 1 == 5

    def test_the_stencil_on_a_100_by_100_grid_takes_five_groups(self):
        sparse = pytest.importorskip("scipy.sparse")
        k = 100
        chain = sparse.diags_array([np.ones(k - 1), np.ones(k), np.ones(k - 1)], offsets=[-1, 0, 1])
        pattern = sparse.csr_array(sparse.kron(sparse.eye_array(k), chain)
                                   + sparse.kron(chain, sparse.eye_array(k)))
        groups = group_columns(pattern)
        assert groups.max() + 1 == 5
        a, b = np.divmod(np.arange(k * k), k)
        for da, db in [(0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0)]:   # all conflicting pairs
            first = (a + da < k) & (b + db >= 0) & (b + db < k)
            other = (a[first] + da) * k + b[first] + db
            assert not np.any(groups[first] == groups[other]), (da, db)

    @pytest.mark.parametrize("widths", [[3, 5, 2], [1, 1, 1], [4], [2, 7, 7, 1, 3]])
    def test_a_block_diagonal_pattern_takes_its_largest_block_width(self, widths, rng):
        for pattern in (block_diagonal(widths), block_diagonal(widths, rng)):
            groups = group_columns(pattern)
            assert_valid(pattern, groups)
            assert groups.max() + 1 == max(widths)


class TestValidity:
    @pytest.mark.parametrize("density", [0.02, 0.1, 0.3, 0.7])
    def test_random_patterns_get_valid_groups_no_fewer_than_a_row_holds(self, density, rng):
        for shape in [(40, 30), (30, 40), (1, 25), (25, 1)]:
            pattern = rng.random(shape) < density
            groups = group_columns(pattern)
            assert_valid(pattern, groups)
            assert groups.max() + 1 >= max(1, pattern.sum(axis=1).max())

    def test_the_fewest_groups_over_the_orders_are_kept(self):
        """On this pattern the natural and DSatur orders need 6 groups, smallest-last 5."""
        from engine.fd import _grouping
        pattern = np.random.default_rng(0).random((25, 25)) < 0.12
        index = Pattern.from_any(pattern)
        csc = (index.col_ptr.tolist(), index.rows.tolist())
        counts = [_grouping._greedy(order, csc, 25).max() + 1 for order in _grouping._orders(index)]
        assert counts[:2] == [6, 6] and min(counts) == 5
        groups = group_columns(pattern)
        assert_valid(pattern, groups)
        assert groups.max() + 1 == 5

    def test_a_dense_row_puts_every_column_in_its_own_group(self):
        pattern = np.eye(6, dtype=bool)
        pattern[2] = True
        assert sorted(group_columns(pattern)) == list(range(6))

    def test_empty_columns_join_group_zero_and_an_empty_pattern_one_group(self):
        pattern = tridiagonal(6)
        pattern[:, [1, 4]] = False
        groups = group_columns(pattern)
        assert_valid(pattern, groups)
        assert groups[1] == groups[4] == 0
        assert np.array_equal(group_columns(np.zeros((3, 4))), np.zeros(4, dtype=np.int64))
        assert group_columns(np.zeros((3, 0))).shape == (0,)

    def test_the_same_pattern_always_gets_the_same_groups(self, rng):
        pattern = rng.random((60, 60)) < 0.08
        assert np.array_equal(group_columns(pattern), group_columns(pattern.copy()))

    def test_the_graph_free_path_for_a_huge_intersection_graph_is_valid(self, monkeypatch, rng):
        from engine.fd import _grouping
        monkeypatch.setattr(_grouping, "_GRAPH_PAIRS", 0)
        pattern = rng.random((50, 40)) < 0.1
        groups = group_columns(pattern)
        assert_valid(pattern, groups)
        assert group_columns(tridiagonal(30)).max() + 1 == 3


class TestPatternForms:
    def test_bool_integer_and_float_arrays_and_lists_give_the_same_groups(self, rng):
        pattern = rng.random((20, 15)) < 0.2
        expected = group_columns(pattern)
        for form in (pattern.astype(np.int8), pattern.astype(float), pattern.tolist()):
            assert np.array_equal(group_columns(form), expected)

    def test_scipy_sparse_matrices_and_arrays_in_any_format(self, rng):
        sparse = pytest.importorskip("scipy.sparse")
        pattern = rng.random((20, 15)) < 0.2
        expected = group_columns(pattern)
        for make in (sparse.csr_array, sparse.csc_array, sparse.coo_array, sparse.csr_matrix,
                     sparse.lil_matrix, sparse.dok_array):
            assert np.array_equal(group_columns(make(pattern.astype(float))), expected), make

    def test_a_sparse_patterns_explicit_zeros_are_not_entries(self):
        sparse = pytest.importorskip("scipy.sparse")
        full = sparse.csr_array(np.ones((3, 3)))
        full.data[:] = np.eye(3).reshape(-1)   # stored, but zero off the diagonal
        assert full.nnz == 9
        assert np.array_equal(group_columns(full), [0, 0, 0])

    def test_the_index_arrays_hold_the_pattern(self, rng):
        dense = rng.random((7, 5)) < 0.4
        pattern = Pattern.from_any(dense)
        for j in range(5):
            column = pattern.rows[pattern.col_ptr[j]:pattern.col_ptr[j + 1]]
            assert np.array_equal(column, np.flatnonzero(dense[:, j]))
        for i in range(7):
            row = pattern.cols[pattern.row_ptr[i]:pattern.row_ptr[i + 1]]
            assert np.array_equal(row, np.flatnonzero(dense[i]))
        rows, owner = pattern.entries(np.array([4, 1]))
        expected = [(i, 0) for i in np.flatnonzero(dense[:, 4])] + [
            (i, 1) for i in np.flatnonzero(dense[:, 1])]
        assert list(zip(rows.tolist(), owner.tolist())) == expected


class TestBadPatterns:
    @pytest.mark.parametrize("pattern, error, match", [
        (np.ones(4), ValueError, "2-D"),
        (np.ones((2, 2, 2)), ValueError, "2-D"),
        (np.array([[1.0, np.nan]]), ValueError, "NaN or infinity"),
        (np.array([["a", "b"]]), TypeError, "dtype <U1"),
        (np.ones((2, 2), dtype=complex), TypeError, "complex"),
        ("tridiagonal", TypeError, "str"),
        (None, TypeError, "2-D array of bools"),
    ], ids=["1-D", "3-D", "nan", "strings", "complex", "a-name", "None"])
    def test_refused_naming_the_parameter(self, pattern, error, match):
        with pytest.raises(error, match=match) as info:
            group_columns(pattern)
        assert "`pattern`" in str(info.value)


class TestCheckGroups:
    def test_valid_groups_are_renumbered_keeping_the_partition(self):
        pattern = Pattern.from_any(tridiagonal(6))
        numbered = check_groups(pattern, np.array([7, 3, 10, 7, 3, 10]))
        assert np.array_equal(numbered, [1, 0, 2, 1, 0, 2])

    def test_two_columns_sharing_a_row_are_named_with_the_row(self):
        pattern = Pattern.from_any(tridiagonal(6))
        with pytest.raises(ValueError, match=r"columns 2 and 3 in one group \(group 1\).*row 2"):
            check_groups(pattern, np.array([0, 2, 1, 1, 0, 2]))

    @pytest.mark.parametrize("groups, error, match", [
        (np.zeros(5, dtype=int), ValueError, r"shape \(6,\)"),
        (np.array([0, 1, 2, 0, 1, -2]), ValueError, "non-negative"),
        (np.array([0, 1, 2, 0, 1, 2.0]), TypeError, "integers"),
        (np.array([True, False] * 3), TypeError, "integers"),
    ], ids=["short", "negative", "floats", "bools"])
    def test_bad_groups_are_refused(self, groups, error, match):
        with pytest.raises(error, match=match):
            check_groups(Pattern.from_any(tridiagonal(6)), groups)

    def test_members_lists_each_groups_columns(self):
        ptr, columns = members(np.array([1, 0, 2, 1, 0, 2]))
        assert [columns[a:b].tolist() for a, b in zip(ptr[:-1], ptr[1:])] == [[1, 4], [0, 3], [2, 5]]


# ---- round two (issue 28): the orders tried, the choice among them, the edges of the helpers ----

import engine.fd._grouping as grouping  # noqa: E402


def random_pattern(seed, m=14, n=12, density=0.25):
    rng = np.random.default_rng(seed)
    dense = rng.random((m, n)) < density
    dense[:, rng.integers(n)] = False          # one empty column somewhere
    return dense


def reference_graph(dense):
    """Adjacency sets of the columns' intersection graph, straight from the dense pattern."""
    share = (dense.T.astype(int) @ dense.astype(int)) > 0
    np.fill_diagonal(share, False)
    return [set(np.flatnonzero(row).tolist()) for row in share]


def reference_dsatur(adj):
    n, colour, order = len(adj), {}, []
    while len(order) < n:
        sat = lambda v: len({colour[u] for u in adj[v] if u in colour})  # noqa: E731
        v = min((v for v in range(n) if v not in colour), key=lambda v: (-sat(v), -len(adj[v]), v))
        used = {colour[u] for u in adj[v] if u in colour}
        colour[v] = min(set(range(n + 1)) - used)
        order.append(v)
    return order


def reference_smallest_last(adj):
    """Least remaining degree first; ties: the column whose degree changed least recently
    (all start at time 0, in index order); the removal order reversed."""
    n = len(adj)
    left, stamp, clock, removed = set(range(n)), {v: (0, v) for v in range(n)}, 0, []
    while left:
        degree = {v: len(adj[v] & left) for v in left}
        v = min(left, key=lambda v: (degree[v], stamp[v]))
        left.discard(v)
        removed.append(v)
        for u in sorted(adj[v] & left, key=lambda u: sorted(adj[v]).index(u)):
            clock += 1
            stamp[u] = (clock, 0)
    return removed[::-1]


def reference_incidence(adj):
    """Most neighbours already ordered first; ties: the first to reach that count (at the
    start: largest degree, then lowest index)."""
    n = len(adj)
    stamp = {v: (0, -len(adj[v]), v) for v in range(n)}
    order, clock = [], 0
    while len(order) < n:
        count = {v: len(adj[v] & set(order)) for v in range(n) if v not in order}
        v = min(count, key=lambda v: (-count[v], stamp[v]))
        order.append(v)
        for u in sorted(adj[v]):
            if u not in order:
                clock += 1
                stamp[u] = (clock, 0, 0)
    return order


def reference_greedy(dense, order):
    colour = np.full(dense.shape[1], -1)
    for j in order:
        taken = {colour[k] for i in np.flatnonzero(dense[:, j]) for k in np.flatnonzero(dense[i])}
        colour[j] = min(set(range(dense.shape[1] + 1)) - taken)
    return colour


class TestOrders:
    """The orders the docstring names, each checked against a plain rewrite of its rule."""

    @pytest.mark.parametrize("seed", range(8))
    def test_graph_orders_follow_their_rules(self, seed):
        dense = random_pattern(seed)
        adj = reference_graph(dense)
        degree = np.array([len(a) for a in adj])
        got = [o.tolist() for o in grouping._orders(Pattern.from_any(dense))]
        assert got == [list(range(dense.shape[1])), reference_dsatur(adj),
                       np.argsort(-degree, kind="stable").tolist(),
                       reference_smallest_last(adj), reference_incidence(adj)]

    def test_orders_of_a_pattern_without_conflicts(self):
        dense = np.zeros((3, 4), dtype=bool)
        dense[0, 2] = dense[2, 0] = True
        got = [o.tolist() for o in grouping._orders(Pattern.from_any(dense))]
        assert got == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]

    @pytest.mark.parametrize("seed", range(4))
    def test_large_patterns_get_the_natural_and_a_bound_order(self, seed, monkeypatch):
        monkeypatch.setattr(grouping, "_GRAPH_PAIRS", 0)
        dense = random_pattern(seed)
        row_counts = dense.sum(axis=1)
        weight = np.array([row_counts[dense[:, j]].sum() for j in range(dense.shape[1])])
        got = [o.tolist() for o in grouping._orders(Pattern.from_any(dense))]
        assert got == [list(range(dense.shape[1])), np.argsort(-weight, kind="stable").tolist()]

    def test_bound_order_weights_single_entry_and_empty_columns(self, monkeypatch):
        monkeypatch.setattr(grouping, "_GRAPH_PAIRS", 0)
        dense = np.array([[0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]], dtype=bool)
        # weights: 0 (empty), 1 (one entry), 2, 4, 2: the empty column last
        got = [o.tolist() for o in grouping._orders(Pattern.from_any(dense))]
        assert got == [[0, 1, 2, 3, 4], [3, 2, 4, 1, 0]]

    def test_bound_order_with_an_empty_last_column(self, monkeypatch):
        monkeypatch.setattr(grouping, "_GRAPH_PAIRS", 0)
        dense = np.array([[1, 1, 0], [0, 1, 0]], dtype=bool)
        got = [o.tolist() for o in grouping._orders(Pattern.from_any(dense))]
        assert got == [[0, 1, 2], [1, 0, 2]]

    @pytest.mark.parametrize("row, extra, graph", [(2000, 0, True), (2000, 1, False), (2001, 0, False)])
    def test_graph_threshold_is_four_million_pairs(self, row, extra, graph, monkeypatch):
        class Graph(Exception):
            pass

        def no_graph(pattern):
            raise Graph

        monkeypatch.setattr(grouping, "_intersection_graph", no_graph)
        # one row of `row` columns (row**2 pairs), and `extra` rows holding column 0 alone
        rows = np.concatenate([np.zeros(row, dtype=np.int64), np.arange(1, extra + 1)])
        cols = np.concatenate([np.arange(row), np.zeros(extra, dtype=np.int64)])
        pattern = Pattern.from_coordinates((1 + extra, row), rows, cols)
        orders = grouping._orders(pattern)
        assert next(orders).tolist() == list(range(row))
        if graph:
            with pytest.raises(Graph):
                next(orders)
        else:
            assert next(orders).tolist() == list(range(row))


class TestChoice:
    """The first order with the fewest groups is kept; the search stops at the row bound."""

    @pytest.mark.parametrize("seed", range(12))
    def test_first_fewest_is_kept(self, seed):
        dense = random_pattern(seed, m=16, n=14, density=0.3)
        bound = max(1, dense.sum(axis=1).max())
        best = None
        for order in grouping._orders(Pattern.from_any(dense)):
            colours = reference_greedy(dense, order.tolist())
            if best is None or colours.max() < best.max():
                best = colours
            if best.max() + 1 == bound:
                break
        _, first = np.unique(best, return_index=True)
        rank = np.argsort(np.argsort(first))
        assert group_columns(dense).tolist() == rank[np.unique(best, return_inverse=True)[1]].tolist()

    @pytest.mark.parametrize("dense", [np.eye(5), tridiagonal(7), np.zeros((2, 3))])
    def test_search_stops_at_the_bound(self, dense, monkeypatch):
        calls = []
        greedy = grouping._greedy
        monkeypatch.setattr(grouping, "_greedy", lambda *a: calls.append(1) or greedy(*a))
        group_columns(dense)
        assert len(calls) == 1


def test_large_pattern_with_an_empty_last_column():
    """More than 4 million column pairs (no intersection graph), the natural order above the row
    bound, and the last column empty: the bound order's weights must still be built."""
    rng = np.random.default_rng(3)
    m, n = 1000, 2001
    rows = np.repeat(np.arange(m), 64)
    cols = np.concatenate([rng.choice(n - 1, 64, replace=False) for _ in range(m)])
    dense = np.zeros((m, n), dtype=bool)
    dense[rows, cols] = True
    assert (dense.sum(axis=1).astype(np.int64) ** 2).sum() > 4_000_000
    groups = group_columns(dense)
    assert_valid(dense, groups)
    assert groups.max() + 1 >= 64


class TestHelpers:
    def test_scipy_sparse_is_the_module(self):
        import scipy.sparse
        assert grouping.scipy_sparse() is scipy.sparse

    def test_scipy_sparse_missing_names_the_extra(self, monkeypatch):
        monkeypatch.setitem(__import__("sys").modules, "scipy.sparse", None)
        with pytest.raises(ImportError, match=r"pip install 'numgrad-engine\[sparse\]'"):
            grouping.scipy_sparse()

    def test_pattern_counts(self):
        dense = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1]])
        pattern = Pattern.from_any(dense)
        assert pattern.nnz == 5 and pattern.max_row_count() == 3
        assert Pattern.from_any(np.zeros((3, 2))).max_row_count() == 0
        assert Pattern.from_any(np.zeros((0, 2))).max_row_count() == 0

    def test_pattern_is_frozen_and_hashable_by_identity(self):
        import dataclasses
        pattern = Pattern.from_any(np.eye(3))
        with pytest.raises(dataclasses.FrozenInstanceError):
            pattern.shape = (1, 1)
        twin = Pattern.from_any(np.eye(3))
        assert len({pattern, twin}) == 2 and pattern != twin and pattern == pattern

    def test_a_pattern_is_taken_as_is(self):
        pattern = Pattern.from_any(tridiagonal(5))
        assert Pattern.from_any(pattern) is pattern
        assert group_columns(pattern).tolist() == [0, 1, 2, 0, 1]

    def test_nnz_alone_does_not_make_a_sparse_matrix(self):
        class OnlyNnz:
            nnz = 3

        with pytest.raises(TypeError, match="must be a scipy.sparse matrix or array"):
            group_columns(OnlyNnz())

    def test_one_dimensional_sparse_array_is_refused(self):
        import scipy.sparse
        message = r"`pattern` must be 2-D \(m outputs, n inputs\), got shape \(4,\)"
        with pytest.raises(ValueError, match=message):
            group_columns(scipy.sparse.coo_array(np.array([1.0, 0.0, 1.0, 1.0])))

    def test_members_of_no_columns(self):
        ptr, columns = members(np.zeros(0, dtype=np.int64))
        assert ptr.tolist() == [0] and columns.tolist() == []


class TestCheckGroupsMessages:
    def test_single_clash_names_columns_and_row(self):
        pattern = Pattern.from_any(np.array([[1, 0, 0], [0, 1, 1]]))
        with pytest.raises(ValueError, match=r"puts columns 1 and 2 in one group \(group 4\), but both "
                                             r"have an entry in row 1:"):
            check_groups(pattern, np.array([4, 4, 4]))

    def test_first_clash_is_the_lowest_row_then_lowest_group(self):
        pattern = Pattern.from_any(np.ones((2, 4)))
        with pytest.raises(ValueError, match=r"puts columns 0 and 1 in one group \(group 0\), but both "
                                             r"have an entry in row 0:"):
            check_groups(pattern, np.array([0, 0, 1, 1]))

    def test_distant_rows_do_not_clash(self):
        dense = np.array([[0, 1], [0, 0], [1, 0]])
        assert check_groups(Pattern.from_any(dense), np.array([0, 1])).tolist() == [0, 1]

    def test_more_rows_than_columns(self):
        dense = np.array([[1, 0], [0, 1], [1, 1]])
        with pytest.raises(ValueError, match="puts columns 0 and 1 in one group .* row 2:"):
            check_groups(Pattern.from_any(dense), np.array([0, 0]))
        assert check_groups(Pattern.from_any(dense), np.array([0, 3])).tolist() == [0, 1]
