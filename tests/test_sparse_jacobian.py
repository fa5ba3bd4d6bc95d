"""Sparse Jacobians (`sparsity=`): pattern forms, groups, the CSR result, bad input, exactness.

Exact claims use `np.array_equal`: the same result at any worker count, in-process or
not; the sparse result's entries equal the dense loop Jacobian's for an `f` whose outputs
are each computed from their own inputs alone (the chain below). SciPy's own test case
(*Numerical Optimization*, p. 198, x just inside its bounds) is held to SciPy's rtol.
"""
import dataclasses
import sys

import numpy as np
import pytest

sparse = pytest.importorskip("scipy.sparse")

from engine.derivatives._sparse import assemble_csr, missed_nonzero, resolve_sparsity  # noqa: E402
from engine.fd._schemes import Scheme  # noqa: E402
from engine.fd._space import ParamSpace  # noqa: E402

N = 12


def chain(x):
    """*Numerical Optimization* (2nd ed.), p. 198: r_i = 3 e_(i-1) + 2 e_i, e_i = x_(i+1)^3 - x_i^2."""
    e = x[1:] ** 3 - x[:-1] ** 2
    r = np.zeros(x.size)
    r[1:] += 3 * e
    r[:-1] += 2 * e
    return r


def chain_pattern(n=N):
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) <= 1


class TestResolve:
    def test_a_pattern_alone_is_grouped_and_a_pair_is_checked(self):
        alone = resolve_sparsity(chain_pattern())
        assert alone.n_groups == 3 and np.array_equal(alone.groups, np.arange(N) % 3)
        pair = resolve_sparsity((sparse.csr_array(chain_pattern()), np.arange(N)))
        assert pair.n_groups == N
        with pytest.raises(ValueError, match=r"sparsity\[1\] \(the groups\)` puts columns 0 and 1"):
            resolve_sparsity((chain_pattern(), np.arange(N) // 2))

    def test_the_result_cannot_be_changed_and_is_hashed_by_identity(self):
        """The checked pattern and groups a Jacobian keeps for all its calls: frozen, equal only to itself."""
        first, second = resolve_sparsity(chain_pattern()), resolve_sparsity(chain_pattern())
        with pytest.raises(dataclasses.FrozenInstanceError):
            first.groups = np.zeros(N, dtype=int)
        assert len({first, second, first}) == 2 and first != second

    def test_a_tuple_of_another_length_is_refused(self):
        with pytest.raises(ValueError, match=r"\(pattern, groups\)"):
            resolve_sparsity((chain_pattern(), np.arange(N), None))

    def test_without_scipy_the_error_names_the_extra(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "scipy.sparse", None)
        with pytest.raises(ImportError, match=r"numgrad-engine\[sparse\]"):
            resolve_sparsity(chain_pattern())


class TestAssemble:
    def test_each_entry_comes_from_its_columns_group_and_only_the_patterns_entries_are_stored(self):
        sparsity = resolve_sparsity(chain_pattern())
        values = np.arange(3 * N, dtype=float).reshape(3, N) + 1.0   # group k, row i
        values[0, 0] = 0.0                                              # an entry that is 0
        result = assemble_csr(sparsity, values)
        assert isinstance(result, sparse.csr_array) and result.shape == (N, N)
        assert result.nnz == chain_pattern().sum()   # the explicit 0 is kept
        rows, cols = np.nonzero(chain_pattern())
        assert np.array_equal(result.toarray()[rows, cols], values[cols % 3, rows])
        assert result.has_sorted_indices

    def test_a_missed_nonzero_is_named_by_row_and_entry(self):
        sparsity = resolve_sparsity(np.eye(4))
        dense = np.eye(4)
        missed_nonzero(sparsity, dense, ParamSpace(np.zeros(4)))   # nothing outside: no error
        dense[2, 0], dense[3, 1] = 1e-3, -5.0
        with pytest.raises(ValueError, match=r"output 3 depends on x\[1\] \(column 1.*-5\.0\), and 2 "
                                             "entries outside"):
            missed_nonzero(sparsity, dense, ParamSpace(np.zeros(4)))


# --- the public Jacobian with `sparsity=` ------------------------------------------------------

import warnings  # noqa: E402

import engine  # noqa: E402
from engine import NumericalFallbackWarning  # noqa: E402


def chain_x0(n=N):
    """SciPy's test point of the chain: just inside bounds that widen along it."""
    upper = 0.1 * (1 + np.arange(n))
    return np.where(np.arange(n) % 2 == 0, -upper, upper) * (1 - 1e-7), -upper, upper


def chain_jacobian(x):
    diagonal = 9 * x ** 2 - 4 * x
    diagonal[0], diagonal[-1] = -4 * x[0], 9 * x[-1] ** 2
    return np.diag(diagonal) + np.diag(-6 * x[:-1], -1) + np.diag(6 * x[1:] ** 2, 1)


def same_csr(a, b):
    return (a.shape == b.shape and np.array_equal(a.indptr, b.indptr)
            and np.array_equal(a.indices, b.indices) and np.array_equal(a.data, b.data))


class Counting:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x):
        self.calls += 1
        return self.f(x)


CALLS = []   # the evaluations of the two functions below: module state, which thread workers share


def counted_chain(x):
    CALLS.append(1)
    return chain(x)


def counted_chain_failing_up(x):
    """`chain`, counted, raising where x[3] or x[4] is above chain_x0's: the + sides of groups
    0 and 1, the first task of each of two workers."""
    CALLS.append(1)
    if np.any(x[3:5] > chain_x0(x.size)[0][3:5]):
        raise ArithmeticError("diverged")
    return chain(x)


class TestResult:
    @pytest.mark.parametrize("scheme", ["forward", "central", "central4"])
    @pytest.mark.parametrize("bounded", [False, True], ids=["free", "at-bounds"])
    def test_the_entries_are_the_dense_jacobians_bit_for_bit(self, scheme, bounded):
        x0, lower, upper = chain_x0()
        bounds = (lower, upper) if bounded else None
        with engine.Jacobian(chain, sparsity=chain_pattern(), scheme=scheme, bounds=bounds,
                             workers=1) as J:
            got = J(x0.copy())
        dense = engine.jacobian(chain, x0.copy(), scheme=scheme, bounds=bounds, workers=1)
        assert isinstance(got, sparse.csr_array) and got.shape == (N, N)
        assert got.nnz == chain_pattern().sum() and got.has_sorted_indices
        assert np.array_equal(got.toarray()[chain_pattern()], dense[chain_pattern()])

    @pytest.mark.parametrize("workers", [2, 3])
    @pytest.mark.parametrize("scheme", ["forward", "central"])
    def test_the_same_bits_at_any_worker_count(self, workers, scheme):
        x0, lower, upper = chain_x0(40)
        options = dict(sparsity=chain_pattern(40), scheme=scheme, h="auto", bounds=(lower, upper))
        with engine.Jacobian(chain, workers=1, **options) as J:
            serial = J(x0.copy())
        with engine.Jacobian(chain, workers=workers, dispatch="parallel", chunk_size=1,
                             **options) as J:
            for _ in range(2):   # the second call reuses the resident workers
                assert same_csr(J(x0.copy()), serial)
            assert J.plan.where == "parallel"

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_random_patterns_give_the_dense_jacobians_bits_and_exact_zeros_elsewhere(self, seed):
        """f = A @ tanh(x) with A sparse, stored dense: row i sums the same terms whichever
        other columns move (0 * tanh(x_k) is 0), so the groups change no bit."""
        rng = np.random.default_rng(seed)
        pattern = rng.random((30, 25)) < 0.12
        a = np.where(pattern, rng.standard_normal(pattern.shape), 0.0)
        f = lambda v: a @ np.tanh(v)
        x = rng.standard_normal(25)
        got = engine.jacobian(f, x.copy(), sparsity=pattern, scheme="forward", workers=1)
        dense = engine.jacobian(f, x.copy(), scheme="forward", workers=1)
        assert np.array_equal(got.toarray()[pattern], dense[pattern])
        assert not dense[~pattern].any() and got.nnz == pattern.sum()

    def test_the_one_shot_call_on_shared_workers_gives_the_same_bits(self):
        x0, _, _ = chain_x0()
        serial = engine.jacobian(chain, x0.copy(), sparsity=chain_pattern(), workers=1)
        assert same_csr(engine.jacobian(chain, x0.copy(), sparsity=chain_pattern(), workers=2), serial)

    def test_every_pattern_form_gives_the_same_result(self):
        x0, _, _ = chain_x0()
        expected = engine.jacobian(chain, x0.copy(), sparsity=chain_pattern(), workers=1)
        forms = [chain_pattern().astype(int), chain_pattern().astype(float).tolist(),
                 sparse.csc_matrix(chain_pattern()), sparse.coo_array(chain_pattern().astype(float)),
                 (chain_pattern(), np.arange(N) % 3 + 10)]
        for form in forms:
            assert same_csr(engine.jacobian(chain, x0.copy(), sparsity=form, workers=1), expected)
        one_each = engine.jacobian(chain, x0.copy(), sparsity=(chain_pattern(), np.arange(N)),
                                   workers=1)
        assert same_csr(one_each, expected)   # one column per group: the same numbers

    def test_value_and_grad_gives_f_of_x_too(self):
        x0, _, _ = chain_x0()
        with engine.Jacobian(chain, sparsity=chain_pattern(), workers=1) as J:
            value, result = J.value_and_grad(x0.copy())
        assert np.array_equal(value, chain(x0)) and isinstance(result, sparse.csr_array)

    def test_a_dict_x_is_one_column_per_entry_in_flat_order(self, rng):
        x = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal(4)}
        f = lambda d: np.concatenate([np.sin(d["a"]).reshape(-1), d["b"] ** 2])
        got = engine.jacobian(f, x, sparsity=np.eye(10), workers=1)
        expected = np.diag(np.concatenate([np.cos(x["a"]).reshape(-1), 2 * x["b"]]))
        np.testing.assert_allclose(got.toarray(), expected, rtol=1e-7, atol=1e-9)

    @pytest.mark.parametrize("scheme, calls", [("forward", 3 + 1), ("central", 2 * 3 + 1)])
    def test_a_tridiagonal_jacobian_costs_its_three_groups(self, scheme, calls):
        n = 1000
        f = Counting(chain)
        with engine.Jacobian(f, sparsity=chain_pattern(n), scheme=scheme, workers=1) as J:
            J(np.linspace(0.1, 0.9, n))
        assert f.calls == calls   # the groups' evaluations and f(x), which every Jacobian call makes


    @pytest.mark.parametrize("f, scheme, bounded, on_failure, grouped", [
        (counted_chain, "forward", False, "raise", True), (counted_chain, "central", True, "raise", True),
        (counted_chain_failing_up, "central", False, "one-sided", True),
        (counted_chain, "forward", False, "raise", False)],
        ids=["forward", "central-at-bounds", "central-one-sided", "dense-forward"])
    def test_on_two_workers_f_of_x_is_still_evaluated_once_per_call(self, f, scheme, bounded, on_failure,
                                                                      grouped):
        """Where the tasks need f(x) (forward, a bound, a fallback), it is computed once for all
        the chunks: each task's evaluations plus one, as on one worker. (The first two tasks go
        to the two workers, and both need f(x): a worker that computed it itself counts.)"""
        x0, lower, upper = chain_x0(40)
        CALLS.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericalFallbackWarning)
            with engine.Jacobian(f, sparsity=chain_pattern(40) if grouped else None, scheme=scheme,
                                 on_failure=on_failure, bounds=(lower, upper) if bounded else None,
                                 workers=2, backend="threading", dispatch="parallel",
                                 check_state=False, chunk_size=1) as J:
                J(x0.copy())
        tasks = 3 if grouped else 40
        assert len(CALLS) == tasks * (1 if scheme == "forward" else 2) + 1

    def test_an_f_with_no_outputs_gives_an_empty_matrix(self):
        got = engine.jacobian(lambda v: np.zeros(0), np.ones(3), sparsity=np.zeros((0, 3)), workers=1)
        assert isinstance(got, sparse.csr_array) and got.shape == (0, 3) and got.nnz == 0


class TestScipyCase:
    """SciPy's test of sparse differences: *Numerical Optimization* p. 198, n = 50, x just inside
    its bounds, held to SciPy's rtol of 1e-6 against the analytic Jacobian."""

    @pytest.mark.parametrize("scheme", ["forward", "central"])
    @pytest.mark.parametrize("workers", [1, 2])
    def test_within_bounds_at_scipys_tolerance(self, scheme, workers):
        x0, lower, upper = chain_x0(50)
        seen = []
        f = (lambda v: seen.append(v.copy()) or chain(v)) if workers == 1 else chain
        with engine.Jacobian(f, sparsity=sparse.csr_array(chain_pattern(50)), scheme=scheme,
                             h="auto", bounds=(lower, upper), workers=workers,
                             dispatch="parallel") as J:
            got = J(x0.copy())
        np.testing.assert_allclose(got.toarray(), chain_jacobian(x0), rtol=1e-6)
        if workers == 1:
            points = np.array(seen)
            assert np.all(points >= lower) and np.all(points <= upper)

    def test_without_bounds_too(self):
        x0, _, _ = chain_x0(50)
        got = engine.jacobian(chain, x0.copy(), sparsity=chain_pattern(50), h="auto", workers=1)
        np.testing.assert_allclose(got.toarray(), chain_jacobian(x0), rtol=1e-6)


def broyden(x):
    """Broyden's tridiagonal function: r_i = (3 - 2 x_i) x_i - x_(i-1) - 2 x_(i+1) + 1."""
    r = (3 - 2 * x) * x + 1
    r[1:] -= x[:-1]
    r[:-1] -= 2 * x[1:]
    return r


def test_least_squares_takes_the_sparse_jacobian():
    optimize = pytest.importorskip("scipy.optimize")
    n = 30
    x0 = -np.ones(n)
    with engine.Jacobian(broyden, sparsity=chain_pattern(n), workers=1) as J:
        fit = optimize.least_squares(broyden, x0, jac=J, method="trf")
        assert isinstance(J(fit.x), sparse.csr_array)
    reference = optimize.least_squares(broyden, x0, jac="3-point", method="trf")
    assert fit.success and fit.cost < 1e-16 and reference.cost < 1e-16
    np.testing.assert_allclose(fit.x, reference.x, atol=1e-8)


class TestBadInput:
    def test_a_pattern_of_the_wrong_width_is_refused_before_any_work(self):
        f = Counting(chain)
        x = np.ones(N + 1)
        with engine.Jacobian(f, sparsity=chain_pattern(), workers=1) as J:
            with pytest.raises(ValueError, match=r"`sparsity` has shape \(12, 12\): 12 columns, but "
                                                 r"`x` has 13 entries"):
                J(x)
        assert f.calls == 0 and np.array_equal(x, np.ones(N + 1))

    def test_a_pattern_of_the_wrong_width_is_refused_before_the_check_evaluates_f(self):
        f = Counting(chain)
        with engine.Jacobian(f, sparsity=chain_pattern(), check_sparsity=True, workers=1) as J:
            with pytest.raises(ValueError, match=r"`sparsity` has shape \(12, 12\): 12 columns, but "
                                                 r"`x` has 13 entries"):
                J(np.ones(N + 1))
        assert f.calls == 0

    def test_an_f_with_another_number_of_outputs_is_named(self):
        with pytest.raises(ValueError, match="`f` returned 11 values but `sparsity` has 12 rows"):
            engine.jacobian(lambda v: chain(v)[1:], np.ones(N), sparsity=chain_pattern(), workers=1,
                            scheme="forward")

    def test_groups_that_share_a_row_are_refused_naming_two_columns(self):
        groups = np.arange(N) % 3
        groups[5] = groups[4]
        with pytest.raises(ValueError, match=r"puts columns 4 and 5 in one group \(group 1\).* row 4"):
            engine.Jacobian(chain, sparsity=(chain_pattern(), groups))

    @pytest.mark.parametrize("options, match", [
        (dict(evaluator="loop"), "`evaluator` does not apply with `sparsity`"),
        (dict(check_sparsity="yes"), "`check_sparsity` must be True or False"),
        (dict(scheme=Scheme("backward", (-1,), True, lambda v, c, h: (c - v[0]) / h,
                            lambda v, c, s: (v[0] - c) / s[0], order=1, auto_root=2)),
         r"takes `scheme` in \('central', 'forward', 'central4'\) or 'complex', got 'backward'"),
    ], ids=["evaluator", "check-not-bool", "a-scheme-object-of-another-kind"])   # complex: test_accuracy.py
    def test_options_that_do_not_apply_are_refused(self, options, match):
        with pytest.raises(ValueError, match=match):
            engine.Jacobian(chain, sparsity=chain_pattern(), **options)

    def test_check_sparsity_without_a_pattern_is_refused(self):
        with pytest.raises(ValueError, match="pass `sparsity` too"):
            engine.Jacobian(chain, check_sparsity=True)

    def test_without_scipy_the_error_names_the_extra_at_construction(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "scipy.sparse", None)
        with pytest.raises(ImportError, match=r"numgrad-engine\[sparse\]"):
            engine.Jacobian(chain, sparsity=chain_pattern())


def test_without_scipy_the_engine_imports_and_groups_dense_patterns():
    import subprocess
    script = ("import sys; sys.modules['scipy'] = None; import numpy as np, engine; "
              "print(engine.group_columns(np.eye(3) + np.eye(3, k=1)).tolist()); "
              "engine.Jacobian(np.sin, sparsity=np.eye(3))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[0, 1, 0]"
    assert "ImportError: a sparse Jacobian needs SciPy" in done.stderr
    assert "numgrad-engine[sparse]" in done.stderr


class TestCheckSparsity:
    def test_a_missed_nonzero_is_named_and_the_check_runs_once(self):
        pattern = chain_pattern()
        pattern[5, 6] = False   # r_5 depends on x_6
        x0, _, _ = chain_x0()
        with engine.Jacobian(chain, sparsity=pattern, check_sparsity=True, workers=1) as J:
            with pytest.raises(ValueError, match=r"misses a nonzero: output 5 depends on x\[6\]"):
                J(x0.copy())
        f = Counting(chain)
        with engine.Jacobian(f, sparsity=chain_pattern(), check_sparsity=True, workers=1) as J:
            first = J(x0.copy())
            assert f.calls == (N + 1) + (2 * 3 + 1)   # the forward dense check, the groups, f(x)
            assert same_csr(J(x0.copy()), first)
            assert f.calls == (N + 1) + 2 * (2 * 3 + 1)   # checked once, not again

    def test_a_pattern_of_fewer_outputs_than_inputs_is_checked_too(self):
        pattern = np.zeros((2, 4), dtype=bool)
        pattern[0, :2] = pattern[1, 2:] = True
        f = lambda v: np.array([v[0] * v[1], v[2] + v[3] ** 2])  # noqa: E731
        x = np.arange(1.0, 5.0)
        got = engine.jacobian(f, x, sparsity=pattern, check_sparsity=True, workers=1)
        assert np.array_equal(got.toarray() != 0, pattern)
        pattern[1, 3] = False
        with pytest.raises(ValueError, match=r"output 1 depends on x\[3\] \(column 3;"):
            engine.jacobian(f, x, sparsity=pattern, check_sparsity=True, workers=1)

    @pytest.mark.parametrize("scheme", ["central4", "central"])
    def test_a_right_pattern_passes_whatever_the_scheme_and_bounds(self, scheme):
        """central4's -v + 8v - 8v + v, and the one-sided -3v + 4v - v at a bound, leave rounding
        where an output does not move (1.9e-10 here); the check does not use them."""
        x0, lower, upper = chain_x0()
        for bounds in (None, (lower, upper)):
            with engine.Jacobian(chain, sparsity=chain_pattern(), check_sparsity=True, scheme=scheme,
                                 bounds=bounds, workers=1) as J:
                assert J(x0.copy()).nnz == chain_pattern().sum()


class TestFailures:
    def test_a_failed_group_is_nan_and_named_in_the_warning(self):
        x0, _, _ = chain_x0()

        def f(v):
            if v[4] > x0[4]:
                raise ArithmeticError("diverged")
            return chain(v)

        with engine.Jacobian(f, sparsity=chain_pattern(), on_failure="nan", workers=1) as J:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = J(x0.copy())
            failed = [failure.entry for failure in J.failures]
        assert failed == [f"x[{j}]" for j in range(1, N, 3)]   # group 1: x[1], x[4], x[7], x[10]
        assert np.isnan(got[:, [1, 4, 7, 10]].data).all()
        assert np.isfinite(got[:, [0, 2, 3, 5]].data).all()
        assert any(issubclass(w.category, NumericalFallbackWarning) and "x[4] at x_i + 1*h" in
                   str(w.message) for w in caught)

    def test_by_default_a_failed_group_ends_the_call_naming_it_and_one_sided_replaces_it(self):
        x0, _, _ = chain_x0()
        h = 1e-4

        def f(v):
            if v[4] > x0[4]:
                raise ArithmeticError("diverged")
            return chain(v)

        with engine.Jacobian(f, sparsity=chain_pattern(), workers=1) as J:
            with pytest.raises(ArithmeticError) as info:
                J(x0.copy())
        assert any("group 1 (x[1] + 0.0001, x[4] + 0.0001, x[7] + 0.0001 and 1 more)" in note
                   for note in info.value.__notes__)
        with engine.Jacobian(f, sparsity=chain_pattern(), on_failure="one-sided", workers=1) as J:
            with pytest.warns(NumericalFallbackWarning):
                got = J(x0.copy()).toarray()
        moved = x0 - h * (np.arange(N) % 3 == 1)
        expected = (chain(moved) - chain(x0)) / -h   # x_j - h for the whole group, with f(x)
        for j in (1, 4, 7, 10):
            rows = np.flatnonzero(chain_pattern()[:, j])
            assert np.array_equal(got[rows, j], expected[rows])
