"""`python -m engine.cli.train` / `engine-train`: train the teaching text's net by numerical gradients.

With no flags it repeats the teaching text's run (`TrainConfig`'s defaults): a 784-100-10
net (sigmoid hidden layer, softmax cross-entropy, weights drawn with std 0.01), lr 0.1,
100 steps of one image each, taken in order from the first 100 training images of the
embedded MNIST split, tested on the first 10 test images. It writes into a new folder
``runs/run-N`` and points ``runs/latest`` to it, so no run ever replaces another; an
explicit ``--out DIR`` that holds a run is refused (``--resume DIR`` continues it,
``--force`` replaces it). One process at a time writes into a folder (a lock).

Exit status: 0 done; 2 bad flags, data, checkpoint or output folder, or the folder
is in use (nothing written, apart from the folder and its lock file once the flags
and data are known good); 130 / 143 interrupted by SIGINT / SIGTERM (a checkpoint is
written first; resume with ``--resume DIR``).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.train._checkpoint import (CheckpointError, atomic_write, save_checkpoint, save_npz_atomic,
                                write_json_atomic)
from engine.data._data import EMBEDDED_TEST_SIZE, EMBEDDED_TRAIN_SIZE, EXTRA_HINT, N_PIXELS, DataError
from engine.batched._detect import EVALUATOR_CHOICES
from engine.run._execution import DEFAULT_BACKEND
from engine.book._nets import BOOK_SIZES
from engine.train._plots import plot_training, plots_available
from engine.train._run_folder import (LATEST_LINK, OUTPUTS, RUNS_FOLDER, ClaimedFolder, FolderBusyError,
                                FolderError, claim_folder, claim_new_folder)
from engine.fd._schemes import DEFAULT_STEP
from engine.train._training import GRADIENTS, NETS, Trainer
from engine.cli._flags import add_shared_flags, default_text, flag_words
from engine.cli._setup import CHECKPOINT_EVERY, DEFAULTS, EXIT_BAD_INPUT, UsageError, prepare

__all__ = ["main"]


class Terminated(BaseException):
    """SIGTERM, raised where the program is, like KeyboardInterrupt for SIGINT."""


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag documented for ``--help``, each default shown once."""
    p = argparse.ArgumentParser(
        prog="engine-train",
        description=f"Train the teaching text's {'-'.join(map(str, BOOK_SIZES))} net on "
                    "MNIST by numerical gradients "
                    f"(central differences, h={DEFAULT_STEP:g}), in parallel. Defaults repeat the "
                    "text's run.")
    add_shared_flags(p, {**DEFAULTS, "workers": "all cores", "backend": DEFAULT_BACKEND})
    for add_flags in (_add_run_flags, _add_data_flags, _add_gradient_flags, _add_output_flags):
        add_flags(p.add_argument, DEFAULTS)
    return p


def _add_run_flags(add, d: dict[str, Any]) -> None:
    add("--iters", metavar="N", type=int, help="SGD steps" + default_text(d["iters"]))
    add("--epochs", metavar="N", type=int, help="full passes over the training images; overrides --iters")
    add("--lr", metavar="LR", type=float, help="learning rate" + default_text(d["lr"]))
    add("--net", choices=list(NETS), help="the net: the text's MLP (sigmoid), or the book's chapter-7 "
        "SimpleConvNet (30 filters of 5x5, 2x2 max pooling, one --hidden width)" + default_text(d["net"]))
    add("--hidden", metavar="N", type=int, nargs="+",
        help="hidden layer width(s), e.g. 100 or 100 50" + default_text(d["hidden"]))
    add("--batch-size", metavar="N", type=int, help="images per step" + default_text(d["batch_size"]))
    add("--seed", metavar="N", type=int, help="seed of the weight initialisation and the --shuffle orders: "
        "one generator, default_rng(seed), draws the weights, then each epoch's order"
        + default_text(d["seed"]))
    add("--weight-init-std", metavar="STD", type=float,
        help="std of the initial weights" + default_text(d["weight_init_std"]))


def _add_data_flags(add, d: dict[str, Any]) -> None:
    add("--train-size", metavar="N", type=int, help=f"first N training images [default: {d['train_size']} of "
        f"the embedded {EMBEDDED_TRAIN_SIZE:,}; with --train-csv or --mnist-dir, all]")
    add("--test-size", metavar="N", type=int, help=f"first N test images [default: {d['test_size']} of the "
        f"embedded {EMBEDDED_TEST_SIZE:,}; with --test-csv or --mnist-dir, all]")
    add("--train-csv", metavar="FILE", type=Path,
        help=f"train on this file in the text's CSV format (label, {N_PIXELS} pixels)")
    add("--test-csv", metavar="FILE", type=Path, help="test on this file in the text's CSV format")
    add("--mnist-dir", metavar="DIR", type=Path, help="train and test on the MNIST IDX files in this folder "
        "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
        "t10k-labels-idx1-ubyte; each may be gzipped, .gz)")
    add("--shuffle", action="store_true", default=None,
        help="a new random order of the images every epoch (see --seed)")


def _add_gradient_flags(add, d: dict[str, Any]) -> None:
    add("--evaluator", choices=EVALUATOR_CHOICES,
        help="how perturbations are evaluated: loop = the text's way, one forward pass each; "
             "batched = blocks through the layers after the perturbed one" + default_text(d["evaluator"]))
    add("--gradient", choices=GRADIENTS,
        help="numerical differences, or backprop for comparison" + default_text(d["gradient"]))
    add("--scheduler", metavar="ADDRESS", help="with --backend dask: address of a running scheduler (tcp://host:port)")
    add("--eval-every", metavar="N", type=int, help="also measure test accuracy every N steps; 0: at epoch "
        "ends only" + default_text(d["eval_every"]))


def _add_output_flags(add, d: dict[str, Any]) -> None:
    add("--checkpoint-every", metavar="N", type=int, help="write a checkpoint every N steps and at the end; "
        "kept in the checkpoint for --resume" + default_text(CHECKPOINT_EVERY))
    add("--out", metavar="DIR", type=Path, help=f"folder for {', '.join(OUTPUTS)} [default: a new "
        f"{RUNS_FOLDER}/run-N, with {LATEST_LINK} pointing to it]")
    add("--force", action="store_true", help="let --out replace the run it holds")
    add("--resume", metavar="DIR", type=Path, help="continue the run whose checkpoint is in this folder, "
        "writing there (--out cannot move it)")
    add("--no-progress", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run = prepare(args)                # flags, data, checkpoint: nothing written yet
        folder = _claim_folder(run, args)   # the folder: created, locked, checked
    except (UsageError, FolderError, DataError, CheckpointError, FileNotFoundError,
            FolderBusyError, ValueError, TypeError) as exc:
        print(f"engine-train: error: {flag_words(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return _train(run, args)
    finally:
        folder.release()


# -- the output folder: created, locked, and never holding another run ---------------------------

def _claim_folder(run: dict[str, Any], args) -> ClaimedFolder:
    """Create and lock the run's folder (see `engine.train._run_folder`). Sets ``run["out"]``."""
    if run["state"] is None and run["out"] is None:
        folder = claim_new_folder(RUNS_FOLDER)
    else:
        resumed_step = None if run["state"] is None else run["state"].step
        folder = claim_folder(run["out"], force=args.force, resumed_step=resumed_step)
    if folder.replaced is not None:
        print(f"engine-train: --force: replacing {folder.replaced} in {folder.path}",
              file=sys.stderr)
    run.update(out=folder.path, latest=folder.latest)
    return folder


# -- running it ----------------------------------------------------------------------------------

def _train(run: dict[str, Any], args) -> int:
    config, out = run["config"], run["out"]
    trainer = Trainer(config, run["train"], run["test"], execution=run["execution"],
                      state=run["state"])
    if trainer.state.step == 0:
        _checkpoint(trainer, run)   # from here on, a killed run can always be resumed
    print(_headline(run, trainer), flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    bar = _progress_bar(trainer, run["progress"])
    started = time.perf_counter()
    try:
        with _cluster(run):
            plan = trainer.calibrate()   # where the gradient runs: decided before step 1
            if plan is not None:
                bar.write(f"gradient: {plan}")
                run["plan"] = str(plan)
            trainer.run(on_step=lambda t: _after_step(t, run, bar))
    except (ValueError, FloatingPointError) as exc:   # the loss or the weights left the numbers
        bar.close()
        print(f"engine-train: error: step {trainer.state.step + 1} failed: {flag_words(str(exc))}"
              f"{_divergence_hint(trainer, config)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Terminated) as stop:
        bar.close()
        path = _checkpoint(trainer, run)
        print(f"\ninterrupted at step {trainer.state.step} of {config.steps}; checkpoint: {path}\n"
              f"resume with: engine-train --resume {out}", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)
        trainer.close()
    bar.close()
    return _finish(trainer, run, time.perf_counter() - started)


def _divergence_hint(trainer: Trainer, config) -> str:
    largest = max((float(np.max(np.abs(a))) for a in trainer.state.params.values()), default=0.0)
    if not np.isfinite(largest) or largest > 1e6:
        return (f". The weights grew to {largest:.3g}: training diverged; try a smaller --lr "
                f"than {config.lr:g}")
    return ""


def _cluster(run):
    """For ``--backend dask``: one client for the whole run (the engine uses the active one)."""
    if run["backend"] != "dask":
        return contextlib.nullcontext()
    from engine.run._dask import open_client   # the optional dependency, imported only when asked for
    return open_client(run["scheduler"], run["workers"])


def _raise_terminated(signum, frame):
    raise Terminated()


def _after_step(trainer: Trainer, run, bar) -> None:
    state = trainer.state
    bar.update()
    bar.set_postfix(loss=f"{state.losses[-1]:.4f}", s_per_step=f"{state.seconds[-1]:.3f}")
    if state.step % run["checkpoint_every"] == 0:
        _checkpoint(trainer, run)


def _checkpoint(trainer: Trainer, run) -> Path:
    document = {"config": run["config"].to_dict(), "data": run["data"],
                "checkpoint_every": run["checkpoint_every"], **trainer.state.to_document()}
    return save_checkpoint(run["out"], trainer.state.params, document)


def _finish(trainer: Trainer, run, wall: float) -> int:
    state, out, test = trainer.state, run["out"], run["test"]
    _checkpoint(trainer, run)
    save_npz_atomic(out / "params.npz", state.params)
    test_accuracy = trainer.accuracy(test)
    correct = int(round(test_accuracy * len(test)))
    metrics = {
        "config": {**run["config"].to_dict(), "data": run["data"], "workers": run["workers"],
                   "backend": run["backend"], "plan": run.get("plan")},
        "loss": list(state.losses), "seconds": list(state.seconds),
        "evaluations": list(state.evaluations),
        "train_accuracy": trainer.accuracy(trainer.train), "test_accuracy": test_accuracy,
        "test_correct": correct, "test_total": len(test), "wall_seconds_this_session": wall,
    }
    write_json_atomic(out / "metrics.json", metrics)
    title = (f"{_net_name(run['config'])}, {run['config'].gradient} "
             f"gradients, {state.step:,} steps")
    written = list(OUTPUTS[1:])
    if plots_available():
        atomic_write(out / "training.png",
                     lambda file: plot_training(state.losses, state.evaluations, file, title=title))
    else:
        written.remove("training.png")
        print(f"training.png not written: plots need matplotlib, {EXTRA_HINT}", file=sys.stderr)
    seconds = np.asarray(state.seconds)
    print(f"median seconds per step: {np.median(seconds):.4f}; training wall time: {wall:.1f} s")
    print(f"wrote {', '.join(str(out / name) for name in written)}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    print(f"test accuracy: {test_accuracy:.4f} ({correct}/{len(test)})")
    return 0


def _net_name(c) -> str:
    sizes = "-".join(map(str, c.sizes))
    return f"{sizes} ({c.activation})" if c.net == "mlp" else f"convnet ({sizes})"


def _headline(run, trainer: Trainer) -> str:
    c = run["config"]
    how = ("backprop" if c.gradient == "backprop" else
           f"numerical gradients ({c.scheme}, h={c.h if isinstance(c.h, str) else format(c.h, 'g')}, "
           f"{c.evaluator} evaluator) on "
           f"{run['workers']} worker(s), {run['backend']}")
    start = f", resuming at step {trainer.state.step}" if trainer.state.step else ""
    where = {True: f" ({LATEST_LINK} points to it)", False: f" ({LATEST_LINK} is not a link: "
             "left as it is)", None: ""}[run.get("latest")]
    return (f"training {_net_name(c)} on {len(run['train'])} images, "
            f"{c.steps} steps of {c.batch_size}, lr {c.lr:g}; {how}{start}\n"
            f"writing to {run['out']}{where}")


def _progress_bar(trainer: Trainer, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=trainer.config.steps, initial=trainer.state.step, unit="step",
                disable=not enabled, dynamic_ncols=True)


if __name__ == "__main__":
    raise SystemExit(main())
