"""`kink_entries` rule by rule, at the edges of each rule, on losses known only at the points
a probe visits.

Each loss here is a table: ``f`` at x, x +- h, x +- 2h and x +- h/10 (the points the module's
note names), and a KeyError anywhere else, so a probe that steps elsewhere fails the test.
The values sit near C = 2**48 (or 2**50) with steps of a power of two, so every difference is
exact and the rounding allowance ``2 eps max|f| / h`` is a round number (0.25 at h = 0.5):
each case puts backprop just inside or just outside one threshold, that allowance included.
"""
import numpy as np
import pytest

from engine.fd._schemes import auto_step, get_scheme
from engine.train._kinks import KINK_PROBES, kink_entries

EPS = np.finfo(np.float64).eps
C = 2.0 ** 48
FAR = 1000.0   # a second-order or fine difference this far from backprop meets nothing


def table_loss(array, values):
    """``loss()``: `values` at the current `array[0]`; KeyError at any other point."""
    return lambda: values[float(array[0])]


def kinks_of(values, x, bp, h, tol=1.0):
    """`kink_entries` for one suspect entry at `x` (its central difference FAR off)."""
    array = np.array([x])
    found = kink_entries(table_loss(array, values), array, np.array([bp + FAR]), np.array([bp]),
                         h, tol)
    assert array[0] == x    # put back
    return found.tolist()


def rounding(up, center, down, step):
    return 2 * EPS * max(abs(up), abs(center), abs(down)) / step


class TestSuspects:
    def test_an_entry_whose_central_difference_meets_backprop_is_not_probed(self):
        def never():
            raise AssertionError("a probe was made")
        array = np.array([0.5, 0.25])
        found = kink_entries(never, array, np.array([1.0, -2.0]), np.array([1.0, -2.0]), 1e-4, 1e-5)
        assert found.dtype == np.int64 and found.tolist() == []
        # an error of exactly tol_abs is not above it
        found = kink_entries(never, array, np.array([1.5, 0.0]), np.array([1.0, 0.0]), 1e-4, 0.5)
        assert found.tolist() == []

    def test_at_most_limit_suspects_are_probed_the_worst_first(self):
        # 1001 entries each h/2 right of a ReLU's kink: each a kink, backprop 1 on the right piece
        h, n = 1e-4, KINK_PROBES + 1
        w = np.full(n, h / 2)
        numerical = 0.75 - 1e-6 * np.arange(n)   # entry 0 the least wrong, the last the worst
        found = kink_entries(lambda: float(np.maximum(w, 0.0).sum()), w, numerical, np.ones(n), h, 1e-5)
        assert KINK_PROBES == 1000 and found.tolist() == list(range(1, n))
        found = kink_entries(lambda: float(np.maximum(w, 0.0).sum()), w, numerical, np.ones(n), h, 1e-5,
                             limit=2)
        assert found.tolist() == [n - 2, n - 1]


def first_rule(forward, backward, h=0.5):
    """Slopes `forward` (<= 0) and `backward` (>= 0) at x = 0 from f(0) = C; the second-order
    and the fine differences FAR from any backprop near them."""
    up, down = C + forward * h, C - backward * h
    return {0.0: C, h: up, -h: down, 2 * h: up - FAR, -2 * h: down - FAR,
            h / 10: C - 8, -h / 10: C - 8}


class TestFirstRule:
    """A kink: the one-sided differences differ by d > tol_abs, and backprop is within
    d / 10 plus their rounding of one of them."""

    def test_within_a_tenth_of_the_gap_plus_the_rounding_is_a_kink(self):
        values = first_rule(0.0, 8.0)   # d = 8, rounding 2 eps C / h = 0.25
        assert rounding(C, C, C - 4, 0.5) == 0.25
        assert kinks_of(values, 0.0, 1.0, 0.5) == [0]              # 1.0 <= 0.8 + 0.25
        assert kinks_of(values, 0.0, 8.0 / 10 + 0.25, 0.5) == [0]  # on the edge: within
        assert kinks_of(values, 0.0, 1.1, 0.5) == []               # beyond it

    def test_backprop_near_the_forward_difference_is_a_kink(self):
        assert kinks_of(first_rule(-8.0, 0.0), 0.0, -7.0, 0.5) == [0]

    def test_one_sided_differences_apart_by_exactly_tol_abs_are_no_kink(self):
        assert kinks_of(first_rule(0.0, 8.0), 0.0, 1.0, 0.5, tol=8.0) == []

    def test_the_rounding_is_that_of_the_shorter_stored_step(self):
        # at 2**53 the step 1.25 is stored as +2 and -1: the rounding 2 eps f / 1 = 0.5
        x, c = 2.0 ** 53, 2.0 ** 50
        assert (x + 1.25) - x == 2 and x - (x - 1.25) == 1
        values = {x: c, x + 2: c, x - 1: c - 8, x - 2: c - FAR}   # forward 0, backward 8
        assert kinks_of(values, x, 1.2, 1.25) == [0]              # 1.2 <= 0.8 + 0.5


def second_rule(bp, off, miss):
    """h = 0.5 at x = 0: forward difference 0, the central one `off` from `bp`, the forward
    side's second-order difference `miss` from it; the backward side's and the fine ones far."""
    down = C - (bp + off)
    return {0.0: C, 0.5: C, -0.5: down, 1.0: C - (bp - miss), -1.0: C - FAR,
            0.05: C - 8, -0.05: C - 8}


class TestSecondOrderRule:
    """A kink: backprop within tol_abs of one side's second-order difference, and
    10 (its distance + 3 roundings) <= its distance to the central difference (rounding 0.25)."""

    @pytest.mark.parametrize("off, kink", [(7.5, True), (8.0, True), (5.0, False)],
                             ids=["ten-times-closer-exactly", "ten-times-closer", "closer-but-not-ten"])
    def test_ten_times_closer_than_the_central_difference_counting_the_rounding(self, off, kink):
        assert kinks_of(second_rule(20.0, off, 0.0), 0.0, 20.0, 0.5) == ([0] if kink else [])

    def test_within_exactly_tol_abs_is_a_kink(self):
        assert kinks_of(second_rule(20.0, 20.0, 1.0), 0.0, 20.0, 0.5, tol=1.0) == [0]
        assert kinks_of(second_rule(20.0, 20.0, 1.5), 0.0, 20.0, 0.5, tol=1.0) == []

    def test_a_far_point_that_rounds_onto_the_near_one_is_skipped(self):
        # at 2**53 - 1, x + 2 rounds onto x + 1: that side has no parabola; the other decides
        x = 2.0 ** 53 - 1
        assert x + 2 == x + 1
        values = {x: 0.0, x + 1: 100.0, x - 1: 100.0, x - 2: 420.0}   # backward side's slope: 10
        assert kinks_of(values, x, 10.0, 1.0) == [0]


def third_rule(fine_forward, fine_backward):
    """h = 0.625 at x = 0 (h / 10 = 1/16 exactly): one-sided differences -200 and 200, the
    second-order ones about -+300; at h / 10 the given slopes (rounding 2 eps C * 16 = 2)."""
    h, s, up = 0.625, 0.0625, C - 125.0
    return {0.0: C, h: up, -h: up, 2 * h: up, -2 * h: up,
            s: C + fine_forward * s, -s: C - fine_backward * s}


class TestBothSidesRule:
    """A kink: at h / 10 the one-sided differences agree within 1/100 of their gap at h
    (400 / 100 = 4) plus their rounding (2), and the central difference there meets backprop."""

    def test_agreeing_100_times_better_counting_the_rounding_is_a_kink(self):
        assert kinks_of(third_rule(-3.0, 3.0), 0.0, 0.0, 0.625) == [0]    # 6 <= 4 + 2: the edge

    def test_agreeing_only_20_times_better_is_no_kink(self):
        assert kinks_of(third_rule(-10.0, 10.0), 0.0, 0.0, 0.625) == []

    def test_the_fine_central_difference_within_exactly_tol_abs(self):
        assert kinks_of(third_rule(-2.0, 2.0), 0.0, 1.0, 0.625, tol=1.0) == [0]
        assert kinks_of(third_rule(-2.0, 2.0), 0.0, 1.5, 0.625, tol=1.0) == []


class TestStepsLostToRounding:
    """An entry so large that a step rounds to nothing is never a kink (and never divides by 0)."""

    @pytest.mark.parametrize("x", [2.0 ** 53, -2.0 ** 53], ids=["up-lost", "down-lost"])
    def test_a_step_h_that_rounds_to_nothing(self, x):
        array = np.array([x])
        assert kink_entries(lambda: 0.0, array, np.array([1000.0]), np.array([0.0]), 1.0, 1.0).tolist() == []

    @pytest.mark.parametrize("x", [2.0 ** 52, -2.0 ** 52], ids=["up-lost", "down-lost"])
    def test_a_step_h_over_10_that_rounds_to_nothing(self, x):
        # h = 4 is stored exactly; h / 10 = 0.4 rounds to 0 on one side, 0.5 on the other
        values = {x: 0.0, x + 4: 400.0, x - 4: 400.0, x + 8: 0.0, x - 8: 0.0,
                  x + 0.4: 0.0, x - 0.4: 0.0}
        assert sorted({(x + 0.4) - x, x - (x - 0.4)}) == [0.0, 0.5]
        assert kinks_of(values, x, 0.0, 4.0) == []


@pytest.mark.parametrize("x", [4.0, 0.5, -4.0])
def test_h_auto_is_the_central_schemes_step_times_max_1_abs_x(x):
    h = auto_step(get_scheme("central"), np.dtype(np.float64)) * max(1.0, abs(x))
    values = {x: 0.0, x + h: 0.0, x - h: -8.0 * h}   # forward 0, backward 8: backprop 0 is a kink
    assert kinks_of(values, x, 0.0, None) == [0]
