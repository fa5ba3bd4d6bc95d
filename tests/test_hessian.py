"""`engine.Hessian` / `engine.hessian`: exact across workers, symmetric, counted, checked.

The second differences themselves are tested in `test_second.py`; here, the public
objects: the same bits at any worker count and backend, evaluation counts through a
counter (in this process, workers=1), failures, bounds, bad input, and the standard
errors of a logistic regression fit against the analytic covariance and statsmodels.
"""
import math
import time
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess

import engine


def wavy(v):
    """A function with every second derivative nonzero and no simple structure."""
    return float(np.sin(v).sum() * np.cos(v[0] * v[-1]) + np.prod(1.0 + v ** 2) + v @ v[::-1])


X = np.linspace(-0.8, 1.3, 6)


class Counted:
    def __init__(self, f):
        self.f, self.calls, self.points = f, 0, []

    def __call__(self, v, *args):
        self.calls += 1
        self.points.append(np.array(v))
        return self.f(v, *args)


class TestExactness:
    @pytest.mark.parametrize("scheme", ["central", "forward"])
    @pytest.mark.parametrize("backend", ["loky", "threading"])
    def test_two_workers_give_the_bits_of_one(self, scheme, backend):
        one = engine.hessian(wavy, X.copy(), scheme=scheme, workers=1)
        two = engine.hessian(wavy, X.copy(), scheme=scheme, workers=2, backend=backend,
                             chunk_size=4)
        assert np.array_equal(one, two)
        assert np.array_equal(one, one.T)

    def test_a_resident_hessian_repeats_its_bits_and_follows_new_values(self):
        x = X.copy()
        with engine.Hessian(wavy, workers=2, dispatch="parallel", backend="threading") as H:
            first, again = H(x), H(x)
            moved = H(x + 0.25)
        assert np.array_equal(first, again)
        assert np.array_equal(moved, engine.hessian(wavy, x + 0.25, workers=1))

    def test_from_a_gradient_the_bits_do_not_depend_on_the_workers(self):
        x = np.random.default_rng(1).uniform(-1.5, 1.5, 7)
        one = engine.hessian(None, x, grad=rosen_der, workers=1)
        two = engine.hessian(None, x, grad=rosen_der, workers=2, dispatch="parallel")
        assert np.array_equal(one, two) and np.array_equal(one, one.T)

    def test_args_reach_f(self):
        f = lambda v, a, b: float(a * v[0] ** 2 * v[1] + b * v[1] ** 2)  # noqa: E731
        got = engine.hessian(f, np.array([1.0, 2.0]), 3.0, 0.5, workers=2, dispatch="parallel")
        assert np.abs(got - np.array([[12.0, 6.0], [6.0, 1.0]])).max() < 1e-6


class TestAccuracy:
    def test_rosenbrock_against_scipy(self):
        x = np.random.default_rng(0).uniform(-1.5, 1.5, 12)
        exact = rosen_hess(x)
        assert np.abs(engine.hessian(rosen, x, workers=1) - exact).max() <= 1e-6 * np.abs(exact).max()
        from_gradient = engine.hessian(None, x, grad=rosen_der, workers=1)
        assert np.abs(from_gradient - exact).max() <= 1e-7 * np.abs(exact).max()

    def test_an_engine_gradient_as_grad(self):
        x = np.random.default_rng(0).uniform(-1.5, 1.5, 5)
        with engine.Gradient(rosen, h="auto", workers=2, backend="threading") as g:   # no new processes
            got = engine.hessian(None, x, grad=g)
        assert np.abs(got - rosen_hess(x)).max() <= 1e-4 * np.abs(rosen_hess(x)).max()

    def test_x_of_any_shape_is_differentiated_over_its_ravel(self):
        x = X.reshape(2, 3).copy()
        got = engine.hessian(lambda m: wavy(m.ravel()), x, workers=1)
        assert got.shape == (6, 6) and np.array_equal(got, engine.hessian(wavy, X.copy(), workers=1))


class TestCounts:
    @pytest.mark.parametrize("scheme, count", [("central", 2 * 36 + 1), ("forward", 1 + 6 + 21)])
    def test_evaluations_of_f(self, scheme, count):
        f = Counted(wavy)
        engine.hessian(f, X.copy(), scheme=scheme, workers=1)
        assert f.calls == count

    @pytest.mark.parametrize("scheme, count", [("central", 2 * 6 + 1), ("forward", 6 + 1)])
    def test_gradient_calls_and_no_call_of_f(self, scheme, count):
        f, g = Counted(wavy), Counted(lambda v: np.cos(v) + v[::-1])
        got = engine.hessian(f, X.copy(), grad=g, scheme=scheme, workers=1)
        assert (f.calls, g.calls) == (0, count)
        assert np.array_equal(got, got.T)


class TestFailuresAndBounds:
    @staticmethod
    def fails_up_up(v):
        if v[1] > X[1] and v[2] > X[2]:
            raise ArithmeticError("solver diverged")
        return wavy(v)

    def test_raise_names_the_point(self):
        with pytest.raises(ArithmeticError, match="diverged") as info:
            engine.hessian(self.fails_up_up, X.copy(), workers=2, dispatch="parallel")
        assert any("x[1] + 1*h, x[2] + 1*h" in note for note in getattr(info.value, "__notes__", []))

    def test_nan_marks_the_pair_and_warns(self):
        told = r"x\[1\], x\[2\] at x_i \+ 1\*h, x_j \+ 1\*h"
        with pytest.warns(engine.NumericalFallbackWarning, match=told):
            with engine.Hessian(self.fails_up_up, on_failure="nan", workers=1) as H:
                got = H(X.copy())
        reference = engine.hessian(wavy, X.copy(), workers=1)
        assert math.isnan(got[1, 2]) and math.isnan(got[2, 1])
        mask = np.ones_like(got, dtype=bool)
        mask[1, 2] = mask[2, 1] = False
        assert np.array_equal(got[mask], reference[mask])
        assert [(f.entry, f.side, f.error) for f in H.failures] == [
            ("x[1], x[2]", "x_i + 1*h, x_j + 1*h", "ArithmeticError")]

    def test_one_sided_replaces_the_pair_to_first_order(self):
        with pytest.warns(engine.NumericalFallbackWarning):
            got = engine.hessian(self.fails_up_up, X.copy(), on_failure="one-sided", workers=2,
                                 dispatch="parallel")
        reference = engine.hessian(wavy, X.copy(), workers=1)
        assert np.isfinite(got).all() and np.array_equal(got, got.T)
        assert abs(got[1, 2] - reference[1, 2]) < 1e-3 and got[1, 2] != reference[1, 2]

    def test_forward_keeps_the_failures_of_both_of_its_calls(self):
        def fails_right_of(v):   # x[3] + h fails: f(x + h e_3), a shift, and the pairs (3, j)
            if v[3] > X[3]:
                raise ArithmeticError("no")
            return wavy(v)

        with pytest.warns(engine.NumericalFallbackWarning):
            with engine.Hessian(fails_right_of, scheme="forward", on_failure="nan", workers=1) as H:
                got = H(X.copy())
        assert np.isnan(got[3]).all() and np.isnan(got[:, 3]).all()
        assert ("x[3]", "x_i + 1*h") in [(f.entry, f.side) for f in H.failures]   # the shift
        assert ("x[3]", "x_i + 2*h") in [(f.entry, f.side) for f in H.failures]   # H_33's point

    def test_bounds_are_never_left(self):
        lower, upper = X - 1.0, X.copy()   # every entry at its upper bound ...
        lower[0], upper[0] = X[0], X[0] + 1.0   # ... but x[0], at its lower
        f = Counted(wavy)
        got = engine.hessian(f, X.copy(), bounds=(lower, upper), workers=1)
        assert all(np.all(p >= lower) and np.all(p <= upper) for p in f.points)
        assert np.abs(got - engine.hessian(wavy, X.copy(), workers=1)).max() < 1e-2


class TestBadInput:
    def test_x_is_left_unchanged(self):
        x = X.copy()
        engine.hessian(wavy, x, workers=2, dispatch="parallel")
        with pytest.raises(ArithmeticError):
            engine.hessian(TestFailuresAndBounds.fails_up_up, x, workers=1)
        assert np.array_equal(x, X)

    def test_a_non_scalar_f(self):
        with pytest.raises(TypeError, match="real scalar"):
            engine.hessian(lambda v: v * 2, X.copy(), workers=1)

    def test_x_not_floating(self):
        with pytest.raises(TypeError, match="floating dtype"):
            engine.hessian(wavy, np.arange(4), workers=1)

    def test_a_dict_x_names_the_alternative(self):
        with pytest.raises(TypeError, match=r"one ndarray .* np.concatenate"):
            engine.hessian(lambda p: 1.0, {"w": np.ones(2)}, workers=1)

    @pytest.mark.parametrize("workers", [1, 2])
    def test_a_gradient_of_the_wrong_size_is_refused_before_any_other_call(self, workers):
        g = Counted(lambda v: np.ones(v.size + 1))
        with pytest.raises(ValueError, match=r"`grad` must return one derivative per entry of `x` "
                                             r"\(6 values, any shape\), got 7"):
            engine.hessian(None, X.copy(), grad=g, workers=workers, dispatch="parallel")
        if workers == 1:
            assert g.calls == 1

    @pytest.mark.parametrize("options, match", [
        ({"scheme": "central4"}, r"`scheme` must be one of \('central', 'forward'\)"),
        ({"h": {"x": 1e-3}}, "number or 'auto'"),
        ({"max_seconds": 0}, "`max_seconds` must be a positive"),
        ({"grad": 3}, "`grad` must be callable"),
    ])
    def test_bad_options(self, options, match):
        with pytest.raises((TypeError, ValueError), match=match):
            engine.Hessian(wavy, **options)

    def test_f_or_grad_is_needed(self):
        with pytest.raises(TypeError, match=r"`f` must be callable \(or pass `grad=`\)"):
            engine.Hessian(None)

    def test_a_call_estimated_past_max_seconds_is_refused_with_the_count(self):
        f = Counted(lambda v: float(v[0]))
        with pytest.raises(ValueError, match=r"n = 2000 entries needs 8,000,001 evaluations .* "
                                             r"more than max_seconds=1"):
            engine.hessian(f, np.zeros(2000), max_seconds=1, workers=1)
        assert f.calls == 1   # the one timed evaluation

    def test_a_long_call_is_announced(self, monkeypatch):
        from engine.derivatives import _hessian
        monkeypatch.setattr(_hessian, "_WARN_SECONDS", 0.0)   # any estimate is "long"
        monkeypatch.setattr(_hessian, "_ESTIMATE_ABOVE", 10)
        with pytest.warns(UserWarning, match=r"needs 73 evaluations .* progress=True"):
            engine.hessian(wavy, X.copy(), workers=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            engine.hessian(wavy, X.copy(), workers=1, max_seconds=None)


class TestCostAndNames:
    """The cost refusal's figures, its units, the defaults and the repr (issue 28's survivors)."""

    @pytest.mark.parametrize("seconds, shown", [(59.5, "59.5 s"), (60.0, "1 minutes"), (90.0, "1.5 minutes"),
                                                (3600.0, "1 hours"), (7200.0, "2 hours")])
    def test_durations_read_in_their_unit(self, seconds, shown):
        from engine.derivatives._hessian import _duration
        assert _duration(seconds) == shown

    def test_the_defaults(self):
        from engine.derivatives import _hessian
        assert (_hessian.DEFAULT_MAX_SECONDS, _hessian._WARN_SECONDS, _hessian._ESTIMATE_ABOVE) == \
            (3600.0, 60.0, 2000)
        with engine.Hessian(wavy) as H:
            assert H.max_seconds == 3600.0 and H.check_state is True

    def test_from_grad_the_count_is_gradient_calls_and_the_estimate_divides_by_the_workers(
            self, monkeypatch):
        from engine.derivatives import _hessian
        monkeypatch.setattr(_hessian, "_ESTIMATE_ABOVE", 0)
        monkeypatch.setattr(time, "perf_counter", iter(np.arange(0.0, 1e6, 1.0)).__next__)   # 1 s a call
        with pytest.raises(ValueError, match=r"n = 3 entries needs 7 gradient calls \(central\); "
                                             r"one took 1 s here, so the call would take about 3\.5 s "
                                             r"on 2 worker\(s\)"):
            engine.Hessian(grad=lambda v: 2 * v, max_seconds=3, workers=2,
                           dispatch="parallel")(np.ones(3))

    def test_an_estimate_of_exactly_max_seconds_runs(self, monkeypatch):
        from engine.derivatives import _hessian
        monkeypatch.setattr(_hessian, "_ESTIMATE_ABOVE", 0)
        monkeypatch.setattr(_hessian, "_WARN_SECONDS", 7.0)
        monkeypatch.setattr(time, "perf_counter", iter(np.arange(0.0, 1e6, 1.0)).__next__)
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # 7 s: neither refused (max 7) nor announced (past 7)
            engine.Hessian(grad=lambda v: 2 * v, max_seconds=7, workers=1,
                           dispatch="in-process")(np.ones(3))
        with pytest.raises(ValueError, match=r"about 7 s on 1 worker\(s\)"):   # in-process: 1
            engine.Hessian(grad=lambda v: 2 * v, max_seconds=6, workers=2,
                           dispatch="in-process")(np.ones(3))

    def test_a_call_of_exactly_two_thousand_evaluations_starts_without_timing_f(self):
        """n + 1 gradient calls (forward, grad=): n = 1,999 needs exactly 2,000 and is not
        timed first; n = 2,000 needs 2,001 and costs one timed call more."""
        extra = {}
        for n in (1_999, 2_000):
            grad = Counted(lambda v: 2 * v)
            engine.Hessian(grad=grad, scheme="forward", workers=1, dispatch="in-process",
                           side_effects="ignore")(np.ones(n))
            extra[n] = grad.calls - (n + 1)
        assert extra[2_000] == extra[1_999] + 1

    def test_a_non_callable_f_beside_grad_is_refused(self):
        with pytest.raises(TypeError, match="`f` must be callable or None, got int"):
            engine.Hessian(3, grad=lambda v: v)

    def test_the_repr_names_f_or_grad(self):
        def grad(v):
            return v
        with engine.Hessian(wavy, workers=1) as H, engine.Hessian(grad=grad, workers=1) as G:
            assert repr(H).startswith("Hessian(wavy, scheme='central', workers=1")
            assert repr(G).startswith("Hessian(grad=grad, scheme='central', workers=1")


class LogitFit:
    """A logistic regression by maximum likelihood: the issue's standard-errors example."""

    def __init__(self, rows=400, seed=7):
        rng = np.random.default_rng(seed)
        self.X = np.column_stack([np.ones(rows), rng.standard_normal((rows, 3))])
        self.y = (rng.random(rows) < 1 / (1 + np.exp(-self.X @ np.array([0.3, -1.0, 0.5, 2.0])))) * 1.0

    def nll(self, beta):
        z = self.X @ beta
        return float(np.sum(np.logaddexp(0.0, z) - self.y * z))

    def nll_gradient(self, beta):
        return self.X.T @ (1 / (1 + np.exp(-self.X @ beta)) - self.y)

    def fit(self):
        return minimize(self.nll, np.zeros(4), jac=self.nll_gradient, method="BFGS",
                        options={"gtol": 1e-9}).x

    def covariance(self, beta):
        p = 1 / (1 + np.exp(-self.X @ beta))
        return np.linalg.inv((self.X * (p * (1 - p))[:, None]).T @ self.X)


class TestStandardErrors:
    def test_against_the_analytic_covariance(self):
        fit = LogitFit()
        beta = fit.fit()
        with engine.Hessian(fit.nll, workers=2) as H:
            se = np.sqrt(np.diag(np.linalg.inv(H(beta))))
        exact = np.sqrt(np.diag(fit.covariance(beta)))
        assert np.abs(se / exact - 1).max() <= 1e-5

    def test_against_statsmodels(self):
        sm = pytest.importorskip("statsmodels.api")
        fit = LogitFit()
        beta = fit.fit()
        se = np.sqrt(np.diag(np.linalg.inv(engine.hessian(fit.nll, beta, workers=1))))
        result = sm.Logit(fit.y, fit.X).fit(disp=0)
        assert np.abs(result.params - beta).max() < 1e-6   # the same optimum
        assert np.abs(se / result.bse - 1).max() <= 1e-5
