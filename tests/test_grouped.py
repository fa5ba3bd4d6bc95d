"""The grouped evaluator called directly, in this process, against the loop evaluator and analytic Jacobians.

Exactness claims are tested with `np.array_equal`: groups of one column are the loop
evaluator's arithmetic; groups of independent columns are too, for an `f` whose every
output is computed from its own inputs alone (each row sees the same numbers as when its
column is perturbed alone).
"""
import numpy as np
import pytest

from engine.fd._evaluators import LoopOptions, Report, loop_evaluate
from engine.fd._grouped import GroupedOptions, grouped_evaluate
from engine.fd._grouping import Pattern, group_columns, members
from engine.fd._schemes import get_scheme
from engine.fd._space import ParamSpace

N = 50


def chain(x):
    """*Numerical Optimization* (2nd ed.), p. 198: r_i = 3 e_(i-1) + 2 e_i, e_i = x_(i+1)^3 - x_i^2."""
    e = x[1:] ** 3 - x[:-1] ** 2
    r = np.zeros(x.size)
    r[1:] += 3 * e
    r[:-1] += 2 * e
    return r


def chain_jacobian(x):
    """d r_i / d x_(i-1) = -6 x_(i-1); d r_i / d x_i = 9 x_i^2 - 4 x_i (ends: -4 x_0, 9 x_(n-1)^2);
    d r_i / d x_(i+1) = 6 x_(i+1)^2."""
    diagonal = 9 * x ** 2 - 4 * x
    diagonal[0], diagonal[-1] = -4 * x[0], 9 * x[-1] ** 2
    return np.diag(diagonal) + np.diag(-6 * x[:-1], -1) + np.diag(6 * x[1:] ** 2, 1)


def chain_pattern(n=N):
    i = np.arange(n)
    return np.abs(i[:, None] - i[None, :]) <= 1


def chain_case():
    """SciPy's test of the same example: x just inside bounds that widen along the chain."""
    upper = 0.1 * (1 + np.arange(N))
    x0 = np.where(np.arange(N) % 2 == 0, -upper, upper) * (1 - 1e-7)
    return x0, -upper, upper


def grouped(f, x, pattern, groups=None, h=1e-4, scheme="central", bounds=None, on_failure="raise",
            report=None, cache=None):
    """The dense (m, n) Jacobian from the grouped evaluator's rows; h=None is h="auto"."""
    index = Pattern.from_any(pattern)
    groups = group_columns(index) if groups is None else np.asarray(groups)
    ptr, columns = members(groups)
    options = GroupedOptions(index, ptr, columns, on_failure, bounds)
    space = ParamSpace(x)
    rows = grouped_evaluate(f, space, [h] * len(space.arrays), get_scheme(scheme), 0, ptr.size - 1,
                            {} if cache is None else cache, options, report)
    dense = np.zeros(index.shape)
    for j in range(index.shape[1]):
        its_rows = index.rows[index.col_ptr[j]:index.col_ptr[j + 1]]
        dense[its_rows, j] = rows[groups[j], its_rows]
    return dense


def looped(f, x, h=1e-4, scheme="central", bounds=None):
    """The dense Jacobian by the loop evaluator (`bounds`: one (lower, upper) for a bare x)."""
    space = ParamSpace(x)
    loop = LoopOptions(bounds=None if bounds is None else (bounds,), vector=True)
    return loop_evaluate(f, space, [h] * len(space.arrays), get_scheme(scheme), 0, space.size, {},
                         loop).T


class TestExactness:
    @pytest.mark.parametrize("scheme", ["forward", "central", "central4"])
    @pytest.mark.parametrize("h", [1e-4, None], ids=["h=1e-4", "h=auto"])
    def test_groups_of_one_column_are_the_loop_evaluators_numbers(self, scheme, h, rng):
        weights = rng.standard_normal((6, 9))
        f = lambda v: np.tanh(weights @ v) * v[:6]   # every output depends on every input
        x = rng.standard_normal(9)
        expected = looped(f, x, h, scheme)
        got = grouped(f, x, np.ones((6, 9)), groups=np.arange(9), h=h, scheme=scheme)
        assert np.array_equal(got, expected)

    @pytest.mark.parametrize("scheme", ["forward", "central", "central4"])
    @pytest.mark.parametrize("h", [1e-4, None], ids=["h=1e-4", "h=auto"])
    def test_independent_columns_together_give_the_loop_evaluators_numbers(self, scheme, h):
        x0, _, _ = chain_case()
        expected = looped(chain, x0.copy(), h, scheme)
        got = grouped(chain, x0.copy(), chain_pattern(), h=h, scheme=scheme)
        inside = chain_pattern()
        assert np.array_equal(got[inside], expected[inside]) and not got[~inside].any()
        if scheme != "central4":   # its -v + 8v - 8v + v leaves rounding where f_i does not move
            assert not expected[~inside].any()

    def test_a_dict_of_arrays_is_one_flat_index_space(self, rng):
        x = {"a": rng.standard_normal((2, 3)), "b": rng.standard_normal(4)}
        flat = lambda d: np.concatenate([d["a"].reshape(-1), d["b"]])
        f = lambda d: np.sin(flat(d)) * 2.0
        pattern = np.eye(10, dtype=bool)
        got = grouped(f, x, pattern)
        assert group_columns(pattern).max() == 0   # one evaluation pair moved all ten entries
        assert np.array_equal(got, looped(f, x) * pattern)


    def test_views_fortran_order_and_a_0d_member_are_perturbed_and_restored_in_place(self, rng):
        base = rng.standard_normal(20)
        x = {"view": base[::2], "fortran": np.asfortranarray(rng.standard_normal((2, 3))),
             "scalar": np.array(0.7)}
        before = {key: value.copy() for key, value in x.items()}
        flat = lambda d: np.concatenate([d["view"], d["fortran"].reshape(-1), d["scalar"].reshape(1)])
        f = lambda d: np.exp(flat(d)) - 1.0
        expected = looped(f, x) * np.eye(17)
        assert np.array_equal(grouped(f, x, np.eye(17)), expected)   # one group of 17
        assert np.array_equal(grouped(f, x, np.eye(17), groups=np.arange(17)), expected)
        assert all(np.array_equal(x[key], before[key]) for key in x)
        assert np.array_equal(base[::2], before["view"])


class TestBounds:
    @pytest.mark.parametrize("scheme", ["forward", "central", "central4"])
    @pytest.mark.parametrize("h", [1e-4, None], ids=["h=1e-4", "h=auto"])
    def test_near_bounds_each_column_takes_the_loop_evaluators_scheme_and_step(self, scheme, h):
        x0, lower, upper = chain_case()
        expected = looped(chain, x0.copy(), h, scheme, bounds=(lower, upper))
        got = grouped(chain, x0.copy(), chain_pattern(), h=h, scheme=scheme, bounds=(lower, upper))
        inside = chain_pattern()
        assert np.array_equal(got[inside], expected[inside])

    def test_scipys_chain_case_just_inside_its_bounds_at_scipys_tolerance(self):
        x0, lower, upper = chain_case()
        seen = []

        def f(v):
            seen.append(v.copy())
            return chain(v)

        expected = chain_jacobian(x0)
        for scheme in ("forward", "central"):
            got = grouped(f, x0.copy(), chain_pattern(), h=None, scheme=scheme, bounds=(lower, upper))
            np.testing.assert_allclose(got, expected, rtol=1e-6)   # SciPy's own rtol for this case
        points = np.array(seen)
        assert np.all(points >= lower) and np.all(points <= upper)
        assert np.any(points[:, 1] < x0[1]), "x_1, at its upper bound, stepped down"

    def test_each_column_of_a_group_steps_inward_on_its_own_side(self):
        x = np.array([1.0, 0.5, 0.0])          # at the upper bound, free, at the lower bound
        lower, upper = np.array([0.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
        seen = []

        def f(v):
            seen.append(v.copy())
            return v ** 2

        got = grouped(f, x, np.eye(3), h=1e-3, bounds=(lower, upper))
        assert len(seen) == 3   # f(x) (for the one-sided columns) and the group's two points
        moves = np.array(seen[:2]) - x
        assert np.allclose(moves[:, 0], [-1e-3, -2e-3]) and np.allclose(moves[:, 2], [1e-3, 2e-3])
        assert np.allclose(moves[:, 1], [1e-3, -1e-3])
        # the one-sided difference is second order: exact for a quadratic up to rounding
        # (a first-order one would be off by h = 1e-3)
        np.testing.assert_allclose(np.diag(got), 2 * x, rtol=0, atol=1e-10)

    def test_forward_steps_back_where_x_plus_h_leaves_the_bounds(self):
        x = np.array([1.0, 0.5])
        seen = []
        f = lambda v: seen.append(v.copy()) or v ** 2
        got = grouped(f, x, np.eye(2), h=1e-3, scheme="forward",
                      bounds=(np.zeros(2), np.ones(2)))
        assert np.allclose(seen[0] - x, [-1e-3, 1e-3])
        np.testing.assert_allclose(np.diag(got), 2 * x + [-1e-3, 1e-3], rtol=1e-9)

    def test_a_narrow_interval_shrinks_the_steps_to_fit(self):
        x, lower, upper = np.array([0.5]), np.array([0.4999]), np.array([0.5001])
        seen = []
        f = lambda v: seen.append(v.copy()) or v ** 2
        got = grouped(f, x, np.eye(1), h=1e-3, bounds=(lower, upper))
        assert all(lower <= p <= upper for p in seen)
        np.testing.assert_allclose(got[0, 0], 1.0, rtol=1e-6)

    def test_steps_larger_than_one_near_a_bound_never_leave_it(self):
        x = np.array([1.0, 9.0])   # h = 2: x - 2h and x + 2h would leave [0, 10]
        seen = []
        f = lambda v: seen.append(v.copy()) or v ** 2
        got = grouped(f, x, np.eye(2), h=2.0, bounds=(np.zeros(2), np.full(2, 10.0)))
        points = np.array(seen)
        assert np.all(points >= 0.0) and np.all(points <= 10.0)
        # each steps inward by the second-order one-sided scheme: exact for a quadratic
        np.testing.assert_allclose(np.diag(got), 2 * x, rtol=1e-12)

    def test_an_entry_with_no_room_is_refused(self):
        with pytest.raises(ValueError, match=r"x\[1\] has no room to move within its bounds"):
            grouped(chain, np.array([0.0, 2.0, 0.0]), chain_pattern(3),
                    bounds=(np.array([-1.0, 2.0, -1.0]), np.array([1.0, 2.0, 1.0])))


class TestRestoring:
    def test_x_is_left_bit_identical_also_in_float32(self, rng):
        x = rng.standard_normal(N).astype(np.float32)
        before = x.copy()
        grouped(chain, x, chain_pattern(), h=None)
        assert x.dtype == np.float32 and np.array_equal(x, before)

    def test_the_step_stored_in_float32_is_reported_for_a_fixed_h(self):
        x = np.ones(6, dtype=np.float32)
        report = Report()
        grouped(lambda v: v * 3.0, x, np.eye(6), h=1e-6, report=report)
        stored = float(np.float32(1.0 + 1e-6)) - 1.0   # 9.5e-7: the float32 nearest 1 + 1e-6
        assert report.step_deviation == abs(stored - 1e-6) / 1e-6

    def test_x_is_restored_when_f_raises_and_the_error_names_the_group(self):
        x0, _, _ = chain_case()
        x = x0.copy()

        def f(v):
            if v[4] != x0[4]:
                raise ArithmeticError("no")
            return chain(v)

        with pytest.raises(ArithmeticError) as info:
            grouped(f, x, chain_pattern())
        assert np.array_equal(x, x0)
        assert any("group 1 (x[1] + 0.0001, x[4] + 0.0001, x[7] + 0.0001 and 14 more)" in note
                   for note in info.value.__notes__)

    def test_an_auto_step_is_never_counted_as_a_deviation_from_h(self):
        x = np.linspace(1.1, 7.3, 6).astype(np.float32)   # steps stored in float32 differ from h
        seen = []
        report = Report()
        grouped(lambda v: seen.append(v.copy()) or v * 3.0, x, np.eye(6), h=None, report=report)
        nominal = float(np.finfo(np.float32).eps) ** (1 / 3) * x.astype(np.float64)
        assert np.all(seen[0].astype(np.float64) - x != nominal), "the stored steps are not h"
        assert report.step_deviation == 0.0

    def test_a_group_of_exactly_three_is_named_without_a_count_of_more(self):
        x = np.ones(3)

        def f(v):
            if v[0] != 1.0:
                raise ArithmeticError("no")
            return v * 2.0

        with pytest.raises(ArithmeticError) as info:
            grouped(f, x, np.eye(3))
        assert "while evaluating group 0 (x[0] + 0.0001, x[1] + 0.0001, x[2] + 0.0001)" in (
            "\n".join(info.value.__notes__))


class TestFailures:
    @staticmethod
    def failing(x0, column, side, nan=False):
        def f(v):
            moved = v[column] - x0[column]
            if (side == "+" and moved > 0) or (side == "-" and moved < 0):
                if nan:
                    return np.full(v.size, np.nan)
                raise ArithmeticError(f"fails at {column}")
            return chain(v)
        return f

    def test_nan_makes_the_failed_groups_entries_nan_and_leaves_the_others(self):
        x0, _, _ = chain_case()
        groups = group_columns(chain_pattern())
        report = Report()
        got = grouped(self.failing(x0, 4, "+"), x0.copy(), chain_pattern(), on_failure="nan",
                      report=report)
        expected = looped(chain, x0.copy())
        in_group = groups == groups[4]
        assert np.all(np.isnan(got[:, in_group][chain_pattern()[:, in_group]]))
        assert np.array_equal(got[:, ~in_group], expected[:, ~in_group])
        assert sorted(failure[0] for failure in report.failures) == np.flatnonzero(in_group).tolist()
        assert {failure[1:3] for failure in report.failures} == {(1, "ArithmeticError")}

    @pytest.mark.parametrize("nan", [False, True], ids=["raises", "returns-nan"])
    def test_one_sided_replaces_a_failed_side_by_the_other_with_f_of_x(self, nan):
        x0, _, _ = chain_case()
        h = 1e-4
        groups = group_columns(chain_pattern())
        got = grouped(self.failing(x0, 4, "+", nan), x0.copy(), chain_pattern(), h=h,
                      on_failure="one-sided")
        in_group = groups == groups[4]
        back = x0 - h * in_group
        expected_group = (chain(back) - chain(x0))[:, None] / -h * chain_pattern()[:, in_group]
        assert np.array_equal(got[:, in_group], expected_group)
        assert np.array_equal(got[:, ~in_group], looped(chain, x0.copy())[:, ~in_group])

    def test_one_sided_uses_x_plus_h_where_x_minus_h_fails(self):
        x0, _, _ = chain_case()
        h = 1e-4
        in_group = group_columns(chain_pattern()) == 1
        got = grouped(self.failing(x0, 4, "-"), x0.copy(), chain_pattern(), h=h, on_failure="one-sided")
        expected_group = (chain(x0 + h * in_group) - chain(x0))[:, None] / h * chain_pattern()[:, in_group]
        assert np.array_equal(got[:, in_group], expected_group)

    def test_forward_one_sided_tries_the_other_side(self):
        x0, _, _ = chain_case()
        h = 1e-4
        groups = group_columns(chain_pattern())
        got = grouped(self.failing(x0, 4, "+"), x0.copy(), chain_pattern(), h=h, scheme="forward",
                      on_failure="one-sided")
        in_group = groups == groups[4]
        expected = (chain(x0 - h * in_group) - chain(x0))[:, None] / -h * chain_pattern()[:, in_group]
        assert np.array_equal(got[:, in_group], expected)

    def test_one_sided_gives_nan_where_both_sides_fail(self):
        x0, _, _ = chain_case()
        f = lambda v: chain(v) if v[4] == x0[4] else np.full(N, np.inf)
        got = grouped(f, x0.copy(), chain_pattern(), on_failure="one-sided")
        in_group = group_columns(chain_pattern()) == 1   # x[1], x[4], x[7]...
        assert in_group[4] and np.isnan(got[:, in_group][chain_pattern()[:, in_group]]).all()
        assert np.isfinite(got[:, ~in_group]).all()

    @staticmethod
    def four_at_the_edges():
        """x in [0, 1] (x[2]: [0, 0.5]) with h = 0.25: room below; x - h exactly on the lower
        bound; at the lower bound; at the upper bound (a backward difference)."""
        x = np.array([0.5, 0.25, 0.0, 1.0])
        return x, (np.zeros(4), np.array([1.0, 1.0, 0.5, 1.0]))

    def test_forward_one_sided_steps_back_only_where_the_bounds_allow(self):
        x, bounds = self.four_at_the_edges()
        seen = []

        def f(v):
            seen.append(v.copy())
            if v[0] > 0.5:   # the forward evaluation fails
                raise ArithmeticError("no")
            return v ** 2

        got = grouped(f, x.copy(), np.eye(4), h=0.25, scheme="forward", bounds=bounds,
                      on_failure="one-sided")
        points = np.array(seen)
        assert np.all(points >= bounds[0]) and np.all(points <= bounds[1])
        assert np.array_equal(points[-1], [0.25, 0.0, 0.0, 1.0])   # the other side, where it fits
        # (x^2 - (x - h)^2) / h = 2x - h; the entries with no room on the other side are NaN
        assert np.array_equal(np.diag(got)[:2], [0.75, 0.25])
        assert np.isnan(np.diag(got)[2:]).all()

    def test_forward_one_sided_takes_the_other_side_that_lands_exactly_on_the_upper_bound(self):
        # x = -0.3 in [-0.9, 0.3]: h = 1 fits neither side, and the room below (-0.3 + 0.9 =
        # 0.6000000000000001) beats the room above (0.6) by rounding, so the step is shrunk to
        # 0.6 downward; the other side, x + 0.6, is then exactly the upper bound 0.3
        x, lower, upper = np.array([-0.3]), np.array([-0.9]), np.array([0.3])
        seen = []

        def f(v):
            seen.append(float(v[0]))
            if v[0] < -0.3:
                raise ArithmeticError("no")
            return v ** 3

        got = grouped(f, x.copy(), np.eye(1), h=1.0, scheme="forward", bounds=(lower, upper),
                      on_failure="one-sided")
        assert seen[-1] == 0.3 and all(-0.9 <= p <= 0.3 for p in seen)
        assert got[0, 0] == (0.3 ** 3 - (-0.3) ** 3) / (0.3 - -0.3)

    def test_forward_failures_on_both_sides_are_reported_by_side(self):
        x, bounds = self.four_at_the_edges()
        f = lambda v: v ** 2 if np.array_equal(v, x) else np.full(4, np.nan)
        report = Report()
        got = grouped(f, x.copy(), np.eye(4), h=0.25, scheme="forward", bounds=bounds,
                      on_failure="one-sided", report=report)
        assert np.isnan(np.diag(got)).all()
        sides = [failure[:2] for failure in report.failures]
        assert sides == [(0, 1), (1, 1), (2, 1), (3, -1), (0, -1), (1, -1)]


class TestBadUse:
    def test_f_with_the_wrong_number_of_outputs_is_named(self):
        with pytest.raises(ValueError, match="`f` returned 49 values but `sparsity` has 50 rows"):
            grouped(lambda v: chain(v)[1:], chain_case()[0], chain_pattern())

    def test_a_pattern_of_another_width_than_x_is_refused(self):
        with pytest.raises(ValueError, match="`sparsity` has 50 columns but `x` has 49 entries"):
            grouped(chain, np.ones(49), chain_pattern())

    def test_a_step_that_rounds_away_is_named(self):
        with pytest.raises(ValueError, match=r"x\[0\] = 1e\+20 \+ 0.0001 rounds back"):
            grouped(lambda v: v * 2, np.array([1e20, 1.0]), np.eye(2))

    def test_the_complex_step_is_refused(self):
        with pytest.raises(ValueError, match=r"`scheme` in \('central', 'forward', 'central4'\)"):
            grouped(chain, chain_case()[0], chain_pattern(), scheme="complex")

    def test_a_call_uses_f_of_x_from_the_cache(self):
        x0, _, _ = chain_case()
        calls = []
        f = lambda v: calls.append(1) or chain(v)
        cache = {"center": chain(x0)}
        grouped(f, x0.copy(), chain_pattern(), scheme="forward", cache=cache)
        assert len(calls) == 3   # one per group, f(x) taken from the cache


class TestOptions:
    def options(self, on_failure=None):
        index = Pattern.from_any(chain_pattern())
        ptr, columns = members(group_columns(index))
        extra = () if on_failure is None else (on_failure,)
        return GroupedOptions(index, ptr, columns, *extra)

    def test_n_groups_counts_the_groups(self):
        assert self.options().n_groups == 3   # a tridiagonal pattern: columns j, j + 3, ...

    def test_by_default_a_failed_evaluation_ends_the_call(self):
        x0, _, _ = chain_case()
        options = self.options()

        def f(v):
            if not np.array_equal(v, x0):
                raise ArithmeticError("no")
            return chain(v)

        space = ParamSpace(x0.copy())
        with pytest.raises(ArithmeticError, match="no"):
            grouped_evaluate(f, space, [1e-4], get_scheme("central"), 0, 3, {}, options)

    def test_options_are_frozen_and_equal_only_to_themselves(self):
        options = self.options("nan")
        with pytest.raises(AttributeError):
            options.on_failure = "raise"
        twin = GroupedOptions(options.pattern, options.group_ptr, options.group_columns, "nan")
        assert options == options and options != twin
        assert {options: 1}[options] == 1
