"""Pictures of a run: the loss per step with its running mean, and the train and test accuracy
where measured (the book's figure), readable for a run of 100 steps as for one of 12,000."""
from __future__ import annotations

import os
from typing import BinaryIO, Sequence

import numpy as np

__all__ = ["plot_training", "training_figure", "plots_available", "running_window", "MOST_STEPS_DRAWN"]

MOST_STEPS_DRAWN = 400   # longer runs show each stretch of steps as a band, not every step
_BINS = 200              # the band's stretches
_TARGET_POINTS = 20      # a running mean over about 1/20 of the run


def plots_available() -> bool:
    """Whether matplotlib (the ``[train]`` extra) is installed."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def running_window(n_steps: int) -> int:
    """Steps in the running mean of a run of `n_steps`: about 1/20 of the run, at least 1.

    A 100-step run averages 5 steps; a 12,000-step run 600.
    """
    return max(1, n_steps // _TARGET_POINTS)


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    return np.convolve(values, np.ones(window) / window, mode="valid")


def _band(steps: np.ndarray, values: np.ndarray):
    """Per stretch of steps: its middle step and the quartiles of its values."""
    pieces = np.array_split(np.arange(len(values)), min(_BINS, len(values)))
    middle = np.array([steps[p].mean() for p in pieces])
    low = np.array([np.percentile(values[p], 25) for p in pieces])
    high = np.array([np.percentile(values[p], 75) for p in pieces])
    return middle, low, high


def plot_training(losses: Sequence[float], evaluations: Sequence[dict],
                  path: str | os.PathLike | BinaryIO, title: str = "") -> None:
    """Save a PNG of a run: the loss above, the accuracy below, on one axis of steps.

    The loss panel shows every step's loss for runs of up to `MOST_STEPS_DRAWN` steps
    (beyond, the middle half, quartile to quartile, of each of 200 stretches of steps) and its
    running mean over `running_window` steps, on a log axis with plain tick labels. The
    accuracy panel shows the train and test accuracy of each evaluation (the train one
    where recorded), between 0 and 1.

    Parameters
    ----------
    losses : sequence of float
        Training loss of each step, before that step's update; at least one.
    evaluations : sequence of dict
        ``{"step": int, "test_accuracy": float}`` for each evaluation, with
        ``"train_accuracy"`` where it was measured.
    path : path-like or binary file
        Where to write the PNG (a file open for binary writing, e.g. the temporary
        file of `engine.train._checkpoint.atomic_write`).
    title : str
        The figure's title.

    Raises
    ------
    ValueError
        If `losses` is empty.
    """
    import matplotlib.pyplot as plt

    fig = training_figure(losses, evaluations, title)
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def training_figure(losses: Sequence[float], evaluations: Sequence[dict], title: str = ""):
    """The figure `plot_training` saves (a matplotlib Figure; close it with ``plt.close``)."""
    values = np.asarray(losses, dtype=np.float64)
    if values.size == 0:
        raise ValueError("`losses` is empty: a run of at least one step has a picture")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_axis, accuracy_axis) = plt.subplots(
        2, 1, sharex=True, figsize=(8, 6), dpi=110, gridspec_kw={"height_ratios": (3, 2)})
    _draw_losses(loss_axis, values)
    _draw_accuracy(accuracy_axis, evaluations)
    _plain_ticks(loss_axis, accuracy_axis, len(values))
    loss_axis.set_title(title)
    fig.tight_layout()
    return fig


def _draw_losses(axis, values: np.ndarray) -> None:
    steps = np.arange(1, len(values) + 1)
    if len(values) <= MOST_STEPS_DRAWN:
        axis.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss per step")
    else:
        middle, low, high = _band(steps, values)
        axis.fill_between(middle, low, high, color="tab:blue", alpha=0.2, linewidth=0,
                          label=f"middle half of the losses, per {len(values) // len(middle)} steps")
    window = running_window(len(values))
    if window > 1:
        axis.plot(steps[window - 1:], _running_mean(values, window), color="tab:blue",
                  linewidth=1.8, label=f"running mean over {window} steps")
    axis.set_yscale("log")
    axis.set_ylabel("training loss (cross-entropy)")
    axis.legend(loc="upper right", frameon=False, fontsize="small")
    axis.grid(True, which="major", alpha=0.3)


def _draw_accuracy(axis, evaluations: Sequence[dict]) -> None:
    # train: open squares, test: dots inside them, so that equal accuracies both show
    for key, color, marker, name in (("train_accuracy", "tab:green", "s", "train"),
                                     ("test_accuracy", "tab:red", "o", "test")):
        points = [(e["step"], e[key]) for e in evaluations if key in e]
        if points:
            steps, accuracy = zip(*points)
            axis.plot(steps, accuracy, color=color, marker=marker if len(points) < 60 else None,
                      markersize=7 if marker == "s" else 4, markerfacecolor="none" if marker == "s"
                      else color, label=f"{name} accuracy (last: {accuracy[-1]:.3f})")
    axis.set_ylim(0, 1)
    axis.set_ylabel("accuracy")
    axis.set_xlabel("step")
    axis.grid(True, alpha=0.3)
    if evaluations:
        axis.legend(loc="center right", frameon=False, fontsize="small")
    else:
        axis.text(0.5, 0.5, "no evaluation recorded", transform=axis.transAxes,
                  ha="center", va="center", color="gray")


def _plain_ticks(loss_axis, accuracy_axis, n_steps: int) -> None:
    """Tick labels as plain numbers: 0.5, 1, 2 on the log axis; 2,000 on the steps."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    low, high = loss_axis.get_ylim()
    decades = np.log10(high / low)
    loss_axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 2.5 else (1.0, 2.0, 5.0)))
    loss_axis.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    loss_axis.yaxis.set_minor_formatter(NullFormatter())
    accuracy_axis.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    accuracy_axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    accuracy_axis.set_xlim(0, n_steps + max(1, n_steps // 50))
