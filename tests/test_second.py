"""The pair evaluator called directly, in this process: the second differences of a Hessian.

On a quadratic ``f(x) = x.A.x / 2`` with small integer `A`, dyadic `x` and a power-of-two
step, every evaluation and every difference is exact in float64, so each stencil must
return `A` itself (`np.array_equal`); other functions are compared with stated bounds.
"""
import math

import numpy as np
import pytest

from engine.fd._calling import Report
from engine.fd._schemes import get_scheme
from engine.fd._second import (SHIFTS, PairOptions, evaluation_count, pair_count, pair_evaluate,
                               pair_of, pairs_to_matrix, second_step)
from engine.fd._space import ParamSpace

H = 2.0 ** -6
A = np.array([[4.0, 1.0, -2.0, 0.0],
              [1.0, 6.0, 3.0, -1.0],
              [-2.0, 3.0, 8.0, 2.0],
              [0.0, -1.0, 2.0, 5.0]])
X = np.array([0.5, -1.25, 2.0, 0.75])


class Counting:
    """``x.A.x / 2`` (or `g(x)`), counting calls, keeping the points, failing where told."""

    def __init__(self, g=None, fail=None, nan=False):
        self.g = g or (lambda v: 0.5 * float(v @ A @ v))
        self.fail, self.nan = fail, nan   # fail(v) -> True where the evaluation fails
        self.calls, self.points = 0, []

    def __call__(self, v):
        self.calls += 1
        self.points.append(np.array(v))
        if self.fail is not None and self.fail(v):
            if self.nan:
                return math.nan
            raise ArithmeticError("does not converge here")
        return self.g(v)


def hessian_here(f, x, scheme="central", h=H, report=None, chunks=None, **options):
    """The two phases run here, as the engine runs them, over `chunks` (None: one chunk)."""
    space, scheme = ParamSpace(x), get_scheme(scheme)
    report = Report() if report is None else report

    def run(count, phase_options):
        cache = {}   # one cache per chunk: as if every chunk ran on its own worker
        bounds = chunks or [(0, count)]
        return np.concatenate([pair_evaluate(f, space, [h], scheme, lo, min(hi, count), {**cache},
                                             phase_options, report)
                               for lo, hi in bounds if lo < min(hi, count)])

    shifts = None
    if scheme.name == "forward":
        shifts = tuple(run(space.size, PairOptions(phase=SHIFTS, **options)).tolist())
    values = run(pair_count(space.size), PairOptions(shifts=shifts, **options))
    return pairs_to_matrix(values, space.size)


@pytest.mark.parametrize("n", range(0, 9))
def test_task_indices_enumerate_the_upper_triangle_row_by_row(n):
    expected = [(i, j) for i in range(n) for j in range(i, n)]
    assert [pair_of(k, n) for k in range(pair_count(n))] == expected
    assert pair_count(n) == len(expected)


def test_task_indices_of_a_large_matrix():
    n = 100_000_000
    start = 77_777_777 * n - 77_777_777 * 77_777_776 // 2   # where row 77,777,777 starts
    for k in (0, n - 1, n, n + 1, start - 1, start, pair_count(n) - 2, pair_count(n) - 1):
        i, j = pair_of(k, n)
        assert 0 <= i <= j < n and i * n - i * (i - 1) // 2 + (j - i) == k


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_a_quadratic_gives_its_matrix_exactly(scheme):
    f = Counting()
    H_ = hessian_here(f, X.copy(), scheme)
    assert np.array_equal(H_, A)
    assert f.calls == evaluation_count(4, scheme)


@pytest.mark.parametrize("scheme, count", [("central", 2 * 25 + 1), ("forward", 1 + 5 + 15)])
def test_evaluation_counts(scheme, count):
    f = Counting(g=lambda v: float(np.sum(v ** 4)))
    hessian_here(f, np.linspace(-1.0, 1.0, 5), scheme)
    assert f.calls == count == evaluation_count(5, scheme)
    assert len({p.tobytes() for p in f.points}) == count   # no point evaluated twice


def test_central_points_are_the_cross_and_the_diagonal_stencils():
    f = Counting(g=lambda v: float(v[0] * v[1]))
    x = X[:2].copy()
    hessian_here(f, x, "central", h=0.5)
    points = {tuple(p - x) for p in f.points}
    assert points == {(0.0, 0.0), (0.5, 0.0), (-0.5, 0.0), (0.0, 0.5), (0.0, -0.5),
                      (0.5, 0.5), (0.5, -0.5), (-0.5, 0.5), (-0.5, -0.5)}


def test_each_row_depends_only_on_its_task_index():
    f = lambda v: float(np.sin(v).sum() * np.cos(v[0] * v[-1]) + np.prod(v))  # noqa: E731
    x = np.linspace(0.3, 1.7, 7)
    for scheme in ("central", "forward"):
        whole = hessian_here(f, x.copy(), scheme, h=None)
        for chunks in ([(0, 5), (5, 100)], [(k, k + 1) for k in range(28)], [(0, 3), (3, 17), (17, 28)]):
            assert np.array_equal(hessian_here(f, x.copy(), scheme, h=None, chunks=chunks), whole)
        assert np.array_equal(whole, whole.T)


def test_x_is_restored_bit_for_bit_also_when_f_raises():
    x = np.array([0.1, 1.0 / 3.0, -7.3])
    before = x.copy()
    hessian_here(lambda v: float(np.exp(v).sum()), x, "central", h=None)
    assert np.array_equal(x, before)
    with pytest.raises(ArithmeticError, match="converge"):
        hessian_here(Counting(g=lambda v: 1.0, fail=lambda v: v[2] > before[2]), x)
    assert np.array_equal(x, before)


class TestSteps:
    def test_auto_is_eps_to_the_quarter_central_and_third_forward_relative(self):
        eps = np.finfo(np.float64).eps
        assert second_step(get_scheme("central"), np.float64) == eps ** 0.25
        assert second_step(get_scheme("forward"), np.float64) == eps ** (1 / 3)
        assert second_step(get_scheme("central"), np.float32) == np.finfo(np.float32).eps ** 0.25
        f = Counting(g=lambda v: float(np.sum(v ** 3)))
        x = np.array([3.0, 0.25])
        hessian_here(f, x, "central", h=None)
        moved = {(i, float(p[i] - x[i])) for p in f.points for i in range(2) if p[i] != x[i]}
        assert moved == {(0, float(np.float64(3.0 + 3 * eps ** 0.25) - 3.0)),
                         (0, float(np.float64(3.0 - 3 * eps ** 0.25) - 3.0)),
                         (1, eps ** 0.25), (1, -eps ** 0.25)}

    def test_auto_divides_by_the_stored_steps(self):
        # float32: x_i + m*h_i is stored up to ~4e-6 of the step off its value, differently on
        # each side (|x_i| - h_i lies in a finer binade than |x_i| + h_i); divided by the
        # stored steps, the quadratic's differences stay exact up to float64 rounding of f
        # (the divided difference is exact for unequal spacings too)
        x = np.array([2.01, -64.5], dtype=np.float32)
        a = np.array([[2.0, 1.0], [1.0, 3.0]])
        f = lambda v: 0.5 * float(v.astype(np.float64) @ a @ v.astype(np.float64))  # noqa: E731
        assert np.abs(hessian_here(f, x, "central", h=None) - a).max() < 1e-9

    def test_a_step_that_rounds_away_is_refused_before_f_is_called(self):
        f = Counting()
        with pytest.raises(ValueError, match=r"x\[0\] = 1e\+16 .* rounds back"):
            hessian_here(f, np.array([1e16, 1.0]), h=1e-4)
        assert f.calls == 0

    def test_a_numeric_step_records_the_deviation_of_the_stored_one(self):
        report = Report()
        hessian_here(lambda v: float(np.sum(v.astype(np.float64) ** 2)),
                     np.array([1000.0], dtype=np.float32), h=1e-3, report=report)
        assert 0.01 < report.step_deviation < 0.1   # float32 spacing at 1000 is 6.1e-5


class TestBounds:
    @pytest.mark.parametrize("scheme", ["central", "forward"])
    def test_f_is_never_evaluated_outside_and_a_quadratic_stays_exact(self, scheme):
        lower = np.array([0.5, -1.25 - H, -10.0, -10.0])
        upper = np.array([10.0, 10.0, 2.0, 0.75 + H])
        f = Counting()
        H_ = hessian_here(f, X.copy(), scheme, bounds=((lower, upper),))
        assert all(np.all(p >= lower) and np.all(p <= upper) for p in f.points)
        assert np.array_equal(H_, A)   # one-sided stencils are exact on a quadratic too

    def test_one_sided_entries_of_a_cubic_agree_to_first_order(self):
        g = lambda v: float(v[0] ** 3 * v[1] + v[1] ** 3)  # noqa: E731
        x = np.array([1.0, 2.0])
        exact = np.array([[6 * x[0] * x[1], 3 * x[0] ** 2], [3 * x[0] ** 2, 6 * x[1]]])
        bounds = ((np.array([1.0, -5.0]), np.array([5.0, 2.0])),)   # x[0] at lower, x[1] at upper
        f = Counting(g=g)
        H_ = hessian_here(f, x.copy(), "central", h=1e-4, bounds=bounds)
        assert all(p[0] >= 1.0 and p[1] <= 2.0 for p in f.points)
        assert np.abs(H_ - exact).max() < 1e-2 and not np.array_equal(H_, exact)
        assert np.abs(hessian_here(g, x.copy(), "central", h=1e-4) - exact).max() < 1e-6

    @pytest.mark.parametrize("scheme", ["central", "forward"])
    @pytest.mark.parametrize("side", [1, -1], ids=["at-lower", "at-upper"])
    def test_at_a_bound_the_stencils_are_the_documented_one_sided_ones(self, scheme, side):
        """Diagonal (0, 1, 2) and cross (0, 1) x (0, 1) steps inward, mirrored at an upper bound."""
        x = np.array([1.0, 2.0])
        bounds = ((x, x + 1.0),) if side == 1 else ((x - 1.0, x),)
        f = Counting(g=lambda v: float(v[0] ** 2 * v[1]))
        hessian_here(f, x.copy(), scheme, bounds=bounds)
        steps = [tuple(int(round(m)) for m in side * (p - x) / H) for p in f.points]
        assert {m for step in steps for m in step} == {0, 1, 2}
        assert {step for step in steps if 0 not in step} == {(1, 1)}   # the cross's corner

    def test_no_room_within_the_bounds_is_an_error_naming_the_entry(self):
        bounds = ((np.array([0.5, -1.25, 2.0 - H / 2, 0.0]), np.array([1.0, 0.0, 2.0 + H / 2, 1.0])),)
        with pytest.raises(ValueError, match=r"x\[2\] = 2.0 has no room .* smaller `h`"):
            hessian_here(Counting(), X.copy(), bounds=bounds)


class TestFailures:
    FAIL = staticmethod(lambda v: v[1] > X[1] and v[2] > X[2])   # both x1 and x2 moved up

    def test_raise_ends_the_call_naming_the_point(self):
        with pytest.raises(ArithmeticError) as info:
            hessian_here(Counting(fail=self.FAIL), X.copy())
        assert any("x[1] + 1*h, x[2] + 1*h" in note for note in info.value.__notes__)

    @pytest.mark.parametrize("nan", [False, True])
    def test_nan_marks_the_one_pair_that_failed(self, nan):
        report = Report()
        H_ = hessian_here(Counting(fail=self.FAIL, nan=nan), X.copy(), on_failure="nan",
                          report=report)
        expected = A.copy()
        expected[1, 2] = expected[2, 1] = math.nan
        assert np.array_equal(H_, expected, equal_nan=True)
        error = "FloatingPointError" if nan else "ArithmeticError"
        assert [(i, point, e) for i, point, e, _ in report.failures] == [
            (1, ((1, 1), (2, 1)), error)]

    def test_a_failure_is_reported_at_its_first_coordinate(self):
        report = Report()
        hessian_here(Counting(fail=lambda v: v[2] > X[2] and v[3] > X[3]), X.copy(),
                     on_failure="nan", report=report)
        assert [(i, point) for i, point, _, _ in report.failures] == [(2, ((2, 1), (3, 1)))]

    def test_one_sided_takes_the_next_stencil_whose_points_all_evaluate(self):
        report = Report()
        f = Counting(fail=self.FAIL)
        H_ = hessian_here(f, X.copy(), on_failure="one-sided", report=report)
        assert np.array_equal(H_, A)   # (0, 1) x (-1, 1) fails too; (-1, 0) x (-1, 1) is exact
        assert len(report.failures) == 1   # the failed point is evaluated once
        assert f.calls == evaluation_count(4, "central") + 2   # x1 - h, x2 +- h: two new points

    def test_one_sided_gives_nan_where_no_stencil_evaluates(self):
        f = Counting(fail=lambda v: v[0] != X[0])
        H_ = hessian_here(f, X.copy(), on_failure="one-sided")
        assert np.isnan(H_[0]).all() and np.isnan(H_[:, 0]).all()
        assert np.array_equal(H_[1:, 1:], A[1:, 1:])

    def test_forward_shifts_that_failed_fall_back_to_the_backward_stencil(self):
        report = Report()
        f = Counting(fail=lambda v: v[3] > X[3])
        H_ = hessian_here(f, X.copy(), "forward", on_failure="one-sided", report=report)
        assert np.array_equal(H_, A)
        failed = sorted({point for _, point, _, _ in report.failures})
        assert ((3, 1),) in failed and all(dict(p)[3] > 0 for p in failed)
