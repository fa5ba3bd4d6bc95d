"""Pictures of a run: loss per step and test accuracy where measured."""
from __future__ import annotations

import os
from typing import BinaryIO, Sequence

import numpy as np

__all__ = ["plot_training", "plots_available"]


def plots_available() -> bool:
    """Whether matplotlib (the ``[train]`` extra) is installed."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


def plot_training(losses: Sequence[float], evaluations: Sequence[dict],
                  path: str | os.PathLike | BinaryIO, title: str = "") -> None:
    """Save a PNG: the loss of every step (and its running mean) and the test accuracy.

    Parameters
    ----------
    losses : sequence of float
        Training loss of each step, before that step's update.
    evaluations : sequence of dict
        ``{"step": int, "test_accuracy": float}`` for each test evaluation.
    path : path-like or binary file
        Where to write the PNG (a file open for binary writing, e.g. the temporary
        file of `engine._checkpoint.atomic_write`).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    fig, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=110)
    loss_axis.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    window = max(1, len(losses) // 50)
    if window > 1:
        running = np.convolve(losses, np.ones(window) / window, mode="valid")
        loss_axis.plot(steps[window - 1:], running, color="tab:blue", linewidth=1.8,
                       label=f"running mean ({window} steps)")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("training loss (cross-entropy)", color="tab:blue")
    loss_axis.set_yscale("log")
    handles, labels = loss_axis.get_legend_handles_labels()
    if evaluations:
        accuracy_axis = loss_axis.twinx()
        accuracy_axis.plot([e["step"] for e in evaluations], [e["test_accuracy"] for e in evaluations],
                           "o-", color="tab:red", label="test accuracy")
        accuracy_axis.set_ylabel("test accuracy", color="tab:red")
        accuracy_axis.set_ylim(0, 1)
        extra_handles, extra_labels = accuracy_axis.get_legend_handles_labels()
        handles, labels = handles + extra_handles, labels + extra_labels
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), frameon=False)
    loss_axis.set_title(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))   # room for the legend below the axes
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
