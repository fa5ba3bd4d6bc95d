"""The teaching text's chapter-4 run, by numerical gradients and by backprop, side by side.

A 784-50-10 sigmoid net, mini-batches of 100 drawn by a reshuffled order each epoch, SGD
with lr 0.1, on the embedded 4,000 / 1,000 digits, through the public training API
(`engine.Trainer`). Train and test accuracy are recorded every `--eval-every`
steps (and before the first), for each gradient kind; the test accuracies of the two
kinds are compared at every evaluation. Writes a JSON record and a plot like the book's figure (accuracy per
epoch, train and test), and prints the median seconds per step of each kind.

    python docs/chapter4_run.py                          # the book's 10,000 steps, 2 workers
    python docs/chapter4_run.py --steps 800              # two evaluations
    python docs/chapter4_run.py --steps 20 --workers 1 --gradient numerical --no-plot \\
        --json /tmp/timing.json                          # per-step time only
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from engine import TrainConfig, Trainer, load_embedded_mnist

HERE = Path(__file__).resolve().parent
KINDS = ("numerical", "backprop")
STYLE = {"numerical": "-", "backprop": "--"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000, help="SGD steps (the book: 10,000)")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers of the numerical gradient (default 2)")
    parser.add_argument("--eval-every", type=int, default=400,
                        help="steps between recorded train/test accuracies (default 400)")
    parser.add_argument("--gradient", choices=KINDS + ("both",), default="both",
                        help="which runs to make (default both)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument("--json", type=Path, default=HERE / "chapter4_run.json",
                        help="where to write the record (default docs/chapter4_run.json)")
    parser.add_argument("--plot", type=Path, default=HERE / "chapter4_accuracy.png",
                        help="where to write the figure (default docs/chapter4_accuracy.png)")
    parser.add_argument("--no-plot", action="store_true", help="write no figure")
    return parser


def config_for(gradient: str, args) -> TrainConfig:
    """The book's chapter-4 settings with `gradient` and the steps asked for."""
    return TrainConfig(sizes=(784, 50, 10), weight_init_std=0.01, lr=0.1, batch_size=100,
                       steps=args.steps, seed=args.seed, shuffle=True, gradient=gradient,
                       eval_every=args.eval_every)


def run(gradient: str, args, train, test) -> dict:
    """One run; returns its evaluations (train and test accuracy) and step times."""
    trainer = Trainer(config_for(gradient, args), train, test, workers=args.workers)
    train_accuracy = {0: trainer.accuracy(trainer.train)}      # before training, as the book
    test_accuracy = {0: trainer.accuracy(trainer.test)}

    def on_step(trainer: Trainer) -> None:
        step = trainer.state.step
        if step % args.eval_every == 0:
            train_accuracy[step] = trainer.accuracy(trainer.train)

    started = time.perf_counter()
    state = trainer.run(on_step)
    wall = time.perf_counter() - started
    test_accuracy.update({e["step"]: e["test_accuracy"] for e in state.evaluations})
    steps_per_epoch = trainer.steps_per_epoch
    evaluations = [{"step": step, "epoch": step / steps_per_epoch,
                    "train_accuracy": train_accuracy[step], "test_accuracy": test_accuracy[step]}
                   for step in sorted(train_accuracy)]
    seconds = np.asarray(state.seconds)
    return {"config": trainer.config.to_dict(), "workers": args.workers,
            "steps_per_epoch": steps_per_epoch, "evaluations": evaluations,
            "final_loss": state.losses[-1],
            "median_step_seconds": float(np.median(seconds)),
            "step_seconds_quartiles": [float(q) for q in np.percentile(seconds, [25, 75])],
            "wall_seconds": wall}


def compare(runs: dict) -> dict:
    """Where the two kinds' test accuracies differ (empty when they agree everywhere)."""
    if set(runs) != set(KINDS):
        return {}
    pairs = zip(runs["numerical"]["evaluations"], runs["backprop"]["evaluations"])
    differ = [{"step": a["step"], "numerical": a["test_accuracy"], "backprop": b["test_accuracy"]}
              for a, b in pairs if a["test_accuracy"] != b["test_accuracy"]]
    return {"test_accuracy_equal_at_every_evaluation": not differ, "differences": differ}


def plot(runs: dict, path: Path) -> None:
    """Accuracy per epoch, train and test, one line style per gradient kind (the book's figure)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    for kind, record in runs.items():
        epochs = [e["epoch"] for e in record["evaluations"]]
        for which, color, marker in (("train", "tab:blue", "o"), ("test", "tab:orange", "s")):
            axis.plot(epochs, [e[f"{which}_accuracy"] for e in record["evaluations"]],
                      STYLE[kind], color=color, marker=marker, markersize=4,
                      fillstyle="full" if kind == "numerical" else "none",
                      label=f"{which} acc, {kind} gradient")
    axis.set_xlabel("epochs")
    axis.set_ylabel("accuracy")
    axis.set_ylim(0, 1.0)
    axis.legend(loc="lower right")
    config = next(iter(runs.values()))["config"]
    axis.set_title(f"784-50-10, batch {config['batch_size']}, lr {config['lr']}, "
                   f"{config['steps']} steps (4,000 train / 1,000 test digits)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.workers < 1:
        raise SystemExit("`--steps`, `--eval-every` and `--workers` must be positive")
    train, test = load_embedded_mnist()
    kinds = KINDS if args.gradient == "both" else (args.gradient,)
    load_before = os.getloadavg()
    runs = {}
    for kind in kinds:
        runs[kind] = run(kind, args, train, test)
        print(f"{kind}: median {runs[kind]['median_step_seconds'] * 1e3:.1f} ms per step, "
              f"{runs[kind]['wall_seconds']:.0f} s for {args.steps} steps; final test accuracy "
              f"{runs[kind]['evaluations'][-1]['test_accuracy'] if runs[kind]['evaluations'] else 'n/a'}")
    record = {"runs": runs, "comparison": compare(runs),
              "machine": {"cpu": cpu_model(),
                          "cores": os.cpu_count(), "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}}
    if record["comparison"]:
        print("test accuracy equal at every evaluation:",
              record["comparison"]["test_accuracy_equal_at_every_evaluation"])
    args.json.write_text(json.dumps(record, indent=1) + "\n")
    if not args.no_plot and any(r["evaluations"] for r in runs.values()):
        plot(runs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
