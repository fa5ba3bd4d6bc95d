"""The book's SimpleConvNet: backprop against the loop evaluator, parallel against serial
(exactly), the batched evaluator on it (the filters the loop's way), the loop fallback of
``evaluator="auto"`` for a layer it cannot follow, and the net's arguments checked.

A tiny net (3 filters of 3x3 on 8x8 images, hidden 6, 4 classes; weights of std 0.3 so
that no ReLU or max-pool input lies within h of a kink for this seed) keeps each numerical
gradient under a tenth of a second.
"""
import re
import warnings

import numpy as np
import pytest

from engine.batched import _batched
from engine.batched._batched import unsupported_layer
from engine.book._convnet import SimpleConvNet
from engine.book._nets import MLP
from engine.derivatives._serial import numerical_gradient
from engine.data._data import load_embedded_mnist
from engine.derivatives._gradient import Gradient
from engine.nn._conv import Convolution, Pooling, Reshape
from engine.nn._layers import Affine, Layer, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from engine.nn._model import ModelLoss, Sequential
from engine.fd._schemes import get_scheme
from engine.fd._space import ParamSpace
from engine.nn._regularize import Dropout

NORM_RTOL = 1e-6   # ||numerical - backprop|| / ||backprop||, per array (issue 25's goal)


@pytest.fixture
def tiny():
    net = SimpleConvNet(input_dim=(1, 8, 8), filter_num=3, filter_size=3, hidden_size=6,
                        output_size=4, weight_init_std=0.3, seed=1)
    x = np.random.default_rng(0).random((3, 64))
    return net, x, np.array([0, 3, 1])


def loop_gradient(net, x, t, **options):
    return net.numerical_gradient(x, t, evaluator="loop", **options)


def test_backprop_matches_the_numerical_gradient(tiny):
    net, x, t = tiny
    exact = net.gradient(x, t)
    numerical = loop_gradient(net, x, t, workers=1)
    assert list(exact) == list(numerical) == ["w1", "b1", "w2", "b2", "w3", "b3"]
    for name in exact:
        error = np.linalg.norm(numerical[name] - exact[name]) / np.linalg.norm(exact[name])
        assert error <= NORM_RTOL, name


def test_two_workers_give_the_serial_loop_bit_for_bit(tiny):
    net, x, t = tiny
    before = {k: v.copy() for k, v in net.params.items()}
    serial = numerical_gradient(lambda w: net.loss(x, t, train=True), net.params)
    parallel = loop_gradient(net, x, t, workers=2, dispatch="parallel")
    for name in serial:
        assert np.array_equal(parallel[name], serial[name]), name
        assert np.array_equal(net.params[name], before[name])


def within_rounding(batched, loop, loss):
    """The loop's own rounding (4 ulps of the loss / 2h) or 1e-9 relative, per array (test_layers)."""
    noise = 4 * np.spacing(loss) / (2 * 1e-4)
    return all(np.abs(batched[k] - loop[k]).max() <= max(noise, 1e-9 * np.abs(loop[k]).max())
               for k in loop)


def test_batched_takes_the_convolution_to_rounding(tiny):
    net, x, t = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "auto" takes it without a word
        auto = net.numerical_gradient(x, t, workers=1)
    batched = net.numerical_gradient(x, t, workers=1, evaluator="batched")
    loop = net.numerical_gradient(x, t, workers=1, evaluator="loop")
    assert all(np.array_equal(auto[k], batched[k]) for k in loop)
    assert within_rounding(batched, loop, net.loss(x, t, train=True))
    assert not np.array_equal(batched["w1"], loop["w1"])   # the channel path, not the loop


@pytest.mark.parametrize("scheme,h", [("central", 1e-4), ("forward", 1e-4), ("central4", 1e-3),
                                      ("central", "auto")], ids=["central", "forward", "central4", "auto"])
def test_a_strided_padded_convolution_through_sigmoid_and_overlapping_pools(scheme, h):
    model = Sequential([Reshape((2, 7, 6)), Convolution("k", None, stride=2, pad=1), Sigmoid(),
                        Pooling(2, 2, stride=1), Reshape(-1), Affine("w", "b"), Tanh(),
                        Affine("v")], SoftmaxCrossEntropy())
    rng = np.random.default_rng(4)
    params = {"k": rng.standard_normal((3, 2, 3, 2)), "w": 0.5 * rng.standard_normal((27, 5)),
              "b": rng.standard_normal(5), "v": rng.standard_normal((5, 3))}
    x, t = rng.random((4, 84)), np.array([0, 2, 1, 1])
    batched, loop = (engine_gradient(model, params, x, t, evaluator, scheme=scheme, h=h)
                     for evaluator in ("batched", "loop"))
    if h == "auto":   # steps of ~6e-6: the loop's rounding is 17x larger than at 1e-4
        assert all(np.abs(batched[k] - loop[k]).max() <= 1e-8 * np.abs(loop[k]).max() for k in loop)
    else:
        assert within_rounding(batched, loop, model.loss(params, x, t) * (10 if h == 1e-3 else 1))


def test_pooling_kinks_are_evaluated_as_the_loop_evaluates_them():
    # 2 filters on a real 28x28 digit, weights of std 0.01: many ReLU and pooling inputs
    # within h of a kink
    net = SimpleConvNet(filter_num=2, hidden_size=10, weight_init_std=0.01, seed=0)
    train, _ = load_embedded_mnist()
    x, t = train.images[:1], train.labels[:1]
    batched = net.numerical_gradient(x, t, workers=1, evaluator="batched")
    loop = net.numerical_gradient(x, t, workers=1, evaluator="loop")
    exact = net.gradient(x, t)
    for name in ("w1", "b1"):   # far from backprop: kinks crossed, the same way in both
        assert np.abs(loop[name] - exact[name]).max() > 1e-5, name
    assert within_rounding(batched, loop, net.loss(x, t, train=True))


def test_a_model_outside_the_pattern_leaves_the_filters_to_the_loop():
    model = Sequential([Reshape((1, 6, 6)), Convolution("k1", None), ReLU(), Convolution("k2", None),
                        Reshape(-1), Affine("w")], SoftmaxCrossEntropy())
    rng = np.random.default_rng(6)
    params = {"k1": rng.standard_normal((2, 1, 2, 2)), "k2": rng.standard_normal((2, 2, 2, 2)),
              "w": rng.standard_normal((32, 3))}
    x, t = rng.random((2, 36)), np.array([0, 2])
    batched, loop = (engine_gradient(model, params, x, t, evaluator)
                     for evaluator in ("batched", "loop"))
    assert np.array_equal(batched["k1"], loop["k1"]) and np.array_equal(batched["k2"], loop["k2"])


def engine_gradient(model, params, x, t, evaluator, **options):
    with Gradient(model.loss, workers=1, evaluator=evaluator, **options) as gradient:
        return gradient(params, x, t)


class Gain(Layer):
    """``z * params[name]`` (one number): a parameter before the convolution."""

    def __init__(self, name):
        self.name = name

    def param_names(self):
        return [self.name]

    def forward(self, params, z):
        return z * params[self.name]

    def backward(self, params, z, out, dout):
        return dout * params[self.name], {self.name: np.array([np.sum(dout * z)])}


def pattern_problem(*between, flatten=None, dtype=np.float64, seed=7):
    """``[Reshape, Convolution("k", "c"), *between, *flatten, Affine("w", "b"), Tanh, Affine("v")]``
    on 3 samples of 2x6x6, a non-zero filter bias `c`; `between` may hold a `Gain("g")`
    before the convolution instead. `flatten` is ``(Reshape(-1),)`` by default."""
    flatten = (Reshape(-1),) if flatten is None else flatten
    before = [layer for layer in between if isinstance(layer, Gain)]
    after = [layer for layer in between if not isinstance(layer, Gain)]
    stack = [Reshape((2, 6, 6)), *before, Convolution("k", "c"), *after, *flatten]
    rng = np.random.default_rng(seed)
    params = {"g": np.array([1.3])} if before else {}
    params.update(k=rng.standard_normal((3, 2, 3, 3)), c=rng.standard_normal(3))
    width = Sequential(stack, SoftmaxCrossEntropy()).logits(params, np.ones((1, 72))).shape[1]
    params.update(w=rng.standard_normal((width, 4)) / np.sqrt(width), b=rng.standard_normal(4),
                  v=rng.standard_normal((4, 3)))
    model = Sequential([*stack, Affine("w", "b"), Tanh(), Affine("v")], SoftmaxCrossEntropy())
    params = {name: value.astype(dtype) for name, value in params.items()}
    return model, params, rng.random((3, 72)), np.array([0, 2, 1])


@pytest.fixture
def loop_calls(monkeypatch):
    """The flat ranges the batched evaluator hands to the loop evaluator."""
    calls, original = [], _batched.loop_evaluate

    def recording(f, space, steps, scheme, start, stop, cache=None):
        calls.append((start, stop))
        return original(f, space, steps, scheme, start, stop, cache)
    monkeypatch.setattr(_batched, "loop_evaluate", recording)
    return calls


@pytest.mark.parametrize("between", [(ReLU(), Pooling(2, 2)), (Pooling(2, 2),), (), (Sigmoid(), Tanh())],
                         ids=["relu-pool", "pool", "nothing", "two-elementwise"])
def test_filters_and_a_nonzero_filter_bias_take_the_channel_path(between, loop_calls):
    """Every pattern the module docstring names, the pooling right after the convolution or
    no layer between it and the flattening included: no entry is left to the loop, and the
    numbers are the loop's to rounding (a filter bias of zero would hide a wrong sign)."""
    model, params, x, t = pattern_problem(*between)
    batched = engine_gradient(model, params, x, t, "batched")
    assert loop_calls == []
    loop = engine_gradient(model, params, x, t, "loop")
    assert within_rounding(batched, loop, model.loss(params, x, t))


@pytest.mark.parametrize("between, flatten", [
    ((ReLU(), Dropout(0.5)), (Reshape(-1),)),          # a layer that is neither, last
    ((Dropout(0.5), Pooling(2, 2)), (Reshape(-1),)),   # ... first, then a pooling
    ((Gain("g"),), (Reshape(-1),)),                    # a parameter before the convolution
    ((ReLU(),), (Reshape(-1), Tanh())),                # the affine layer's input is not a Reshape
], ids=["dropout-last", "dropout-then-pool", "parameter-before", "no-reshape-last"])
def test_a_prefix_outside_the_pattern_gets_the_loops_numbers(between, flatten):
    model, params, x, t = pattern_problem(*between, flatten=flatten)
    batched, loop = (engine_gradient(model, params, x, t, evaluator) for evaluator in ("batched", "loop"))
    for name in ["k", "c"] + (["g"] if "g" in params else []):
        assert np.array_equal(batched[name], loop[name]), name


@pytest.mark.parametrize("between", [(ReLU(), Pooling(2, 2)), (Gain("g"), ReLU())],
                         ids=["channel-path", "loop-path"])
def test_any_chunk_of_the_entries_gives_the_same_bits(between):
    """What a worker computes for the entries start .. stop-1, cut anywhere (inside the
    filters, across arrays, up to the end), is that part of the whole range, bit for bit."""
    model, params, x, t = pattern_problem(*between)
    space, scheme = ParamSpace(params), get_scheme("central")
    f, steps = ModelLoss(model, params, x, t), [1e-4] * len(params)
    whole = _batched.batched_evaluate(f, space, steps, scheme, 0, space.size)
    for start, stop in [(1, 20), (5, 70), (30, space.size), (60, space.size - 4)]:
        part = _batched.batched_evaluate(f, space, steps, scheme, start, stop)
        assert np.array_equal(part, whole[start:stop]), (start, stop)


def test_auto_steps_are_relative_to_each_filter_entry_as_in_the_loop():
    """float32 filters, h="auto": steps of ~5e-3 * max(1, |x_i|), whose truncation error
    (~1e-5 relative) shows any other step; the same steps agree to float32's rounding."""
    model, params, x, t = pattern_problem(ReLU(), Pooling(2, 2), dtype=np.float32)
    assert np.any(np.abs(params["k"]) > 1.5) and np.any(np.abs(params["k"]) < 0.5)
    batched, loop = (engine_gradient(model, params, x, t, evaluator, h="auto")
                     for evaluator in ("batched", "loop"))
    for name in ["k", "c"]:
        ulp = np.spacing(np.abs(loop[name]).max())   # float32's
        assert np.abs(batched[name] - loop[name]).max() <= 4 * ulp, name


def test_a_filter_entry_that_rounds_back_to_itself_is_named():
    model, params, x, t = pattern_problem(ReLU(), Pooling(2, 2), dtype=np.float32)
    params["k"][1, 0, 2, 1] = 3e5     # float32 spacing there: 1/32, far above h
    with pytest.raises(ValueError, match=re.escape("x['k'][1, 0, 2, 1] = 300000.0 + 0.0001 rounds "
                                                   "back to itself in float32")):
        engine_gradient(model, params, x, t, "batched")


def test_batched_on_two_workers_gives_the_same_bits(tiny):
    net, x, t = tiny
    one = net.numerical_gradient(x, t, workers=1, evaluator="batched")
    two = net.numerical_gradient(x, t, workers=2, evaluator="batched", dispatch="parallel")
    assert all(np.array_equal(one[k], two[k]) for k in one)


def test_a_layer_after_an_affine_one_sends_auto_to_the_loop():
    net = MLP([6, 5, 3], "relu", 0.5, seed=0, dropout=0.3)
    x, t = np.random.default_rng(2).random((4, 6)), np.array([0, 1, 2, 1])
    with pytest.warns(UserWarning, match=r"layer Dropout\(0.3, seed=1, train\).*uses the loop"):
        auto = net.numerical_gradient(x, t, workers=1)
    loop = net.numerical_gradient(x, t, workers=1, evaluator="loop")
    assert all(np.array_equal(auto[k], loop[k]) for k in auto)
    with pytest.raises(ValueError, match=r"evaluator='batched' cannot take the layer Dropout"):
        net.numerical_gradient(x, t, workers=1, evaluator="batched")


def test_a_layer_before_the_affine_ones_may_not_share_their_parameters():
    shared = Sequential([Convolution("w", None), Reshape(-1), Affine("w")], SoftmaxCrossEntropy())
    assert unsupported_layer(shared) is shared.layers[0]
    alone = Sequential([Convolution("k", None), Reshape(-1), Affine("w")], SoftmaxCrossEntropy())
    assert unsupported_layer(alone) is None


def test_images_and_rows_are_the_same_input(tiny):
    net, x, t = tiny
    images = x.reshape(3, 1, 8, 8)
    assert net.loss(x, t) == net.loss(images, t)
    assert net.predict(images).shape == (3, 4)
    assert 0.0 <= net.accuracy(images, t) <= 1.0
    assert all(np.array_equal(a, b) for a, b in zip(net.gradient(x, t).values(),
                                                        net.gradient(images, t).values()))


def test_the_books_default_shapes():
    net = SimpleConvNet(seed=0)
    assert {k: v.shape for k, v in net.params.items()} == {
        "w1": (30, 1, 5, 5), "b1": (30,), "w2": (4320, 100), "b2": (100,), "w3": (100, 10),
        "b3": (10,)}
    assert sum(v.size for v in net.params.values()) == 433_890   # the book's count (issue 25)


@pytest.mark.parametrize("kwargs,match", [
    ({"filter_num": 0}, "`filter_num` must be a positive int"),
    ({"input_dim": (28, 28)}, r"`input_dim` must be \(C, H, W\)"),
    ({"input_dim": (1, 4, 4), "filter_size": 5}, "`filter_size` 5 with pad 0 does not fit"),
    ({"input_dim": (1, 5, 5), "filter_size": 5}, "leaves no place for the 2x2 pooling"),
    ({"weight_init_std": -1.0}, "`weight_init_std` must be finite and >= 0"),
    ({"stride": 0}, "`stride` must be an int >= 1"),
], ids=["filters", "input-dim", "filter-too-large", "nothing-to-pool", "std", "stride"])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimpleConvNet(**kwargs)


def test_the_weights_are_std_times_one_generators_draws_in_order_and_the_biases_zero():
    net = SimpleConvNet(input_dim=(1, 6, 6), filter_num=2, filter_size=3, hidden_size=4,
                        output_size=3, weight_init_std=0.5, seed=7)
    rng = np.random.default_rng(7)
    for name, shape in (("w1", (2, 1, 3, 3)), ("w2", (2 * 2 * 2, 4)), ("w3", (4, 3))):
        assert np.array_equal(net.params[name], 0.5 * rng.standard_normal(shape)), name
    for name, size in (("b1", 2), ("b2", 4), ("b3", 3)):
        assert np.array_equal(net.params[name], np.zeros(size)), name


def test_a_weight_std_of_zero_gives_zero_weights():
    net = SimpleConvNet(input_dim=(1, 6, 6), filter_num=2, filter_size=3, hidden_size=4,
                        weight_init_std=0.0, seed=0)
    assert all(not v.any() for v in net.params.values())


def test_one_pooled_value_is_enough():
    net = SimpleConvNet(input_dim=(1, 3, 3), filter_num=1, filter_size=2, hidden_size=2,
                        output_size=2, seed=0)
    assert net.params["w2"].shape == (1, 2)


@pytest.mark.parametrize("kwargs,match", [
    ({"filter_size": True}, "`filter_size` must be a positive int"),
    ({"hidden_size": 2.0}, "`hidden_size` must be a positive int"),
    ({"input_dim": (1, 0, 28)}, "`input_dim` must be a positive int"),
    ({"weight_init_std": np.nan}, "`weight_init_std` must be finite and >= 0"),
    ({"weight_init_std": np.inf}, "`weight_init_std` must be finite and >= 0"),
], ids=["bool-size", "float-size", "zero-dim", "nan-std", "inf-std"])
def test_sizes_that_are_not_positive_ints_and_stds_that_are_not_finite_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimpleConvNet(**kwargs)


def test_by_default_it_takes_flat_mnist_rows_of_784():
    net = SimpleConvNet(filter_num=2, hidden_size=3, seed=0)
    assert net.input_dim == (1, 28, 28)
    assert net.predict(np.zeros((2, 784))).shape == (2, 10)
