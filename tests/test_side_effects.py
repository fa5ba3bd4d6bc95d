"""State that `f` keeps and changes: named in a warning, put back on request, never silently
different; and an `f` that is not deterministic refused, wherever the gradient runs.

The batch-norm net here is written like the teaching text's: its layer replaces
`running_mean` on every training-mode forward pass and keeps the input it saw.
"""
import contextlib
import dataclasses
import random
import types
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


@contextlib.contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


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
    with no_warnings():
        got = parallel_numerical_gradient(f, net.params["W"], side_effects="restore", **run)
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
    with no_warnings():
        parallel_numerical_gradient(lambda W: net.loss(X), net.params["W"], workers=1,
                                    side_effects="ignore")


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
    with no_warnings():
        parallel_numerical_gradient(model.loss, np.ones((4, 3)), **run)


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
        with no_warnings():
            g(net.params["W"])


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

    with no_warnings():
        with Gradient(dropout, workers=2) as g:
            got = g(np.ones((4, 3)), 7)
    assert np.array_equal(got, numerical_gradient(lambda W: dropout(W, 7), np.ones((4, 3))))


def test_check_state_false_lets_a_random_f_through_and_restore_puts_its_generator_back():
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state

    def noisy(v):
        return float(np.sum(v ** 2) + 1e-3 * rng.normal())

    with no_warnings():   # everything put back: nothing to say
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


def test_on_threads_the_test_runs_first_and_a_random_f_never_reaches_them(tmp_path):
    log = tmp_path / "calls"
    rng = np.random.default_rng(0)

    def noisy(v):
        with open(log, "a") as file:   # threads evaluate copies of f: a file counts them all
            file.write("call\n")
        return float(np.sum(v ** 2) + rng.normal())

    with pytest.raises(NotDeterministicError, match=r"changed rng\b"):
        parallel_numerical_gradient(noisy, np.ones(4), workers=2, backend="threading")
    assert len(log.read_text().splitlines()) == 2   # the test's two evaluations, here


def test_a_callable_objects_attributes_are_its_state():
    class Counted:
        def __init__(self):
            self.calls = 0

        def __call__(self, v):
            self.calls += 1
            return float(np.sum(v ** 2))

    f = Counted()
    with pytest.warns(UserWarning, match=r"between calls: f\.calls\. "):
        parallel_numerical_gradient(f, np.ones(3), workers=1)
    assert f.calls == 2 * 3   # the test's calls put back


@pytest.mark.parametrize("changed, ending", [(7, r"state\['s4'\] \(and 2 more\)\. "),
                                             (5, r"state\['s4'\]\. Evaluations")])
def test_the_message_names_five_paths_then_counts_the_rest(changed, ending):
    state = {f"s{i}": 0 for i in range(changed)}

    def f(v):
        for key in state:
            state[key] += 1
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=ending):
        parallel_numerical_gradient(f, np.ones(2), workers=1)


class Node:
    def __init__(self, child=None):
        self.count, self.child = 0, child


def chain(levels):
    """A chain of `levels` objects below the root: ``root.child.child...``; the deepest returned too."""
    deepest = Node()
    node = deepest
    for _ in range(levels - 1):
        node = Node(node)
    return node, deepest


@pytest.mark.parametrize("levels, named", [(8, True), (9, False)])
def test_the_walk_follows_eight_levels(levels, named):
    root, deepest = chain(levels)   # root.child... reaches `deepest.count` at depth `levels`

    def f(v):
        deepest.count += 1
        return float(np.sum(v ** 2))

    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        parallel_numerical_gradient(lambda v: f(v) + 0 * root.count, np.ones(2), workers=1)
    said = [str(w.message) for w in told if "changes state" in str(w.message)]
    assert any("root" + ".child" * (levels - 1) + ".count" in m for m in said) == named


@pytest.mark.parametrize("size, named", [(9_990, True), (10_000, False)])
def test_the_walk_records_at_most_ten_thousand_values(size, named):
    big = [0.0] * size   # walked before `tally` (a closure's variables come in name order)
    tally = [0]

    def f(v):
        tally[0] += 1
        return float(np.sum(v ** 2)) + 0 * len(big)

    with warnings.catch_warnings(record=True) as told:
        warnings.simplefilter("always")
        parallel_numerical_gradient(f, np.ones(2), workers=1)
    assert any("tally[0]" in str(w.message) for w in told) == named


@pytest.mark.parametrize("size", [9_997, 9_998, 20_000])
def test_a_snapshot_records_ten_thousand_values_and_not_one_more(size):
    """Three values come before the list's items: the two global generators and the list's
    set of items (`args[0][:]`, put back whole); so 9,997 items fill the 10,000 exactly."""
    from engine.fd._space import ParamSpace

    snapshot = _side_effects.Snapshot(lambda v, values: 0.0, ([0.0] * size,),
                                      ParamSpace(np.ones(2)))
    assert len(snapshot.leaves) == min(size + 3, 10_000)
    assert list(snapshot.leaves)[-1] == f"args[0][{min(size, 9_997) - 1}]"


def test_an_array_reached_twice_is_named_once_and_a_cycle_walked_once():
    shared = np.zeros(2)
    holder = types.SimpleNamespace(first=shared, second=shared, count=0)
    holder.me = holder

    def f(v):
        shared[0] += 1
        holder.count += 1
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"between calls: holder\.first, holder\.count\. "):
        parallel_numerical_gradient(f, np.ones(2), workers=1)


def test_arrays_are_copied_up_to_the_limit_then_compared_by_digest(monkeypatch):
    monkeypatch.setattr(_side_effects, "_COPY_LIMIT", 2 * 8)   # exactly the first array
    first, second = np.zeros(2), np.zeros(2)

    def f(v):
        first[0] += 1
        second[0] += 1
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"\(second could not be put back"):
        parallel_numerical_gradient(f, np.ones(2), workers=1)
    assert first[0] == 2 * 2 and second[0] == 2 * 2 + 2   # the test's calls put back where copied


def test_restore_says_what_it_could_not_put_back(monkeypatch):
    monkeypatch.setattr(_side_effects, "_COPY_LIMIT", 0)
    total = np.zeros(2)

    def f(v):
        total[0] += 1
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"side_effects='restore' could not put back total: "):
        parallel_numerical_gradient(f, np.ones(2), workers=1, check_state=False,
                                    side_effects="restore")


def test_restore_puts_back_a_dicts_keys_a_lists_items_and_a_replaced_generator():
    table, items = {"a": 1, "b": 2}, [1, 2, 3]
    holder = types.SimpleNamespace(rng=np.random.default_rng(5))
    original, state = holder.rng, holder.rng.bit_generator.state

    def f(v):
        table.pop("a", None)
        table["c"] = 3
        if items:
            items.pop()
        original.random()
        holder.rng = np.random.default_rng(6)
        return float(np.sum(v ** 2))

    with no_warnings():   # everything put back: nothing to say
        parallel_numerical_gradient(f, np.ones(2), workers=1, check_state=False,
                                    side_effects="restore")
    assert list(table.items()) == [("a", 1), ("b", 2)] and items == [1, 2, 3]
    assert holder.rng is original and original.bit_generator.state == state


def test_the_refusal_shows_both_values_shortened():
    flips = [0]

    def f(v):
        flips[0] += 1
        return np.full(40, float(flips[0] % 2)) * np.sum(v)

    with pytest.raises(NotDeterministicError, match=r"gave array\(\[2\., 2\., .{30,}\.\.\. and array\(\[0\."):
        engine.jacobian(f, np.ones(2), workers=1)


def test_the_engines_own_objects_are_not_state():
    inner = Gradient(lambda v: float(np.sum(v ** 3)), dispatch="in-process")   # counts its calls

    def f(v):
        return float(np.sum(inner(v)))

    try:
        with no_warnings():
            parallel_numerical_gradient(f, np.ones(2), workers=1)
    finally:
        inner.close()


TALLY = [0]   # module state, named after `np` in f's code: found before numpy's own namespace


def test_modules_and_functions_are_not_walked():
    def f(v):
        value = float(np.sum(v ** 2))
        TALLY[0] += 1
        return value

    with pytest.warns(UserWarning, match=r"between calls: TALLY\[0\]\. "):
        parallel_numerical_gradient(f, np.ones(2), workers=1)


def test_restore_puts_back_pythons_generators_read_only_arrays_and_odd_values():
    class Tag(str):   # a local class: cannot be pickled, compared by its repr
        pass

    pythons, legacy = random.Random(1), np.random.RandomState(2)
    frozen = np.arange(3.0)
    frozen.flags.writeable = False
    holder = types.SimpleNamespace(table=frozen, tag=Tag("a"))
    states = pythons.getstate(), legacy.get_state()[1].copy(), np.random.get_state()[1].copy()

    def f(v):
        pythons.random(), legacy.random(), np.random.rand()
        holder.table = np.zeros(3)
        holder.tag = Tag("b")
        return float(np.sum(v ** 2))

    with no_warnings():
        parallel_numerical_gradient(f, np.ones(2), workers=1, check_state=False,
                                    side_effects="restore")
    assert pythons.getstate() == states[0] and np.array_equal(legacy.get_state()[1], states[1])
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert np.array_equal(holder.table, [0.0, 1.0, 2.0]) and holder.tag == "a"


def test_a_changed_odd_value_is_named():
    class Tag(str):
        pass

    holder = types.SimpleNamespace(tag=Tag("a"))

    def f(v):
        holder.tag = Tag(holder.tag + "a")
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"between calls: holder\.tag\. "):
        parallel_numerical_gradient(f, np.ones(2), workers=1)


def test_restore_says_what_it_cannot_set_again():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        count: int

    held = Frozen(0)

    def f(v):
        object.__setattr__(held, "count", held.count + 1)   # around the frozen dataclass
        return float(np.sum(v ** 2))

    with pytest.warns(UserWarning, match=r"could not put back held\.count"):
        parallel_numerical_gradient(f, np.ones(2), workers=1, check_state=False,
                                    side_effects="restore")


def test_a_generator_reached_twice_is_named_once():
    rng = np.random.default_rng(0)
    holder = types.SimpleNamespace(rng=rng)

    def noisy(v):   # closes over `holder`, then `rng` (a closure's variables in name order)
        return float(np.sum(v ** 2) + holder.rng.normal()) + 0 * (rng is None)

    with pytest.raises(NotDeterministicError, match=r"changed holder\.rng\)"):
        parallel_numerical_gradient(noisy, np.ones(2), workers=1)


def test_an_f_that_raises_once_then_returns_is_not_deterministic():
    raised = [False]

    def flaky(v):
        if not raised[0]:
            raised[0] = True
            raise RuntimeError("solver did not converge")
        return float(np.sum(v ** 2))

    with pytest.raises(NotDeterministicError, match=r"gave an error \(RuntimeError: solver did not "
                                                    r"converge\) and 3\.0"):
        parallel_numerical_gradient(lambda v: flaky(v), np.ones(3), workers=1)


def test_nan_twice_is_the_same_value():
    def f(v):
        return float("nan") if v[0] == 1.0 else float(np.sum(v ** 2))

    with pytest.warns(engine.NumericalFallbackWarning):   # f(x) is NaN twice: no refusal
        got = parallel_numerical_gradient(f, np.ones(2), workers=1, on_failure="nan")
    assert np.isnan(got[1])


@pytest.mark.parametrize("length, shown", [(58, "'" + "x" * 58 + "'"), (59, "'" + "x" * 56 + "...")])
def test_values_are_shown_up_to_sixty_characters(length, shown):
    assert _side_effects._short("x" * length) == shown
