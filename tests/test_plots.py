"""The training plot: plain tick labels, a running mean sized to the run, train and test accuracy,
and a band instead of every step for long runs."""
import io

import numpy as np
import pytest

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from engine.train._plots import (MOST_STEPS_DRAWN, plot_training, running_window,  # noqa: E402
                                 training_figure)


def run_like(n_steps, every, seed=0):
    """Losses falling from ~2.3 with one-image noise, and evaluations every `every` steps."""
    rng = np.random.default_rng(seed)
    losses = 2.3 * np.exp(-np.arange(n_steps) / (n_steps / 3)) * rng.lognormal(0, 1, n_steps)
    evaluations = [{"step": s, "epoch": 0, "train_accuracy": 0.5 + s / (3 * n_steps),
                    "test_accuracy": 0.45 + s / (3 * n_steps)} for s in range(every, n_steps + 1, every)]
    return losses, evaluations


@pytest.mark.parametrize("n_steps, window", [(1, 1), (19, 1), (20, 1), (40, 2), (100, 5),
                                             (4000, 200), (12_000, 600)])
def test_the_running_mean_covers_a_twentieth_of_the_run(n_steps, window):
    assert running_window(n_steps) == window


def labels(axis_ticks):
    return [t.get_text() for t in axis_ticks if t.get_text()]


@pytest.mark.parametrize("n_steps, every", [(100, 100), (12_000, 400)])
def test_the_figure_reads_plainly_at_100_and_12000_steps(n_steps, every):
    losses, evaluations = run_like(n_steps, every)
    fig = training_figure(losses, evaluations, title="a run")
    try:
        fig.canvas.draw()   # the tick labels exist once drawn
        loss_axis, accuracy_axis = fig.axes
        y_labels = labels(loss_axis.get_yticklabels())
        assert y_labels and all("$" not in t and "times" not in t and "^" not in t for t in y_labels)
        for text in y_labels:
            float(text)   # a plain number
        steps = labels(accuracy_axis.get_xticklabels())
        assert steps[-1].replace(",", "").isdigit() and ("," in steps[-1]) == (n_steps >= 1000)
        legend = [t.get_text() for t in loss_axis.get_legend().get_texts()]
        assert f"running mean over {running_window(n_steps)} steps" in legend
        accuracy = [t.get_text() for t in accuracy_axis.get_legend().get_texts()]
        last = evaluations[-1]
        assert accuracy == [f"train accuracy (last: {last['train_accuracy']:.3f})",
                            f"test accuracy (last: {last['test_accuracy']:.3f})"]
        longest = max(len(line.get_xdata()) for line in loss_axis.get_lines())
        bands = [c for c in loss_axis.collections if isinstance(c, PolyCollection)]
        if n_steps <= MOST_STEPS_DRAWN:
            assert longest == n_steps and not bands          # every step drawn
        else:
            assert longest == n_steps - running_window(n_steps) + 1 and len(bands) == 1
    finally:
        plt.close(fig)


def test_evaluations_without_train_accuracy_still_plot_the_test_accuracy():
    losses, evaluations = run_like(50, 10)
    for e in evaluations:
        del e["train_accuracy"]   # a checkpoint of an earlier version
    fig = training_figure(losses, evaluations)
    try:
        texts = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
        assert texts == [f"test accuracy (last: {evaluations[-1]['test_accuracy']:.3f})"]
    finally:
        plt.close(fig)


def test_a_png_is_written_and_an_empty_run_is_refused():
    buffer = io.BytesIO()
    plot_training(*run_like(3, 3), buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="`losses` is empty"):
        plot_training([], [], io.BytesIO())


def test_the_trainer_records_train_and_test_accuracy_at_each_evaluation():
    from engine.data._data import load_embedded_mnist
    from engine.train._training import TrainConfig, Trainer

    train, test = load_embedded_mnist()
    config = TrainConfig(sizes=(784, 5, 10), batch_size=2, steps=4, eval_every=2,
                         gradient="backprop")
    with Trainer(config, train.head(6), test.head(4)) as trainer:
        trainer.run()
        evaluations = trainer.state.evaluations
        assert [e["step"] for e in evaluations] == [2, 3, 4]   # every 2 steps and the epoch's end
        assert evaluations[-1]["train_accuracy"] == trainer.accuracy(trainer.train)
        assert evaluations[-1]["test_accuracy"] == trainer.accuracy(trainer.test)
