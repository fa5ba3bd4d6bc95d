"""Bad input gets a clear error naming what is wrong, before any work starts."""
import threading

import numpy as np
import pytest

from engine import PayloadError, numerical_gradient, parallel_numerical_gradient

BOTH = pytest.mark.parametrize("gradient", [
    numerical_gradient,
    lambda f, x, **kw: parallel_numerical_gradient(f, x, workers=2, **kw),
], ids=["serial", "parallel"])


def square_sum(w):
    return float(np.sum(w ** 2))


@BOTH
@pytest.mark.parametrize("x, match", [
    (np.arange(4), "floating dtype"),
    (np.array([True, False]), "floating dtype"),
    (np.ones(3, dtype=complex), "floating dtype"),
    ([np.ones(2), "a"], r"`x\[1\]` must be a NumPy array"),   # a list of numbers is accepted
    ([1.0, np.ones(2)], r"`x\[0\]` is a number among arrays.*np\.asarray"),
    ("abc", "`x` must be a floating-point ndarray"),
    ({"w": np.arange(3)}, r"x\['w'\].*floating dtype"),
])
def test_x_must_be_floating_arrays(gradient, x, match):
    with pytest.raises(TypeError, match=match):
        gradient(square_sum, x)


@BOTH
def test_read_only_x(gradient):
    x = np.ones(3)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        gradient(square_sum, x)


@BOTH
@pytest.mark.parametrize("h", [0, -1e-4, float("nan"), float("inf")])
def test_h_must_be_positive_and_finite(gradient, h):
    with pytest.raises(ValueError, match="`h` must be a positive finite number"):
        gradient(square_sum, np.ones(3), h=h)


@BOTH
@pytest.mark.parametrize("h", ["1e-4", None, True])
def test_h_must_be_a_number(gradient, h):
    with pytest.raises(TypeError, match="`h`"):
        gradient(square_sum, np.ones(3), h=h)


@BOTH
def test_f_must_be_callable(gradient):
    with pytest.raises(TypeError, match="`f` must be callable"):
        gradient(np.ones(3), np.ones(3))


@BOTH
def test_f_returning_an_array_is_a_type_error(gradient):
    with pytest.raises(TypeError, match="real scalar loss.*shape \\(3,\\)"):
        gradient(lambda w: w * 2, np.ones(3))


@BOTH
def test_non_finite_loss_names_array_and_index(gradient):
    def blows_up(p):
        return float("inf") if p["w"][1, 2] > 5.00005 else float(np.sum(p["w"]))

    params = {"v": np.zeros(2), "w": np.full((2, 3), 5.0)}
    with pytest.raises(FloatingPointError, match=r"x\['w'\]\[1, 2\]"):
        gradient(blows_up, params)
    assert np.all(params["w"] == 5.0)


@pytest.mark.parametrize("workers", [0, -2, 1.5, "2", True])
def test_bad_worker_counts(workers):
    with pytest.raises(ValueError, match="`workers`"):
        parallel_numerical_gradient(square_sum, np.ones(3), workers=workers)


def test_unpicklable_f_suggests_the_fixes():
    lock = threading.Lock()

    def holds_a_lock(w):
        with lock:
            return float(np.sum(w))

    for backend in ("loky", "threading"):
        with pytest.raises(PayloadError, match="cannot be pickled.*module level.*workers=1"):
            parallel_numerical_gradient(holds_a_lock, np.ones(4), workers=2, backend=backend)
    g = parallel_numerical_gradient(holds_a_lock, np.ones(4), workers=1)
    np.testing.assert_allclose(g, np.ones(4))


@pytest.mark.parametrize("option, value", [("retries", -1), ("chunks_per_worker", 0),
                                           ("evaluator", "fast"), ("scheme", "left")])
def test_bad_options(option, value):
    with pytest.raises(ValueError, match=f"`{option}`"):
        parallel_numerical_gradient(square_sum, np.ones(3), workers=2, **{option: value})


def test_batched_evaluator_needs_a_model_loss():
    with pytest.raises(ValueError, match="ModelLoss"):
        parallel_numerical_gradient(square_sum, np.ones(3), workers=1, evaluator="batched")
