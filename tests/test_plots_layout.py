"""The training figure, read back from its matplotlib objects: what each panel draws from the
numbers given (the steps, the running mean, the band's quartiles, the axes' ranges and ticks),
its fixed look (size, line widths, markers), and that drawing needs no display and leaves no
figure open."""
import io

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from engine.train._plots import (MOST_STEPS_DRAWN, plot_training, plots_available,  # noqa: E402
                                 running_window, training_figure)


@pytest.fixture
def figure():
    """training_figure(...), closed after the test."""
    made = []

    def make(losses, evaluations=(), title=""):
        made.append(training_figure(losses, list(evaluations), title))
        made[-1].canvas.draw()
        return made[-1]

    yield make
    for fig in made:
        plt.close(fig)


def evaluations_at(steps):
    return [{"step": s, "epoch": 0, "train_accuracy": 0.5, "test_accuracy": 0.25} for s in steps]


def visible(ticks, axis_range):
    low, high = sorted(axis_range)
    return [t for t in ticks if low <= t <= high]


def lines_by_label(axis):
    return {line.get_label(): line for line in axis.get_lines()}


def test_plots_are_available_where_matplotlib_is():
    assert plots_available() is True


def test_the_figure_is_880_by_660_pixels_loss_above_accuracy_sharing_the_steps(figure):
    fig = figure([1.0, 0.5], evaluations_at([2]), title="a run")
    assert tuple(fig.get_size_inches() * fig.dpi) == (880.0, 660.0)
    loss_axis, accuracy_axis = fig.axes
    assert loss_axis.get_shared_x_axes().joined(loss_axis, accuracy_axis)
    heights = [a.get_position().height for a in (loss_axis, accuracy_axis)]
    assert heights[0] / heights[1] == pytest.approx(3 / 2)
    assert loss_axis.get_position().y0 > accuracy_axis.get_position().y1
    assert loss_axis.get_title() == "a run"


def test_the_loss_panel_draws_each_step_and_its_running_mean(figure):
    losses = np.arange(1.0, 41.0)       # 40 steps: a running mean over 2
    loss_axis = figure(losses).axes[0]
    lines = lines_by_label(loss_axis)
    steps = lines["loss per step"]
    assert np.array_equal(steps.get_xdata(), np.arange(1, 41)) and np.array_equal(steps.get_ydata(), losses)
    mean = lines["running mean over 2 steps"]
    assert np.array_equal(mean.get_xdata(), np.arange(2, 41))
    assert np.array_equal(mean.get_ydata(), (losses[1:] + losses[:-1]) / 2)
    assert (steps.get_linewidth(), steps.get_alpha(), mean.get_linewidth()) == (0.8, 0.35, 1.8)
    assert loss_axis.get_yscale() == "log" and loss_axis.get_ylabel() == "training loss (cross-entropy)"
    assert loss_axis.get_legend().get_frame_on() is False
    assert all(line.get_visible() for line in loss_axis.yaxis.get_gridlines())


def test_a_running_mean_over_one_step_is_not_drawn(figure):
    assert list(lines_by_label(figure(np.ones(39)).axes[0])) == ["loss per step"]


@pytest.mark.parametrize("n_steps", [MOST_STEPS_DRAWN, MOST_STEPS_DRAWN + 1])
def test_every_step_is_drawn_up_to_400_steps_then_a_band(figure, n_steps):
    loss_axis = figure(np.linspace(1.0, 2.0, n_steps)).axes[0]
    bands = [c for c in loss_axis.collections if isinstance(c, PolyCollection)]
    assert MOST_STEPS_DRAWN == 400
    assert ("loss per step" in lines_by_label(loss_axis)) == (n_steps <= 400)
    assert len(bands) == (n_steps > 400)


def test_the_band_spans_the_quartiles_of_each_of_200_stretches(figure):
    losses = np.tile([1.0, 2.0, 3.0, 4.0], 200)    # 800 steps: stretches of 4 steps alike
    loss_axis = figure(losses).axes[0]
    (band,) = [c for c in loss_axis.collections if isinstance(c, PolyCollection)]
    y = band.get_paths()[0].vertices[:, 1]
    assert (y.min(), y.max()) == (1.75, 3.25)       # np.percentile(.., 25) and (.., 75) of 1..4
    x = band.get_paths()[0].vertices[:, 0]
    assert (x.min(), x.max()) == (2.5, 798.5)       # the middle steps of the first and the last stretch
    assert band.get_alpha() == 0.2 and list(band.get_linewidth()) == [0.0]
    labels = [t.get_text() for t in loss_axis.get_legend().get_texts()]
    assert labels[0] == "middle half of the losses, per 4 steps"


def test_the_accuracy_panel_spans_0_to_1_and_the_steps_with_a_margin(figure):
    fig = figure(np.ones(100), evaluations_at([50, 100]))
    accuracy_axis = fig.axes[1]
    assert accuracy_axis.get_ylim() == (0.0, 1.0)
    assert accuracy_axis.get_xlim() == (0.0, 102.0)          # 100 + max(1, 100 // 50)
    assert (accuracy_axis.get_ylabel(), accuracy_axis.get_xlabel()) == ("accuracy", "step")
    assert all(line.get_visible() for line in accuracy_axis.yaxis.get_gridlines())
    assert accuracy_axis.get_legend().get_frame_on() is False
    assert figure(np.ones(10), evaluations_at([10])).axes[1].get_xlim() == (0.0, 11.0)


def test_train_accuracy_as_open_squares_around_the_test_dots(figure):
    lines = lines_by_label(figure(np.ones(10), evaluations_at([5, 10])).axes[1])
    train, test = lines["train accuracy (last: 0.500)"], lines["test accuracy (last: 0.250)"]
    assert np.array_equal(train.get_xdata(), [5, 10]) and np.array_equal(test.get_ydata(), [0.25, 0.25])
    assert (train.get_marker(), train.get_markersize(), train.get_markerfacecolor()) == ("s", 7, "none")
    assert (test.get_marker(), test.get_markersize()) == ("o", 4)
    assert test.get_markerfacecolor() == test.get_color() != "none"


@pytest.mark.parametrize("n_points, marked", [(59, True), (60, False)])
def test_markers_only_below_60_evaluations(figure, n_points, marked):
    axis = figure(np.ones(n_points), evaluations_at(range(1, n_points + 1))).axes[1]
    assert all((line.get_marker() not in (None, "None", "", " ")) == marked for line in axis.get_lines())


def test_a_run_without_evaluations_says_so_in_the_middle_of_the_panel(figure):
    axis = figure(np.ones(5)).axes[1]
    (text,) = axis.texts
    assert text.get_text() == "no evaluation recorded" and text.get_position() == (0.5, 0.5)
    assert axis.get_legend() is None


@pytest.mark.parametrize("losses, labels", [
    (np.geomspace(0.3, 2.3, 50), ["0.5", "1", "2"]),        # under 2.5 decades: 1, 2, 5 per decade
    (np.geomspace(0.002, 2.3, 50), ["0.01", "0.1", "1"]),   # over: the powers of 10 only
])
def test_log_ticks_per_decade_follow_the_losses_range(figure, losses, labels):
    loss_axis = figure(losses).axes[0]
    ticks = visible(loss_axis.get_yticks(), loss_axis.get_ylim())
    assert [f"{t:g}" for t in ticks] == labels
    assert [t.get_text() for t in loss_axis.get_yticklabels(minor=True) if t.get_text()] == []


@pytest.mark.parametrize("n_steps, ticks", [(8, [0, 2, 4, 6, 8]), (3, [0, 1, 2, 3, 4])])
def test_the_steps_axis_has_at_most_8_whole_step_intervals(figure, n_steps, ticks):
    axis = figure(np.ones(n_steps), evaluations_at([n_steps])).axes[1]
    assert visible(axis.get_xticks(), axis.get_xlim()) == ticks


def test_drawing_needs_no_display_and_plot_training_leaves_no_figure_open():
    before = plt.get_fignums()
    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        fig = training_figure([1.0], [])
        assert matplotlib.get_backend().lower() == "agg"
        plt.close(fig)
    finally:
        matplotlib.use(previous)
    plot_training([1.0, 0.5], evaluations_at([2]), io.BytesIO())
    assert plt.get_fignums() == before
    assert running_window(40) == 2
