"""gradient_check's parts on stand-in nets: the tolerance and its default, the loss's mode,
the label forms tried, the per-array step the kink probe takes, the figures of a
difference, and the table, each against a value worked out by hand."""
import inspect
import math
import os
import re

import numpy as np
import pytest

from engine.train._gradcheck import (DEFAULT_WORKERS, RELATIVE_FLOOR, GradientDifference,
                                     _check_tol, default_tol, failures, format_table, gradient_check)


class LinearNet:
    """loss = g . w (central differences give g to rounding), backprop `exact` (default g)."""

    def __init__(self, g, exact=None, dtype=np.float64):
        self.g = np.asarray(g, dtype=np.float64)
        self.exact = self.g if exact is None else np.asarray(exact, dtype=np.float64)
        self.params = {"w": np.zeros(self.g.shape, dtype=dtype)}

    def loss(self, x, t):
        return float(self.g.reshape(-1) @ self.params["w"].reshape(-1).astype(np.float64))

    def gradient(self, x, t):
        return {"w": self.exact.astype(self.params["w"].dtype)}


class ReluNet:
    """loss = relu(w0) + 2 w1 (w0 at `w0`); backprop of the right piece: 1, 2."""

    def __init__(self, w0):
        self.params = {"w": np.array([w0, 1.0])}

    def loss(self, x, t):
        w = self.params["w"]
        return float(max(w[0], 0.0) + 2.0 * w[1])

    def gradient(self, x, t):
        return {"w": np.array([1.0, 2.0])}


class TestTolerance:
    @pytest.mark.parametrize("dtypes, expected", [
        ((np.float64,), 1e-5), ((np.float32,), 1e-3), ((np.float64, np.float32), 1e-3),
        ((np.float64, np.int32), 1e-5), ((np.float16,), 1e-3),
    ], ids=["float64", "float32", "any-float32", "int-arrays-ignored", "float16"])
    def test_the_default_follows_the_smallest_float_parameter(self, dtypes, expected):
        params = {f"p{i}": np.zeros(2, dtype) for i, dtype in enumerate(dtypes)}
        assert _check_tol(None, "central", params) == expected

    @pytest.mark.parametrize("tol", [-1e-9, float("nan"), True, "1e-5", [1e-5]],
                             ids=["negative", "nan", "bool", "str", "list"])
    def test_a_bad_tol_is_refused_naming_it(self, tol):
        with pytest.raises(ValueError, match=re.escape(f"`tol` must be a number >= 0, got {tol!r}")):
            gradient_check(LinearNet([1.0]), None, None, tol=tol)

    @pytest.mark.parametrize("tol", [0, 2, np.float32(0.5), 1e-5])
    def test_a_good_tol_is_taken_as_a_float(self, tol):
        value = _check_tol(tol, "central", {})
        assert type(value) is float and value == float(tol)

    def test_tol_scales_the_kink_probe_with_the_gradient(self):
        # |num - bp| = 0.25 at the kink; with max|grad| = 2, tol 0.1 makes tol_abs 0.2 < 0.25:
        # probed (a kink); tol 0.2 makes it 0.4: not probed, so counted in `relative`
        assert gradient_check(ReluNet(0.5e-4), None, None, tol=0.1)["w"].kinks == ((0,),)
        report = gradient_check(ReluNet(0.5e-4), None, None, tol=0.2)["w"]
        assert report.kinks == () and report.relative == pytest.approx(0.25 / 2)

    def test_default_tol_per_scheme_and_dtype(self):
        assert [default_tol(s) for s in ("forward", "central", "central4")] == [1e-2, 1e-5, 1e-5]
        assert [default_tol(s, "float32") for s in ("forward", "central", "central4")] == [1e-2, 1e-3, 1e-3]
        assert default_tol("central", np.float32) == default_tol("central", "f4") == 1e-3
        for scheme, dtype in [("central6", "float64"), ("central", "float16"), ("central", "no-dtype")]:
            with pytest.raises(ValueError, match=f"no default tolerance for scheme={scheme!r}, "
                                                 f"dtype={dtype!r}"):
                default_tol(scheme, dtype)


class TestTheStepOfTheKinkProbe:
    def test_a_per_array_step_is_the_one_probed(self):
        # the kink 1.5e-4 left of w0: crossed by h = 2e-4, not by the default 1e-4
        report = gradient_check(ReluNet(1.5e-4), None, None, h={"w": 2e-4})["w"]
        assert report.kinks == ((0,),) and report.relative <= 1e-10

    def test_h_auto_probes_with_the_auto_step(self):
        # "auto" at |w0| < 1: about 6.1e-6, which crosses a kink 3e-6 away
        report = gradient_check(ReluNet(3e-6), None, None, h="auto")["w"]
        assert report.kinks == ((0,),)


class TestWhereItRuns:
    def test_a_check_runs_in_this_process_by_default(self):
        here = os.getpid()

        class HereOnly(LinearNet):
            def loss(self, x, t):
                assert os.getpid() == here, "evaluated in another process"
                return super().loss(x, t)

        assert DEFAULT_WORKERS == 1
        assert gradient_check(HereOnly([1.0, 2.0]), None, None)["w"].relative <= 1e-10


class TestTheLossMode:
    def test_a_train_keyword_is_set_and_train_false_calls_the_loss_as_it_is(self):
        class TrainKeyword(LinearNet):
            def loss(self, x, t, train=False):
                return (2.0 if train else 1.0) * super().loss(x, t)

        net = TrainKeyword([1.0, 3.0], exact=[2.0, 6.0])
        assert gradient_check(net, None, None)["w"].relative <= 1e-10
        assert gradient_check(net, None, None, train=False)["w"].relative == pytest.approx(0.5)

    def test_a_loss_without_a_signature_is_called_as_it_is(self):
        class NoSignature:
            __signature__ = "none"   # inspect.signature raises TypeError, as for some builtins

            def __call__(self, x, t, train=False):
                assert not train
                return LinearNet.loss(net, x, t)

        net = LinearNet([1.0, 3.0])
        net.loss = NoSignature()
        with pytest.raises(TypeError):
            inspect.signature(net.loss)
        assert gradient_check(net, None, None)["w"].relative <= 1e-10


class OneHotOnly:
    """A net of 3 classes on inputs of 2 that takes labels in one form only."""

    def __init__(self, form, predict=True):
        self.params = {"w": np.zeros(2)}
        self.form, self.seen = form, []
        if not predict:
            self.predict = None

    def predict(self, x):
        return np.zeros((len(x), 3))

    def _take(self, t):
        t = np.asarray(t)
        if self.form == "neither" or (t.ndim == 2) != (self.form == "one-hot"):
            raise ValueError(f"wants {self.form}")
        self.seen.append(t)
        return t

    def loss(self, x, t):
        self._take(t)
        return float(self.params["w"].sum())

    def gradient(self, x, t):
        self._take(t)
        return {"w": np.ones(2)}


class TestLabelForms:
    x = np.zeros((3, 2))

    def test_auto_gives_one_hot_float_rows_first(self):
        net = OneHotOnly("one-hot")
        gradient_check(net, self.x, np.array([0, 2, 1]))
        assert all(t.dtype == np.float64 for t in net.seen)
        assert np.array_equal(net.seen[-1], np.eye(3)[[0, 2, 1]])

    def test_auto_falls_back_to_integers_and_says_which_forms_failed_otherwise(self):
        net = OneHotOnly("int")
        gradient_check(net, self.x, np.eye(3)[[0, 2, 1]])
        assert net.seen[-1].dtype == np.int64 and net.seen[-1].tolist() == [0, 2, 1]
        with pytest.raises(ValueError) as raised:
            gradient_check(OneHotOnly("neither"), self.x, np.array([0, 2, 1]))
        assert str(raised.value) == (
            "`net.gradient(x, t)` or `net.loss(x, t)` raised with one-hot labels of shape (3, 3): "
            "ValueError: wants neither; and with integer labels of shape (3,): ValueError: wants "
            "neither. Pass labels='int' or labels='one-hot' to choose the form.")
        assert isinstance(raised.value.__cause__, ValueError)

    def test_a_chosen_form_that_fails_gives_no_hint(self):
        with pytest.raises(ValueError) as raised:
            gradient_check(OneHotOnly("int"), self.x, np.array([0, 2, 1]), labels="one-hot")
        assert str(raised.value).endswith("ValueError: wants int.")

    def test_int_gives_integers_even_from_one_hot_rows(self):
        net = OneHotOnly("int")
        gradient_check(net, self.x, np.eye(3)[[1, 1, 0]], labels="int")
        assert all(t.tolist() == [1, 1, 0] for t in net.seen)

    def test_without_predict_auto_gives_integers_and_one_hot_needs_the_class_count(self):
        net = OneHotOnly("int", predict=False)
        gradient_check(net, self.x, np.array([0, 1, 1]))
        assert all(t.ndim == 1 for t in net.seen)
        with pytest.raises(ValueError, match="labels='one-hot' needs the number of classes"):
            gradient_check(OneHotOnly("one-hot", predict=False), self.x, np.array([0, 1, 1]),
                           labels="one-hot")

    @pytest.mark.parametrize("predict", [lambda x: 1 / 0, lambda x: np.zeros(3), lambda x: np.zeros((2, 3))],
                             ids=["raises", "not-2d", "other-batch"])
    def test_a_predict_that_gives_no_class_count_is_passed_over(self, predict):
        net = OneHotOnly("int")
        net.predict = predict
        gradient_check(net, self.x, np.array([0, 1, 1]))
        assert all(t.ndim == 1 for t in net.seen)

    def test_a_label_equal_to_the_class_count_is_refused(self):
        message = r"`t` holds the label 3, but `net.predict\(x\)` gives 3 classes"
        with pytest.raises(ValueError, match=message):
            gradient_check(OneHotOnly("int"), self.x, np.array([0, 3, 1]))

    def test_labels_of_the_highest_class_and_an_empty_batch_are_taken(self):
        net = OneHotOnly("int")
        gradient_check(net, self.x, np.array([2, 2, 2]))
        assert net.seen[-1].tolist() == [2, 2, 2]
        empty = OneHotOnly("one-hot")
        gradient_check(empty, np.zeros((0, 2)), np.zeros(0, np.int64))
        assert empty.seen[-1].shape == (0, 3)

    @pytest.mark.parametrize("x, t", [
        (np.zeros((3, 2)), np.array([0.5, 1.5, 2.0])),           # float targets, not labels
        (np.zeros((3, 2)), np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])),   # rows not one-hot
        (np.zeros(2), np.array([0, 1])),                         # no batch
        (np.zeros((3, 2)), None),
        (np.zeros((3, 2)), np.array(["a", "b", "c"])),
        (np.zeros((3, 2)), np.zeros((3, 2, 1), np.int64)),
        (np.zeros((3, 2)), np.array([True, False, True])),
    ], ids=["float-1d", "not-one-hot", "x-1d", "none", "strings", "3d", "bool-1d"])
    def test_targets_that_are_not_class_labels_are_passed_on_as_given(self, x, t):
        seen = []

        class Regression(LinearNet):
            def gradient(self, x, t):
                seen.append(t)
                return super().gradient(x, t)

        gradient_check(Regression([1.0]), x, t)
        assert seen and all(s is t for s in seen)
        with pytest.raises(ValueError, match="labels='int' needs `x` of shape"):
            gradient_check(Regression([1.0]), x, t, labels="int")

    def test_one_hot_rows_of_bools_are_labels(self):
        net = OneHotOnly("int")
        gradient_check(net, self.x, np.eye(3, dtype=bool)[[0, 2, 1]])
        assert net.seen[-1].tolist() == [0, 2, 1] and net.seen[-1].dtype == np.int64

    def test_rows_of_labels_must_match_the_batch(self):
        with pytest.raises(ValueError, match="`t` holds 2 rows of labels but `x` has 3 rows"):
            gradient_check(OneHotOnly("int"), self.x, np.eye(3)[[0, 1]])


class TestNetChecks:
    @pytest.mark.parametrize("missing, message", [
        ("loss", "`net` must have a `loss(x, t)` method; Bare has none"),
        ("gradient", "`net` must have a `gradient(x, t)` method; Bare has none"),
        ("params", "`net` must have a `params` dict of arrays; Bare has none"),
    ], ids=["loss", "gradient", "params"])
    def test_the_message_names_the_missing_part_and_the_class(self, missing, message):
        class Bare(LinearNet):
            pass

        net = Bare([1.0])
        setattr(net, missing, 1.0 if missing != "params" else [np.zeros(1)])
        with pytest.raises(TypeError) as raised:
            gradient_check(net, None, None)
        assert str(raised.value) == message

    def test_a_backprop_that_is_no_dict_or_misses_an_array_is_named(self):
        net = LinearNet([1.0, 2.0])
        net.gradient = lambda x, t: [np.zeros(2)]
        with pytest.raises(ValueError, match=r"keys of `net.params` \['w'\], got list"):
            gradient_check(net, None, None)
        net.gradient = lambda x, t: {"v": np.zeros(2), "w": np.zeros(2)}
        with pytest.raises(ValueError, match=r"\['w'\], got \['v', 'w'\]"):
            gradient_check(net, None, None)
        net.gradient = lambda x, t: {"w": np.zeros((2, 1))}
        with pytest.raises(ValueError) as raised:
            gradient_check(net, None, None)
        assert str(raised.value) == ("`net.gradient` returned shape (2, 1) for 'w'; the parameter has "
                                     "shape (2,)")


class TestFigures:
    def test_relative_error_is_over_the_largest_gradient_of_either_side(self):
        # numerical 0.5 and 1 (from the loss), backprop 0.5 and 3: the scale is 3, not 1
        report = gradient_check(LinearNet([0.5, 1.0], exact=[0.5, 3.0]), None, None)["w"]
        assert (report.max_abs, report.max_grad) == pytest.approx((2.0, 3.0))
        assert report.relative == pytest.approx(2 / 3) and report.mean_abs == pytest.approx(1.0)

    def test_below_the_floor_the_error_is_over_the_floor(self):
        report = gradient_check(LinearNet([4e-7, 0.0], exact=[2e-7, 0.0]), None, None)["w"]
        assert report.relative == pytest.approx(2e-7 / RELATIVE_FLOOR, rel=1e-3)

    def test_a_nan_gradient_takes_the_floor_and_fails(self):
        report = gradient_check(LinearNet([1.0, 2.0], exact=[np.nan, 2.0]), None, None)["w"]
        assert math.isnan(report.relative) and failures({"w": report}, 1.0) == ["w"]

    def test_an_empty_array_differs_by_nothing(self):
        report = gradient_check(LinearNet(np.zeros(0)), None, None)["w"]
        assert report == GradientDifference(0.0, 0.0, 0.0, 0.0)

    def test_kinks_are_left_out_of_relative_and_listed_as_indices(self):
        class TwoDimReluNet(ReluNet):
            def __init__(self):
                self.params = {"w": np.array([[1.0, 0.5e-4]])}

            def loss(self, x, t):
                w = self.params["w"]
                return float(2.0 * w[0, 0] + max(w[0, 1], 0.0))

            def gradient(self, x, t):
                return {"w": np.array([[2.0, 1.0]])}

        report = gradient_check(TwoDimReluNet(), None, None)["w"]
        assert report.kinks == ((0, 1),) and report.relative <= 1e-10
        assert report.max_abs == pytest.approx(0.25) and report.mean_abs == pytest.approx(0.125)


class TestTable:
    results = {"w1": GradientDifference(2e-3, 1e-3, 0.5, 4e-3, ((0, 1), (2, 0))),
               "a_long_name": GradientDifference(1e-12, 1e-12, 1e-5, 0.1),
               "nan": GradientDifference(np.nan, np.nan, np.nan, np.nan)}

    def test_the_columns_line_up_with_kinks_and_the_verdicts(self):
        assert format_table(self.results, 1e-5).splitlines() == [
            "array          max |num-bp|  mean |num-bp|   max |grad|     relative  kinks",
            "w1                 2.00e-03       1.00e-03     4.00e-03     5.00e-01      2  FAIL",
            "a_long_name        1.00e-12       1.00e-12     1.00e-01     1.00e-05      0    ok",
            "nan                     nan            nan          nan          nan      0  FAIL",
            "2 entries (left out of `relative`) cross a ReLU/max-pool kink: try a smaller h, or ignore them",
        ]

    def test_without_kinks_or_tol_neither_column_is_shown(self):
        plain = {name: d for name, d in self.results.items() if not d.kinks}
        assert format_table(plain).splitlines() == [
            "array          max |num-bp|  mean |num-bp|   max |grad|     relative",
            "a_long_name        1.00e-12       1.00e-12     1.00e-01     1.00e-05",
            "nan                     nan            nan          nan          nan",
        ]

    def test_failures_are_the_arrays_above_tol_or_nan(self):
        assert failures(self.results, 1e-5) == ["w1", "nan"]
        assert failures(self.results, 0.5) == ["nan"]
