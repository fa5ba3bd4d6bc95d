"""gradient_check on the later chapters' nets: kinks reported and left out, the relative
error's floor, the training-mode loss; correct conv and batch-norm nets pass at the default
settings, and each fails with a one-line backprop bug.
"""
import warnings

import numpy as np
import pytest

from engine.book._convnet import SimpleConvNet
from engine.book._nets import MLP
from engine.nn._conv import Convolution
from engine.nn._regularize import BatchNormalization
from engine.train._gradcheck import (RELATIVE_FLOOR, GradientDifference, default_tol, failures,
                                     format_table, gradient_check)

TOL = default_tol("central")   # 1e-5


class KinkNet:
    """loss = relu(w0) + 2 w1 at w0 = h/2: the central difference at h straddles the kink."""

    def __init__(self, backprop_w0=1.0, w0=0.5e-4):
        self.params = {"w": np.array([w0, 1.0])}
        self.backprop_w0 = backprop_w0

    def loss(self, x, t):
        w = self.params["w"]
        return float(max(w[0], 0.0) + 2.0 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([self.backprop_w0, 2.0])}


class OneSideKinkNet:
    """loss = 2 relu(w0 - h/20) + 3 relu(-w0 - 1.5 h) + w0 + 2 w1 at w0 = 0: only the first test.

    Backprop 1 is the backward difference; the forward one (2.9) crosses the kink at h/20,
    which the steps h/10 cross too; the second-order differences cross a kink on each side.
    """

    def __init__(self):
        self.params = {"w": np.array([0.0, 1.0])}

    def loss(self, x, t):
        w, h = self.params["w"], 1e-4
        return float(2 * max(w[0] - h / 20, 0.0) + 3 * max(-w[0] - 1.5 * h, 0.0) + w[0] + 2 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([1.0, 2.0])}


class CurvedKinkNet:
    """loss = relu(w0) + 1000 w0^2 + 800 w0^3 + 2 w1 at w0 = -h/2: a kink on the right,
    curvature on the left.

    Backprop is 2000 w0 + 2400 w0^2 = -0.099994; the forward difference 0.5 crosses the
    kink, the backward one is -0.2 (off by the curvature term h f''/2), the central one
    0.15. The backward second-order difference (f at w0 - h, w0 - 2h) is off by the cubic's
    2 * 800 h^2 = 1.6e-5, inside the tolerance 2e-5; from w0 - 3h it would be 2.4e-5.
    """

    def __init__(self, backprop_w0=None):
        w0 = -0.5e-4
        self.params = {"w": np.array([w0, 1.0])}
        self.backprop_w0 = 2000.0 * w0 + 2400.0 * w0 ** 2 if backprop_w0 is None else backprop_w0

    def loss(self, x, t):
        w = self.params["w"]
        return float(max(w[0], 0.0) + 1000.0 * w[0] ** 2 + 800.0 * w[0] ** 3 + 2.0 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([self.backprop_w0, 2.0])}


class BothSidesKinkNet:
    """loss = 2 relu(w0 - c - h/2) - relu(c - w0 - h/2) + 3 w0 + 2 w1 at w0 = c = 0.25: a kink
    on each side.

    Backprop is 3; the forward difference 4, the backward one 3.5, the central one 3.75;
    at h / 10, clear of both kinks, all three are 3.
    """

    def __init__(self, backprop_w0=3.0):
        self.params = {"w": np.array([0.25, 1.0])}
        self.backprop_w0 = backprop_w0

    def loss(self, x, t):
        w, c, half = self.params["w"], 0.25, 0.5e-4
        return float(2 * max(w[0] - c - half, 0.0) - max(c - w[0] - half, 0.0) + 3 * w[0]
                     + 2 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([self.backprop_w0, 2.0])}


class CubicNet:
    """loss = 1000 w0^3 + 2 w1 at w0 = 1, smooth; at h = 1e-2 the central difference is off
    by e = 1000 h^2 = 0.1, each one-sided second-order difference by -2e."""

    def __init__(self, bug):
        self.params = {"w": np.array([1.0, 1.0])}
        self.bug = bug

    def loss(self, x, t):
        w = self.params["w"]
        return float(1000.0 * w[0] ** 3 + 2.0 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([3000.0 + self.bug, 2.0])}


class ModeNet:
    """The book's habit: ``loss(x, t, train_flg=False)``; training mode doubles the loss."""

    def __init__(self):
        self.params = {"w": np.array([0.5, -1.0])}

    def loss(self, x, t, train_flg=False):
        return float((2.0 if train_flg else 1.0) * (self.params["w"] @ [3.0, 1.0]))

    def gradient(self, x, t):
        return {"w": np.array([6.0, 2.0])}


class TestKinks:
    def test_an_entry_across_a_kink_is_listed_and_left_out(self):
        report = gradient_check(KinkNet(), None, None)["w"]
        assert report.kinks == ((0,),)
        assert report.max_abs == pytest.approx(0.25)    # central 0.75 against backprop 1
        assert report.relative <= 1e-10 and failures({"w": report}, TOL) == []
        table = format_table({"w": report}, TOL)
        assert "kinks" in table.splitlines()[0] and "1 entries (left out of `relative`) cross a " \
            "ReLU/max-pool kink" in table

    def test_a_backprop_on_neither_side_is_no_kink(self):
        # one-sided differences 1 and 0.5; 0.6 is 0.1 from the nearer, more than 0.5 / 10
        report = gradient_check(KinkNet(backprop_w0=0.6), None, None)["w"]
        assert report.kinks == () and failures({"w": report}, TOL) == ["w"]

    def test_the_probe_leaves_the_params_as_they_were(self):
        net = KinkNet()
        before = net.params["w"].copy()
        gradient_check(net, None, None)
        assert net.params["w"].tobytes() == before.tobytes()

    def test_a_kink_that_only_the_one_sided_differences_show_is_listed(self):
        report = gradient_check(OneSideKinkNet(), None, None)["w"]
        assert report.kinks == ((0,),) and failures({"w": report}, TOL) == []

    def test_a_kink_beside_strong_curvature_is_listed(self):
        # the one-sided differences miss backprop by 0.6 and 0.1 (more than 0.7 / 10): the
        # left side's second-order difference, exact on the parabola, meets it
        report = gradient_check(CurvedKinkNet(), None, None)["w"]
        assert report.kinks == ((0,),) and failures({"w": report}, TOL) == []

    def test_a_bug_beside_strong_curvature_is_no_kink(self):
        report = gradient_check(CurvedKinkNet(backprop_w0=-0.12), None, None)["w"]
        assert report.kinks == () and failures({"w": report}, TOL) == ["w"]

    def test_kinks_on_both_sides_are_listed(self):
        report = gradient_check(BothSidesKinkNet(), None, None)["w"]
        assert report.kinks == ((0,),) and failures({"w": report}, TOL) == []

    def test_a_bug_between_kinks_on_both_sides_is_no_kink(self):
        report = gradient_check(BothSidesKinkNet(backprop_w0=3.1), None, None)["w"]
        assert report.kinks == () and failures({"w": report}, TOL) == ["w"]

    def test_a_bug_near_the_second_order_differences_on_a_smooth_stretch_is_no_kink(self):
        # backprop off by -2.5e: within tol_abs = e of the second-order differences (-2e),
        # but not ten times closer to them than to the central difference (+e)
        e = 0.1
        report = gradient_check(CubicNet(bug=-2.5 * e), None, None, h=1e-2, tol=e / 3000)["w"]
        assert report.kinks == () and failures({"w": report}, e / 3000) == ["w"]

    def test_a_smaller_h_needs_no_kink(self):
        report = gradient_check(KinkNet(w0=0.5e-4), None, None, h=1e-5)["w"]
        assert report.kinks == () and report.relative <= 1e-10


class TestFloor:
    def test_a_gradient_zero_to_rounding_passes(self):
        # the batch-norm bias of issue 25: true gradient 0, numerical 1.7e-12
        d = GradientDifference(1.7e-12, 1e-12, 1.7e-12 / RELATIVE_FLOOR, 1.7e-12)
        assert failures({"b1": d}, TOL) == []
        net = FixedZero(1.7e-12)
        assert gradient_check(net, None, None)["w"].relative == pytest.approx(1.7e-12 / RELATIVE_FLOOR)

    def test_above_the_floor_the_error_is_relative_to_the_gradient(self):
        assert gradient_check(FixedZero(2e-3, 1e-3), None, None)["w"].relative == pytest.approx(0.5)


class FixedZero:
    """loss = g . w with backprop `exact`: the central difference gives g (to rounding)."""

    def __init__(self, g, exact=0.0):
        self.g, self.exact = np.array([g, 0.0]), np.array([exact, 0.0])
        self.params = {"w": np.zeros(2)}

    def loss(self, x, t):
        return float(self.g @ self.params["w"])

    def gradient(self, x, t):
        return {"w": self.exact}


class TestTrainingMode:
    def test_the_books_train_flg_is_set(self):
        assert gradient_check(ModeNet(), None, None)["w"].relative <= 1e-10
        assert gradient_check(ModeNet(), None, None, train=False)["w"].relative == pytest.approx(0.5)

    def test_a_bad_tol_is_named(self):
        with pytest.raises(ValueError, match="`tol` must be a number >= 0"):
            gradient_check(ModeNet(), None, None, tol=-1.0)


@pytest.fixture
def convnet():
    """The book's ch07 check at a smaller size: 10x10 image, 5 filters of 3x3, std 0.01."""
    net = SimpleConvNet(input_dim=(1, 10, 10), filter_num=5, filter_size=3, hidden_size=10,
                        output_size=10, weight_init_std=0.01, seed=1)
    x = np.random.default_rng(1).random((1, 1, 10, 10))
    return net, x, np.array([1])


def check(net, x, t, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the loop fallback of convolution nets
        return gradient_check(net, x, t, **options)


def book_convnet(seed):
    """The book's ch07 check exactly: 10x10 image, 10 filters of 3x3, hidden 10, std 0.01."""
    net = SimpleConvNet(input_dim=(1, 10, 10), filter_num=10, filter_size=3, hidden_size=10,
                        output_size=10, weight_init_std=0.01, seed=seed)
    return net, np.random.default_rng(seed).random((1, 1, 10, 10)), np.array([1])


# seed 5: two convolution outputs of b1's channel 0 lie within h of 0, one on each side
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_the_books_ch07_check_passes_at_the_default_settings(seed):
    assert failures(check(*book_convnet(seed)), TOL) == []


class TestConvNet:
    def test_the_correct_net_passes_at_the_default_settings(self, convnet):
        report = check(*convnet)
        assert failures(report, TOL) == []
        assert sum(len(d.kinks) for d in report.values()) > 0   # std 0.01: the ReLUs sit near 0

    def test_flipped_filter_gradients_fail(self, convnet, monkeypatch):
        backward = Convolution.backward

        def flipped(self, params, z, out, dout):
            dz, grads = backward(self, params, z, out, dout)
            grads[self.weight] = grads[self.weight][..., ::-1, ::-1]   # the bug: one line
            return dz, grads

        monkeypatch.setattr(Convolution, "backward", flipped)
        assert failures(check(*convnet), TOL) == ["w1"]


@pytest.fixture
def bn_net():
    rng = np.random.default_rng(3)
    net = MLP([12, 10, 8, 4], "relu", 0.5, seed=0, batch_norm=True)
    return net, rng.standard_normal((8, 12)), rng.integers(0, 4, 8)


class TestBatchNormNet:
    def test_the_correct_net_passes_at_the_default_settings(self, bn_net):
        report = check(*bn_net)
        assert failures(report, TOL) == []
        assert report["b1"].max_grad < 1e-10   # cancelled by the normalisation: zero to rounding

    def test_batch_statistics_held_constant_in_backprop_fail(self, bn_net, monkeypatch):
        backward = BatchNormalization.backward

        def constant_statistics(self, params, z, out, dout):
            rows = z.reshape(len(z), -1)
            frozen = {**params, self.running_mean: rows.mean(0), self.running_var: rows.var(0)}
            return backward(self.for_inference(), frozen, z, out, dout)   # the bug: inference's

        monkeypatch.setattr(BatchNormalization, "backward", constant_statistics)
        report = check(*bn_net)
        assert set(failures(report, TOL)) >= {"w1", "gamma1", "w2"}

    def test_the_check_leaves_the_running_statistics(self, bn_net):
        net = bn_net[0]
        before = {k: v.copy() for k, v in net.state.items()}
        check(*bn_net)
        assert all(np.array_equal(net.state[k], before[k]) for k in before)


@pytest.mark.parametrize("flags, code", [([], 0), (["--weight-init-std", "0.01"], 1)])
def test_engine_gradcheck_batch_norm_default_is_the_books_he_scale(flags, code, capsys):
    """From weights of 0.01 (the MLP default), h = 1e-4 is too coarse for the batch-norm net:
    it is blind to each weight column's scale, so its curvature grows as 1 / scale^2."""
    from engine.cli.gradcheck import main
    argv = ["--sizes", "784", "10", "10", "10", "--activation", "relu", "--batch-norm",
            "--batch-size", "4"]
    assert main(argv + flags) == code
    out = capsys.readouterr().out
    assert ("weights he" if not flags else "weights 0.01") in out


def test_engine_gradcheck_checks_the_batch_norm_net(capsys):
    from engine.cli.gradcheck import main
    code = main(["--sizes", "784", "6", "10", "--activation", "relu", "--batch-norm",
                 "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "relu, batch norm" in out and "gamma1" in out and "beta1" in out
