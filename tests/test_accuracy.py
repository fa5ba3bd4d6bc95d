"""Accuracy beyond the plain step: second order at bounds, shrunk steps, the complex step.

SciPy's own cases (`scipy/optimize/tests/test__numdiff.py`, `TestApproxDerivativesDense`),
re-expressed: the same functions, points, bounds and tolerances, through `engine.jacobian`
with ``h="auto"``; parallel results equal in-process ones exactly.
"""
import math
import warnings

import numpy as np
import pytest

from engine.fd._calling import LoopOptions, Report
from engine.fd._complex import complex_evaluate, complex_grouped_evaluate
from engine.fd._grouped import GroupedOptions
from engine.fd._grouping import Pattern, group_columns, members
from engine.fd._richardson import RichardsonOptions, extrapolate, richardson_evaluate
from engine.fd._schemes import COMPLEX
from engine.fd._space import ParamSpace
from engine.run import _backends
from engine import (Gradient, GradientWithError, Jacobian, NotDeterministicError, NumericalFallbackWarning,
                    gradient_with_error, jacobian, parallel_numerical_gradient)


def vector_vector(x):
    return np.array([x[0] * np.sin(x[1]), x[1] * np.cos(x[0]), x[0] ** 3 * x[1] ** -0.5])


def vector_vector_jac(x):
    return np.array([
        [np.sin(x[1]), x[0] * np.cos(x[1])],
        [-x[1] * np.sin(x[0]), np.cos(x[0])],
        [3 * x[0] ** 2 * x[1] ** -0.5, -0.5 * x[0] ** 3 * x[1] ** -1.5]])


def with_nan(x):
    """x where |x| <= 1e-8, NaN elsewhere: any point outside the bounds poisons the result."""
    return np.where(np.abs(x) <= 1e-8, x, np.nan)


def both(f, x, **options):
    """The Jacobian on 1 and on 2 workers, checked identical; returned once."""
    one = jacobian(f, x.copy(), workers=1, **options)
    two = jacobian(f, x.copy(), workers=2, chunk_size=1, **options)
    assert np.array_equal(one, two)
    return one


class TestScipyBoundsCases:
    @pytest.mark.parametrize("bounds", [None, (1.0, np.inf), (-np.inf, 2.0), (1.0, 2.0)],
                             ids=["none", "lower", "upper", "both"])
    def test_with_bounds_3_point(self, bounds):
        x = np.array([1.0, 2.0])
        got = both(vector_vector, x, h="auto", bounds=bounds)
        np.testing.assert_allclose(got, vector_vector_jac(x), rtol=1e-9)

    @pytest.mark.parametrize("x0", [0.0, 1e-8])
    @pytest.mark.parametrize("h", ["auto", 1e-6])
    def test_bound_switches(self, x0, h):
        got = both(with_nan, np.array([x0]), h=h, bounds=(-1e-8, 1e-8))
        np.testing.assert_allclose(got, [[1.0]], rtol=1e-9)

    def test_tight_bounds(self):
        x = np.array([10.0, 10.0])
        got = both(vector_vector, x, h="auto", bounds=(x - 3e-9, x + 2e-9))
        np.testing.assert_allclose(got, vector_vector_jac(x), rtol=1e-6)

    def test_second_order_at_a_bound_is_not_first_order(self):
        # the first-order one-sided difference with the central step missed by 6e-6 to 1.3e-5
        x = np.array([1.0, 2.0])
        got = jacobian(vector_vector, x, h="auto", bounds=(1.0, 2.0), workers=1)
        relative = np.abs(got - vector_vector_jac(x)) / np.abs(vector_vector_jac(x))
        assert relative.max() < 1e-9


# --- the complex step ------------------------------------------------------------------------

def vector_scalar(x):
    return np.sin(x[0] * x[1]) * np.log(x[0])


def vector_scalar_grad(x):
    return np.array([x[1] * np.cos(x[0] * x[1]) * np.log(x[0]) + np.sin(x[0] * x[1]) / x[0],
                     x[0] * np.cos(x[0] * x[1]) * np.log(x[0])])


def scalar_vector(x):
    return np.array([x[0] ** 2, np.tan(x[0]), np.exp(x[0])])


class TestComplexStep:
    """SciPy's dense 'cs' cases at its rtol, 1e-12 (`test_scalar_scalar`, `test_scalar_vector`,
    `test_vector_scalar`, `test_vector_vector`)."""

    @pytest.mark.parametrize("f, x, expected", [
        (np.sinh, [1.0], lambda x: np.cosh(x).reshape(1, 1)),
        (scalar_vector, [1.0], lambda x: scalar_vector_jac(x)),
        (lambda x: np.atleast_1d(vector_scalar(x)), [100.0, -0.5],
         lambda x: vector_scalar_grad(x).reshape(1, 2)),
        (vector_vector, [-100.0, 0.2], vector_vector_jac),
    ], ids=["scalar-scalar", "scalar-vector", "vector-scalar", "vector-vector"])
    @pytest.mark.parametrize("h", ["auto", 1.49e-8])
    def test_scipy_dense_cases(self, f, x, expected, h):
        x = np.array(x)
        got = both(f, x, scheme="complex", h=h)
        np.testing.assert_allclose(got, expected(x), rtol=1e-12)

    def test_gradients_to_rounding_where_central_loses_digits(self):
        x = np.array([100.0, -0.5])
        got = parallel_numerical_gradient(vector_scalar, x.copy(), scheme="complex", h="auto",
                                          workers=1)
        central = parallel_numerical_gradient(vector_scalar, x.copy(), h="auto", workers=1)
        truth = vector_scalar_grad(x)
        assert np.max(np.abs(got - truth) / np.abs(truth)) < 1e-14
        assert np.max(np.abs(central - truth) / np.abs(truth)) > 1e-11

    def test_the_callers_arrays_stay_real_and_unchanged_and_workers_agree(self):
        x = {"a": np.array([[0.5, 1.5], [2.0, -1.0]]), "b": np.array([3.0])}
        before = {k: v.copy() for k, v in x.items()}
        seen = []

        def f(p):
            seen.append({k: v.dtype for k, v in p.items()})
            return np.sum(np.exp(p["a"]) * p["b"][0]) + np.sin(p["b"][0])

        got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1)
        assert all(np.array_equal(x[k], before[k]) and x[k].dtype == np.float64 for k in x)
        pairs = {(d["a"], d["b"]) for d in seen}
        real, lifted = np.dtype(np.float64), np.dtype(np.complex128)
        assert {(lifted, real), (real, lifted)} <= pairs and (lifted, lifted) not in pairs
        np.testing.assert_allclose(got["a"], np.exp(before["a"]) * 3.0, rtol=1e-15)
        np.testing.assert_allclose(got["b"], [np.exp(before["a"]).sum() + np.cos(3.0)],
                                   rtol=1e-15)
        two = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=2,
                                          chunk_size=1)
        assert all(np.array_equal(two[k], got[k]) for k in x)

    def test_float32_parameters_take_a_complex64_copy(self):
        x = np.array([0.5, 2.0], dtype=np.float32)
        got = parallel_numerical_gradient(lambda v: np.sum(v ** 3), x, scheme="complex",
                                          h="auto", workers=1)
        assert got.dtype == np.float32 and np.array_equal(got, 3 * x ** 2)

    @pytest.mark.parametrize("f, cause", [
        (lambda v: abs(v[0]) + v[1], "imaginary part of exactly 0"),
        (lambda v: np.float64(v[0]) ** 2 + v[1], "imaginary part of exactly 0"),
        (lambda v: np.abs(v).sum(), "real value"),
        (lambda v: math.exp(v[0]) + v[1], "imaginary part of exactly 0"),
        (lambda v: float(np.sum(v ** 2)), "real value"),
        (lambda v: np.sum(v.astype(float) ** 2), "real value"),
        (lambda v: math.exp(v.tolist()[1]), "cannot take the complex input"),
        (lambda v: max(v.tolist()), "cannot take the complex input"),
    ], ids=["abs", "np.float64", "np.abs", "math.exp", "float", "astype", "math.exp-python", "max-python"])
    def test_an_f_that_drops_the_imaginary_part_is_an_error_naming_the_entry(self, f, cause):
        x = np.array([1.0, 2.0])
        with pytest.raises(TypeError, match=rf"{cause}.* at x\[[01]\] \+ 1e-20i.*Likely causes: "
                                            r"`abs`.*`math.exp`"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
                parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1)
        assert np.array_equal(x, [1.0, 2.0])

    def test_a_true_zero_derivative_is_zero_and_costs_two_calls(self):
        calls = []

        def f(v):
            calls.append(1)
            return np.cos(v[0]) + v[1] ** 2 + 0 * v[2]

        got = parallel_numerical_gradient(f, np.array([0.0, 1.0, 5.0]), scheme="complex",
                                          workers=1, check_state=False)
        assert np.array_equal(got, [0.0, 2.0, 0.0]) and len(calls) == 3 + 2 * 2

    def test_a_jacobian_that_drops_it_is_an_error_too(self):
        with pytest.raises(TypeError, match=r"real array .* at x\[0\] \+ 1e-20i"):
            jacobian(lambda v: np.abs(v), np.array([1.0, 2.0]), scheme="complex", h="auto",
                     workers=1)

    def test_a_non_finite_value_is_named_or_nan_as_asked(self):
        f = lambda v: np.log(v[0]) if v[1] < 1 else np.nan + 0j * v[0]  # noqa: E731
        x = np.array([2.0, 0.5])
        got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1)
        assert got[0] == 0.5 and got[1] == 0.0
        x = np.array([2.0, 1.0])
        with pytest.raises(FloatingPointError, match=r"non-finite value at x\[0\]"):
            parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1)
        with pytest.warns(NumericalFallbackWarning):
            got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", on_failure="nan",
                                              workers=1)
        assert np.isnan(got).all()

    def test_the_batched_evaluator_refuses_it(self):
        from engine import ThreeLayerNet
        net = ThreeLayerNet(4, 3, 2, seed=0)
        loss = net.loss_function(np.ones((1, 4)), np.array([1]))
        with pytest.raises(ValueError, match="scheme='complex' runs on the loop evaluator only"):
            parallel_numerical_gradient(loss, net.params, scheme="complex", evaluator="batched",
                                        workers=1)


class TestComplexStepSteps:
    """The points `f` sees, the steps that are refused, and the failures `f` causes."""

    def test_auto_steps_and_the_zero_probe_follow_the_documented_scales(self):
        # h="auto" is 1e-20 * max(1, |x_i|); a zero imaginary part is probed, real, at
        # x_i -+ eps**(1/3) * max(1, |x_i|)
        x = np.array([0.5, 1000.0, 2.0])
        imaginary, real = [], []

        def f(v):   # the probes come on the complex copy, with imaginary parts of 0
            (imaginary if np.any(v.imag) else real).append(v.copy())
            return v[0] * v[2] + np.cos(v[1] - 1000.0)   # zero derivative at x[1]

        got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1,
                                          check_state=False)
        assert np.array_equal(got, [2.0, 0.0, 0.5])
        assert [list(v.imag) for v in imaginary] == [[1e-20, 0, 0],
                                                              [0, 1e-20 * 1000.0, 0],
                                                              [0, 0, 1e-20 * 2.0]]
        probe = np.finfo(np.float64).eps ** (1 / 3) * 1000.0
        assert {float(v[1].real) for v in real} == {1000.0 + probe, 1000.0 - probe}
        assert len(real) == 2 and all(v[0] == 0.5 and v[2] == 2.0 for v in real)

    def test_the_probe_of_an_entry_below_one_moves_it_by_eps_to_the_third(self):
        x = np.array([0.5, 0.25])
        real = []

        def f(v):
            if not np.any(v.imag):
                real.append(float(v[0].real))
            return np.cos(v[0] - 0.5) + v[1]

        got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1,
                                          check_state=False)
        probe = np.finfo(np.float64).eps ** (1 / 3)
        assert np.array_equal(got, [0.0, 1.0]) and set(real) == {0.5 + probe, 0.5 - probe}

    def test_a_zero_derivative_where_f_is_zero_all_around_is_zero(self):
        # both probes give exactly 0: no change at all, not a dropped imaginary part
        got = parallel_numerical_gradient(lambda v: v[0] * v[1], np.array([1.0, 0.0]),
                                          scheme="complex", h="auto", workers=1)
        assert np.array_equal(got, [0.0, 1.0])

    def test_a_zero_derivative_with_rounding_in_the_probes_is_zero(self):
        # (v0 + 1/3) - v0 is 1/3 up to rounding: at 0.3 -+ eps**(1/3) the two probes differ
        # by 1.2e-10 (an ulp of f times two), far below 64 eps |f|: rounding, not a slope
        f = lambda v: ((v[0] + 1 / 3) - v[0]) * v[1]  # noqa: E731
        x = np.array([0.3, 1e6])
        probe = np.finfo(np.float64).eps ** (1 / 3)
        assert f([0.3 + probe, 1e6]) != f([0.3 - probe, 1e6])
        got = parallel_numerical_gradient(f, x, scheme="complex", h="auto", workers=1)
        assert np.array_equal(got, [0.0, (0.3 + 1 / 3) - 0.3])

    def test_a_step_of_one_is_a_step(self):
        # Im (x + i)**2 = 2x exactly: h=1.0 is a valid complex step
        got = parallel_numerical_gradient(lambda v: np.sum(v ** 2), np.array([1.5, -3.0]),
                                          scheme="complex", h=1.0, workers=1)
        assert np.array_equal(got, [3.0, -6.0])

    def test_a_step_that_underflows_in_complex64_is_refused(self):
        x = np.array([1.0, 2.0], dtype=np.float32)
        with pytest.raises(ValueError, match=r"x\[0\]: the complex step 1e-50 underflows to 0 "
                                             r"in complex64; use a larger `h`"):
            parallel_numerical_gradient(lambda v: np.sum(v ** 2), x, scheme="complex", h=1e-50,
                                        workers=1)

    def test_a_scalar_f_that_returns_an_array_is_refused(self):
        with pytest.raises(TypeError, match=r"must return a scalar loss, got an array of shape "
                                            r"\(2,\) at x\[0\] \+ 1e-20i"):
            parallel_numerical_gradient(lambda v: v ** 2, np.array([1.0, 2.0]),
                                        scheme="complex", h="auto", workers=1)

    @staticmethod
    def fails_at_one(v):
        if v[1].imag != 0:
            raise ArithmeticError("no derivative here")
        return np.sum(v ** 2)

    def test_an_error_of_f_is_raised_naming_the_point(self):
        with pytest.raises(ArithmeticError, match="no derivative here") as caught:
            parallel_numerical_gradient(self.fails_at_one, np.array([1.0, 2.0, 3.0]),
                                        scheme="complex", h="auto", workers=1)
        assert "numgrad: raised by `f` while evaluating x[1] + 2e-20i" in caught.value.__notes__

    @pytest.mark.parametrize("on_failure", ["nan", "one-sided"])
    def test_an_error_of_f_is_nan_and_reported_as_asked(self, on_failure):
        with Gradient(self.fails_at_one, scheme="complex", h="auto", workers=1,
                      on_failure=on_failure) as grad:
            with pytest.warns(NumericalFallbackWarning, match=r"1 evaluation"):
                got = grad(np.array([1.0, 2.0, 3.0]))
            failures = grad.failures
        assert np.array_equal(got, [2.0, np.nan, 6.0], equal_nan=True)
        assert [tuple(f) for f in failures] == [("x[1]", "x_i + 1*h", "ArithmeticError",
                                                 "no derivative here")]

    @pytest.mark.parametrize("first", [True, False], ids=["first-entry", "later-entry"])
    def test_a_jacobian_row_that_fails_is_nan_of_the_outputs_shape(self, first):
        bad = 0 if first else 2

        def f(v):
            if v[bad].imag != 0:
                raise ArithmeticError("no derivative here")
            return np.array([v[0] * v[1], v[2] ** 2])

        x = np.array([1.0, 2.0, 3.0])
        with pytest.warns(NumericalFallbackWarning):
            got = jacobian(f, x, scheme="complex", h="auto", workers=1, on_failure="nan")
        expected = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 6.0]])
        expected[:, bad] = np.nan
        assert got.shape == (2, 3) and np.array_equal(got, expected, equal_nan=True)

    def test_the_failed_rows_shape_comes_from_f_at_x_once_per_cache(self):
        calls = []

        def f(v):
            calls.append(np.iscomplexobj(v))
            if np.iscomplexobj(v):
                raise ArithmeticError("no derivative here")
            return np.array([1.0, 2.0])

        space = ParamSpace(np.array([1.0, 2.0, 3.0]))
        loop = LoopOptions(vector=True, on_failure="nan")
        got = complex_evaluate(f, space, [None], COMPLEX, 0, 3, None, loop, Report())
        assert got.shape == (3, 2) and np.isnan(got).all() and calls.count(False) == 1
        calls.clear()
        cache = {"center": np.zeros(2)}
        got = complex_evaluate(f, space, [None], COMPLEX, 0, 3, cache, loop, Report())
        assert got.shape == (3, 2) and np.isnan(got).all() and calls.count(False) == 0

    def test_no_entries_give_an_empty_result(self):
        space = ParamSpace(np.array([1.0, 2.0]))
        got = complex_evaluate(lambda v: np.sum(v), space, [None], COMPLEX, 1, 1)
        assert got.shape == (0,)


# --- Richardson extrapolation with an error estimate ----------------------------------------

def exp_sin_log(v):
    return np.exp(v[0]) * np.sin(v[1]) * np.log(v[2])


def exp_sin_log_grad(v):
    f = exp_sin_log(v)
    return np.array([f, np.exp(v[0]) * np.cos(v[1]) * np.log(v[2]), np.exp(v[0]) * np.sin(v[1]) / v[2]])


def scalar_vector_jac(x):
    return np.array([[2 * x[0]], [np.cos(x[0]) ** -2], [np.exp(x[0])]])


def row(f, i):
    """Output i of a vector `f`, as a scalar function (or row i of a Jacobian)."""
    return lambda v: f(v)[i]


SMOOTH = [   # name, f, x, the exact gradient
    ("sinh", lambda v: np.sinh(v[0]), [1.0], lambda v: np.cosh(v)),
    ("vector-scalar", vector_scalar, [100.0, -0.5], vector_scalar_grad),
    *[(f"vector-vector[{i}]", row(vector_vector, i), [-100.0, 0.2], row(vector_vector_jac, i))
      for i in range(3)],
    *[(f"scalar-vector[{i}]", row(scalar_vector, i), [1.0], row(scalar_vector_jac, i))
      for i in range(3)],
    ("exp-sin-log", exp_sin_log, [0.5, 1.2, 3.0], exp_sin_log_grad),
    ("exp-sin-log-far", exp_sin_log, [-3.0, 40.0, 0.2], exp_sin_log_grad),
    ("gaussian-product", lambda v: np.exp(-v @ v) * np.sin(3 * v[0]) * np.log1p(v[1] ** 2),
     [0.3, -0.7], lambda v: np.exp(-v @ v) * np.array([
         (3 * np.cos(3 * v[0]) - 2 * v[0] * np.sin(3 * v[0])) * np.log1p(v[1] ** 2),
         np.sin(3 * v[0]) * (2 * v[1] / (1 + v[1] ** 2) - 2 * v[1] * np.log1p(v[1] ** 2))])),
]


class TestRichardson:
    def test_a_noisy_f_is_refused_by_default(self):
        rng = np.random.default_rng(0)
        with GradientWithError(lambda v: float(np.sum(v ** 2) + rng.normal()), workers=1) as g:
            with pytest.raises(NotDeterministicError, match=r"changed rng\)"):
                g(np.ones(2))

    @pytest.mark.parametrize("name, f, x, exact", SMOOTH, ids=[case[0] for case in SMOOTH])
    def test_within_1e_10_and_the_estimate_bounds_the_true_error(self, name, f, x, exact):
        x = np.array(x)
        value, error = gradient_with_error(f, x.copy(), workers=1)
        truth = exact(x)
        true_error = np.abs(value - truth)
        assert np.all(true_error <= 1e-10 * np.abs(truth)), true_error / np.abs(truth)
        assert np.all(true_error <= error), (true_error, error)
        assert np.all(error <= 1e-8 * np.maximum(np.abs(truth), 1e-300))   # and it is informative

    def test_workers_give_the_same_bits(self):
        x = {"a": np.array([0.5, 1.2]), "b": np.array([[3.0]])}
        f = lambda p: float(np.exp(p["a"][0]) * np.sin(p["a"][1]) * np.log(p["b"][0, 0]))  # noqa: E731
        one = gradient_with_error(f, x, workers=1)
        two = gradient_with_error(f, x, workers=2, chunk_size=1)
        for got, again in zip(one, two):
            assert all(np.array_equal(got[k], again[k]) for k in x)
        assert np.array_equal(x["a"], [0.5, 1.2]) and np.array_equal(x["b"], [[3.0]])

    @pytest.mark.parametrize("decimals", [11, 9, 7])
    def test_an_f_with_noise_above_rounding_gets_a_larger_estimate_that_bounds_it(self, decimals):
        # f known to 10**-decimals only; at 5 decimals the estimate no longer bounds the
        # error (docs/accuracy.md): the rounding model is eps * |f|
        f = lambda v: float(np.round(np.exp(v[0]), decimals))  # noqa: E731
        value, error = gradient_with_error(f, np.array([0.3]), workers=1)
        true_error = abs(value[0] - np.exp(0.3))
        assert 1e-12 < true_error <= error[0]

    def test_its_workers_are_its_own_and_close_stops_them(self, monkeypatch):
        """A `GradientWithError` does not borrow the pool the one-shot calls share."""
        monkeypatch.setattr(_backends, "_shared", {})
        g = GradientWithError(exp_sin_log, workers=2, backend="threading", dispatch="parallel")
        try:
            value, _ = g(np.array([0.5, 1.2, 3.0]))
            pool = g._link.pool
            assert _backends._shared == {} and pool.usable
        finally:
            g.close()
        assert not pool.usable
        assert np.array_equal(value, gradient_with_error(exp_sin_log, np.array([0.5, 1.2, 3.0]),
                                                         workers=1)[0])

    def test_evaluations_per_entry_are_two_per_level(self):
        calls = []

        def f(v):
            calls.append(1)
            return float(np.sum(np.sin(v)))

        with GradientWithError(f, workers=1, dispatch="in-process", levels=6) as g:
            g(np.array([0.1, 0.2, 0.3]))
        assert len(calls) == 3 * 2 * 6
        calls.clear()
        gradient_with_error(f, np.array([0.1, 0.2, 0.3]), workers=1, dispatch="in-process")
        assert len(calls) == 3 * 24   # the default, as documented

    def test_a_step_that_rounds_away_is_an_error_naming_the_entry(self):
        x = np.array([1.0, 3.0], dtype=np.float16)   # 0.125 / 2**11 is half an ulp at 1
        with pytest.raises(ValueError, match=r"x\[0\] = 1\.0 \+ .* rounds back to 1\.0 in float16"):
            gradient_with_error(lambda v: float(np.sum(v.astype(np.float64) ** 2)), x, workers=1)
        assert np.array_equal(x, [1.0, 3.0])

    def test_steps_where_f_is_not_finite_are_left_out(self):
        x = np.array([1e-3])   # log: the steps above 1e-3 leave its domain
        with np.errstate(invalid="ignore"):
            value, error = gradient_with_error(lambda v: float(np.log(v[0])), x, workers=1)
        assert abs(value[0] - 1e3) <= error[0] < 1.0
        value, error = gradient_with_error(lambda v: float(np.log(v[0])) if v[0] == 1e-3 else
                                           math.nan, x, workers=1)
        assert np.isnan(value[0]) and error[0] == np.inf

    @pytest.mark.parametrize("option, bad, match", [
        ("levels", 4, r"`levels` must be an int >= terms \+ 2 = 5"),
        ("levels", 7.0, "`levels`"), ("terms", 0, "`terms` must be an int >= 1"),
        ("base", -1.0, "`base` must be a positive"), ("ratio", 1.0, "`ratio` must be > 1"),
        ("ratio", np.inf, "`ratio` must be a positive finite"),
        ("base", 0.0, "`base` must be a positive")])
    def test_bad_options_are_refused_naming_them(self, option, bad, match):
        calls = []
        with pytest.raises(ValueError, match=match):
            gradient_with_error(lambda v: calls.append(1) or 0.0, np.array([1.0]), workers=1,
                                **{option: bad})
        assert not calls


def test_the_serial_reference_refuses_the_complex_step():
    from engine import numerical_gradient
    with pytest.raises(ValueError, match="scheme='complex' is evaluated by"):
        numerical_gradient(lambda v: float(np.sum(v)), np.array([1.0]), scheme="complex")


class TestComplexStepSparse:
    @staticmethod
    def chain(v):
        out = v ** 2 * np.exp(v)
        out[1:] += np.sin(v[:-1])
        out[:-1] += v[1:] ** 3
        return out

    def test_a_sparse_jacobian_gives_the_dense_complex_steps_bits(self):
        scipy_sparse = pytest.importorskip("scipy.sparse")
        n = 12
        pattern = scipy_sparse.diags([np.ones(n - 1), np.ones(n), np.ones(n - 1)], [-1, 0, 1])
        x = np.linspace(-1.0, 2.0, n)
        dense = jacobian(self.chain, x.copy(), scheme="complex", h="auto", workers=1)
        one = jacobian(self.chain, x.copy(), scheme="complex", h="auto", workers=1,
                       sparsity=pattern)
        two = jacobian(self.chain, x.copy(), scheme="complex", h="auto", workers=2,
                       chunk_size=1, sparsity=pattern)
        assert np.array_equal(one.toarray(), dense) and np.array_equal(two.toarray(), dense)
        exact = np.diag(2 * x * np.exp(x) + x ** 2 * np.exp(x)) + np.diag(np.cos(x[:-1]), -1) \
            + np.diag(3 * x[1:] ** 2, 1)
        np.testing.assert_allclose(dense, exact, rtol=1e-14, atol=1e-300)

    def test_a_sparse_jacobian_that_drops_the_imaginary_part_is_named(self):
        pytest.importorskip("scipy.sparse")
        f = lambda v: np.array([abs(v[0]) + v[1], v[1] * v[2]])  # noqa: E731
        with pytest.raises(TypeError, match=r"imaginary part of exactly 0 at group \d \(x\[0\]"):
            jacobian(f, np.array([1.0, 2.0, 3.0]), scheme="complex", h="auto", workers=1,
                     sparsity=np.array([[1, 1, 0], [0, 1, 1]]))

    diagonal = np.eye(5, dtype=bool)   # one group of five columns

    def test_a_sparse_step_of_one_is_a_step_and_one_call_per_group(self):
        calls = []

        def f(v):
            calls.append(np.iscomplexobj(v))
            return v ** 2

        x = np.array([1.5, -3.0, 0.5, 2.0, 4.0])
        got = jacobian(f, x, scheme="complex", h=1.0, workers=1, sparsity=self.diagonal,
                       check_state=False)
        assert np.array_equal(got.toarray(), np.diag(2 * x)) and calls.count(True) == 1

    def test_a_sparse_step_that_underflows_is_refused(self):
        x = np.ones(5, dtype=np.float32)
        with pytest.raises(ValueError, match=r"group 0 \(x\[0\], x\[1\], x\[2\] and more\) "
                                             r"\+ ih: a complex step underflows to 0"):
            jacobian(lambda v: v ** 2, x, scheme="complex", h=1e-50, workers=1,
                     sparsity=self.diagonal)

    def test_a_sparse_non_finite_value_is_raised_naming_the_group(self):
        f = lambda v: v / 0.0 if np.iscomplexobj(v) else v  # noqa: E731
        with pytest.raises(FloatingPointError, match=r"non-finite value at group 0 \(x\[0\], "
                                                     r"x\[1\], x\[2\] and more\) \+ ih"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                jacobian(f, np.ones(5), scheme="complex", h="auto", workers=1,
                         sparsity=self.diagonal)

    @staticmethod
    def failing(kind):
        def f(v):
            if v[1].imag != 0:
                if kind == "error":
                    raise ArithmeticError("no derivative here")
                return v[:2] * np.nan
            return np.array([v[0] * v[1], v[2] ** 2])
        return f

    @pytest.mark.parametrize("kind, error, message", [
        ("error", "ArithmeticError", "no derivative here"),
        ("non-finite", "FloatingPointError", "`f` returned a non-finite value at group 1 (x[1]) + ih"),
    ], ids=["error", "non-finite"])
    def test_a_failed_sparse_group_is_nan_and_reported(self, kind, error, message):
        x = np.array([1.0, 2.0, 3.0])
        pattern = np.array([[1, 1, 0], [0, 0, 1]])   # groups {0, 2} and {1}
        with Jacobian(self.failing(kind), scheme="complex", h="auto", workers=1,
                      on_failure="nan", sparsity=pattern) as jac:
            with pytest.warns(NumericalFallbackWarning, match="1 evaluation"):
                got = jac(x)
            failures = jac.failures
        assert np.array_equal(got.toarray(), [[2.0, np.nan, 0.0], [0.0, 0.0, 6.0]],
                              equal_nan=True)
        assert [tuple(f) for f in failures] == [("x[1]", "x_i + 1*h", error, message)]

    def test_a_sparse_f_with_the_wrong_number_of_outputs_is_refused(self):
        with pytest.raises(ValueError, match=r"`f` returned 3 values but `sparsity` has 2 rows"):
            jacobian(lambda v: v ** 2, np.array([1.0, 2.0, 3.0]), scheme="complex", h="auto",
                     workers=1, sparsity=np.array([[1, 1, 0], [0, 1, 1]]))

    def test_only_the_patterns_entries_are_checked_for_a_dropped_part(self):
        # output 0's true zero derivative sets off the check; output 1 depends on x[0]
        # through `abs`, but `sparsity` leaves that entry out: the Jacobian holds only the
        # pattern's entries, and so does the check
        f = lambda v: np.array([np.cos(v[0]), 3.0 + abs(v[0] - 1.0)])  # noqa: E731
        got = jacobian(f, np.array([0.0]), scheme="complex", h="auto", workers=1,
                       sparsity=np.array([[1], [0]]))
        assert np.array_equal(got.toarray(), [[0.0], [0.0]])

    def test_the_evaluator_refuses_a_pattern_of_another_width(self):
        # `jacobian` refuses it first; the evaluator says so too when called on its own
        pattern = Pattern.from_any(np.eye(3, dtype=bool))
        ptr, columns = members(group_columns(pattern))
        options = GroupedOptions(pattern, ptr, columns, "raise", None)
        with pytest.raises(ValueError, match=r"`sparsity` has 3 columns but `x` has 2 entries"):
            complex_grouped_evaluate(lambda v: v ** 2, ParamSpace(np.ones(2)), [None], COMPLEX,
                                     0, ptr.size - 1, {}, options)


class TestRichardsonParts:
    """`richardson_evaluate` and `extrapolate` on their own: the numbers each one makes."""

    def test_the_rows_hold_each_steps_difference_and_its_rounding(self):
        options = RichardsonOptions(levels=5)
        space = ParamSpace(np.array([100.0, -0.5]))
        rows = richardson_evaluate(lambda v: 7.0 + 3.0 * v[0], space, [None, None], None, 0, 2,
                                   options=options)
        eps = np.finfo(np.float64).eps
        for entry, x in enumerate([100.0, -0.5]):
            h = 0.125 * max(1.0, abs(x)) / 2.0 ** np.arange(5)
            up, down = 7.0 + 3.0 * (100.0 + (h if entry == 0 else 0)), \
                7.0 + 3.0 * (100.0 - (h if entry == 0 else 0))
            np.testing.assert_allclose(rows[entry, :5], 3.0 if entry == 0 else 0.0, atol=1e-12)
            np.testing.assert_allclose(rows[entry, 5:], eps * (np.abs(up) + np.abs(down)) / (2 * h),
                                       rtol=1e-12)

    def test_extrapolate_carries_the_rounding_through_the_rounds(self):
        options = RichardsonOptions(levels=5, terms=3)
        noise = 1e-12
        rows = np.array([[2.5] * 5 + [noise] * 5])   # converged differences: only rounding left
        value, error = extrapolate(rows, options)
        carried = noise * (5 / 3) * (17 / 15) * (65 / 63)   # (r n + n) / (r - 1), r = 4, 16, 64
        assert value[0] == 2.5 and error[0] == pytest.approx(10 * carried, rel=1e-12)

    def test_each_round_weighs_the_rounding_of_the_smaller_step_by_r(self):
        options = RichardsonOptions(levels=5, terms=3)
        rows = np.array([[2.5] * 5 + [1e-12, 2e-12, 4e-12, 8e-12, 16e-12]])
        value, error = extrapolate(rows, options)
        # window 0, by hand: (4 n1 + n0) / 3 -> 3, 6, 12; (16 m1 + m0) / 15 -> 6.6, 13.2;
        # (64 p1 + p0) / 63 -> 851.4 / 63 (units of 1e-12); window 1 carries twice as much
        assert value[0] == 2.5 and error[0] == pytest.approx(10 * 851.4 / 63 * 1e-12, rel=1e-12)

    def test_extrapolate_removes_the_even_powers_and_estimates_the_next(self):
        options = RichardsonOptions(levels=6, terms=2)
        h = 0.125 / 2.0 ** np.arange(6)
        rows = np.concatenate([1.0 + h ** 2 + h ** 4 + h ** 6, np.zeros(6)])[None, :]
        value, error = extrapolate(rows, options)
        assert abs(value[0] - 1.0) < 1e-12 and abs(value[0] - 1.0) <= error[0] < 1e-9

    @pytest.mark.parametrize("option", [dict(bounds=(0.0, 2.0)), dict(scheme="complex"),
                                        dict(h=1e-3), dict(on_failure="nan")])
    def test_options_of_other_kinds_are_refused_not_ignored(self, option):
        calls = []
        with pytest.raises(TypeError, match=rf"`{next(iter(option))}` does not apply"):
            gradient_with_error(lambda v: calls.append(1) or 0.0, np.array([1.0]), workers=1,
                                **option)
        assert not calls

    def test_the_smallest_options_are_accepted(self):
        value, error = gradient_with_error(lambda v: float(np.exp(v[0])), np.array([0.0]),
                                           workers=1, terms=1, levels=3)
        assert abs(value[0] - 1.0) <= error[0] < 1e-3

    def test_an_error_of_f_other_than_a_non_finite_value_ends_the_call(self):
        def f(v):
            if v[0] > 1.1:   # the largest step, 0.125, goes there
                raise KeyError("beyond")
            return float(v[0] ** 2)

        with pytest.raises(KeyError, match="beyond"):
            gradient_with_error(f, np.array([1.0]), workers=1)
