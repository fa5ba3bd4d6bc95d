"""The book's SimpleConvNet: backprop against the loop evaluator, parallel against serial
(exactly), the batched evaluator on it (the filters the loop's way), the loop fallback of
``evaluator="auto"`` for a layer it cannot follow, and the net's arguments checked.

A tiny net (3 filters of 3x3 on 8x8 images, hidden 6, 4 classes; weights of std 0.3 so
that no ReLU or max-pool input lies within h of a kink for this seed) keeps each numerical
gradient under a tenth of a second.
"""
import warnings

import numpy as np
import pytest

from engine.batched._batched import unsupported_layer
from engine.book._convnet import SimpleConvNet
from engine.book._nets import MLP
from engine.derivatives._serial import numerical_gradient
from engine.nn._conv import Convolution, Reshape
from engine.nn._layers import Affine, SoftmaxCrossEntropy
from engine.nn._model import Sequential

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


def test_batched_takes_the_convolution_the_loops_way_and_the_rest_to_rounding(tiny):
    """Filters and their biases: the loop evaluator's numbers, bit for bit; the affine layers
    after them: batched, to a few ulps of the loss per difference or 1e-9 relative (as in
    test_layers)."""
    net, x, t = tiny
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "auto" takes it without a word
        auto = net.numerical_gradient(x, t, workers=1)
    batched = net.numerical_gradient(x, t, workers=1, evaluator="batched")
    loop = net.numerical_gradient(x, t, workers=1, evaluator="loop")
    noise = 4 * np.spacing(net.loss(x, t, train=True)) / (2 * 1e-4)
    for name in loop:
        assert np.array_equal(auto[name], batched[name]), name
        if name in ("w1", "b1"):
            assert np.array_equal(batched[name], loop[name]), name
        assert np.abs(batched[name] - loop[name]).max() <= max(noise, 1e-9 * np.abs(loop[name]).max())
    assert any(not np.array_equal(batched[k], loop[k]) for k in ("w2", "b2", "w3", "b3"))


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
