"""Accuracy beyond the plain step: second order at bounds, shrunk steps, the complex step.

SciPy's own cases (`scipy/optimize/tests/test__numdiff.py`, `TestApproxDerivativesDense`),
re-expressed: the same functions, points, bounds and tolerances, through `engine.jacobian`
with ``h="auto"``; parallel results equal in-process ones exactly.
"""
import numpy as np
import pytest

from engine import jacobian


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
