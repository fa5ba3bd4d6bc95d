"""The book's nets (engine.book._nets): their default shapes, the two modes of `predict`,
`loss` and `accuracy`, the running statistics, pickling, and the resident `Gradient` a net
keeps per set of settings.

Tiny nets (a few weights) and ``workers=1, evaluator="loop"``: every numerical gradient here
runs in this process, in milliseconds. Results of the same settings are compared exactly.
"""
import pickle

import numpy as np
import pytest

from engine.book._nets import MLP, Net, SimpleNet, ThreeLayerNet
from engine.run import _backends
from engine.nn._functions import softmax
from engine.nn._model import init_params, mlp

LOOP = {"workers": 1, "evaluator": "loop"}


@pytest.fixture
def dropout_net():
    """A net whose training mode (a dropout mask) and inference mode differ."""
    net = MLP([6, 8, 3], "relu", 1.0, seed=0, dropout=0.5)
    rng = np.random.default_rng(1)
    return net, rng.standard_normal((20, 6)), rng.integers(0, 3, 20)


class TestShapes:
    def test_the_books_default_sizes(self):
        assert SimpleNet(seed=0).params["w"].shape == (2, 3)
        shapes = {k: v.shape for k, v in ThreeLayerNet(seed=0).params.items()}
        assert shapes == {"w1": (784, 100), "b1": (100,), "w2": (100, 10), "b2": (10,)}

    def test_an_mlp_has_no_batch_normalization_or_dropout_unless_asked(self):
        net = MLP([4, 3, 2], seed=0)
        assert sorted(net.params) == ["b1", "b2", "w1", "w2"] and net.state == {}
        assert net.model.for_inference() is net.model   # no layer with a training mode
        assert net.sizes == [4, 3, 2]

    def test_batch_normalization_starts_from_mean_0_and_variance_1(self):
        net = MLP([4, 3, 2], seed=0, batch_norm=True)
        assert sorted(net.state) == ["gamma1_mean", "gamma1_var"]
        assert np.array_equal(net.state["gamma1_mean"], np.zeros(3))
        assert np.array_equal(net.state["gamma1_var"], np.ones(3))


class TestModes:
    def test_predict_and_loss_are_of_the_inference_net_unless_train(self, dropout_net):
        net, x, t = dropout_net
        inference = net.model.for_inference()
        assert np.array_equal(net.predict(x), softmax(inference.logits(net.params, x)))
        assert np.array_equal(net.predict(x, train=True), softmax(net.model.logits(net.params, x)))
        assert not np.array_equal(net.predict(x), net.predict(x, train=True))
        assert net.loss(x, t) == inference.loss(net.params, x, t)
        assert net.loss(x, t, train=True) == net.model.loss(net.params, x, t)
        assert net.loss(x, t) != net.loss(x, t, train=True)

    def test_accuracy_is_the_fraction_of_inference_argmaxes_on_the_label(self, dropout_net):
        net, x, t = dropout_net
        inference_hits = net.predict(x).argmax(axis=1) == t
        train_hits = net.predict(x, train=True).argmax(axis=1) == t
        assert inference_hits.mean() != train_hits.mean()   # the mode shows in the result
        assert net.accuracy(x, t) == inference_hits.mean()
        assert net.accuracy(x, np.eye(3)[t]) == inference_hits.mean()

    def test_inference_reads_the_running_statistics_that_update_state_advances(self):
        net = MLP([4, 3, 2], "relu", 1.0, seed=0, batch_norm=True)
        x = np.random.default_rng(2).standard_normal((5, 4)) + 3.0
        before = net.predict(x)
        net.update_state(x)
        assert not np.array_equal(net.state["gamma1_mean"], np.zeros(3))
        assert not np.array_equal(net.predict(x), before)
        assert np.array_equal(net.predict(x), softmax(net.model.for_inference().logits(
            {**net.params, **net.state}, x)))

    def test_update_state_of_a_net_with_batch_normalization_needs_its_state(self):
        model = mlp([4, 3, 2], batch_norm=True)
        net = Net(model, init_params([4, 3, 2], seed=0, batch_norm=True))
        assert net.state == {}
        with pytest.raises(ValueError, match="`state` has no entry"):
            net.update_state(np.zeros((2, 4)))

    def test_update_state_of_a_net_without_state_changes_nothing(self):
        net = SimpleNet(seed=0)
        net.update_state(np.ones((3, 2)))
        assert net.state == {}


class TestGradients:
    def test_gradient_is_the_models_backprop(self, dropout_net):
        net, x, t = dropout_net
        exact = net.gradient(x, t)
        expected = net.model.gradient(net.params, x, t)
        assert exact.keys() == expected.keys()
        assert all(np.array_equal(exact[k], expected[k]) for k in exact)

    def test_each_set_of_settings_gets_its_own_gradient(self):
        net, x, t = SimpleNet(seed=0), np.array([[0.6, 0.9]]), np.array([2])
        net.numerical_gradient(x, t, **LOOP)
        coarse = net.numerical_gradient(x, t, h=0.1, **LOOP)
        alone = SimpleNet(seed=0).numerical_gradient(x, t, h=0.1, **LOOP)
        assert np.array_equal(coarse["w"], alone["w"])
        assert not np.array_equal(coarse["w"], net.numerical_gradient(x, t, **LOOP)["w"])

    def test_four_settings_stay_resident_and_the_least_recently_used_is_closed(self):
        net, x, t = SimpleNet(seed=0), np.array([[0.6, 0.9]]), np.array([2])
        steps = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
        resident = []
        for h in steps[:4]:
            net.numerical_gradient(x, t, h=h, **LOOP)
            resident.append(net._gradients[next(reversed(net._gradients))])
        net.numerical_gradient(x, t, h=steps[0], **LOOP)   # now the most recently used
        assert len(net._gradients) == 4
        net.numerical_gradient(x, t, h=steps[4], **LOOP)   # a fifth set of settings
        assert len(net._gradients) == 4
        with pytest.raises(ValueError, match="closed"):
            resident[1](net.params, x, t)   # h=1e-4: the least recently used
        for gradient in (resident[0], *resident[2:]):
            assert gradient in net._gradients.values()
            gradient(net.params, x, t)      # still open
        assert net.numerical_gradient(x, t, h=steps[0], **LOOP)["w"].shape == (2, 3)

    def test_a_pickled_net_travels_without_its_gradients(self):
        net, x, t = SimpleNet(seed=0), np.array([[0.6, 0.9]]), np.array([2])
        net.numerical_gradient(x, t, **LOOP)
        copy = pickle.loads(pickle.dumps(net))
        assert copy._gradients == {} and len(net._gradients) == 1
        assert np.array_equal(copy.params["w"], net.params["w"])
        assert copy.loss(x, t) == net.loss(x, t)
        assert np.array_equal(copy.numerical_gradient(x, t, **LOOP)["w"],
                              net.numerical_gradient(x, t, **LOOP)["w"])

    def test_the_workers_are_the_pool_the_one_shot_calls_share(self, monkeypatch):
        monkeypatch.setattr(_backends, "_shared", {})
        net, x, t = SimpleNet(seed=0), np.array([[0.6, 0.9]]), np.array([2])
        try:
            got = net.numerical_gradient(x, t, workers=2, backend="threading", dispatch="parallel",
                                         evaluator="loop")
            assert list(_backends._shared) == [("threading", 2)]
            assert np.array_equal(got["w"], SimpleNet(seed=0).numerical_gradient(x, t, **LOOP)["w"])
        finally:
            for gradient in net._gradients.values():
                gradient.close()
            for pool in _backends._shared.values():
                pool.close()
