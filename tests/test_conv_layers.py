"""The image layers and the training-mode layers: forward against loops written here, backward
against central differences, shapes checked before any work, modes and state.

Backward is compared with a central difference (step `H`) of ``sum(forward(z) * R)`` for a
random `R`, on inputs drawn at random (no max-pool ties, no kinks within `H`); bound:
``max |numerical - backprop| <= GRAD_RTOL * max |backprop|`` per array.
"""
import numpy as np
import pytest

from engine.nn._conv import Convolution, Pooling, Reshape, col2im, im2col
from engine.nn._layers import Affine, ReLU, SoftmaxCrossEntropy
from engine.nn._model import Sequential
from engine.nn._regularize import BatchNormalization, Dropout

H = 1e-5
GRAD_RTOL = 1e-6


def central_difference(fun, array):
    """d fun() / d array, entry by entry, by (fun(a + h) - fun(a - h)) / 2h (array restored)."""
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        old = array[i]
        array[i] = old + H
        plus = fun()
        array[i] = old - H
        minus = fun()
        array[i] = old
        grad[i] = (plus - minus) / (2 * H)
    return grad


def assert_backward_matches(layer, params, z, rng):
    out = layer.forward(params, z)
    weights = rng.standard_normal(out.shape)
    dz, grads = layer.backward(params, z, out, weights)
    assert dz.shape == z.shape and sorted(grads) == sorted(layer.param_names())

    def fun():
        return float((layer.forward(params, z) * weights).sum())

    for exact, array in [(dz, z)] + [(grads[name], params[name]) for name in layer.param_names()]:
        numerical = central_difference(fun, array)
        assert np.isfinite(exact).all()   # an inf would pass the relative bound below
        assert np.abs(numerical - exact).max() <= GRAD_RTOL * np.abs(exact).max()


def naive_convolution(z, w, b, stride, pad):
    zp = np.pad(z, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    fn, _, fh, fw = w.shape
    oh = (zp.shape[2] - fh) // stride + 1
    ow = (zp.shape[3] - fw) // stride + 1
    out = np.zeros((z.shape[0], fn, oh, ow))
    for n, f, i, j in np.ndindex(out.shape):
        window = zp[n, :, i * stride:i * stride + fh, j * stride:j * stride + fw]
        out[n, f, i, j] = (window * w[f]).sum() + b[f]
    return out


class TestConvolution:
    @pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1), (3, 2)])
    def test_forward_is_the_sum_over_each_window(self, rng, stride, pad):
        z = rng.standard_normal((2, 3, 7, 6))
        params = {"w": rng.standard_normal((4, 3, 3, 2)), "b": rng.standard_normal(4)}
        layer = Convolution("w", "b", stride=stride, pad=pad)
        out = layer.forward(params, z)
        assert out.shape == (2, *layer.check(params, (3, 7, 6)))
        np.testing.assert_allclose(out, naive_convolution(z, params["w"], params["b"], stride, pad),
                                   rtol=0, atol=1e-12)

    @pytest.mark.parametrize("stride,pad", [(1, 0), (2, 1)])
    def test_backward_matches_central_differences(self, rng, stride, pad):
        z = rng.standard_normal((2, 2, 5, 6))
        params = {"w": rng.standard_normal((3, 2, 3, 2)), "b": rng.standard_normal(3)}
        assert_backward_matches(Convolution("w", "b", stride=stride, pad=pad), params, z, rng)

    def test_col2im_is_the_adjoint_of_im2col(self, rng):
        z = rng.standard_normal((2, 3, 6, 5))
        col = im2col(z, 3, 2, stride=2, pad=1)
        other = rng.standard_normal(col.shape)
        left = float((col * other).sum())
        right = float((z * col2im(other, z.shape, 3, 2, stride=2, pad=1)).sum())
        assert abs(left - right) <= 1e-12 * abs(left)

    def test_shapes_are_checked_naming_the_array(self, rng):
        layer = Convolution("w", "b")
        params = {"w": np.zeros((4, 3, 3, 3)), "b": np.zeros(4)}
        with pytest.raises(ValueError, match=r"params\['w'\].*\(FN, 2, FH, FW\)"):
            layer.check(params, (2, 8, 8))
        with pytest.raises(ValueError, match=r"params\['b'\].*\(4,\)"):
            layer.check({**params, "b": np.zeros(5)}, (3, 8, 8))
        with pytest.raises(ValueError, match="do not fit"):
            layer.check(params, (3, 2, 8))
        with pytest.raises(ValueError, match=r"needs images.*Reshape"):
            layer.check(params, 192)
        with pytest.raises(ValueError, match="`stride` must be an int >= 1"):
            Convolution("w", stride=0)
        with pytest.raises(ValueError, match="`pad` must be an int >= 0"):
            Convolution("w", pad=-1)

    def test_im2col_and_col2im_default_to_stride_1_and_no_pad(self, rng):
        z = rng.standard_normal((2, 2, 4, 5))
        col = im2col(z, 3, 2)
        assert col.shape == (2 * 2 * 4, 2 * 3 * 2)
        assert np.array_equal(col, im2col(z, 3, 2, stride=1, pad=0))
        assert np.array_equal(col2im(col, z.shape, 3, 2), col2im(col, z.shape, 3, 2, stride=1, pad=0))

    def test_parameter_names_must_be_strings_and_only_the_bias_may_be_none(self):
        for args, name in [((3,), "weight"), ((None,), "weight"), (("w", 3), "bias")]:
            with pytest.raises(TypeError, match=f"`{name}` must be a parameter name"):
                Convolution(*args)
        assert Convolution("w").param_names() == ["w"]

    @pytest.mark.parametrize("image,pad", [((3, 3, 3), 0), ((3, 1, 1), 1)])
    def test_filters_that_just_fit_give_one_place(self, image, pad):
        params = {"w": np.zeros((4, 3, 3, 3)), "b": np.zeros(4)}
        assert Convolution("w", "b", pad=pad).check(params, image) == (4, 1, 1)


class TestPooling:
    def test_forward_is_each_windows_maximum(self, rng):
        z = rng.standard_normal((2, 3, 6, 4))
        out = Pooling(2, 2).forward({}, z)
        expected = z.reshape(2, 3, 3, 2, 2, 2).max(axis=(3, 5))
        assert np.array_equal(out, expected)

    @pytest.mark.parametrize("pool,stride", [(2, None), (3, 1)])
    def test_backward_matches_central_differences(self, rng, pool, stride):
        assert_backward_matches(Pooling(pool, 2, stride=stride), {}, rng.standard_normal((2, 2, 6, 5)), rng)

    def test_a_tie_sends_the_gradient_to_the_first_largest_entry(self):
        z = np.array([[[[1.0, 3.0], [3.0, 0.0]]]])
        dz, _ = Pooling(2, 2).backward({}, z, None, np.array([[[[5.0]]]]))
        assert np.array_equal(dz, [[[[0.0, 5.0], [0.0, 0.0]]]])

    def test_a_window_larger_than_the_image_is_refused(self):
        with pytest.raises(ValueError, match="does not fit"):
            Pooling(3, 3).check({}, (1, 2, 5))

    def test_a_window_the_size_of_the_image_gives_one_place(self):
        assert Pooling(2, 3).check({}, (5, 2, 3)) == (5, 1, 1)

    def test_a_1_by_1_window_keeps_the_image(self, rng):
        z = rng.standard_normal((2, 3, 4, 5))
        assert Pooling(1, 1).check({}, (3, 4, 5)) == (3, 4, 5)
        assert np.array_equal(Pooling(1, 1).forward({}, z), z)

    @pytest.mark.parametrize("size", [0, -1, True, 2.0])
    def test_window_sizes_and_strides_that_are_not_ints_from_1_are_refused(self, size):
        for kwargs, name in [({"pool_h": size, "pool_w": 2}, "pool_h"),
                             ({"pool_h": 2, "pool_w": size}, "pool_w"),
                             ({"pool_h": 2, "pool_w": 2, "stride": size}, "stride")]:
            with pytest.raises(ValueError, match=f"`{name}` must be an int >= 1"):
                Pooling(**kwargs)


class TestReshape:
    def test_flattens_and_restores(self, rng):
        z = rng.standard_normal((2, 3, 4, 5))
        flat = Reshape(-1)
        assert flat.check({}, (3, 4, 5)) == 60 and Reshape((3, -1)).check({}, 60) == (3, 20)
        dz, _ = flat.backward({}, z, None, flat.forward({}, z))
        assert np.array_equal(dz, z)

    def test_a_size_that_does_not_divide_is_refused(self):
        with pytest.raises(ValueError, match="cannot take samples of shape"):
            Reshape((7, -1)).check({}, 60)
        with pytest.raises(ValueError, match="at most one -1"):
            Reshape((-1, -1))

    @pytest.mark.parametrize("shape", [0, -2, 1.5, True, "3", (4, 0), (2, None)])
    def test_sizes_that_are_not_positive_ints_are_refused(self, shape):
        with pytest.raises(ValueError, match="`shape` must hold positive ints"):
            Reshape(shape)


class TestBatchNormalization:
    def params(self, rng, n):
        return {"g": rng.standard_normal(n), "b": rng.standard_normal(n),
                "g_mean": rng.standard_normal(n), "g_var": rng.random(n) + 0.5}

    def test_training_mode_normalises_each_feature_over_the_batch(self, rng):
        z = 3.0 + 2.0 * rng.standard_normal((50, 4))
        out = BatchNormalization("g", "b").forward({"g": np.ones(4), "b": np.zeros(4)}, z)
        np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(out.var(axis=0), 1.0, rtol=1e-6)

    def test_inference_mode_uses_the_running_statistics(self, rng):
        p = self.params(rng, 4)
        z = rng.standard_normal((3, 4))
        out = BatchNormalization("g", "b").for_inference().forward(p, z)
        expected = p["g"] * (z - p["g_mean"]) / np.sqrt(p["g_var"] + 1e-7) + p["b"]
        np.testing.assert_allclose(out, expected, rtol=1e-14)

    @pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
    def test_backward_matches_central_differences(self, rng, train):
        layer = BatchNormalization("g", "b", train=train)
        assert_backward_matches(layer, self.params(rng, 2 * 3 * 2), rng.standard_normal((5, 2, 3, 2)), rng)

    def test_update_state_moves_by_the_momentum_and_leaves_the_old_arrays(self, rng):
        layer = BatchNormalization("g", "b", momentum=0.8)
        z = rng.standard_normal((6, 3))
        state = layer.init_state(3)
        old = {k: v.copy() for k, v in state.items()}
        before = state["g_mean"]
        layer.update_state({}, z, state)
        np.testing.assert_allclose(state["g_mean"], 0.2 * z.mean(axis=0), rtol=1e-14)
        np.testing.assert_allclose(state["g_var"], 0.8 + 0.2 * z.var(axis=0), rtol=1e-14)
        assert np.array_equal(before, old["g_mean"])   # replaced, not changed in place

    def test_inference_mode_needs_the_statistics(self):
        layer = BatchNormalization("g", "b").for_inference()
        with pytest.raises(ValueError, match="'g_mean'"):
            layer.check({"g": np.ones(3), "b": np.ones(3)}, 3)
        with pytest.raises(ValueError, match=r"params\['g'\].*\(12,\)"):
            BatchNormalization("g", "b").check({"g": np.ones(3), "b": np.ones(3)}, (3, 2, 2))


class TestDropout:
    def test_the_mask_is_the_same_at_every_call_and_drops_about_ratio(self, rng):
        layer = Dropout(0.3, seed=7)
        z = rng.standard_normal((40, 50)) + 5.0   # no zero entries
        first, second = layer.forward({}, z), layer.forward({}, z)
        assert np.array_equal(first, second)
        dropped = np.mean(first == 0)
        assert 0.25 < dropped < 0.35
        assert not np.array_equal(first, Dropout(0.3, seed=8).forward({}, z))

    def test_inference_scales_by_the_kept_fraction(self, rng):
        z = rng.standard_normal((3, 4))
        assert np.array_equal(Dropout(0.25).for_inference().forward({}, z), z * 0.75)

    @pytest.mark.parametrize("train", [True, False], ids=["train", "inference"])
    def test_backward_matches_central_differences(self, rng, train):
        assert_backward_matches(Dropout(0.4, seed=3, train=train), {}, rng.standard_normal((4, 6)), rng)

    @pytest.mark.parametrize("ratio", [1.0, -0.1, "0.5"])
    def test_a_ratio_outside_0_1_is_refused(self, ratio):
        with pytest.raises(ValueError, match="`ratio` must be a number in"):
            Dropout(ratio)


class TestRegularizeOptions:
    """The documented defaults, reprs and refusals of the two layers."""

    def test_dropout_defaults_to_half_from_seed_0(self):
        layer = Dropout()
        assert layer.ratio == 0.5
        assert np.array_equal(layer.mask((5, 7)), Dropout(0.5, seed=0).mask((5, 7)))

    def test_a_ratio_of_0_keeps_everything(self, rng):
        z = rng.standard_normal((3, 4))
        assert np.array_equal(Dropout(0.0).forward({}, z), z)
        assert BatchNormalization("g", "b", momentum=0.0).momentum == 0.0

    @pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
    def test_a_seed_that_is_not_an_int_from_0_is_refused(self, seed):
        with pytest.raises(ValueError, match="`seed` must be an int >= 0"):
            Dropout(0.5, seed=seed)

    @pytest.mark.parametrize("eps", [0.0, -1e-7, True, "1e-7"])
    def test_an_eps_that_is_not_positive_is_refused(self, eps):
        with pytest.raises(ValueError, match="`eps` must be a number > 0"):
            BatchNormalization("g", "b", eps=eps)

    def test_parameter_names_must_be_strings(self):
        with pytest.raises(TypeError, match="`gamma` must be a parameter name"):
            BatchNormalization(1, "b")
        with pytest.raises(TypeError, match="`running_var` must be a parameter name"):
            BatchNormalization("g", "b", running_var=3)

    def test_reprs_name_the_parameters_and_the_mode(self):
        assert repr(BatchNormalization("g1", "b1")) == "BatchNormalization('g1', 'b1', train)"
        assert repr(Dropout(0.25, seed=3).for_inference()) == "Dropout(0.25, seed=3, inference)"


class TestSequentialOfImages:
    def net(self):
        layers = [Reshape((1, 6, 6)), Convolution("w1", "b1"), ReLU(), Pooling(2, 2),
                  Reshape(-1), BatchNormalization("g", "be"), Dropout(0.2, seed=1),
                  Affine("w2", "b2")]
        return Sequential(layers, SoftmaxCrossEntropy())

    def params(self, rng):
        return {"w1": rng.standard_normal((2, 1, 3, 3)), "b1": rng.standard_normal(2),
                "g": rng.standard_normal(8), "be": rng.standard_normal(8),
                "w2": rng.standard_normal((8, 3)), "b2": rng.standard_normal(3)}

    def test_flat_rows_and_images_give_the_same_loss(self, rng):
        net, params = self.net(), self.params(rng)
        x, t = rng.standard_normal((4, 36)), np.array([0, 2, 1, 1])
        assert net.loss(params, x, t) == net.loss(params, x.reshape(4, 1, 6, 6), t)

    def test_an_affine_layer_given_images_says_to_flatten(self, rng):
        net = Sequential([Affine("w", "b")], SoftmaxCrossEntropy())
        with pytest.raises(ValueError, match=r"Affine\('w', 'b'\) needs rows.*Reshape\(-1\)"):
            net.loss({"w": np.zeros((4, 2)), "b": np.zeros(2)}, np.zeros((3, 1, 2, 2)), [0, 1, 0])

    def test_inference_mode_and_state(self, rng):
        net, params = self.net(), self.params(rng)
        x = rng.standard_normal((4, 36))
        state = net.init_state(params, x)
        assert sorted(state) == ["g_mean", "g_var"] == sorted(net.state_names())
        before = {k: v.copy() for k, v in state.items()}
        net.loss(params, x, [0, 1, 2, 0])
        assert all(np.array_equal(state[k], before[k]) for k in state)   # the loss never moves it
        net.update_state(params, state, x)
        assert not np.array_equal(state["g_mean"], before["g_mean"])
        inference = net.for_inference()
        assert [type(a) for a in inference.layers] == [type(a) for a in net.layers]
        assert not inference.layers[5].train and not inference.layers[6].train
        assert inference.logits({**params, **state}, x).shape == (4, 3)
        assert Sequential([Affine("w")], SoftmaxCrossEntropy()).for_inference().layers[0].weight == "w"

    def test_for_inference_is_the_net_itself_where_no_layer_changes(self):
        plain = Sequential([Affine("w", "b"), ReLU(), Affine("v")], SoftmaxCrossEntropy())
        assert plain.for_inference() is plain
        dropped = Sequential([Affine("w"), Dropout(0.5)], SoftmaxCrossEntropy())
        inference = dropped.for_inference()
        assert inference is not dropped and inference.loss_layer is dropped.loss_layer
        assert dropped.layers[1].train and not inference.layers[1].train

    def test_each_image_sample_is_checked_whole(self, rng):
        """The first layer's check gets the shape of one sample, (C, H, W), not less."""
        net = Sequential([Reshape(-1), Affine("w", "b")], SoftmaxCrossEntropy())
        params = {"w": np.zeros((12, 2)), "b": np.zeros(2)}
        x = rng.standard_normal((5, 3, 2, 2))
        assert net.logits(params, x).shape == (5, 2)
        assert net.init_state(params, x) == {}

    def test_update_state_without_the_state_is_refused(self, rng):
        net, params = self.net(), self.params(rng)
        with pytest.raises(ValueError, match="`state` has no entry 'g_mean'"):
            net.update_state(params, {}, rng.standard_normal((2, 36)))
