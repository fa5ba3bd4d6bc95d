"""A new layer type, defined here only, works everywhere through the common layer interface.

An elementwise layer (softplus) declares ``kind = ELEMENTWISE`` and nothing else: backprop,
the loop evaluator and the batched evaluator take it. Layers the batched evaluator cannot
follow (one that mixes columns, one with a parameter of its own) leave a net to the loop
evaluator: ``evaluator="auto"`` says so in a warning, ``"batched"`` refuses.
"""
import re
import warnings

import numpy as np
import pytest

from engine.batched._batched import batched_evaluate
from engine.batched._detect import choose_evaluator
from engine.derivatives._gradient import Gradient
from engine.nn._layers import ELEMENTWISE, Affine, Layer, SoftmaxCrossEntropy, Tanh
from engine.nn._model import ModelLoss, Sequential, init_params
from engine.fd._schemes import get_scheme
from engine.fd._space import ParamSpace

H_BACKPROP = 1e-5   # the step of the central difference written here
GRAD_RTOL = 1e-6    # max |numerical - backprop| / max |backprop|, per array (as in test_model)
H = 1e-4            # the engine's step, for batched against loop (as in test_batched)


class Softplus(Layer):
    """``log(1 + exp(z))``, elementwise."""

    kind = ELEMENTWISE

    def forward(self, params, z):
        return np.logaddexp(0.0, z)

    def backward(self, params, z, out, dout):
        return dout / (1.0 + np.exp(-z)), {}


class Centre(Layer):
    """Subtract each row's mean: every output column depends on every input column."""

    def forward(self, params, z):
        return z - z.mean(axis=-1, keepdims=True)

    def backward(self, params, z, out, dout):
        return dout - dout.mean(axis=-1, keepdims=True), {}


class Scale(Layer):
    """``z * params[name]``, a parameter the batched evaluator does not know how to move."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Scale({self.name!r})"

    def param_names(self):
        return [self.name]

    def check(self, params, n_in):
        if np.shape(params[self.name]) != (n_in,):
            raise ValueError(f"`params[{self.name!r}]` must have shape ({n_in},)")
        return n_in

    def forward(self, params, z):
        return z * params[self.name]

    def backward(self, params, z, out, dout):
        return dout * params[self.name], {self.name: (dout * z).sum(axis=0)}


def softplus_problem(batch=8, seed=0):
    """A 6-5-4-3 net with two softplus layers: a perturbation meets affine layers after it."""
    net = Sequential([Affine("w1", "b1"), Softplus(), Affine("w2", "b2"), Softplus(),
                      Affine("w3", "b3")], SoftmaxCrossEntropy())
    rng = np.random.default_rng(seed)
    params = init_params([6, 5, 4, 3], weight_init_std=0.5, seed=rng)
    return net, params, rng.normal(size=(batch, 6)), rng.integers(0, 3, size=batch)


def softplus_logits_problem(batch=8, seed=2):
    """A 6-5-3 net whose logits go through softplus: elementwise layers after the last affine."""
    net = Sequential([Affine("w1", "b1"), Softplus(), Affine("w2", "b2"), Softplus()],
                     SoftmaxCrossEntropy())
    rng = np.random.default_rng(seed)
    params = init_params([6, 5, 3], weight_init_std=0.5, seed=rng)
    return net, params, rng.normal(size=(batch, 6)), rng.integers(0, 3, size=batch)


def other_problem(layer, seed=1):
    """A 5-4-3 net with `layer` after the hidden tanh (or before it, for a Scale)."""
    hidden = [layer, Tanh()] if isinstance(layer, Scale) else [Tanh(), layer]
    net = Sequential([Affine("w1", "b1"), *hidden, Affine("w2", "b2")], SoftmaxCrossEntropy())
    rng = np.random.default_rng(seed)
    params = init_params([5, 4, 3], weight_init_std=0.5, seed=rng)
    if isinstance(layer, Scale):
        params = {"w1": params["w1"], "b1": params["b1"], layer.name: rng.normal(size=4),
                  "w2": params["w2"], "b2": params["b2"]}
    return net, params, rng.normal(size=(6, 5)), rng.integers(0, 3, size=6)


def central_differences(f, params):
    """``(f(x + h) - f(x - h)) / 2h`` for every entry of every array, independent of the engine."""
    grads = {}
    for name, array in params.items():
        flat, grad = array.reshape(-1), np.zeros(array.size)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + H_BACKPROP
            up = f()
            flat[i] = old - H_BACKPROP
            down = f()
            flat[i] = old
            grad[i] = (up - down) / (2 * H_BACKPROP)
        grads[name] = grad.reshape(array.shape)
    return grads


def engine_gradient(f, evaluator):
    with Gradient(f, workers=1, evaluator=evaluator) as gradient:
        return gradient(f.params)


OTHER_LAYERS = [Centre(), Scale("s")]


@pytest.mark.parametrize("problem", [softplus_problem, softplus_logits_problem] + [
    lambda layer=layer: other_problem(layer) for layer in OTHER_LAYERS],
    ids=["softplus", "softplus-logits"] + [repr(layer) for layer in OTHER_LAYERS])
def test_backprop_through_a_new_layer_matches_central_differences(problem):
    net, params, x, labels = problem()
    numerical = central_differences(lambda: net.loss(params, x, labels), params)
    exact = net.gradient(params, x, labels)
    assert list(exact) == net.param_names() == list(params)
    for name in params:
        scale = np.abs(exact[name]).max()
        assert np.abs(numerical[name] - exact[name]).max() <= GRAD_RTOL * scale, name


@pytest.mark.parametrize("problem", [softplus_problem, softplus_logits_problem],
                         ids=["softplus", "softplus-logits"])
def test_a_new_elementwise_layer_goes_through_the_batched_evaluator_to_rounding(problem):
    """Bound as in test_batched: a few ulps of the loss per difference, or 1e-9 relative."""
    net, params, x, labels = problem()
    f = ModelLoss(net, params, x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # "auto" takes it without a word
        auto = engine_gradient(f, "auto")
    batched, loop = engine_gradient(f, "batched"), engine_gradient(f, "loop")
    noise = 4 * np.spacing(f(None)) / (2 * H)
    # The two evaluators round differently somewhere, so "auto" equal to "batched" shows its choice.
    assert any(not np.array_equal(batched[name], loop[name]) for name in params)
    for name in params:
        assert np.array_equal(auto[name], batched[name]), name
        max_diff = np.abs(batched[name] - loop[name]).max()
        assert max_diff <= max(noise, 1e-9 * np.abs(loop[name]).max()), name


def test_a_new_elementwise_layer_gives_the_same_bits_on_two_workers():
    f = ModelLoss(*softplus_problem())
    with Gradient(f, workers=1) as serial, Gradient(f, workers=2, dispatch="parallel") as parallel:
        one, two = serial(f.params), parallel(f.params)
        assert parallel.plan.where == "parallel"
    for name in f.params:
        assert np.array_equal(one[name], two[name]), name


@pytest.mark.parametrize("layer", OTHER_LAYERS, ids=repr)
def test_auto_warns_about_another_layer_and_gives_the_loop_evaluators_numbers(layer):
    f, named = ModelLoss(*other_problem(layer)), re.escape(repr(layer))
    with pytest.warns(UserWarning, match=rf"layer {named}, whose `kind` is not one of") as record:
        auto = engine_gradient(f, "auto")
    assert record[0].filename == __file__   # the warning points at the caller's line
    loop = engine_gradient(f, "loop")
    for name in f.params:
        assert np.array_equal(auto[name], loop[name]), name


@pytest.mark.parametrize("layer", OTHER_LAYERS, ids=repr)
def test_batched_refuses_another_layer_naming_it(layer):
    f, named = ModelLoss(*other_problem(layer)), re.escape(repr(layer))
    with pytest.raises(ValueError, match=rf"cannot take the layer {named} of the model of `f`"):
        engine_gradient(f, "batched")
    with pytest.raises(ValueError, match=rf"cannot take the layer {named} of the model of `f`"):
        choose_evaluator("batched", f.model.loss, f.params)   # the model's own loss, too
    with pytest.raises(ValueError, match=rf"cannot take the layer {named}: its `kind`"):
        batched_evaluate(f, ParamSpace(f.params), [H] * len(f.params), get_scheme("central"), 0, 1)


def test_no_warning_where_an_option_needs_the_loop_evaluator_anyway():
    f = ModelLoss(*other_problem(Centre()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_evaluator("auto", f, f.params, loop_only="bounds") == "loop"


def test_a_layer_without_the_interface_is_refused_naming_what_it_lacks():
    class Old:
        def forward(self, z):
            return z

        def backward(self, z, out, dout):
            return dout

    with pytest.raises(TypeError, match=r"Old.*has no param_names, check; a layer needs"):
        Sequential([Affine("w"), Old()], SoftmaxCrossEntropy())
