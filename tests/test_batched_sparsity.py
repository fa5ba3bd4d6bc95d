"""Per-sample sparsity of the batched evaluator: the same bits as computing every sample.

The reference is the batched evaluator as it was before (`_batched_reference.py`), which
computes the loss of every sample for every perturbation. The evaluator now computes
only the samples whose loss can move; everything here is compared with ``np.array_equal``.
"""
import tracemalloc

import numpy as np
import pytest

import _batched_reference as reference
from engine.batched import _batched as batched
from engine.nn import _loss_by_class
from engine.data._data import load_embedded_mnist
from engine.fd._evaluators import loop_evaluate
from engine.nn._functions import softmax_cross_entropy
from engine.nn._layers import Affine, Sigmoid, SoftmaxCrossEntropy, Tanh
from engine.nn._model import ModelLoss, Sequential, init_params, mlp
from engine.fd._schemes import SCHEMES, get_scheme
from engine.fd._space import ParamSpace

H = 1e-4
NETS = {   # sizes, activation, weight std: ReLU nets have many exact zeros in their hidden layers
    "784-100-10 sigmoid": ([784, 100, 10], "sigmoid", 0.05),
    "784-60-40-10 relu": ([784, 60, 40, 10], "relu", 0.05),
}


@pytest.fixture(scope="module")
def digits():
    train, _ = load_embedded_mnist()
    return train


def model_loss(net, dtype, digits, batch, first=0):
    """A net with random weights and biases on `batch` real digits from `first` on."""
    sizes, activation, std = NETS[net]
    params = init_params(sizes, weight_init_std=std, seed=sum(sizes), dtype=dtype)
    rng = np.random.default_rng(len(sizes))
    for name in params:
        if name.startswith("b"):
            params[name][:] = rng.normal(0.0, 0.1, params[name].shape)
    images = slice(first, first + batch)
    return ModelLoss(mlp(sizes, activation), params, digits.images[images], digits.labels[images])


def windows(f, first_rows=12):
    """Flat ranges to compare: w1 rows cut mid-row (border pixels, zero in every image,
    and middle ones), and every other array whole."""
    space = ParamSpace(f.params)
    width = f.params["w1"].shape[1]
    middle = 14 * 28 + 9
    return [(0, 3 * width + 7),
            ((middle - first_rows // 2) * width + 5, (middle + first_rows // 2) * width + 11),
            (int(space.offsets[1]), space.size)]


def evaluate(module, f, scheme, ranges, **options):
    space = ParamSpace(f.params)
    steps = [H] * len(space.keys)
    return np.concatenate([module.batched_evaluate(f, space, steps, get_scheme(scheme), lo, hi,
                                                   **options) for lo, hi in ranges])


class TestSameBitsAsEveryDigitComputed:
    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("scheme", sorted(SCHEMES))
    @pytest.mark.parametrize("batch", [1, 10, 100])
    @pytest.mark.parametrize("net", sorted(NETS))
    def test_equal_to_the_reference(self, digits, net, batch, scheme, dtype):
        f = model_loss(net, dtype, digits, batch)
        ranges = windows(f, first_rows=12 if batch < 100 else 4)
        new = evaluate(batched, f, scheme, ranges)
        assert np.array_equal(new, evaluate(reference, f, scheme, ranges))
        assert np.count_nonzero(new) > 1000   # the windows hold real work

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("net", sorted(NETS))
    def test_blocks_do_not_change_a_bit(self, digits, net, dtype):
        f = model_loss(net, dtype, digits, 10, first=20)
        ranges = windows(f, first_rows=4)
        expected = evaluate(reference, f, "central", ranges)
        for block_memory in [1, 30_000, 400_000, 10**7]:   # 1 entry a block, up to all
            new = evaluate(batched, f, "central", ranges, block_memory=block_memory)
            assert np.array_equal(new, expected), block_memory

    @pytest.mark.parametrize("scheme", sorted(SCHEMES))
    @pytest.mark.parametrize("layers", ["no first bias, activation last", "affine after affine",
                                        "two affine after an activation"])
    def test_other_layer_stacks(self, digits, layers, scheme):
        rng = np.random.default_rng(7)
        params = {"w1": rng.normal(0, 0.05, (784, 30)), "w2": rng.normal(0, 0.3, (30, 10)),
                  "b2": rng.normal(0, 0.1, 10)}
        if layers == "affine after affine":
            params["b1"] = rng.normal(0, 0.1, 30)
            stack = [Affine("w1", "b1"), Affine("w2", "b2")]
        elif layers == "two affine after an activation":   # w1's rows meet w2, then w3 at once
            params = {"w1": params["w1"], "b1": rng.normal(0, 0.1, 30), "w2": rng.normal(0, 0.3, (30, 12)),
                      "w3": rng.normal(0, 0.3, (12, 10)), "b3": rng.normal(0, 0.1, 10)}
            stack = [Affine("w1", "b1"), Tanh(), Affine("w2"), Affine("w3", "b3")]
        else:
            stack = [Affine("w1"), Tanh(), Affine("w2", "b2"), Sigmoid()]
        f = ModelLoss(Sequential(stack, SoftmaxCrossEntropy()), params,
                      digits.images[:10], digits.labels[:10])
        ranges = [(0, ParamSpace(params).size)]
        assert np.array_equal(evaluate(batched, f, scheme, ranges),
                              evaluate(reference, f, scheme, ranges))


class TestZeroInputsAreNeverEvaluated:
    """A weight whose input is zero for a sample cannot move that sample's loss; one whose
    input is zero for every sample is exactly 0, as the loop evaluator finds too."""

    @staticmethod
    def record(monkeypatch):
        """Record the weight entries (layer, i, j) the evaluator takes up, and every
        (layer, i, j, sample) it computes a loss for."""
        entries, rows_seen = [], []
        original = batched._Forward._weight_rows

        def recording(self, k, rows, columns, counts):
            block = original(self, k, rows, columns, counts)
            entries.extend(zip([k] * rows.size, rows.tolist(), columns.tolist()))
            rows_seen.extend(zip([k] * len(block), rows[block.entry].tolist(),
                                 block.column.tolist(), block.sample.tolist()))
            return block
        monkeypatch.setattr(batched._Forward, "_weight_rows", recording)
        return entries, rows_seen

    @pytest.mark.parametrize("scheme", sorted(SCHEMES))
    @pytest.mark.parametrize("first", [0, 5, 40])
    def test_zero_pixels_exactly_zero_and_never_evaluated(self, digits, monkeypatch, scheme, first):
        f = model_loss("784-100-10 sigmoid", np.float64, digits, 5, first=first)
        entries, rows = self.record(monkeypatch)
        w1 = evaluate(batched, f, scheme, [(0, f.params["w1"].size)]).reshape(784, 100)
        dead = np.all(f.x == 0, axis=0)
        assert 200 < dead.sum() < 784
        assert np.all(w1[dead] == 0)
        assert np.count_nonzero(w1[~dead]) > 0.99 * w1[~dead].size
        assert sorted(entries) == [(0, i, j) for i in np.flatnonzero(~dead) for j in range(100)]
        # Within those, only the samples whose pixel is non-zero, each once.
        expected = {(0, i, j, b) for b, i in zip(*np.nonzero(f.x)) for j in range(100)}
        assert len(rows) == len(expected) and set(rows) == expected
        # The loop evaluator, which perturbs the full net, finds every loss unmoved there:
        # it gives the scheme's combination of equal losses (0, or for central4 the rounding
        # of ``-v + 8v - 8v + v``, ~1e-13, where the true derivative is 0).
        space, loss = ParamSpace(f.params), f(None)
        unmoved = get_scheme(scheme).combine([loss] * len(SCHEMES[scheme].multiples), loss, H)
        for entry in np.flatnonzero(dead)[::97] * 100 + 37:
            assert loop_evaluate(f, space, [H] * 4, get_scheme(scheme), entry, entry + 1)[0] == unmoved

    @pytest.mark.parametrize("scheme", sorted(SCHEMES))
    def test_hidden_zeros_after_relu(self, digits, monkeypatch, scheme):
        f = model_loss("784-60-40-10 relu", np.float64, digits, 10)
        entries, rows = self.record(monkeypatch)
        space = ParamSpace(f.params)
        w2 = evaluate(batched, f, scheme, [(int(space.offsets[2]), int(space.offsets[3]))])
        w2 = w2.reshape(60, 40)
        hidden = f.model.trace(f.params, f.x)[2]           # ReLU output, input of w2
        dead = np.all(hidden == 0, axis=0)
        assert 0 < dead.sum() < 60 and 0.2 < np.mean(hidden == 0) < 0.8
        assert np.all(w2[dead] == 0)
        assert sorted(entries) == [(2, i, j) for i in np.flatnonzero(~dead) for j in range(40)]
        expected = {(2, i, j, b) for b, i in zip(*np.nonzero(hidden)) for j in range(40)}
        assert len(rows) == len(expected) and set(rows) == expected


def test_rows_whose_relu_stays_off_skip_the_next_layer(digits, monkeypatch):
    """Perturbing w1[i, j] cannot move a sample whose hidden unit j stays at 0 after the
    ReLU: such rows keep the unperturbed loss and never reach the rank-one update."""
    f = model_loss("784-60-40-10 relu", np.float64, digits, 10)
    reached = []
    original = batched._Forward._rank_one_losses

    def recording(self, index, rows, change):
        if index == 2:
            reached.extend(zip(rows.sample.tolist(), rows.column.tolist()))
        return original(self, index, rows, change)
    monkeypatch.setattr(batched._Forward, "_rank_one_losses", recording)
    evaluate(batched, f, "central", [(0, f.params["w1"].size)])
    pre = f.model.trace(f.params, f.x)[1]             # hidden pre-activation (B, 60)
    reached = np.array(reached)
    assert np.all(pre[reached[:, 0], reached[:, 1]] > -1e-3)   # a step of 1e-4 * x <= 1e-4
    pixels_on = np.count_nonzero(f.x, axis=1)         # rows a sample takes per hidden unit
    assert len(reached) == 2 * np.sum(pixels_on[:, None] * (pre > 0))   # 2 steps each
    assert len(reached) < 0.8 * 2 * np.sum(pixels_on) * 60


def test_temporaries_stay_within_block_memory(digits):
    """What a block allocates grows with `block_memory` and stays below it (measured
    against one entry a block, on 600 entries of w1 in the middle of the digits)."""
    f = model_loss("784-100-10 sigmoid", np.float64, digits, 100)
    middle = (14 * 28 + 11) * 100
    peaks = {}
    for block_memory in [1, 2 * 2**20, 8 * 2**20]:
        cache = {"forward": batched._Forward(f)}
        tracemalloc.start()
        evaluate(batched, f, "central", [(middle, middle + 600)], cache=cache,
                 block_memory=block_memory)
        peaks[block_memory] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    for block_memory in [2 * 2**20, 8 * 2**20]:
        assert 0 < peaks[block_memory] - peaks[1] <= block_memory


def test_float64_divides_by_the_change_actually_stored():
    """In float64 ``(w + h) - w`` is rarely h; the evaluator must use the change it stored,
    as the loop evaluator does. With weights near 1000 (spacing 1.1e-13) in pairs that
    cancel, the column ``z @ W`` is near 1 and its last bits see the difference."""
    rng = np.random.default_rng(11)
    big = rng.uniform(999, 1001, (6, 4))
    params = {"w1": np.concatenate([big, rng.normal(0, 0.5, (6, 4)) - big]),
              "b1": rng.normal(0, 0.1, 4), "w2": rng.normal(0, 1, (4, 3)), "b2": rng.normal(0, 0.1, 3)}
    half = rng.uniform(0.5, 1, (5, 6))
    f = ModelLoss(mlp([12, 4, 3]), params, np.hstack([half, half]), [0, 2, 1, 1, 0])
    w = params["w1"]
    # delta * z differs from h * z by several units in the last place of the column
    ulp = np.spacing(np.abs(f.x @ w).max())
    assert np.mean(np.abs(((w + H) - w) - H) * f.x.min() > 4 * ulp) > 0.5
    ranges = [(0, w.size)]
    for scheme in sorted(SCHEMES):
        assert np.array_equal(evaluate(batched, f, scheme, ranges),
                              evaluate(reference, f, scheme, ranges)), scheme


class TestReductionOrder:
    """What bit-identity rests on: numpy's sums of rows do not depend on how many rows."""

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("batch", [1, 2, 7, 8, 9, 10, 16, 100, 128, 129, 1000, 5000])
    def test_mean_of_a_row_is_the_same_alone_or_in_a_block(self, dtype, batch):
        rng = np.random.default_rng(batch)
        rows = (rng.standard_normal((40, batch)) * np.exp(rng.uniform(-5, 5, (40, batch)))).astype(dtype)
        alone = np.array([row.mean() for row in rows])
        assert np.array_equal(rows.mean(axis=-1), alone)
        assert np.array_equal(rows[None].mean(axis=-1)[0], alone)
        assert np.array_equal(rows[:3].mean(axis=-1), alone[:3])

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    @pytest.mark.parametrize("classes", [1, 2, 3, 7, 8, 9, 10, 16, 17, 100, 128, 129, 300])
    def test_softmax_cross_entropy_by_class(self, dtype, classes):
        rng = np.random.default_rng(classes)
        logits = (rng.standard_normal((2000, classes)) * rng.uniform(0.1, 30, (2000, 1))).astype(dtype)
        logits[:50] = logits[:50].round()          # ties for the maximum
        labels = rng.integers(0, classes, 2000)
        by_class = np.ascontiguousarray(logits.T)
        expected = softmax_cross_entropy(logits, labels)
        assert np.array_equal(_loss_by_class.softmax_cross_entropy_by_class(by_class, labels), expected)
        assert np.array_equal(_loss_by_class.losses_by_class(SoftmaxCrossEntropy(), by_class, labels),
                              expected)

    def test_another_summation_order_is_caught_and_not_used(self, monkeypatch):
        monkeypatch.setattr(_loss_by_class, "pairwise_sum", lambda parts: sum(parts[1:], parts[0]))
        _loss_by_class._sums_like_numpy.cache_clear()
        try:
            assert not _loss_by_class._sums_like_numpy(np.dtype(np.float64), 10)
            rng = np.random.default_rng(3)
            logits, labels = rng.standard_normal((500, 10)) * 5, rng.integers(0, 10, 500)
            got = _loss_by_class.losses_by_class(SoftmaxCrossEntropy(), logits.T.copy(), labels)
            assert np.array_equal(got, softmax_cross_entropy(logits, labels))
        finally:
            _loss_by_class._sums_like_numpy.cache_clear()

    @pytest.mark.parametrize("n", [1, 2, 7, 8, 15, 16, 17, 24, 130, 300])
    def test_pairwise_sum_adds_as_numpy_adds_a_row_and_leaves_its_parts(self, n):
        rng = np.random.default_rng(n)
        parts = list(rng.standard_normal((n, 50)) * np.exp(rng.uniform(-5, 5, (n, 50))))
        before = [p.copy() for p in parts]
        total = _loss_by_class.pairwise_sum(parts)
        assert np.array_equal(total, np.stack(before, axis=-1).sum(axis=-1))
        assert all(np.array_equal(p, q) for p, q in zip(parts, before))
        total += 1.0   # a fresh array
        assert all(np.array_equal(p, q) for p, q in zip(parts, before))

    @pytest.mark.parametrize("dtype", [np.float64, np.float32])
    def test_the_class_by_class_route_is_taken_where_numpy_sums_alike(self, monkeypatch, dtype):
        assert _loss_by_class._sums_like_numpy(np.dtype(dtype), 10)
        taken = []

        def spy(by_class, labels):
            taken.append(by_class)
            return original(by_class, labels)

        original = _loss_by_class.softmax_cross_entropy_by_class
        monkeypatch.setattr(_loss_by_class, "softmax_cross_entropy_by_class", spy)
        rng = np.random.default_rng(5)
        by_class, labels = rng.standard_normal((10, 30)).astype(dtype), rng.integers(0, 10, 30)
        _loss_by_class.losses_by_class(SoftmaxCrossEntropy(), by_class, labels)
        assert any(arg is by_class for arg in taken)

    def test_the_summation_order_is_probed_for_the_class_count_not_the_sample_count(self, monkeypatch):
        # a left-to-right sum is numpy's order for fewer than 8 terms, not for 10
        monkeypatch.setattr(_loss_by_class, "pairwise_sum", lambda parts: sum(parts[1:], parts[0]))
        _loss_by_class._sums_like_numpy.cache_clear()
        try:
            rng = np.random.default_rng(0)
            logits, labels = rng.standard_normal((7, 10)) * 5, rng.integers(0, 10, 7)
            expected = softmax_cross_entropy(logits, labels)
            by_class = logits.T.copy()
            assert not np.array_equal(_loss_by_class.softmax_cross_entropy_by_class(by_class, labels),
                                      expected)
            got = _loss_by_class.losses_by_class(SoftmaxCrossEntropy(), by_class, labels)
            assert np.array_equal(got, expected)
        finally:
            _loss_by_class._sums_like_numpy.cache_clear()

    def test_another_loss_layer_gets_its_own_per_sample(self):
        class Halved(SoftmaxCrossEntropy):
            def per_sample(self, logits, labels, *, check_labels=True):
                return super().per_sample(logits, labels, check_labels=check_labels) / 2

        rng = np.random.default_rng(4)
        logits, labels = rng.standard_normal((30, 10)), rng.integers(0, 10, 30)
        got = _loss_by_class.losses_by_class(Halved(), logits.T.copy(), labels)
        assert np.array_equal(got, softmax_cross_entropy(logits, labels) / 2)
