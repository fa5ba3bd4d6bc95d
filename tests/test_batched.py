"""The batched evaluator: the same finite differences as the loop evaluator, in blocks."""
import inspect
import itertools
import re

import numpy as np
import pytest

from engine import Gradient, parallel_numerical_gradient
from engine.data._data import load_embedded_mnist
from engine.fd._evaluators import loop_evaluate
from engine.batched import _batched
from engine.book._nets import MLP, ThreeLayerNet
from engine.fd._schemes import get_scheme
from engine.fd._space import ParamSpace
from engine.nn._model import ModelLoss, mlp

H = 1e-4
SAMPLE_PER_ARRAY = 150


@pytest.fixture(scope="module")
def mnist():
    train, _ = load_embedded_mnist()
    return train


def loop_values_at(f, params, name, entries, scheme="central"):
    """The loop evaluator's derivatives at some flat entries of ``params[name]``."""
    space = ParamSpace(params)
    offset = int(space.offsets[list(params).index(name)])
    steps = [H] * len(params)
    return np.array([loop_evaluate(f, space, steps, get_scheme(scheme), offset + e, offset + e + 1)[0]
                     for e in entries])


def compare_with_loop(net, x, t, rng):
    """Per array: (max |batched - loop| on a sample, max |batched|, loop zeros kept)."""
    f = net.loss_function(x, t)
    batched = parallel_numerical_gradient(f, net.params, workers=1, evaluator="batched")
    report = {}
    for name, grad in batched.items():
        flat = grad.reshape(-1)
        entries = rng.choice(flat.size, size=min(SAMPLE_PER_ARRAY, flat.size), replace=False)
        if name == "w1":  # make sure entries with an all-zero input (border pixels) are in
            dead = np.flatnonzero(np.all(f.x == 0, axis=0))
            entries = np.concatenate([entries, dead[:20] * grad.shape[1]])
        loop = loop_values_at(f, net.params, name, entries)
        zeros_kept = bool(np.all(flat[entries][loop == 0] == 0)) and bool(np.any(loop == 0) or name != "w1")
        report[name] = (np.abs(flat[entries] - loop).max(), np.abs(flat).max(), zeros_kept)
    return report, f(None)


@pytest.mark.parametrize("net_factory", [
    lambda: ThreeLayerNet(seed=0),
    lambda: MLP([784, 100, 50, 10], weight_init_std=0.1, seed=0),
], ids=["784-100-10", "784-100-50-10"])
def test_one_real_image_matches_the_loop_to_1e9(mnist, net_factory):
    net, rng = net_factory(), np.random.default_rng(1)
    report, _ = compare_with_loop(net, mnist.images[0], mnist.labels[0], rng)
    for name, (max_diff, max_grad, zeros_kept) in report.items():
        assert max_diff / max_grad <= 1e-9, name
        assert zeros_kept, name


@pytest.mark.parametrize("net_factory", [
    lambda: ThreeLayerNet(seed=0),
    lambda: MLP([784, 100, 50, 10], weight_init_std=0.1, seed=0),
], ids=["784-100-10", "784-100-50-10"])
def test_minibatch_of_100_matches_the_loop_to_its_rounding_noise(mnist, net_factory):
    """Over a batch of 100 some gradients are ~1e-4, so one rounding step of the loss
    (its ulp, ~4e-16, divided by 2h) is already ~1e-8 of them: the loop evaluator's own
    noise. The bound is a few ulps of the loss per difference, and 1e-9 relative where
    the gradient is large enough for that to be meaningful."""
    net, rng = net_factory(), np.random.default_rng(2)
    report, loss = compare_with_loop(net, mnist.images[:100], mnist.labels[:100], rng)
    noise = 4 * np.spacing(loss) / (2 * H)
    for name, (max_diff, max_grad, zeros_kept) in report.items():
        assert max_diff <= max(noise, 1e-9 * max_grad), name
        assert zeros_kept, name


@pytest.mark.parametrize("workers, chunk_size", [(2, None), (3, None), (2, 999), (4, 1)])
@pytest.mark.parametrize("scheme", ["central", "forward", "central4"])
def test_parallel_batched_equals_serial_batched_exactly(mnist, workers, chunk_size, scheme):
    net = MLP([784, 30, 20, 10], weight_init_std=0.1, seed=3)
    f = net.loss_function(mnist.images[:5], mnist.labels[:5])
    if chunk_size == 1:   # one entry per chunk: keep the test quick on a few arrays
        f = MLP([12, 5, 3], seed=3).loss_function(np.linspace(0, 1, 24).reshape(2, 12), [0, 2])
    serial = parallel_numerical_gradient(f, f.params, workers=1, scheme=scheme)
    parallel = parallel_numerical_gradient(f, f.params, workers=workers, scheme=scheme,
                                           chunk_size=chunk_size)
    for name in serial:
        assert np.array_equal(serial[name], parallel[name]), name


def test_block_size_does_not_change_a_bit(mnist):
    net = MLP([784, 40, 30, 10], activation="tanh", weight_init_std=0.1, seed=4)
    f = net.loss_function(mnist.images[:7], mnist.labels[:7])
    default = parallel_numerical_gradient(f, f.params, workers=1)
    tiny = parallel_numerical_gradient(f, f.params, workers=1, block_memory=50_000)
    for name in default:
        assert np.array_equal(default[name], tiny[name]), name


def test_the_default_block_memory_is_the_documented_256_mib():
    """The docstrings of `Gradient` and `parallel_numerical_gradient` say "default 256 MiB"."""
    assert _batched.DEFAULT_BLOCK_MEMORY == 256 * 1024 * 1024
    for function in (_batched.batched_evaluate, Gradient):   # parallel_numerical_gradient: Gradient's
        default = inspect.signature(function).parameters["block_memory"].default
        assert default == 268_435_456, function


BLOCKS = _batched._blocks


def bounded_blocks(counts, most_entries, most_rows):
    """`_blocks`, failing instead of looping once it yields more slices than entries."""
    slices = list(itertools.islice(BLOCKS(counts, most_entries, most_rows), counts.size + 1))
    assert len(slices) <= counts.size, f"{len(slices)} slices or more for {counts.size} entries"
    return slices


@pytest.mark.parametrize("counts, most_entries, most_rows", [
    ([7, 7, 7], 10, 3),           # every entry above the row limit: one entry per slice
    ([1, 5, 1, 1, 9, 2], 10, 4),  # some above it, some packed together
    ([2, 2, 2, 2, 2], 2, 100),    # the entry limit binds
    ([2, 3, 1], 10, 4),           # the first two are one row over the limit
    ([3], 1, 1),
    ([], 4, 4),
], ids=["all-above", "mixed", "entry-limit", "one-row-over", "one", "none"])
def test_blocks_cover_every_entry_once_within_the_limits(counts, most_entries, most_rows):
    counts = np.array(counts, dtype=np.int64)
    slices = bounded_blocks(counts, most_entries, most_rows)
    assert [i for sel in slices for i in range(sel.start, sel.stop)] == list(range(counts.size))
    for sel in slices:
        entries = sel.stop - sel.start
        assert 1 <= entries <= most_entries
        assert entries == 1 or counts[sel].sum() <= most_rows   # more rows only for a lone entry
        if sel.stop < counts.size and entries < most_entries:   # as full as the limits allow
            assert counts[sel.start:sel.stop + 1].sum() > most_rows


def test_a_batch_above_the_block_row_limit_ends_and_changes_no_bit(mnist, monkeypatch):
    # 7 samples: with a limit of 3 rows, every entry that moves a loss has more rows than a block.
    net = MLP([784, 12, 10], weight_init_std=0.1, seed=2)
    f = net.loss_function(mnist.images[:7], mnist.labels[:7])
    default = parallel_numerical_gradient(f, f.params, workers=1, evaluator="batched")
    monkeypatch.setattr(_batched, "_BLOCK_ROWS", 3)
    monkeypatch.setattr(_batched, "_blocks", bounded_blocks)
    small = parallel_numerical_gradient(f, f.params, workers=1, evaluator="batched")
    for name in default:
        assert np.array_equal(default[name], small[name]), name


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_every_activation_agrees_with_backprop(mnist, activation):
    net = MLP([784, 16, 12, 10], activation=activation, weight_init_std=0.1, seed=5)
    x, t = mnist.images[:3], mnist.labels[:3]
    numeric = net.numerical_gradient(x, t, workers=1, evaluator="batched")
    exact = net.gradient(x, t)
    for name in exact:
        scale = np.abs(exact[name]).max()
        assert np.abs(numeric[name] - exact[name]).max() <= 1e-6 * scale, name


def test_auto_picks_batched_for_a_model_loss_and_loop_otherwise(mnist, monkeypatch):
    import engine.batched._batched as batched

    calls = []
    original = batched.batched_evaluate
    monkeypatch.setattr(batched, "batched_evaluate",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    net = ThreeLayerNet(input_size=784, hidden_size=5, seed=0)
    x, t = mnist.images[0], mnist.labels[0]
    net.numerical_gradient(x, t, workers=1)
    assert calls
    calls.clear()
    f = lambda w: net.loss(x, t)  # noqa: E731  a black box: the loop evaluator
    parallel_numerical_gradient(f, net.params["b2"], workers=1)
    assert not calls


def test_float32_parameters(mnist):
    net = MLP([784, 20, 10], seed=6, dtype=np.float32)
    x, t = mnist.images[:2], mnist.labels[:2]
    f = net.loss_function(x, t)
    batched = net.numerical_gradient(x, t, workers=1)
    loop = net.numerical_gradient(x, t, workers=1, evaluator="loop")
    for name in batched:
        assert batched[name].dtype == np.float32
        np.testing.assert_allclose(batched[name], loop[name], rtol=0,
                                   atol=1e-6 * np.abs(loop[name]).max() + 1e-9)
    assert f(None) == net.loss(x, t)


def small_float32_loss(seed=8):
    """A 6-5-4-3 tanh net in float32, entries of both sides of 1 in every array, all inputs
    non-zero (so every weight entry is evaluated)."""
    rng = np.random.default_rng(seed)
    params = {"w1": rng.normal(0, 1.2, (6, 5)), "b1": rng.normal(0, 1.2, 5),
              "w2": rng.normal(0, 1.2, (5, 4)), "b2": rng.normal(0, 1.2, 4),
              "w3": rng.normal(0, 1.2, (4, 3)), "b3": rng.normal(0, 1.2, 3)}
    params = {name: value.astype(np.float32) for name, value in params.items()}
    return ModelLoss(mlp([6, 5, 4, 3], "tanh"), params, rng.uniform(0.1, 1, (4, 6)), [0, 2, 1, 1])


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_auto_steps_are_relative_to_each_entry_as_in_the_loop(scheme):
    """float32, h="auto": steps of ~5e-3 (central) or ~3e-4 (forward) times max(1, |x_i|),
    whose truncation error shows any other step; the same steps agree to float32's rounding."""
    f = small_float32_loss()
    for value in f.params.values():
        assert np.any(np.abs(value) > 1.5) and np.any(np.abs(value) < 0.5)
    batched, loop = (parallel_numerical_gradient(f, f.params, workers=1, h="auto", scheme=scheme,
                                                 evaluator=evaluator) for evaluator in ("batched", "loop"))
    for name in f.params:
        ulp = np.spacing(np.abs(loop[name]).max())   # float32's
        assert np.abs(batched[name] - loop[name]).max() <= 4 * ulp, name


@pytest.mark.parametrize("name, index, message", [
    ("w2", (3, 1), "x['w2'][3, 1] = 300000.0 + 0.0001"),
    ("b2", (2,), "x['b2'][2] = -300000.0 + 0.0001"),
])
def test_an_entry_that_rounds_back_to_itself_is_named(name, index, message):
    f = small_float32_loss()
    f.params[name][index] = 3e5 if name == "w2" else -3e5    # float32 spacing there: 1/32
    with pytest.raises(ValueError, match=re.escape(message + " rounds back to itself in float32")):
        parallel_numerical_gradient(f, f.params, workers=1, h=1e-4, evaluator="batched")


@pytest.mark.parametrize("block_memory, expected", [
    (3 * 7680 - 1, [2, 2, 17, 17, 29, 29]),   # 23039 // 7680, // 1280, // 768
    (1, [1] * 6),                             # less than one entry: one entry a block
])
def test_a_block_holds_as_many_entries_as_fit_in_block_memory(monkeypatch, block_memory, expected):
    """A block of E entries is budgeted as 8 float64 arrays of (E, batch, width), width the
    widest layer after the perturbed one; it holds the most entries that fit, and at least one.
    Here (batch 4, a 12-30-5-3 net) an entry of layer 1 costs 64 * 4 * 30 = 7680 bytes, of
    layer 2 64 * 4 * 5 = 1280 (its output is 5 wide), of layer 3 64 * 4 * 3 = 768."""
    most = []
    monkeypatch.setattr(_batched, "_blocks", lambda counts, most_entries, most_rows: (
        most.append(most_entries) or BLOCKS(counts, most_entries, most_rows)))
    rng = np.random.default_rng(9)
    f = ModelLoss(mlp([12, 30, 5, 3], "tanh"), {
        "w1": rng.normal(0, 0.3, (12, 30)), "b1": rng.normal(0, 0.3, 30), "w2": rng.normal(0, 0.3, (30, 5)),
        "b2": rng.normal(0, 0.3, 5), "w3": rng.normal(0, 0.3, (5, 3)), "b3": rng.normal(0, 0.3, 3)},
        rng.uniform(0.1, 1, (4, 12)), [0, 2, 1, 1])
    space = ParamSpace(f.params)
    _batched.batched_evaluate(f, space, [H] * 6, get_scheme("central"), 0, space.size,
                              block_memory=block_memory)
    assert most == expected
