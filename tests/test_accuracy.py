"""Accuracy beyond the plain step: second order at bounds, shrunk steps, the complex step.

SciPy's own cases (`scipy/optimize/tests/test__numdiff.py`, `TestApproxDerivativesDense`),
re-expressed: the same functions, points, bounds and tolerances, through `engine.jacobian`
with ``h="auto"``; parallel results equal in-process ones exactly.
"""
import math
import warnings

import numpy as np
import pytest

from engine import (GradientWithError, NumericalFallbackWarning, gradient_with_error, jacobian,
                    parallel_numerical_gradient)


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
        ("ratio", np.inf, "`ratio` must be a positive finite")])
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
