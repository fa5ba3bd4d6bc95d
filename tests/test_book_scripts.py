"""The book's ch05, ch06 and ch07 gradient-check scripts, with the engine swapped in: the same bits.

The nets and scripts are copies written here in the book's style (`_book_nets.py`, numpy
only). Each script runs as the book runs it (its `numerical_gradient`, the nditer loop of
`book_reference.py`) and again with ``engine.parallel_numerical_gradient`` in its place,
on 2 workers (and 1 for ch07); every gradient must be bit-identical per key and the
printed lines identical. The sizes are smaller than the book's so that the file runs in
~13 s here (2 shared vCPUs, load 12); the scripts' structure is unchanged:

- ch05: ``TwoLayerNet(784, 6, 10)`` (the book: 50 hidden units) on the first 3 embedded
  MNIST images, one-hot labels, as the book.
- ch06: ``MultiLayerNetExtend(784, [6, 6], 10, use_batchnorm=True)`` (the book: [100,
  100]) on 3 images (the book: 1, where batch normalization outputs its beta and every
  gradient before it is exactly 0: the comparison would be of zeros). Its loss runs in
  training mode and reassigns each BatchNormalization's running_mean / running_var on
  every call: state the workers' copies change, not the caller's.
- ch07: ``SimpleConvNet`` exactly as the book's script builds it (10x10 input, 10 filters
  of 3x3, hidden 10, std 0.01) on one random image, label 1.
"""
import contextlib
import functools
import io
import warnings

import numpy as np
import pytest

import _book_nets
from book_reference import book_numerical_gradient
from engine import NotDeterministicError, parallel_numerical_gradient
from engine.data._data import load_embedded_mnist

N_IMAGES = 3


@pytest.fixture(scope="module")
def mnist():
    train, _ = load_embedded_mnist()
    return train.images[:N_IMAGES], np.eye(10)[train.labels[:N_IMAGES]]   # one-hot, as the book


SCRIPTS = {
    "ch05": lambda x, t: _book_nets.ch05_gradient_check(x, t, hidden_size=6),
    "ch06": lambda x, t: _book_nets.ch06_batch_norm_gradient_check(x, t, hidden_size_list=(6, 6),
                                                                   n_images=N_IMAGES),
    "ch07": lambda x, t: _book_nets.ch07_gradient_check(),
}


def run_script(name, data, numerical_gradient, capsys, monkeypatch):
    """Run script `name` with `numerical_gradient` as the book's; (gradients, backprop, printed, net)."""
    monkeypatch.setattr(_book_nets, "numerical_gradient", numerical_gradient)
    capsys.readouterr()
    numerical, backprop, net = SCRIPTS[name](*data)
    return numerical, backprop, capsys.readouterr().out, net


@pytest.fixture(scope="module")
def book_runs(mnist):
    """Each script as the book runs it, once for the module: the reference."""
    runs = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(_book_nets, "numerical_gradient", book_numerical_gradient)
        for name, script in SCRIPTS.items():
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                numerical, backprop, net = script(*mnist)
            runs[name] = numerical, backprop, printed.getvalue(), net
    return runs


# 1 worker (in this process) on the smallest script only: the file stays within seconds
@pytest.mark.parametrize("name, workers", [("ch05", 2), ("ch06", 2), ("ch07", 1), ("ch07", 2)])
def test_the_engine_swapped_in_gives_the_books_bits(name, workers, mnist, book_runs, capsys,
                                                    monkeypatch):
    engine_gradient = functools.partial(parallel_numerical_gradient, workers=workers)
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        numerical, backprop, printed, _ = run_script(name, mnist, engine_gradient, capsys, monkeypatch)
    said = [str(w.message) for w in recorded if "changes state" in str(w.message)]
    if name == "ch06":   # the running statistics, named on each call (one per parameter array)
        assert len(said) == len(book_runs[name][0])
        for layer in ("BatchNorm1", "BatchNorm2"):
            for statistic in ("running_mean", "running_var"):
                assert all(f"self.layers['{layer}'].{statistic}" in m for m in said)
    else:   # the layers' caches (their input, the ReLU mask) are not state that accumulates
        assert said == []
    book_numerical, book_backprop, book_printed, _ = book_runs[name]
    assert list(numerical) == list(book_numerical)
    for key in book_numerical:
        assert np.array_equal(numerical[key], book_numerical[key]), key
        assert np.array_equal(backprop[key], book_backprop[key]), key
    assert printed == book_printed
    assert len(printed.splitlines()) == len(book_numerical)


def test_the_scripts_check_something(book_runs):
    """The references are not zeros, and backprop agrees with them away from kinks."""
    for name, (numerical, backprop, _, _) in book_runs.items():
        for key in numerical:
            assert np.abs(numerical[key]).max() > 1e-9 or key in ("b1", "b2"), (name, key)
            # the book's cross_entropy_error adds 1e-7 inside the log: a relative 1e-6 apart
            close = np.isclose(numerical[key], backprop[key], rtol=1e-4, atol=1e-7)
            assert close.mean() > 0.95, (name, key)


def test_batch_norm_net_changes_its_running_statistics_on_every_loss(mnist):
    """The state the engine's workers change in their copies: the caller's moves per call."""
    net = _book_nets.MultiLayerNetExtend(784, [10, 10], 10, use_batchnorm=True)
    norm = net.layers["BatchNorm1"]
    net.loss(*mnist, train_flg=True)
    first = norm.running_mean
    net.loss(*mnist, train_flg=True)
    assert not np.array_equal(norm.running_mean, first)


@pytest.mark.parametrize("workers", [1, 2])
def test_restore_keeps_the_callers_running_statistics(mnist, workers):
    net = _book_nets.MultiLayerNetExtend(784, [6, 6], 10, use_batchnorm=True)
    norm = net.layers["BatchNorm1"]
    net.loss(*mnist, train_flg=True)   # statistics of their own
    before = norm.running_mean.copy(), norm.running_var.copy()
    f = lambda W: net.loss(*mnist, train_flg=True)   # noqa: E731 (the book's form)
    parallel_numerical_gradient(f, net.params["W2"], workers=workers, side_effects="restore")
    assert np.array_equal(norm.running_mean, before[0]) and np.array_equal(norm.running_var, before[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_dropout_in_training_mode_is_refused_not_wrong(mnist, workers):
    """The book's Dropout draws a np.random mask per loss: f(x) is not one function of x."""
    net = _book_nets.MultiLayerNetExtend(784, [10, 10], 10, use_batchnorm=True, use_dropout=True)
    f = lambda W: net.loss(*mnist, train_flg=True)   # noqa: E731 (the book's form)
    with pytest.raises(NotDeterministicError, match=r"numpy\.random's global generator.*"
                                                    r"'Dropout1'\]\.mask"):
        parallel_numerical_gradient(f, net.params["b1"], workers=workers)
