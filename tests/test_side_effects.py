"""State that `f` keeps and changes: named in a warning, put back on request, never silently
different; and an `f` that is not deterministic refused, wherever the gradient runs.

The batch-norm net here is written like the teaching text's: its layer replaces
`running_mean` on every training-mode forward pass and keeps the input it saw.
"""
import random
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import engine
from engine import Gradient, NotDeterministicError, parallel_numerical_gradient
from engine.derivatives import _side_effects

from book_reference import book_numerical_gradient as numerical_gradient

RUNS = [pytest.param(dict(workers=1), id="in-process"), pytest.param(dict(workers=2), id="workers")]


class BatchNorm:
    def __init__(self, width):
        self.running_mean = np.zeros(width)
        self.x = None   # a cache: the same values after every call at the same x

    def forward(self, x):
        self.x = x
        mu = x.mean(axis=0)
        self.running_mean = 0.9 * self.running_mean + 0.1 * mu
        return x - mu


class Net:
    def __init__(self):
        rng = np.random.default_rng(0)
        self.params = {"W": rng.normal(size=(4, 3))}
        self.layers = OrderedDict(BatchNorm1=BatchNorm(3))

    def loss(self, x):
        return float((self.layers["BatchNorm1"].forward(x @ self.params["W"]) ** 2).sum())


X = np.random.default_rng(1).normal(size=(5, 4))


def no_warnings():
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


@pytest.mark.parametrize("run", RUNS)
def test_running_statistics_are_named_and_the_gradient_is_the_serial_one(run):
    net, reference = Net(), Net()
    f = lambda W: net.loss(X)   # noqa: E731  (the teaching text's closure)
    expected = numerical_gradient(lambda W: reference.loss(X), reference.params["W"])
    with pytest.warns(UserWarning, match=r"net\.layers\['BatchNorm1'\]\.running_mean\. ") as told:
        got = parallel_numerical_gradient(f, net.params["W"], **run)
    assert np.array_equal(got, expected)
    message = str(told[0].message)
    assert ".x" not in message.split(". Evaluations")[0]   # the cache is not reported
    assert "side_effects='restore'" in message


@pytest.mark.parametrize("run", RUNS)
def test_restore_leaves_the_callers_state_as_it_was(run):
    net = Net()
    net.loss(X)   # some history
    before = net.layers["BatchNorm1"].running_mean.copy()
    f = lambda W: net.loss(X)   # noqa: E731
    context = no_warnings()
    try:
        got = parallel_numerical_gradient(f, net.params["W"], side_effects="restore", **run)
    finally:
        context.__exit__(None, None, None)
    assert np.array_equal(net.layers["BatchNorm1"].running_mean, before)
    reference = Net()
    assert np.array_equal(got, numerical_gradient(lambda W: reference.loss(X), reference.params["W"]))


def test_restore_puts_back_state_changed_in_place_and_rebound_on_every_call():
    net, log = Net(), []

    def f(W):
        log.append(1)                           # grows a list of the caller's
        net.layers["BatchNorm1"].x = None
        net.layers["BatchNorm1"].running_mean += 1.0   # in place
        return net.loss(X)                      # rebinds running_mean

    mean = net.layers["BatchNorm1"].running_mean
    with Gradient(f, side_effects="restore", dispatch="in-process", check_state=False) as g:
        for _ in range(3):
            g(net.params["W"])
            assert net.layers["BatchNorm1"].running_mean is mean   # the caller's own array
            assert np.array_equal(mean, np.zeros(3))
    assert log == []   # the items appended taken out again


def test_ignore_says_nothing():
    net = Net()
    context = no_warnings()
    try:
        parallel_numerical_gradient(lambda W: net.loss(X), net.params["W"], workers=1,
                                    side_effects="ignore")
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("run", RUNS)
def test_a_cache_overwritten_with_the_same_values_is_not_a_side_effect(run):
    class Cached:
        def __init__(self):
            self.seen, self.hidden = None, None

        def loss(self, W):
            self.seen = X                 # the input
            self.hidden = X @ W > 0       # an intermediate at the current W
            return float(np.sum((X @ W) ** 2))

    model = Cached()
    context = no_warnings()
    try:
        parallel_numerical_gradient(model.loss, np.ones((4, 3)), **run)
    finally:
        context.__exit__(None, None, None)


def test_a_counter_is_named_and_the_probe_leaves_no_count_behind():
    calls = [0]

    def f(v):
        calls[0] += 1
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"calls\[0\]"):
        with Gradient(f, dispatch="in-process") as g:
            g(np.ones(5))
    assert calls[0] == 2 * 5   # the serial loop's count: the first call's test calls put back


def test_said_on_the_first_call_only():
    net = Net()
    with Gradient(lambda W: net.loss(X), dispatch="in-process") as g:
        with pytest.warns(UserWarning, match="running_mean"):
            g(net.params["W"])
        context = no_warnings()
        try:
            g(net.params["W"])
        finally:
            context.__exit__(None, None, None)


@pytest.mark.parametrize("run", RUNS)
def test_the_global_generator_makes_f_not_deterministic(run):
    def dropout(W):
        return float(np.sum(X @ W * (np.random.rand(5, 3) > 0.5)))

    np.random.seed(3)
    state = np.random.get_state()[1].copy()
    with pytest.raises(NotDeterministicError, match="numpy.random's global generator"):
        parallel_numerical_gradient(dropout, np.ones((4, 3)), **run)
    if run["workers"] == 1:   # refused before the loop, the test calls' draws put back
        assert np.array_equal(np.random.get_state()[1], state)


def test_a_generator_closed_over_is_named():
    rng = np.random.default_rng(0)

    def noisy(v):
        return float(np.sum(v ** 2) + rng.normal())

    with pytest.raises(NotDeterministicError, match=r"changed rng\b"):
        parallel_numerical_gradient(noisy, np.ones(3), workers=1)


def test_pythons_generator_too():
    def noisy(v):
        return float(np.sum(v ** 2) + random.random())

    with pytest.raises(NotDeterministicError, match="random's global generator"):
        parallel_numerical_gradient(noisy, np.ones(3), workers=1)


def test_a_mask_seeded_per_call_is_deterministic():
    def dropout(W, seed):
        mask = np.random.default_rng(seed).random((5, 3)) > 0.5
        return float(np.sum((X @ W * mask) ** 2))

    context = no_warnings()
    try:
        with Gradient(dropout, workers=2) as g:
            got = g(np.ones((4, 3)), 7)
    finally:
        context.__exit__(None, None, None)
    assert np.array_equal(got, numerical_gradient(lambda W: dropout(W, 7), np.ones((4, 3))))


def test_check_state_false_lets_a_random_f_through_and_restore_puts_its_generator_back():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state

    def noisy(v):
        return float(np.sum(v ** 2) + 1e-3 * rng.normal())

    got = parallel_numerical_gradient(noisy, np.ones(3), workers=1, check_state=False,
                                      side_effects="restore")
    assert got.shape == (3,)
    assert rng.bit_generator.state == state


def test_large_arrays_are_compared_by_digest_and_said_unrestorable(monkeypatch):
    monkeypatch.setattr(_side_effects, "_COPY_LIMIT", 0)
    store = {"sum": np.zeros(2)}

    def f(v):
        store["sum"] += v[:2]   # accumulates in place
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"store\['sum'\].*could not be put back"):
        parallel_numerical_gradient(f, np.ones(3), workers=1)


def test_bad_option():
    with pytest.raises(ValueError, match="`side_effects` must be one of"):
        Gradient(np.sum, side_effects="undo")
    with pytest.raises(ValueError, match="`side_effects`"):
        engine.Hessian(np.sum, side_effects=None)
