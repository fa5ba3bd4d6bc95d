"""Tests for engine.nn._functions, engine.nn._layers and engine.nn._model.

Backprop is checked against a central finite difference written here, independent of the
engine; the stable functions against their textbook formulas where those do not overflow.
"""

import pickle
import warnings

import cloudpickle
import numpy as np
import pytest

from engine.nn._functions import (
    cross_entropy_error,
    log_softmax,
    logsumexp,
    sigmoid,
    softmax,
    softmax_cross_entropy,
    to_labels,
)
from engine.nn._layers import ACTIVATIONS, Affine, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from engine.nn._model import ModelLoss, Sequential, check_sizes, init_params, mlp

H = 1e-5  # finite-difference step
GRAD_RTOL = 1e-6  # max |numerical - backprop| / max |backprop|, per parameter array
BOOK_Y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])  # the book's example


@pytest.fixture
def no_fp_trouble():
    """Raise on overflow, division by zero, invalid values and any warning.

    Underflow stays at numpy's default (ignored): ``exp(-1e4) == 0.0`` is the right answer.
    """
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        yield


def numerical_gradient(f, params, h=H):
    """Central differences of ``f()`` over every entry of every array in `params`."""
    grads = {}
    for name, arr in params.items():
        grad = np.zeros_like(arr)
        flat, gflat = arr.reshape(-1), grad.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + h
            f_plus = f()
            flat[i] = old - h
            f_minus = f()
            flat[i] = old
            gflat[i] = (f_plus - f_minus) / (2 * h)
        grads[name] = grad
    return grads


def max_relative_error(numerical, analytic):
    """Largest over arrays of ``max |num - ana| / max |ana|``."""
    return max(
        np.max(np.abs(numerical[k] - analytic[k])) / np.max(np.abs(analytic[k]))
        for k in analytic
    )


def random_problem(sizes, batch, seed, weight_init_std=0.01):
    rng = np.random.default_rng(seed)
    params = init_params(sizes, weight_init_std=weight_init_std, seed=rng)
    x = rng.random((batch, sizes[0]))
    labels = rng.integers(0, sizes[-1], size=batch)
    return params, x, labels


# --------------------------------------------------------------------------- functions


class TestStability:
    def test_fixture_is_strict(self, no_fp_trouble):
        with pytest.raises(FloatingPointError):
            np.exp(np.array([1e4]))

    def test_sigmoid_extremes(self, no_fp_trouble):
        np.testing.assert_array_equal(sigmoid(np.array([-1e4, 0.0, 1e4])), [0.0, 0.5, 1.0])

    def test_sigmoid_matches_book_formula(self):
        a = np.linspace(-30, 30, 601)
        np.testing.assert_allclose(sigmoid(a), 1 / (1 + np.exp(-a)), rtol=1e-15)

    def test_sigmoid_tail_is_relatively_accurate(self):
        np.testing.assert_allclose(sigmoid(-40.0), np.exp(-40.0), rtol=1e-15)

    def test_sigmoid_keeps_float32(self):
        assert sigmoid(np.ones(3, dtype=np.float32)).dtype == np.float32

    def test_softmax_huge_logits(self, no_fp_trouble):
        p = softmax(np.array([[1e4, 0.0], [-1e4, 1e4], [1e4, 1e4]]))
        np.testing.assert_array_equal(p, [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])

    def test_logsumexp_and_log_softmax_huge_logits(self, no_fp_trouble):
        a = np.array([1e4, 1e4, -1e4])
        assert logsumexp(a) == pytest.approx(1e4 + np.log(2), rel=1e-15)
        np.testing.assert_allclose(log_softmax(a), [-np.log(2), -np.log(2), -2e4 - np.log(2)])

    def test_logsumexp_infinite_rows(self):
        with np.errstate(divide="ignore"):
            out = logsumexp(np.array([[np.inf, 0.0], [-np.inf, -np.inf]]))
        np.testing.assert_array_equal(out, [np.inf, -np.inf])

    def test_softmax_cross_entropy_huge_logits(self, no_fp_trouble):
        logits = np.array([[1e4, 0.0], [1e4, 0.0], [-1e4, 1e4]])
        out = softmax_cross_entropy(logits, np.array([0, 1, 0]))
        np.testing.assert_array_equal(out, [0.0, 1e4, 2e4])


class TestSoftmax:
    def test_rows_sum_to_one(self):
        p = softmax(np.random.default_rng(0).normal(scale=5, size=(3, 4, 7)))
        assert p.shape == (3, 4, 7)
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-15)
        assert (p >= 0).all()

    def test_matches_definition(self):
        a = np.random.default_rng(1).normal(size=(5, 6))
        e = np.exp(a)
        np.testing.assert_allclose(softmax(a), e / e.sum(axis=1, keepdims=True), rtol=1e-14)
        np.testing.assert_allclose(log_softmax(a), np.log(softmax(a)), rtol=1e-13)

    def test_scalar_is_an_error(self):
        with pytest.raises(ValueError, match="`a`"):
            softmax(3.0)

    @pytest.mark.parametrize("function", [softmax, logsumexp, log_softmax])
    def test_every_last_axis_function_refuses_a_scalar(self, function):
        with pytest.raises(ValueError, match="`a` must have at least 1 dimension, got a scalar"):
            function(3.0)

    def test_a_stack_of_batches_is_taken_batch_by_batch(self):
        a = np.random.default_rng(4).normal(scale=5, size=(3, 4, 7))
        for function in (softmax, logsumexp, log_softmax):
            out = function(a)
            for k in range(3):
                np.testing.assert_array_equal(out[k], function(a[k]))


class TestCrossEntropy:
    def test_book_examples(self):
        # The book gets 0.5108... and 2.3025... (it adds 1e-7 inside the log; we do not).
        assert cross_entropy_error(BOOK_Y, 2) == pytest.approx(-np.log(0.6), rel=1e-15)
        assert cross_entropy_error(BOOK_Y, np.eye(10)[2]) == pytest.approx(-np.log(0.6))
        y_wrong = np.array([0.1, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0, 0.6, 0.0, 0.0])
        assert cross_entropy_error(y_wrong, 2) == pytest.approx(-np.log(0.1), rel=1e-15)

    def test_batch_mean_one_hot_equals_labels(self):
        y = np.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])
        expected = -(np.log(0.8) + np.log(0.5) + np.log(0.9)) / 3
        assert cross_entropy_error(y, [1, 0, 0]) == pytest.approx(expected, rel=1e-15)
        assert cross_entropy_error(y, np.eye(2)[[1, 0, 0]]) == pytest.approx(expected, rel=1e-15)

    def test_zero_probability_is_inf(self):
        assert cross_entropy_error(BOOK_Y, 3) == np.inf

    def test_negative_probability_is_an_error(self):
        with pytest.raises(ValueError, match="`y`"):
            cross_entropy_error(np.array([-0.1, 1.1]), 0)

    def test_probabilities_of_more_than_2_dimensions_are_refused(self):
        with pytest.raises(ValueError, match="`y` must be 1-D or 2-D, got shape"):
            cross_entropy_error(np.full((2, 2, 2), 0.5), [0, 1])

    def test_softmax_cross_entropy_needs_a_batch_axis(self):
        with pytest.raises(ValueError, match=r"`logits` must have shape \(\.\.\., B, C\)"):
            softmax_cross_entropy(np.zeros(4), np.array([0]))

    def test_softmax_cross_entropy_of_a_stack_checks_labels_against_the_class_axis(self):
        logits = np.zeros((2, 3, 4))
        np.testing.assert_allclose(softmax_cross_entropy(logits, np.array([0, 3, 1])), np.log(4.0),
                                   rtol=1e-15)
        with pytest.raises(ValueError, match=r"\[0, 4\), got 4"):
            softmax_cross_entropy(logits, np.array([0, 4, 1]))

    def test_softmax_cross_entropy_hand_values(self):
        logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
        out = softmax_cross_entropy(logits, np.array([0, 1]))
        np.testing.assert_allclose(out, [np.log(2.0), np.log(4.0)], rtol=1e-15)

    def test_softmax_cross_entropy_equals_book_route(self):
        rng = np.random.default_rng(2)
        logits, labels = rng.normal(size=(6, 4)), rng.integers(0, 4, size=6)
        per = softmax_cross_entropy(logits, labels)
        assert per.mean() == pytest.approx(cross_entropy_error(softmax(logits), labels))

    def test_softmax_cross_entropy_stacks(self):
        rng = np.random.default_rng(3)
        logits, labels = rng.normal(size=(3, 5, 4)), rng.integers(0, 4, size=5)
        out = softmax_cross_entropy(logits, labels)
        assert out.shape == (3, 5)
        for k in range(3):
            np.testing.assert_array_equal(out[k], softmax_cross_entropy(logits[k], labels))

    @pytest.mark.parametrize(
        "labels, match",
        [
            (np.array([0, 1]), "shape"),
            (np.array([0.0, 1.0, 2.0]), "integers"),
            (np.array([0, 4, 1]), r"\[0, 4\)"),
            (np.array([0, -1, 1]), r"\[0, 4\)"),
        ],
    )
    def test_softmax_cross_entropy_bad_labels(self, labels, match):
        with pytest.raises(ValueError, match=match):
            softmax_cross_entropy(np.zeros((3, 4)), labels)


class TestToLabels:
    @pytest.mark.parametrize(
        "t, kwargs, expected",
        [
            (2, {}, [2]),
            ([2, 0, 1], {}, [2, 0, 1]),
            (np.array([1.0, 0.0]), {"batch_size": 2}, [1, 0]),  # whole-number float labels
            (np.eye(3)[[2, 0]], {}, [2, 0]),
            (np.eye(3)[1], {}, [1]),  # one float one-hot row
            (np.eye(3, dtype=int)[1], {"batch_size": 1}, [1]),  # int one-hot row, B == 1
            (np.array([0, 1, 0]), {"batch_size": 3}, [0, 1, 0]),  # B == C labels
        ],
    )
    def test_normalises(self, t, kwargs, expected):
        labels = to_labels(t, 3, **kwargs)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, expected)

    def test_returns_a_fresh_array(self):
        t = np.array([0, 1], dtype=np.int64)
        assert to_labels(t, 2) is not t

    @pytest.mark.parametrize(
        "t, kwargs, match",
        [
            (np.zeros((2, 3, 3)), {}, "at most 2 dimensions"),
            (np.eye(4)[[0, 1]], {}, "4 columns but there are 3"),
            (np.array([[1.0, 1.0, 0.0]]), {}, "row 0 is not one-hot"),
            (np.array([[0, 0, 1], [0.5, 0.5, 0]]), {}, "row 1 is not one-hot"),
            (np.array([0, 3]), {}, r"\[0, 3\).*3"),
            (-1, {}, r"\[0, 3\).*-1"),
            (np.array([0.5, 1.0]), {"batch_size": 2}, "whole numbers"),
            (np.array(["a", "b"]), {}, "integers"),
            (np.array([0, 1]), {"batch_size": 3}, "2 labels but the batch has 3"),
        ],
    )
    def test_errors(self, t, kwargs, match):
        with pytest.raises(ValueError, match=match):
            to_labels(t, 3, **kwargs)


# ------------------------------------------------------------------------------ layers


class TestLayers:
    @pytest.mark.parametrize("name", sorted(ACTIVATIONS))
    def test_activations_work_on_stacks(self, name):
        a = np.random.default_rng(4).normal(size=(3, 2, 5))
        act = ACTIVATIONS[name]()
        np.testing.assert_array_equal(act.forward({}, a)[1], act.forward({}, a[1]))

    @pytest.mark.parametrize("act", [Sigmoid(), ReLU(), Tanh()])
    def test_activation_backward_matches_difference(self, act):
        a = np.array([-2.0, -0.3, 0.4, 1.5])
        numerical = (act.forward({}, a + H) - act.forward({}, a - H)) / (2 * H)
        analytic, grads = act.backward({}, a, act.forward({}, a), np.ones_like(a))
        np.testing.assert_allclose(analytic, numerical, rtol=1e-8)
        assert grads == {}

    def test_affine_without_bias(self):
        params = {"w": np.arange(6.0).reshape(2, 3)}
        layer = Affine("w")
        z = np.ones((1, 2))
        np.testing.assert_array_equal(layer.forward(params, z), [[3.0, 5.0, 7.0]])
        dz, grads = layer.backward(params, z, layer.forward(params, z), np.ones((1, 3)))
        assert list(grads) == ["w"] and dz.shape == (1, 2)

    def test_affine_refuses_samples_of_more_than_one_axis_naming_the_fix(self):
        params = {"w": np.zeros((12, 2)), "b": np.zeros(2)}
        assert Affine("w", "b").check(params, 12) == 2
        with pytest.raises(ValueError, match=r"Affine\('w', 'b'\) needs rows, samples of one "
                                             r"axis, .* shape \(3, 2, 2\): put Reshape\(-1\)"):
            Affine("w", "b").check(params, (3, 2, 2))

    def test_affine_names_must_be_strings(self):
        with pytest.raises(TypeError, match="`weight`"):
            Affine(np.zeros((2, 2)))

    def test_loss_layer(self):
        rng = np.random.default_rng(5)
        logits, labels = rng.normal(size=(4, 3)), np.array([0, 2, 1, 1])
        layer = SoftmaxCrossEntropy()
        assert layer.loss(logits, labels) == pytest.approx(
            layer.per_sample(logits, labels).mean(), rel=1e-15
        )
        expected = (softmax(logits) - np.eye(3)[labels]) / 4
        np.testing.assert_allclose(layer.backward(logits, labels), expected, rtol=1e-15)

    def test_relu_derivative_at_the_kink_is_zero(self):
        z = np.array([-1.0, -0.0, 0.0, 1e-300, 2.0])
        dz, _ = ReLU().backward({}, z, ReLU().forward({}, z), np.full(5, 3.0))
        assert np.array_equal(dz, [0.0, 0.0, 0.0, 3.0, 3.0])

    def test_affine_bias_name_must_be_a_string_or_none(self):
        with pytest.raises(TypeError, match="`bias` must be a parameter name"):
            Affine("w", 3)
        assert Affine("w").bias is None and Affine("w", None).param_names() == ["w"]
        assert Affine("w", "b").param_names() == ["w", "b"]

    def test_reprs_name_the_parameters(self):
        # Errors and warnings about a net name its layers by these.
        assert [repr(layer) for layer in (Affine("w1", "b1"), Affine("w"), Sigmoid(), ReLU(),
                                          Tanh(), SoftmaxCrossEntropy())] == [
            "Affine('w1', 'b1')", "Affine('w', None)", "Sigmoid()", "ReLU()", "Tanh()",
            "SoftmaxCrossEntropy()"]

    @pytest.mark.parametrize("method", ["per_sample", "loss"])
    def test_loss_layer_checks_labels_by_default(self, method):
        call = getattr(SoftmaxCrossEntropy(), method)
        with pytest.raises(ValueError, match=r"\[0, 3\), got 3"):
            call(np.zeros((2, 3)), np.array([0, 3]))

    @pytest.mark.parametrize(
        "logits, labels, match",
        [
            (np.zeros((2, 2, 3)), np.array([0, 1]), r"`logits` must have shape \(B, C\)"),
            (np.zeros(3), np.array([0]), r"`logits` must have shape \(B, C\)"),
            (np.zeros((2, 3)), np.array([0, 3]), r"\[0, 3\), got 3"),
            (np.zeros((2, 3)), np.array([0, 1, 2]), "`labels` must have shape"),
        ],
        ids=["3d-logits", "1d-logits", "label-out-of-range", "too-many-labels"],
    )
    def test_loss_layer_backward_refuses(self, logits, labels, match):
        with pytest.raises(ValueError, match=match):
            SoftmaxCrossEntropy().backward(logits, labels)


# ------------------------------------------------------------------------------- model


class TestBackprop:
    @pytest.mark.parametrize("batch", [1, 5])
    def test_book_net_784_100_10(self, batch):
        sizes = [784, 100, 10]
        net = mlp(sizes)
        params, x, labels = random_problem(sizes, batch, seed=batch)
        f = ModelLoss(net, params, x, labels)
        numerical = numerical_gradient(lambda: f(None), params)
        assert max_relative_error(numerical, net.gradient(params, x, labels)) <= GRAD_RTOL

    @pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
    def test_deeper_mlp(self, activation):
        sizes = [20, 15, 8, 10]
        net = mlp(sizes, activation)
        params, x, labels = random_problem(sizes, 4, seed=7, weight_init_std=0.5)
        x -= 0.5
        if activation == "relu":
            # A step of H moves a pre-activation by about H; stay well clear of the kink.
            trace = net.trace(params, x)
            relu_inputs = [trace[i] for i, layer in enumerate(net.layers) if isinstance(layer, ReLU)]
            margin = min(np.abs(a).min() for a in relu_inputs)
            assert margin > 1e-3, "test data puts a ReLU input next to its kink"
        f = ModelLoss(net, params, x, labels)
        numerical = numerical_gradient(lambda: f(None), params)
        assert max_relative_error(numerical, net.gradient(params, x, labels)) <= GRAD_RTOL

    def test_shared_weights_accumulate(self):
        net = Sequential([Affine("w", "b"), Tanh(), Affine("w", "b")], SoftmaxCrossEntropy())
        rng = np.random.default_rng(8)
        params = {"w": rng.normal(size=(3, 3)), "b": rng.normal(size=3)}
        x, labels = rng.normal(size=(2, 3)), np.array([0, 2])
        numerical = numerical_gradient(lambda: net.loss(params, x, labels), params)
        assert max_relative_error(numerical, net.gradient(params, x, labels)) <= GRAD_RTOL

    def test_gradient_keeps_names_shapes_dtypes(self):
        params = init_params([6, 4, 3], seed=0, dtype=np.float32)
        grads = mlp([6, 4, 3]).gradient(params, np.ones((2, 6)), [0, 2])
        assert list(grads) == list(params)
        for name in params:
            assert grads[name].shape == params[name].shape
            assert grads[name].dtype == np.float32


class TestSequential:
    sizes = [6, 5, 4]

    @pytest.fixture
    def problem(self):
        params, x, labels = random_problem(self.sizes, 1, seed=9, weight_init_std=0.5)
        return mlp(self.sizes, "tanh"), params, x, labels

    def test_1d_x_is_a_batch_of_one(self, problem):
        net, params, x, labels = problem
        np.testing.assert_array_equal(net.logits(params, x[0]), net.logits(params, x))
        assert net.loss(params, x[0], labels) == net.loss(params, x, labels)
        g1, g2 = net.gradient(params, x[0], labels), net.gradient(params, x, labels)
        for name in params:
            np.testing.assert_array_equal(g1[name], g2[name])

    def test_one_hot_equals_int_labels(self, problem):
        net, params, x, labels = problem
        one_hot = np.eye(self.sizes[-1])[labels]
        for t in (one_hot, one_hot[0], int(labels[0])):
            assert net.loss(params, x, t) == net.loss(params, x, labels)
            g1, g2 = net.gradient(params, x, t), net.gradient(params, x, labels)
            for name in params:
                np.testing.assert_array_equal(g1[name], g2[name])

    def test_loss_is_mean_of_per_sample(self):
        params, x, labels = random_problem(self.sizes, 3, seed=10, weight_init_std=0.5)
        net = mlp(self.sizes)
        per = softmax_cross_entropy(net.logits(params, x), labels)
        assert isinstance(net.loss(params, x, labels), float)
        assert net.loss(params, x, labels) == pytest.approx(per.mean(), rel=1e-15)

    def test_trace(self, problem):
        net, params, x, _ = problem
        trace = net.trace(params, x[0])
        assert len(trace) == len(net.layers) + 1
        np.testing.assert_array_equal(trace[0], x)
        for i, layer in enumerate(net.layers):
            np.testing.assert_array_equal(trace[i + 1], layer.forward(params, trace[i]))
        np.testing.assert_array_equal(trace[-1], net.logits(params, x))

    def test_param_names(self):
        assert mlp([3, 4, 5, 2]).param_names() == ["w1", "b1", "w2", "b2", "w3", "b3"]

    @pytest.mark.parametrize(
        "change, match",
        [
            (lambda p: p.pop("b2"), "no entry 'b2'"),
            (lambda p: p.update(w2=np.zeros((4, 4))), r"params\['w2'\]"),
            (lambda p: p.update(b1=np.zeros(4)), r"params\['b1'\]"),
        ],
        ids=["no-b2", "w2-shape", "b1-shape"],   # no spaces: tools/mutate.py --record reads ids
    )
    def test_bad_params(self, problem, change, match):
        net, params, x, labels = problem
        change(params)
        with pytest.raises(ValueError, match=match):
            net.loss(params, x, labels)

    def test_bad_x_and_t(self, problem):
        net, params, x, labels = problem
        with pytest.raises(ValueError, match="`x`"):
            net.logits(params, np.zeros((1, 1, 6)))
        with pytest.raises(ValueError, match=r"params\['w1'\]"):
            net.logits(params, np.zeros(7))
        with pytest.raises(ValueError, match="1 labels but the batch has 2"):
            net.loss(params, np.zeros((2, 6)), 1)
        with pytest.raises(TypeError, match="`params`"):
            net.loss([1, 2], x, labels)

    def test_trace_checks_its_input_too(self, problem):
        net, params, x, _ = problem
        with pytest.raises(ValueError, match=r"params\['w1'\]"):
            net.trace(params, np.zeros(7))
        with pytest.raises(TypeError, match="`params`"):
            net.trace([1, 2], x)

    def test_float_input_keeps_its_dtype_other_input_becomes_float64(self):
        net, params = mlp([4, 3, 2]), init_params([4, 3, 2], seed=0, dtype=np.float32)
        x32 = np.arange(8.0, dtype=np.float32).reshape(2, 4) / 8
        assert net.logits(params, x32).dtype == np.float32
        assert net.trace(params, x32)[0].dtype == np.float32
        ints = np.arange(8).reshape(2, 4)
        first = net.trace(params, ints)[0]
        assert first.dtype == np.float64 and np.array_equal(first, ints)

    def test_needs_a_layer_and_a_loss_layer(self):
        with pytest.raises(ValueError, match="`layers` is empty"):
            Sequential([], SoftmaxCrossEntropy())
        with pytest.raises(TypeError, match="`loss_layer` .* has no method 'per_sample'"):
            Sequential([Affine("w")], Sigmoid())

    def test_reprs(self):
        net = mlp([3, 2])
        assert repr(net) == "Sequential([Affine('w1', 'b1')], SoftmaxCrossEntropy())"
        f = ModelLoss(net, init_params([3, 2], seed=0), np.ones((4, 3)), [0, 1, 0, 1])
        assert repr(f) == f"ModelLoss(model={net!r}, batch=4)"


class TestMlpAndInit:
    def test_mlp_layers(self):
        net = mlp([784, 100, 50, 10], "relu")
        kinds = [type(layer).__name__ for layer in net.layers]
        assert kinds == ["Affine", "ReLU", "Affine", "ReLU", "Affine"]
        assert [(layer.weight, layer.bias) for layer in net.layers[::2]] == [
            ("w1", "b1"), ("w2", "b2"), ("w3", "b3")
        ]
        assert isinstance(net.loss_layer, SoftmaxCrossEntropy)

    def test_mlp_with_batch_norm_and_dropout_puts_them_around_each_hidden_activation(self):
        """The book's MultiLayerNetExtend: Affine, BatchNorm, act, Dropout per hidden layer;
        the dropout seeds are dropout_seed + i."""
        net = mlp([6, 5, 4, 3], "tanh", batch_norm=True, dropout=0.25, dropout_seed=10)
        assert [repr(layer) for layer in net.layers] == [
            "Affine('w1', 'b1')", "BatchNormalization('gamma1', 'beta1', train)", "Tanh()",
            "Dropout(0.25, seed=11, train)",
            "Affine('w2', 'b2')", "BatchNormalization('gamma2', 'beta2', train)", "Tanh()",
            "Dropout(0.25, seed=12, train)",
            "Affine('w3', 'b3')"]
        assert repr(mlp([6, 5, 3], dropout=0.5).layers[2]) == "Dropout(0.5, seed=1, train)"
        with pytest.raises(ValueError, match=r"in \[0, 1\), got 1\.0"):
            mlp([6, 3], dropout=1.0)   # checked also where no hidden layer would take it

    def test_init_params_with_batch_norm_adds_unit_gammas_and_zero_betas_per_hidden_layer(self):
        params = init_params([6, 5, 4, 3], seed=2, batch_norm=True, dtype=np.float32)
        assert list(params) == ["w1", "b1", "gamma1", "beta1", "w2", "b2", "gamma2", "beta2",
                                "w3", "b3"]
        for i, width in ((1, 5), (2, 4)):
            assert np.array_equal(params[f"gamma{i}"], np.ones(width, dtype=np.float32))
            assert np.array_equal(params[f"beta{i}"], np.zeros(width, dtype=np.float32))
            assert params[f"gamma{i}"].dtype == params[f"beta{i}"].dtype == np.float32
        plain = init_params([6, 5, 4, 3], seed=2, dtype=np.float32)
        assert all(np.array_equal(plain[k], params[k]) for k in plain)
        net = mlp([6, 5, 4, 3], batch_norm=True)
        assert net.param_names() == list(params)

    def test_init_params(self):
        params = init_params([784, 100, 10], weight_init_std=0.01, seed=0)
        assert list(params) == ["w1", "b1", "w2", "b2"]
        assert params["w1"].shape == (784, 100) and params["b2"].shape == (10,)
        assert params["w1"].std() == pytest.approx(0.01, rel=0.02)
        assert not params["b1"].any()
        again = init_params([784, 100, 10], weight_init_std=0.01, seed=0)
        np.testing.assert_array_equal(params["w2"], again["w2"])
        as32 = init_params([784, 100, 10], seed=0, dtype=np.float32)
        assert all(a.dtype == np.float32 for a in as32.values())
        np.testing.assert_array_equal(as32["w1"], params["w1"].astype(np.float32))

    def test_init_params_default_draws_exactly(self):
        """Default std 0.01 (the book's); w1 then w2 from one generator; zero biases."""
        params, rng = init_params([5, 4, 3], seed=1), np.random.default_rng(1)
        assert np.array_equal(params["w1"], 0.01 * rng.standard_normal((5, 4)))
        assert np.array_equal(params["w2"], 0.01 * rng.standard_normal((4, 3)))
        assert np.array_equal(params["b1"], np.zeros(4))

    @pytest.mark.parametrize("name, gain", [("he", 2.0), ("relu", 2.0), ("xavier", 1.0),
                                            ("sigmoid", 1.0)])
    def test_init_params_the_books_named_scales(self, name, gain):
        """MultiLayerNet's 'relu' / 'sigmoid': std sqrt(gain / n_in), layer by layer."""
        params, rng = init_params([5, 4, 3], weight_init_std=name, seed=1), np.random.default_rng(1)
        assert np.array_equal(params["w1"], np.sqrt(gain / 5) * rng.standard_normal((5, 4)))
        assert np.array_equal(params["w2"], np.sqrt(gain / 4) * rng.standard_normal((4, 3)))

    def test_init_params_zero_std_gives_zero_weights(self):
        params = init_params([5, 4, 3], weight_init_std=0.0, seed=1)
        assert all(np.array_equal(a, np.zeros_like(a)) for a in params.values())

    def test_width_one_is_allowed(self):
        assert check_sizes((np.int64(1), 1)) == [1, 1]
        assert all(type(n) is int for n in check_sizes((np.int64(1), 1)))
        assert mlp([1, 1]).logits(init_params([1, 1], seed=0), [[2.0]]).shape == (1, 1)

    @pytest.mark.parametrize(
        "call, match",
        [
            (lambda: mlp([3]), "`sizes`"),
            (lambda: mlp([3, 0, 2]), "positive ints, got 0"),
            (lambda: mlp([3, 2.5]), "positive ints, got 2.5"),
            (lambda: mlp([3, 2], "softplus"), "'softplus' is unknown"),
            (lambda: init_params([3, 2], weight_init_std=-1.0), "`weight_init_std`"),
            (lambda: init_params([3, 2], weight_init_std=np.inf), "`weight_init_std`"),
            (lambda: init_params([3, 2], weight_init_std=np.nan), "`weight_init_std`"),
            (lambda: mlp([3, True]), "positive ints, got True"),
            (lambda: init_params([3, 2], dtype=np.int32), "`dtype`"),
            (lambda: init_params([3, 2], weight_init_std="He"), "'He' is unknown"),
        ],
        ids=["one-size", "zero-width", "float-width", "unknown-activation", "negative-std",
             "inf-std", "nan-std", "bool-width", "int-dtype", "unknown-init"],
    )
    def test_errors(self, call, match):
        with pytest.raises(ValueError, match=match):
            call()


class TestModelLoss:
    @pytest.fixture
    def f(self):
        params, x, labels = random_problem([8, 5, 3], 4, seed=11, weight_init_std=0.5)
        return ModelLoss(mlp([8, 5, 3]), params, x, np.eye(3)[labels])

    def test_attributes(self):
        params, x, labels = random_problem([8, 5, 3], 1, seed=12)
        f = ModelLoss(mlp([8, 5, 3]), params, x[0].astype(np.float32), int(labels[0]))
        assert f.params is params
        assert f.x.shape == (1, 8) and f.x.dtype == np.float64 and f.x.flags.c_contiguous
        assert f.labels.shape == (1,) and f.labels.dtype == np.int64

    def test_value_ignores_w_and_tracks_params(self, f):
        expected = f.model.loss(f.params, f.x, f.labels)
        assert f(None) == expected and f(f.params["w1"]) == expected
        assert isinstance(f(None), float)
        f.params["w2"][0, 0] += 0.1
        assert f(None) == f.model.loss(f.params, f.x, f.labels) != expected

    @pytest.mark.parametrize("dumps, loads", [(pickle.dumps, pickle.loads),
                                              (cloudpickle.dumps, pickle.loads)])
    def test_pickle_round_trip_keeps_params_identity(self, f, dumps, loads):
        g, params = loads(dumps((f, f.params)))
        assert g.params is params
        assert g(None) == f(None)
        params["w1"][0, 0] += 0.1
        assert g(None) == g.model.loss(params, g.x, g.labels) != f(None)

    def test_bad_arguments(self, f):
        with pytest.raises(TypeError, match="`model`"):
            ModelLoss(lambda w: 0.0, f.params, f.x, f.labels)
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            ModelLoss(f.model, f.params, f.x, [0, 1, 2, 3])
