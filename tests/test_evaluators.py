"""The loop evaluator called directly, in this process: perturb, evaluate, restore, combine.

Every expected value is written out by hand from the formula, so the comparisons are
exact (`np.array_equal` or `==`): the evaluator claims the teaching text's arithmetic.
"""
import dataclasses
import math

import numpy as np
import pytest

from engine.batched._batched import batched_evaluate
from engine.batched._detect import bind, get_evaluator, is_model_objective
from engine.fd._evaluators import (LoopOptions, Report, annotate_error, checked_loss, checked_output,
                                   loop_evaluate)
from engine.nn._model import ModelLoss, init_params, mlp
from engine.fd._schemes import get_scheme
from engine.fd._space import ParamSpace

H = 1e-4


def evaluate(f, x, h=H, scheme="central", start=0, stop=None, **options):
    """loop_evaluate over `x` (h=None is h="auto"), with a fresh cache and report."""
    space = ParamSpace(x)
    report = Report()
    values = loop_evaluate(f, space, [h] * len(space.arrays), get_scheme(scheme), start,
                           space.size if stop is None else stop, cache={},
                           loop=LoopOptions(**options), report=report)
    return values, report


def cube_sum(v):
    return float(np.sum(np.asarray(v, dtype=np.float64) ** 3))


def moved(x, i, step):
    y = np.array(x, dtype=np.float64)
    y[i] = y[i] + step
    return y


class Counting:
    """f(x) = sum(x**3) over a 1-D array, counting calls and remembering the points."""

    def __init__(self, fail=None, nan=False):
        self.calls, self.points = 0, []
        self.fail, self.nan = fail or {}, nan   # {entry: "+", "-" or "+-"} relative to `x0`

    def __call__(self, v):
        self.calls += 1
        self.points.append(np.array(v, dtype=np.float64))
        for i, sides in self.fail.items():
            if (v[i] > self.x0[i] and "+" in sides) or (v[i] < self.x0[i] and "-" in sides):
                if self.nan:
                    return math.nan
                raise ArithmeticError(f"fails at entry {i}")
        return cube_sum(v)


# --- the formulas, entry by entry ------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["central", "forward", "central4"])
def test_each_scheme_is_its_formula_bit_for_bit(scheme):
    x = np.array([0.3, -1.2, 2.5])
    got, _ = evaluate(cube_sum, x.copy(), scheme=scheme)
    g, c = cube_sum, cube_sum(x)
    expected = []
    for i in range(3):
        if scheme == "central":
            expected.append((g(moved(x, i, H)) - g(moved(x, i, -H))) / (2 * H))
        elif scheme == "forward":
            expected.append((g(moved(x, i, H)) - c) / H)
        else:
            expected.append((-g(moved(x, i, 2 * H)) + 8 * g(moved(x, i, H))
                             - 8 * g(moved(x, i, -H)) + g(moved(x, i, -2 * H))) / (12 * H))
    assert got.dtype == np.float64 and np.array_equal(got, expected)


def test_a_range_across_two_arrays_is_that_slice_of_the_whole():
    x = {"a": np.array([[0.1, 0.2], [0.3, 0.4]]), "b": np.array([1.5, -2.0, 0.7])}
    f = lambda p: cube_sum(p["a"]) + 2 * cube_sum(p["b"])  # noqa: E731
    whole, _ = evaluate(f, x)
    part, _ = evaluate(f, x, start=2, stop=6)
    assert part.shape == (4,) and np.array_equal(part, whole[2:6])
    assert np.allclose(whole, np.concatenate([3 * x["a"].ravel() ** 2, 6 * x["b"] ** 2]),
                       rtol=1e-7)


def test_the_complex_step_is_refused_and_f_is_never_called():
    """The loop evaluator is real-valued: scheme='complex' belongs to `complex_evaluate`."""
    f = Counting()
    space = ParamSpace(np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"scheme='complex' is evaluated by .*complex_evaluate"):
        loop_evaluate(f, space, [H], get_scheme("complex"), 0, 2)
    assert f.calls == 0


def test_an_empty_range_gives_an_empty_float_array():
    got, _ = evaluate(cube_sum, np.ones(3), start=2, stop=2)
    assert isinstance(got, np.ndarray) and got.shape == (0,)


def test_every_entry_is_restored_bit_for_bit_also_when_f_raises():
    x = np.array([0.1, 1 / 3, 2.0 / 7])
    before = x.copy()
    evaluate(cube_sum, x, scheme="central4")
    assert np.array_equal(x, before)
    with pytest.raises(ArithmeticError):
        evaluate(lambda v: 1 / 0 if v[1] != before[1] else 0.0, x)   # ZeroDivisionError
    assert np.array_equal(x, before)


def test_the_center_is_evaluated_once_per_cache_and_kept_there():
    x = np.array([0.5, 1.5, -0.25])
    f = Counting()
    space, scheme = ParamSpace(x), get_scheme("forward")
    cache = {}
    first = loop_evaluate(f, space, [H] * 1, scheme, 0, 2, cache=cache)
    second = loop_evaluate(f, space, [H] * 1, scheme, 2, 3, cache=cache)
    assert f.calls == 1 + 3        # f(x) once, then one call per entry
    assert cache["center"] == cube_sum(x)
    assert np.array_equal(np.concatenate([first, second]), evaluate(cube_sum, x, scheme="forward")[0])
    central = Counting()
    evaluate(central, x)
    assert central.calls == 2 * 3  # the central scheme never needs f(x)


# --- steps -----------------------------------------------------------------------------------

def test_the_stored_steps_relative_deviation_is_reported():
    x = np.array([1.0, 3.0], dtype=np.float32)
    _, report = evaluate(lambda v: cube_sum(v), x)
    deviations = [abs((float(np.float32(float(b) + m * H)) - float(b)) - m * H) / H
                  for b in x for m in (1, -1)]
    assert report.step_deviation == max(deviations) > min(deviations) > 0
    _, exact = evaluate(cube_sum, np.array([1.0, 3.0]), h=0.25)
    assert exact.step_deviation == 0.0   # 1 ± 0.25 and 3 ± 0.25 are exact in float64


def test_reports_merge_failures_and_the_largest_deviation():
    a, b = Report(["one"], 0.3), Report(["two"], 0.1)
    a.merge(b)
    assert a.failures == ["one", "two"] and a.step_deviation == 0.3
    b.merge(Report([], 0.5))
    assert b.step_deviation == 0.5
    assert Report().failures == [] and Report().step_deviation == 0.0


# The documented h="auto" (README, `auto_step`): eps ** (1 / root) * max(1, |x_i|), roots 2, 3, 5;
# each difference divided by the steps actually stored, written out here per scheme.
AUTO_ROOTS = {"forward": 2, "central": 3, "central4": 5}
STORED_DIFFERENCES = {
    "forward": lambda v, c, s: (v[1] - c) / s[1],
    "central": lambda v, c, s: (v[1] - v[-1]) / (s[1] - s[-1]),
    "central4": lambda v, c, s: (-v[2] + 8 * v[1] - 8 * v[-1] + v[-2]) / (6 * (s[1] - s[-1])),
}


@pytest.mark.parametrize("scheme", ["central", "forward", "central4"])
def test_auto_steps_are_relative_and_the_difference_divides_by_the_stored_steps(scheme):
    x = np.array([0.5, 1.5, -3000.0])
    got, report = evaluate(cube_sum, x.copy(), h=None, scheme=scheme)
    c = cube_sum(x)
    for i, base in enumerate(x):
        h = np.finfo(np.float64).eps ** (1.0 / AUTO_ROOTS[scheme]) * max(1.0, abs(base))
        multiples = (1,) if scheme == "forward" else (1, -1) if scheme == "central" else (2, 1, -1, -2)
        stored = {m: float(base + m * h) - base for m in multiples}
        values = {m: cube_sum(moved(x, i, stored[m])) for m in multiples}
        assert got[i] == STORED_DIFFERENCES[scheme](values, c, stored)
    assert report.step_deviation == 0.0   # only a numeric `h` is compared with what is stored


def test_a_step_that_rounds_away_is_an_error_naming_the_entry_and_x_is_restored():
    x = np.array([2.0, 1.0])
    with pytest.raises(ValueError, match=r"x\[1\] = 1\.0 \+ 1e-300 rounds back to 1\.0 in float64"):
        evaluate(cube_sum, x, h=1e-300, start=1)
    assert np.array_equal(x, [2.0, 1.0])
    got, _ = evaluate(cube_sum, np.array([0.0]), h=1.0)   # a stored step of exactly 1 is fine
    assert got[0] == (1.0 - -1.0) / 2.0


# --- failures --------------------------------------------------------------------------------

def failing(x, fail, nan=False):
    f = Counting(fail, nan)
    f.x0 = x.copy()
    return f


def test_raise_ends_the_call_with_the_users_error_and_a_note_naming_the_side():
    x = np.array([1.0, 2.0, 3.0])
    with pytest.raises(ArithmeticError, match="fails at entry 1") as caught:
        evaluate(failing(x, {1: "-"}), x)
    assert caught.value.__notes__ == ["numgrad: raised by `f` while evaluating x[1] (x_i - 1*h)"]
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at x\[2\] \(x_i \+ 1\*h\)"):
        evaluate(failing(x, {2: "+"}, nan=True), x)
    assert np.array_equal(x, [1.0, 2.0, 3.0])


def test_a_non_finite_loss_from_a_non_finite_x_names_its_first_such_entry():
    x = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, np.nan, -np.inf])}
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at x\['a'\]\[0\]") as caught:
        evaluate(lambda p: float(np.sum(p["a"]) + np.sum(p["b"])), x)
    assert caught.value.__notes__ == [
        "`x` itself is not finite: x['b'][1] is nan (2 non-finite entries in x['b']), so `f` may "
        "be non-finite without any perturbation"]
    with pytest.raises(FloatingPointError) as finite_x:   # a finite x gets no such note
        evaluate(lambda v: math.nan, np.ones(2))
    assert not hasattr(finite_x.value, "__notes__")


@pytest.mark.parametrize("nan", [False, True], ids=["raises", "returns-nan"])
def test_one_sided_takes_the_other_side_with_f_of_x_and_records_each_failure(nan):
    x = np.array([1.0, 2.0, 3.0, 4.0])
    f = failing(x, {0: "-", 1: "+", 3: "+-"}, nan)
    got, report = evaluate(f, x, on_failure="one-sided")
    g, c = cube_sum, cube_sum(x)
    # second order from the side that evaluated: (-3 f(x) + 4 f(x + h) - f(x + 2h)) / 2h
    assert got[0] == (-3 * c + 4 * g(moved(x, 0, H)) - g(moved(x, 0, 2 * H))) / (2 * H)
    assert got[1] == (-3 * c + 4 * g(moved(x, 1, -H)) - g(moved(x, 1, -2 * H))) / (2 * -H)
    assert abs(got[0] - 3.0) < 1e-7 and abs(got[1] - 12.0) < 1e-7   # first order: 3e-4 off
    assert got[2] == (g(moved(x, 2, H)) - g(moved(x, 2, -H))) / (2 * H)
    assert math.isnan(got[3])
    error = "FloatingPointError" if nan else "ArithmeticError"
    assert [(flat, m, kind) for flat, m, kind, _ in report.failures] == [
        (0, -1, error), (1, 1, error), (3, 1, error), (3, -1, error)]
    assert ("fails at entry 0" if not nan else "non-finite loss") in report.failures[0][3]


def test_one_sided_falls_to_first_order_where_the_second_point_fails_too():
    x = np.array([1.0, 2.0])
    f = Counting()
    f.x0 = x.copy()
    g = lambda v: f(v) if v[0] <= 1.0 + 1.5 * H else math.nan  # noqa: E731  x0 + 2h fails
    got, report = evaluate(g, x, on_failure="one-sided")
    c = cube_sum(x)
    assert got[0] == (cube_sum(moved(x, 0, H)) - cube_sum(moved(x, 0, -H))) / (2 * H)
    g = lambda v: f(v) if 1.0 - 1.5 * H <= v[0] <= 1.0 else math.nan  # noqa: E731  only x0 - h
    got, report = evaluate(g, x, on_failure="one-sided")
    assert got[0] == (cube_sum(moved(x, 0, -H)) - c) / -H
    assert [(flat, m) for flat, m, *_ in report.failures] == [(0, 1), (0, -2)]
    # the multiple is an int, so the warning names the point "x_i - 2*h", not "x_i - 2.0*h"
    assert [type(m) for _, m, *_ in report.failures] == [int, int]


def test_one_sided_central4_uses_the_side_whose_two_points_evaluated():
    x = np.array([1.0])
    f = failing(x, {})
    g = lambda v: f(v) if v[0] < 1.0 + 1.5 * H else math.nan  # noqa: E731  x0 + 2h fails
    got, report = evaluate(g, x, scheme="central4", on_failure="one-sided")
    c = cube_sum(x)
    assert got[0] == (-3 * c + 4 * cube_sum(moved(x, 0, -H)) - cube_sum(moved(x, 0, -2 * H))) / (2 * -H)
    assert [(flat, m) for flat, m, *_ in report.failures] == [(0, 2)]


def test_one_sided_with_the_forward_scheme_falls_back_to_the_backward_difference():
    x = np.array([1.0, 2.0])
    got, report = evaluate(failing(x, {1: "+"}), x, scheme="forward", on_failure="one-sided")
    c = cube_sum(x)
    assert got[0] == (cube_sum(moved(x, 0, H)) - c) / H
    assert got[1] == (cube_sum(moved(x, 1, -H)) - c) / -H
    assert [(flat, m) for flat, m, *_ in report.failures] == [(1, 1)]


@pytest.mark.parametrize("scheme, fail, calls", [
    ("forward", {1: "+"}, 1 + 2 + 1),        # f(x), x_0 + h, x_1 + h (fails), x_1 - h
    ("central4", {0: "+"}, 4 + 1 + 4),       # x_0's four points (two fail), f(x), x_1's four
], ids=["forward", "central4"])
def test_the_fallback_evaluates_no_point_it_does_not_combine(scheme, fail, calls):
    """First order takes no second point; a point already evaluated is never evaluated again."""
    x = np.array([1.0, 2.0])
    f = failing(x, fail)
    evaluate(f, x, scheme=scheme, on_failure="one-sided")
    assert f.calls == calls, [p.tolist() for p in f.points]


@pytest.mark.parametrize("fails, toward", [("+", -0.25), ("-", 0.25)], ids=["down-to-lower",
                                                                            "up-to-upper"])
def test_the_fallbacks_second_point_may_lie_exactly_on_a_bound(fails, toward):
    """x = 0.5 in [0, 1] with h = 0.25: the side that works reaches the bound at 2h, which
    is inside, so the one-sided difference keeps second order."""
    x = np.array([0.5])
    bounds = [(np.zeros(1), np.ones(1))]
    got, report = evaluate(failing(x, {0: fails}), x, h=0.25, on_failure="one-sided",
                           bounds=bounds)
    assert got[0] == second(0.5, toward)
    assert [(flat, m) for flat, m, *_ in report.failures] == [(0, 1 if fails == "+" else -1)]


def test_nan_makes_the_failed_entries_nan_without_evaluating_f_of_x():
    x = np.array([1.0, 2.0, 3.0])
    f = failing(x, {0: "+"})
    got, report = evaluate(f, x, on_failure="nan")
    assert math.isnan(got[0]) and got[1] == (cube_sum(moved(x, 1, H)) - cube_sum(moved(x, 1, -H))) / (2 * H)
    assert f.calls == 6 and len(report.failures) == 1


# --- vector outputs (Jacobians) --------------------------------------------------------------

def outputs(v):
    return np.array([np.sum(v ** 2), v[0] * v[-1], np.sum(np.sin(v))])


def test_a_vector_f_gives_one_row_per_entry():
    x = np.array([0.2, -0.7, 1.1])
    got, _ = evaluate(outputs, x, vector=True)
    expected = [(outputs(moved(x, i, H)) - outputs(moved(x, i, -H))) / (2 * H) for i in range(3)]
    assert got.shape == (3, 3) and np.array_equal(got, np.array(expected))


@pytest.mark.parametrize("on_failure", ["nan", "one-sided"])
def test_a_failed_row_is_all_nan_with_the_outputs_shape(on_failure):
    x = np.array([0.2, -0.7, 1.1])

    def f(v):
        if v[0] != x[0]:
            raise ArithmeticError("both sides of entry 0 fail")
        return outputs(v)

    got, _ = evaluate(f, x.copy(), vector=True, on_failure=on_failure)
    assert got.shape == (3, 3) and np.isnan(got[0]).all()
    assert np.array_equal(got[1:], evaluate(outputs, x.copy(), vector=True)[0][1:])


def test_a_scalar_f_is_checked_as_a_scalar_by_default():
    assert LoopOptions() == LoopOptions("raise", None, False)
    with pytest.raises(TypeError, match=r"real scalar loss, got ndarray of shape \(1,\)"):
        evaluate(lambda v: np.array([1.0]), np.ones(2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoopOptions().vector = True


@pytest.mark.filterwarnings("ignore::numpy.exceptions.ComplexWarning")
@pytest.mark.parametrize("value, error, match", [
    (np.array([1.0, np.nan]), FloatingPointError, "non-finite values at here"),
    (np.array([True, False]), TypeError, "must return real numbers, got bool at here"),
    (np.array([1 + 2j]), TypeError, "must return real numbers, got complex128 at here"),
    ("abc", TypeError, "array of real numbers, got str at here"),
], ids=["nan", "bool", "complex", "str"])
def test_checked_output_refuses_what_is_not_finite_real_numbers(value, error, match):
    with pytest.raises(error, match=match):
        checked_output(value, "here")


def test_checked_output_gives_float64():
    got = checked_output(np.array([1, 2], dtype=np.int32), "here")
    assert got.dtype == np.float64 and np.array_equal(got, [1.0, 2.0])


# --- scalar losses ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, error, match", [
    (np.zeros(2), TypeError, r"got ndarray of shape \(2,\) at here"),
    ("1.0", TypeError, "got str at here"),
    (True, TypeError, "got bool at here"),
    (np.bool_(False), TypeError, r"got bool of shape \(\) at here"),
    (1j, TypeError, "got complex at here"),
    (None, TypeError, "got None at here"),
    (np.float32(np.inf), FloatingPointError, r"non-finite loss \(inf\) at here"),
], ids=["array", "str", "bool", "numpy-bool", "complex", "None", "inf"])
def test_checked_loss_refuses_what_is_not_a_finite_real_scalar(value, error, match):
    with pytest.raises(error, match=match):
        checked_loss(value, "here")


@pytest.mark.parametrize("value", [np.float32(2.5), np.array(2.5), 2.5, np.int64(2)])
def test_checked_loss_gives_a_python_float(value):
    got = checked_loss(value, "here")
    assert type(got) is float and got == float(value)


def test_a_float32_or_infinite_loss_goes_through_the_checks():
    got, _ = evaluate(lambda v: np.float32(cube_sum(v)), np.array([1.0]))
    assert got[0] == (float(np.float32(cube_sum([1 + H]))) - float(np.float32(cube_sum([1 - H])))) / (2 * H)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(inf\) at x\[0\]"):
        evaluate(lambda v: math.inf, np.array([1.0]))


def test_a_note_is_added_once_per_error():
    error = ValueError("mine")
    annotate_error(error, "first")
    annotate_error(error, "second")
    assert error.__notes__ == ["numgrad: first"] and error.args == ("mine",)


# --- bounds ----------------------------------------------------------------------------------

def bounded(x, lower, upper, scheme="central", h=0.25):
    f = Counting()
    bounds = [(np.broadcast_to(lower, x.shape), np.broadcast_to(upper, x.shape))]
    got, _ = evaluate(f, x.copy(), h=h, scheme=scheme, bounds=bounds)
    inside = all(np.all((p >= lower) & (p <= upper)) for p in f.points)
    return got, inside


def test_points_exactly_on_the_bounds_keep_the_scheme():
    x = np.array([0.5])
    got, inside = bounded(x, 0.25, 0.75)
    assert inside and got[0] == (cube_sum([0.75]) - cube_sum([0.25])) / 0.5


def second(x, h):
    """The second-order one-sided difference of cube_sum at x toward h (negative: below)."""
    return (-3 * cube_sum([x]) + 4 * cube_sum([x + h]) - cube_sum([x + 2 * h])) / (2 * h)


@pytest.mark.parametrize("x, lower, upper, expected", [
    (0.5, 0.375, 1.0, second(0.5, 0.25)),                    # one-sided upward, full h
    (0.5, 0.0, 0.625, second(0.5, -0.25)),                   # downward, full h
    (0.5, 0.0, 0.5625, second(0.5, -0.25)),                  # downward although h fits above
    (0.5, 0.46875, 0.75, second(0.5, 0.125)),                # shrunk to 2h = room above
    (0.5, 0.25, 0.53125, second(0.5, -0.125)),               # shrunk to 2h = room below
    (0.5, 0.4375, 0.625, (cube_sum([0.5625]) - cube_sum([0.4375])) / 0.125),  # a tie: centred
    (0.5, 0.0, 0.75, (-cube_sum([0.75]) + 8 * cube_sum([0.625]) - 8 * cube_sum([0.375])
                      + cube_sum([0.25])) / (12 * 0.125)),   # central4 centred at h = 0.125
], ids=["lower", "upper", "upper-only-h", "shrunk-above", "shrunk-below", "tie",
        "central4-shrunk"])
def test_near_a_bound_the_difference_is_one_sided_and_stays_inside(x, lower, upper, expected,
                                                                   request):
    scheme = "central4" if "central4" in request.node.name else "central"
    got, inside = bounded(np.array([x]), lower, upper, scheme=scheme)
    assert inside and got[0] == expected


@pytest.mark.parametrize("x, lower, upper, h", [
    (0.5, 0.375, 1.0, 0.125), (0.5, 0.0, 0.625, -0.125), (0.5, 0.49, 0.51, 0.0025)])
def test_central4_at_a_bound_keeps_fourth_order_one_sided(x, lower, upper, h):
    got, inside = bounded(np.array([x]), lower, upper, scheme="central4", h=abs(h))
    f = lambda t: t ** 5  # noqa: E731
    space = ParamSpace(np.array([x]))
    bounds = [(np.full(1, lower), np.full(1, upper))]
    quintic = loop_evaluate(lambda v: float(f(v[0])), space, [abs(h)], get_scheme("central4"),
                            0, 1, {}, LoopOptions(bounds=bounds))
    exact_quartic = 3 * x ** 2
    assert inside and abs(got[0] - exact_quartic) < 1e-12          # exact up to degree 4
    assert abs(h) < 0.1 or abs(quintic[0] - 5 * x ** 4) > 1e-3     # and not beyond


def test_a_step_too_large_for_the_bounds_is_shrunk_not_zero():
    x = np.array([0.0, 1e-8])
    f = Counting()
    bounds = [(np.full(2, -1e-8), np.full(2, 1e-8))]
    got, _ = evaluate(lambda v: float(np.sum(v + v ** 3)), x.copy(), h=1e-6, bounds=bounds)
    assert got[0] == ((1e-8 + 1e-24) - (-1e-8 - 1e-24)) / 2e-8      # centred, h = 1e-8
    assert abs(got[1] - (1 + 3e-16)) < 1e-9                          # downward, h = 1e-8
    got, _ = evaluate(f, x.copy(), h=1e-6, bounds=bounds)
    assert not f.points or all(np.all(np.abs(p) <= 1e-8) for p in f.points)


def test_a_step_shrunk_until_rounding_loses_it_is_an_error_naming_the_entry():
    x = np.array([0.5, 1.0])
    upper = np.array([1.0, np.nextafter(1.0, 2.0)])
    with pytest.raises(ValueError, match=r"x\[1\] = 1\.0: the step, shrunk to .* to fit its bounds "
                                         r".* is lost to rounding"):
        evaluate(cube_sum, x, h=1e-6, bounds=[(np.array([0.0, 1.0]), upper)])
    assert np.array_equal(x, [0.5, 1.0])


def test_a_forward_scheme_at_its_upper_bound_steps_backward():
    got, inside = bounded(np.array([1.0]), 0.0, 1.0, scheme="forward")
    assert inside and got[0] == (cube_sum([0.75]) - 1.0) / -0.25


def test_a_point_with_no_room_is_an_error_naming_it():
    with pytest.raises(ValueError,
                       match=r"x\[0\] has no room to move within its bounds \[.*0\.5\)?, .*0\.5\)?\]"):
        bounded(np.array([0.5]), 0.5, 0.5)


def test_one_sided_fallback_never_leaves_the_bounds():
    x = np.array([1.0])
    f = failing(x, {0: "-"})
    bounds = [(np.zeros(1), np.ones(1))]
    got, _ = evaluate(f, x, h=0.25, on_failure="one-sided", bounds=bounds)
    assert all(np.all(p <= 1.0) for p in f.points), f"evaluated at {f.points}"
    assert math.isnan(got[0])


# --- binding arguments and choosing the evaluator --------------------------------------------

def test_bind_fixes_the_extra_arguments():
    f = lambda x, a, b: x + 10 * a + 100 * b  # noqa: E731
    assert bind(f, (), None) is f
    assert bind(f, (1, 2), None)(3) == 213


def test_a_models_own_loss_is_bound_as_a_model_loss():
    net = mlp([3, 2])
    params = init_params([3, 2], seed=0)
    inputs, labels = np.ones((2, 3)), np.array([0, 1])
    assert is_model_objective(net.loss)
    assert not is_model_objective(lambda p: 0.0) and not is_model_objective(ParamSpace.size.fget)
    bound = bind(net.loss, (inputs, labels), params)
    assert isinstance(bound, ModelLoss) and bound(params) == net.loss(params, inputs, labels)
    with pytest.raises(TypeError, match=r"got 1 argument\(s\) after the params"):
        bind(net.loss, (inputs,), params)


def test_get_evaluator_knows_loop_and_batched_only():
    assert get_evaluator("loop") is loop_evaluate
    assert get_evaluator("batched") is batched_evaluate
    with pytest.raises(ValueError, match=r"`evaluator` must be one of \('loop', 'batched'\)"):
        get_evaluator("auto-ish")
