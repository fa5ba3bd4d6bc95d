"""`engine.batched._detect`: which objectives are a layered model's loss, how they are bound,
and which evaluator each pair (evaluator, f, x, option) resolves to, with its warning or error.

Everything here is in-process and evaluates nothing: the rules are stated case by case."""
import re
import warnings

import numpy as np
import pytest

from engine.batched._batched import BATCHED_KINDS, batched_evaluate, unsupported_layer
from engine.batched._detect import (bind, choose_evaluator, get_evaluator, is_model_objective,
                                    model_of)
from engine.fd._evaluators import loop_evaluate
from engine.nn._conv import Reshape
from engine.nn._layers import Affine, Layer, SoftmaxCrossEntropy, Tanh
from engine.nn._model import ModelLoss, Sequential, init_params, mlp
from engine.nn._regularize import Dropout


def squares(v):
    return float(np.sum(np.asarray(v, dtype=np.float64) ** 2))


class Sharing(Layer):
    """A layer before the first affine one that reads a parameter of a later layer."""

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Sharing({self.name!r})"

    def param_names(self):
        return [self.name]

    def forward(self, params, z):
        return z

    def backward(self, params, z, out, dout):
        return dout, {}


@pytest.fixture(scope="module")
def net():
    return mlp([3, 2]), init_params([3, 2], seed=0), np.ones((2, 3)), np.array([0, 1])


@pytest.fixture(scope="module")
def dropout_net():
    """A 3-4-2 net with a dropout layer between its affine layers: not for the batched evaluator."""
    model = Sequential([Affine("w1", "b1"), Tanh(), Dropout(0.5), Affine("w2", "b2")],
                       SoftmaxCrossEntropy())
    return model, init_params([3, 4, 2], seed=1), np.ones((2, 3)), np.array([0, 1])


def resolved(evaluator, f, x, loop_only=None):
    """``choose_evaluator(...)`` and the messages of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = choose_evaluator(evaluator, f, x, loop_only)
    return name, [str(w.message) for w in caught]


class TestRecognisingAModelsLoss:
    def test_only_a_sequentials_own_loss_method_is_a_model_objective(self, net):
        model = net[0]
        assert is_model_objective(model.loss)
        assert not is_model_objective(Sequential.loss)        # the plain function: no model
        assert not is_model_objective(model.logits)           # another method of the model
        assert not is_model_objective(squares) and not is_model_objective(lambda p: 0.0)

    def test_the_model_of_a_model_loss_or_of_model_loss_and_none_else(self, net):
        model, params, inputs, labels = net
        assert model_of(ModelLoss(model, params, inputs, labels)) is model
        assert model_of(model.loss) is model
        assert model_of(squares) is None and model_of(model.logits) is None

    def test_a_models_loss_is_bound_to_a_model_loss_over_x(self, net):
        model, params, inputs, labels = net
        bound = bind(model.loss, (inputs, labels), params)
        assert isinstance(bound, ModelLoss) and bound.model is model and bound.params is params
        assert bound(params) == model.loss(params, inputs, labels)

    @pytest.mark.parametrize("count", [0, 1, 3])
    def test_a_models_loss_needs_exactly_inputs_and_labels(self, net, count):
        model, params, inputs, labels = net
        args = (inputs, labels, labels)[:count]
        with pytest.raises(TypeError, match=rf"got {count} argument\(s\) after the params"):
            bind(model.loss, args, params)

    def test_any_other_f_gets_its_arguments_appended(self):
        f = lambda x, a, b: x + 10 * a + 100 * b  # noqa: E731
        assert bind(f, (), None) is f
        assert bind(f, (1, 2), None)(3) == 213


class TestGetEvaluator:
    def test_the_two_names_and_nothing_else(self):
        assert get_evaluator("loop") is loop_evaluate
        assert get_evaluator("batched") is batched_evaluate
        for name in ["auto", "Loop", ""]:
            with pytest.raises(ValueError, match=re.escape(f"got {name!r}")):
                get_evaluator(name)


class TestAuto:
    def test_batched_for_a_model_loss_over_its_own_params_without_a_warning(self, net):
        model, params, inputs, labels = net
        assert resolved("auto", ModelLoss(model, params, inputs, labels), params) == ("batched", [])
        assert resolved("auto", model.loss, params) == ("batched", [])

    def test_loop_for_a_black_box_without_a_warning(self, net):
        assert resolved("auto", squares, np.ones(3)) == ("loop", [])
        assert resolved("auto", squares, net[1]) == ("loop", [])         # a dict x: still a black box
        assert resolved("auto", net[0].loss, [net[1]["w1"]]) == ("loop", [])   # not a params dict

    def test_loop_with_a_warning_for_a_model_loss_over_other_params(self, net):
        model, params, inputs, labels = net
        name, messages = resolved("auto", ModelLoss(model, params, inputs, labels), dict(params))
        assert name == "loop"
        assert len(messages) == 1 and "pass x = f.params" in messages[0]

    def test_loop_without_a_warning_where_an_option_needs_it(self, net):
        model, params, inputs, labels = net
        assert resolved("auto", ModelLoss(model, params, inputs, labels), params, "bounds") == ("loop", [])
        assert resolved("auto", model.loss, params, "bounds") == ("loop", [])

    def test_loop_with_a_warning_naming_a_layer_the_batched_evaluator_cannot_take(self, dropout_net):
        model, params, inputs, labels = dropout_net
        for f in [ModelLoss(model, params, inputs, labels), model.loss]:
            name, messages = resolved("auto", f, params)
            assert name == "loop"
            assert len(messages) == 1 and "the layer Dropout(0.5, seed=0, train)" in messages[0]
            assert str(BATCHED_KINDS) in messages[0]

    def test_no_layer_warning_where_an_option_needs_the_loop_anyway(self, dropout_net):
        model, params, inputs, labels = dropout_net
        assert resolved("auto", ModelLoss(model, params, inputs, labels), params, "bounds") == ("loop", [])


class TestNamed:
    def test_loop_is_taken_for_anything(self, net, dropout_net):
        model, params, inputs, labels = net
        assert resolved("loop", squares, np.ones(3)) == ("loop", [])
        assert resolved("loop", ModelLoss(model, params, inputs, labels), params, "bounds") == ("loop", [])
        assert resolved("loop", ModelLoss(model, params, inputs, labels), dict(params)) == ("loop", [])
        assert resolved("loop", dropout_net[0].loss, dropout_net[1]) == ("loop", [])

    def test_batched_is_taken_for_a_model_loss_over_its_params(self, net):
        model, params, inputs, labels = net
        assert resolved("batched", ModelLoss(model, params, inputs, labels), params) == ("batched", [])
        assert resolved("batched", model.loss, params) == ("batched", [])

    def test_an_unknown_name_is_refused_naming_the_choices(self, net):
        for name in ["fast", "Batched", "loops"]:
            message = f"one of ('auto', 'loop', 'batched'), got {name!r}"
            with pytest.raises(ValueError, match=re.escape(message)):
                choose_evaluator(name, squares, np.ones(3))

    def test_batched_refuses_an_option_only_the_loop_supports(self, net):
        with pytest.raises(ValueError, match="evaluator='batched' does not support bounds: use"):
            choose_evaluator("batched", net[0].loss, net[1], loop_only="bounds")

    def test_batched_refuses_anything_but_a_model_loss_over_its_params(self, net):
        model, params, inputs, labels = net
        for f, x in [(squares, params), (squares, np.ones(3)), (model.loss, [params["w1"]]),
                     (ModelLoss(model, params, inputs, labels), dict(params))]:
            with pytest.raises(ValueError, match="needs `f` to be a layered model's loss"):
                choose_evaluator("batched", f, x)

    def test_batched_refuses_a_layer_it_cannot_take_naming_it(self, dropout_net):
        model, params, inputs, labels = dropout_net
        for f in [ModelLoss(model, params, inputs, labels), model.loss]:
            with pytest.raises(ValueError, match=r"cannot take the layer Dropout\(0.5, seed=0, train\) "
                                                 r"of the model of `f`"):
                choose_evaluator("batched", f, params)


class TestUnsupportedLayer:
    """The batched evaluator takes any layer before the first affine one, unless it shares a
    parameter with a later layer, and only affine and elementwise layers from there on."""

    def test_affine_and_elementwise_layers_are_taken(self, net):
        assert unsupported_layer(net[0]) is None
        assert unsupported_layer(mlp([4, 3, 3, 2], "relu")) is None

    def test_the_first_other_layer_after_the_first_affine_one_is_named(self):
        first, second = Dropout(0.5), Dropout(0.25)
        model = Sequential([Affine("w1"), first, Tanh(), second, Affine("w2")], SoftmaxCrossEntropy())
        assert unsupported_layer(model) is first

    def test_any_layer_before_the_first_affine_one_is_taken(self):
        model = Sequential([Reshape(-1), Dropout(0.5), Sharing("s"), Affine("w1", "b1")],
                           SoftmaxCrossEntropy())
        assert unsupported_layer(model) is None

    def test_a_layer_before_the_first_affine_one_sharing_a_later_parameter_is_named(self):
        sharing = Sharing("w2")
        model = Sequential([Reshape(-1), sharing, Affine("w1"), Tanh(), Affine("w2")],
                           SoftmaxCrossEntropy())
        assert unsupported_layer(model) is sharing

    def test_a_model_without_an_affine_layer_has_nothing_to_refuse(self):
        assert unsupported_layer(Sequential([Dropout(0.5), Tanh()], SoftmaxCrossEntropy())) is None
