"""Black-box derivatives: Jacobians, evaluations that fail, steps that suit the numbers."""
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import least_squares

from engine import (Gradient, Jacobian, NumericalFallbackWarning, StepSizeWarning, WorkerLostError,
                    jacobian, numerical_gradient, parallel_numerical_gradient)

H = 1e-4


def outputs(v):
    """A vector function of a 1-D x: 3 outputs."""
    return np.array([np.sum(v ** 2), np.prod(np.cos(v)), v[0] * v[-1]])


def by_hand_jacobian(f, x, h=H):
    """The central difference column by column, written out plainly."""
    columns = []
    for i in range(x.size):
        up, down = x.copy(), x.copy()
        up[i], down[i] = x[i] + h, x[i] - h
        columns.append((f(up) - f(down)) / (2 * h))
    return np.stack(columns, axis=-1)


class TestJacobian:
    def test_shape_and_values_match_the_column_by_column_difference(self):
        x = np.linspace(0.1, 1.0, 7)
        got = jacobian(outputs, x, workers=1)
        assert got.shape == (3, 7)
        assert np.array_equal(got, by_hand_jacobian(outputs, x))

    @pytest.mark.parametrize("workers, backend", [(2, "loky"), (3, "loky"), (2, "threading")])
    def test_parallel_equals_serial_exactly(self, workers, backend):
        x = np.linspace(-1.0, 1.0, 13)
        serial = jacobian(outputs, x, workers=1)
        with Jacobian(outputs, workers=workers, backend=backend, dispatch="parallel",
                      chunk_size=2) as J:
            for shift in (0.0, 0.5):
                assert np.array_equal(J(x + shift), jacobian(outputs, x + shift, workers=1))
        assert np.array_equal(jacobian(outputs, x, workers=workers, backend=backend), serial)

    def test_structured_x_gives_out_shape_plus_member_shape(self):
        params = {"a": np.linspace(0, 1, 6).reshape(2, 3), "b": np.array([0.5, -0.5])}
        f = lambda p: np.outer(p["a"].sum(axis=1), p["b"])  # noqa: E731  output (2, 2)
        got = jacobian(f, params, workers=2)
        assert got["a"].shape == (2, 2, 2, 3) and got["b"].shape == (2, 2, 2)
        # d f[i, j] / d a[i, k] = b[j]; d f[i, j] / d b[j] = sum_k a[i, k]
        assert np.allclose(got["a"][1, 0, 1], params["b"][0]) and np.allclose(got["a"][1, 0, 0], 0)
        assert np.allclose(got["b"][0, 1, 1], params["a"][0].sum())

    def test_the_gradient_is_the_one_output_case(self):
        x = np.linspace(0.1, 1.0, 5)
        f = lambda v: float(np.sum(np.sin(v)))  # noqa: E731
        as_jacobian = jacobian(lambda v: np.array([f(v)]), x, workers=2)
        assert np.array_equal(as_jacobian[0], numerical_gradient(f, x))

    def test_least_squares_fits_a_real_problem(self):
        t = np.linspace(0, 4, 40)
        truth = np.array([2.5, 1.3, 0.4])
        y = truth[0] * np.exp(-truth[1] * t) + truth[2]
        y = y + 0.01 * np.sin(7 * t)   # a fixed, small misfit

        def residuals(p):
            return p[0] * np.exp(-p[1] * t) + p[2] - y

        x0 = np.array([1.0, 1.0, 0.0])
        with Jacobian(residuals, workers=2, dispatch="parallel") as J:
            ours = least_squares(residuals, x0, jac=J)
        theirs = least_squares(residuals, x0, jac="2-point")
        assert ours.success and np.allclose(ours.x, truth, atol=0.02)
        assert np.allclose(ours.x, theirs.x, atol=1e-6)


class FailsWhere:
    """f(x) = sum(x**2); raises (or returns NaN) when entry `i` is moved to one side."""

    def __init__(self, sides, nan=False):
        self.sides, self.nan = sides, nan   # {entry: "+", "-" or "both"}

    def __call__(self, v):
        for i, side in self.sides.items():
            up, down = v[i] > self.reference[i], v[i] < self.reference[i]
            if (up and side in "+both") or (down and side in "-both"):
                if self.nan:
                    return float("nan")
                raise ArithmeticError(f"solver diverged at entry {i}")
        return float(np.sum(v ** 2))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("nan", [False, True], ids=["raises", "returns NaN"])
class TestOnFailure:
    def make(self, nan):
        x = np.linspace(1.0, 2.0, 6)
        f = FailsWhere({1: "+", 3: "-", 4: "both"}, nan=nan)
        f.reference = x.copy()
        return f, x

    def test_one_sided_uses_the_other_side_with_f_of_x(self, workers, nan):
        f, x = self.make(nan)
        center = float(np.sum(x ** 2))
        g = lambda v: float(np.sum(v ** 2))  # noqa: E731  f where it does not fail
        expected = [(g(_moved(x, i, H)) - g(_moved(x, i, -H))) / (2 * H) for i in range(6)]
        # the side that evaluated, to second order: (-3 f(x) + 4 f(x + h) - f(x + 2h)) / 2h
        expected[1] = (-3 * center + 4 * g(_moved(x, 1, -H)) - g(_moved(x, 1, -2 * H))) / (-2 * H)
        expected[3] = (-3 * center + 4 * g(_moved(x, 3, H)) - g(_moved(x, 3, 2 * H))) / (2 * H)
        expected[4] = math.nan                                     # both failed
        with Gradient(f, workers=workers, on_failure="one-sided", dispatch="parallel") as grad:
            with pytest.warns(NumericalFallbackWarning, match="4 evaluation") as caught:
                got = grad(x)
            failures = grad.failures
        assert len([w for w in caught if w.category is NumericalFallbackWarning]) == 1
        assert np.array_equal(got, np.array(expected), equal_nan=True)
        assert [(f.entry, f.side) for f in failures] == [
            ("x[1]", "x_i + 1*h"), ("x[3]", "x_i - 1*h"), ("x[4]", "x_i - 1*h"), ("x[4]", "x_i + 1*h")]
        error = "FloatingPointError" if nan else "ArithmeticError"
        assert all(f.error == error for f in failures)

    def test_nan_mode_makes_failed_entries_nan(self, workers, nan):
        f, x = self.make(nan)
        with pytest.warns(NumericalFallbackWarning):
            got = parallel_numerical_gradient(f, x, workers=workers, on_failure="nan")
        assert np.isnan(got[[1, 3, 4]]).all() and np.isfinite(got[[0, 2, 5]]).all()
        assert np.allclose(got[[0, 2, 5]], 2 * x[[0, 2, 5]])

    def test_raise_is_the_default(self, workers, nan):
        f, x = self.make(nan)
        error = FloatingPointError if nan else ArithmeticError
        with pytest.raises(error):
            parallel_numerical_gradient(f, x, workers=workers)


def _moved(x, i, step):
    y = x.copy()
    y[i] = x[i] + step
    return y


def test_a_dead_worker_is_never_swallowed_as_a_failure(tmp_path):
    import os
    import signal

    parent = os.getpid()

    def dies(v):
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return float(np.sum(v))

    with pytest.raises(WorkerLostError):
        parallel_numerical_gradient(dies, np.ones(6), workers=2, retries=0, on_failure="nan")


def test_keyboard_interrupt_is_never_swallowed():
    def interrupted(v):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        parallel_numerical_gradient(interrupted, np.ones(2), workers=1, on_failure="one-sided")


class TestSteps:
    @pytest.mark.parametrize("x, h", [
        (np.array([1000.0, 3000.0], dtype=np.float32), 1e-4),
        (np.array([1.0, 2.0], dtype=np.float16), 1e-4),
        (np.array([1.0, 2.0]), 1e-300),
    ], ids=["float32", "float16", "tiny h"])
    def test_a_step_that_rounds_away_is_an_error_naming_the_entry(self, x, h):
        with pytest.raises(ValueError, match=r"x\[[01]\] = .* rounds back to .*nothing would be perturbed"):
            parallel_numerical_gradient(lambda v: float(np.sum(v.astype(float) ** 2)), x,
                                        workers=2, h=h)

    def test_a_step_stored_more_than_1_percent_off_warns_once(self):
        x = np.array([1.0, 1.5, 1.75], dtype=np.float32)
        with pytest.warns(StepSizeWarning, match="differs from `h` by up to") as caught:
            parallel_numerical_gradient(lambda v: float(np.sum(v)), x, workers=1, h=1e-6)
        assert len([w for w in caught if w.category is StepSizeWarning]) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # the book's h on float64: no warning
            parallel_numerical_gradient(lambda v: float(np.sum(v)), np.ones(3), workers=1)

    @pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-3), (np.float64, 1e-9)])
    def test_auto_steps_suit_large_values_and_any_dtype(self, dtype, tolerance):
        x = np.array([1000.0, 3000.0], dtype=dtype)
        f = lambda v: float(np.sum(v.astype(np.float64) ** 2))  # noqa: E731
        for workers in (1, 2):
            got = parallel_numerical_gradient(f, x, workers=workers, h="auto")
            assert np.allclose(got, [2000.0, 6000.0], rtol=tolerance)

    def test_auto_divides_by_the_stored_step(self):
        x = np.array([0.3], dtype=np.float32)
        f = lambda v: float(v[0]) * 7.0  # noqa: E731  linear: exact whatever the step
        got = parallel_numerical_gradient(f, x, workers=1, h="auto")
        assert got[0] == np.float32(7.0)


class TestBounds:
    def test_f_is_never_evaluated_outside_and_edges_are_one_sided(self):
        lower, upper = 0.0, 1.0
        seen = []

        def f(v):
            assert np.all(v >= lower) and np.all(v <= upper), f"evaluated outside at {v}"
            seen.append(v.copy())
            return float(np.sum(np.exp(v)))

        x = np.array([0.0, 0.5, 1.0, 1.0 - H / 2])
        got = parallel_numerical_gradient(f, x, workers=1, bounds=(lower, upper))
        center = float(np.sum(np.exp(x)))
        g = lambda v: float(np.sum(np.exp(v)))  # noqa: E731
        def second(i, h):   # second-order one-sided, toward h
            return (-3 * center + 4 * g(_moved(x, i, h)) - g(_moved(x, i, 2 * h))) / (2 * h)

        assert got[0] == second(0, H)                               # upward at the lower bound
        assert got[1] == (g(_moved(x, 1, H)) - g(_moved(x, 1, -H))) / (2 * H)
        assert got[2] == second(2, -H)                              # downward at the upper
        assert got[3] == second(3, -H)
        parallel = parallel_numerical_gradient(g, x, workers=2, bounds=(lower, upper))
        assert np.array_equal(parallel, got)

    def test_x_outside_its_bounds_is_refused_before_any_work(self):
        calls = []
        with pytest.raises(ValueError, match=r"x\[1\] lies outside `bounds`"):
            parallel_numerical_gradient(lambda v: calls.append(1) or 0.0, np.array([0.5, 2.0]),
                                        workers=2, bounds=(0.0, 1.0))
        assert not calls


class TestAutoStepsOnTheBatchedEvaluator:
    def setup_method(self):
        from engine import MLP, load_embedded_mnist

        train, _ = load_embedded_mnist()
        self.x, self.t = train.images[:2], train.labels[:2]
        self.net = MLP([784, 12, 10], seed=0, dtype=np.float32)

    def test_same_bits_on_two_workers_and_close_to_the_loop(self):
        net = self.net
        with Gradient(net.model.loss, h="auto", workers=1) as serial, \
                Gradient(net.model.loss, h="auto", workers=2, dispatch="parallel") as parallel:
            batched = serial(net.params, self.x, self.t)
            assert all(np.array_equal(batched[k], v)
                       for k, v in parallel(net.params, self.x, self.t).items())
        with Gradient(net.model.loss, h="auto", evaluator="loop", workers=2,
                      dispatch="parallel") as loop:
            looped = loop(net.params, self.x, self.t)
        for name in batched:
            scale = np.abs(looped[name]).max()
            assert np.abs(batched[name] - looped[name]).max() <= 1e-8 * scale, name

    def test_a_step_that_rounds_away_is_an_error_in_the_batched_evaluator_too(self):
        with pytest.raises(ValueError, match=r"x\['w1'\]\[.*rounds back to itself in float32"):
            self.net.numerical_gradient(self.x, self.t, workers=1, h=1e-12)
