"""`python -m engine.train` / `engine-train`: train the teaching text's net by numerical gradients.

With no flags it repeats the teaching text's run: a 784-100-10 net (sigmoid hidden
layer, softmax cross-entropy, weights drawn with std 0.01), lr 0.1, 100 steps of one
image each, taken in order from the first 100 training images of the embedded MNIST
split, tested on the first 10 test images. Exit status: 0 done, 2 bad flags, data
or checkpoint (nothing written), 130 / 143 interrupted by SIGINT / SIGTERM (a
checkpoint is written first; resume with ``--resume DIR``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .backends import resolve_workers
from .checkpoint import (CHECKPOINT_NAME, CheckpointError, atomic_write, load_checkpoint,
                         save_checkpoint, save_npz_atomic)
from .data import DataError, Dataset, load_embedded_mnist, read_mnist_csv
from .plots import plot_training
from .training import RESULT_FIELDS, TrainConfig, Trainer, TrainingState

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
_DEFAULTS = {"iters": 100, "lr": 0.1, "hidden": [100], "batch_size": 1, "h": 1e-4,
             "scheme": "central", "seed": 0, "train_size": 100, "test_size": 10,
             "evaluator": "auto", "gradient": "numerical", "weight_init_std": 0.01,
             "eval_every": 0, "shuffle": False}


class UsageError(Exception):
    """A flag, data file or checkpoint that the run cannot use; exit status 2."""


class Terminated(BaseException):
    """SIGTERM, raised where the program is, like KeyboardInterrupt for SIGINT."""


def build_parser() -> argparse.ArgumentParser:
    """The command line; every flag documented for ``--help``."""
    p = argparse.ArgumentParser(
        prog="engine-train",
        description="Train the teaching text's 784-100-10 net on MNIST by numerical gradients "
                    "(central differences, h=1e-4), in parallel. Defaults repeat the text's run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter, argument_default=None)
    add = p.add_argument
    add("--workers", type=int, help="worker processes for the gradient; -1 or omitted: all cores")
    add("--iters", type=int, help="SGD steps [default: 100]")
    add("--epochs", type=int, help="full passes over the training images; overrides --iters")
    add("--lr", type=float, help="learning rate [default: 0.1]")
    add("--hidden", type=int, nargs="+", help="hidden layer width(s), e.g. 100 or 100 50 [default: 100]")
    add("--batch-size", type=int, help="images per step [default: 1]")
    add("--h", type=float, help="finite-difference step [default: 1e-4]")
    add("--scheme", choices=["central", "forward", "central4"], help="difference formula [default: central]")
    add("--seed", type=int, help="seed of the weight initialisation and shuffling [default: 0]")
    add("--weight-init-std", type=float, help="std of the initial weights [default: 0.01]")
    add("--train-size", type=int, help="first N images of the embedded train split (4,000) [default: 100]")
    add("--test-size", type=int, help="first N images of the embedded test split (1,000) [default: 10]")
    add("--train-csv", type=Path, help="train on this file in the text's CSV format (label, 784 pixels)")
    add("--test-csv", type=Path, help="test on this file in the text's CSV format")
    add("--shuffle", action="store_true", default=None, help="reshuffle the images every epoch")
    add("--evaluator", choices=["auto", "batched", "loop"],
        help="how perturbations are evaluated: loop = the text's way, one forward pass each; "
             "batched = blocks through the layers after the perturbed one [default: auto]")
    add("--gradient", choices=["numerical", "backprop"],
        help="numerical differences, or backprop for comparison [default: numerical]")
    add("--backend", default="loky", help="where chunks run: loky, threading, dask, or a joblib backend")
    add("--scheduler", help="with --backend dask: address of a running scheduler (tcp://host:port)")
    add("--eval-every", type=int, help="also measure test accuracy every N steps (0: epoch ends only)")
    add("--checkpoint-every", type=int, default=100, help="write a checkpoint every N steps (and at the end)")
    add("--out", type=Path, default=Path("runs/latest"), help="folder for params.npz, metrics.json, training.png")
    add("--resume", type=Path, help="continue the run whose checkpoint is in this folder (writes there)")
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run = _prepare(args)
    except (UsageError, DataError, CheckpointError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"engine-train: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return _train(run, args)


# -- preparing a run: validate everything before anything is written ---------------------------

def _prepare(args) -> dict[str, Any]:
    workers = resolve_workers(args.workers)
    if args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.resume is not None:
        params, saved = load_checkpoint(args.resume)
        run = _resumed_run(args, params, saved)
    else:
        run = _fresh_run(args)
    run.update(workers=workers, backend=args.backend, scheduler=args.scheduler)
    return run


def _fresh_run(args) -> dict[str, Any]:
    flags = {k: getattr(args, k) for k in _DEFAULTS}
    flags = {k: (_DEFAULTS[k] if v is None else v) for k, v in flags.items()}
    _check_flags(flags, args)
    data = _data_source(args, flags)
    train, test = _load_data(data)
    steps_per_epoch = -(-len(train) // flags["batch_size"])
    steps = args.epochs * steps_per_epoch if args.epochs is not None else flags["iters"]
    config = TrainConfig(
        sizes=(train.images.shape[1], *flags["hidden"], 10), weight_init_std=flags["weight_init_std"],
        lr=flags["lr"], batch_size=flags["batch_size"], steps=steps, h=flags["h"],
        scheme=flags["scheme"], seed=flags["seed"], shuffle=bool(flags["shuffle"]),
        gradient=flags["gradient"], evaluator=flags["evaluator"], eval_every=flags["eval_every"])
    out = args.out
    if (out / CHECKPOINT_NAME).exists():
        _refuse_unfinished(out)
    return {"config": config, "data": data, "train": train, "test": test, "out": out,
            "state": None, "checkpoint_every": args.checkpoint_every, "progress": not args.no_progress}


def _check_flags(flags: dict, args) -> None:
    positive = {"--lr": flags["lr"], "--h": flags["h"], "--batch-size": flags["batch_size"],
                "--train-size": flags["train_size"], "--test-size": flags["test_size"],
                "--iters": flags["iters"], "--weight-init-std": flags["weight_init_std"]}
    if args.epochs is not None:
        positive["--epochs"] = args.epochs
    for name, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive number, got {value}")
    if any(width < 1 for width in flags["hidden"]):
        raise UsageError(f"--hidden widths must be positive, got {flags['hidden']}")
    if flags["eval_every"] < 0:
        raise UsageError(f"--eval-every must be >= 0, got {flags['eval_every']}")
    if args.backend != "dask" and args.scheduler is not None:
        raise UsageError("--scheduler is only used with --backend dask")


def _data_source(args, flags) -> dict[str, Any]:
    source = {"train_csv": None, "test_csv": None,
              "train_size": flags["train_size"], "test_size": flags["test_size"]}
    for key in ("train_csv", "test_csv"):
        path = getattr(args, key)
        if path is not None:
            if not path.is_file():
                raise UsageError(f"--{key.replace('_', '-')}: no such file: {path}")
            source[key] = str(path.resolve())
            size_flag = key.replace("csv", "size")
            source[size_flag] = getattr(args, size_flag)   # None: the whole file
    return source


def _load_data(source: dict[str, Any]) -> tuple[Dataset, Dataset]:
    embedded = None
    datasets = []
    for kind in ("train", "test"):
        csv, size = source[f"{kind}_csv"], source[f"{kind}_size"]
        if csv is not None:
            data = read_mnist_csv(csv)
        else:
            embedded = embedded or load_embedded_mnist()
            data = embedded[0 if kind == "train" else 1]
        if size is not None:
            if size > len(data):
                raise UsageError(f"--{kind}-size {size} is more than the {len(data)} images available")
            data = data.head(size)
        datasets.append(data)
    return datasets[0], datasets[1]


def _refuse_unfinished(out: Path) -> None:
    try:
        _, saved = load_checkpoint(out)
    except CheckpointError as exc:
        raise UsageError(f"{out} holds a checkpoint that cannot be read ({exc}); it is kept: "
                         "choose another --out") from exc
    if saved["step"] < saved["config"]["steps"]:
        raise UsageError(f"{out} holds an unfinished run (step {saved['step']} of "
                         f"{saved['config']['steps']}): continue it with --resume {out}, or "
                         "choose another --out")


def _resumed_run(args, params, saved) -> dict[str, Any]:
    try:
        config = TrainConfig(**{**saved["config"], "sizes": tuple(saved["config"]["sizes"])})
        data = saved["data"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint in {args.resume} lacks its configuration ({exc})") from exc
    _check_same_flags(args, config, data)
    train, test = _load_data(data)
    state = _state_from_checkpoint(saved, params, config, len(train), args.resume)
    return {"config": config, "data": data, "train": train, "test": test, "out": args.resume,
            "state": state, "checkpoint_every": args.checkpoint_every,
            "progress": not args.no_progress}


def _check_same_flags(args, config: TrainConfig, data: dict) -> None:
    given = {k: getattr(args, k) for k in _DEFAULTS if getattr(args, k) is not None}
    saved = {**config.to_dict(), **data, "hidden": list(config.sizes[1:-1]), "iters": config.steps}
    clashes = [f"--{k.replace('_', '-')} {v} (checkpoint: {saved[k]})"
               for k, v in given.items() if k in saved and saved[k] != v]
    if args.epochs is not None or args.train_csv is not None or args.test_csv is not None:
        clashes.append("--epochs/--train-csv/--test-csv (the checkpoint fixes the data and length)")
    if clashes:
        raise UsageError("--resume continues a run with its own settings; these flags differ: "
                         + "; ".join(clashes))


def _state_from_checkpoint(saved, params, config, n_train, folder) -> TrainingState:
    shapes = {f"w{i}": (a, b) for i, (a, b) in enumerate(zip(config.sizes, config.sizes[1:]), 1)}
    shapes.update({f"b{i}": (b,) for i, b in enumerate(config.sizes[1:], 1)})
    if {k: v.shape for k, v in params.items()} != shapes:
        raise CheckpointError(f"checkpoint in {folder} holds parameters of other shapes than "
                              f"its {'-'.join(map(str, config.sizes))} net")
    order = np.asarray(saved["order"], dtype=np.int64)
    if order.shape != (n_train,) or not 0 <= saved["position"] <= n_train:
        raise CheckpointError(f"checkpoint in {folder} does not fit the {n_train} training images")
    return TrainingState(params, saved["step"], saved["epoch"], saved["position"], order,
                         saved["rng_state"], tuple(saved["losses"]), tuple(saved["seconds"]),
                         tuple(saved["evaluations"]))


# -- running it ----------------------------------------------------------------------------------

def _train(run: dict[str, Any], args) -> int:
    config, out = run["config"], run["out"]
    trainer = Trainer(config, run["train"], run["test"], workers=run["workers"],
                      backend=run["backend"], scheduler=run["scheduler"], state=run["state"])
    out.mkdir(parents=True, exist_ok=True)
    if trainer.state.step == 0:
        _checkpoint(trainer, run)   # from here on, a killed run can always be resumed
    print(_headline(run, trainer), flush=True)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    bar = _progress_bar(trainer, run["progress"])
    started = time.perf_counter()
    try:
        with _cluster(run):
            trainer.run(on_step=lambda t: _after_step(t, run, bar))
    except (KeyboardInterrupt, Terminated) as stop:
        bar.close()
        path = _checkpoint(trainer, run)
        print(f"\ninterrupted at step {trainer.state.step} of {config.steps}; checkpoint: {path}\n"
              f"resume with: engine-train --resume {out}", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143
    finally:
        signal.signal(signal.SIGTERM, previous)
    bar.close()
    return _finish(trainer, run, time.perf_counter() - started)


def _cluster(run):
    """For ``--backend dask``: one client for the whole run (the engine uses the active one)."""
    if run["backend"] != "dask":
        return contextlib.nullcontext()
    from ._dask import open_client   # the optional dependency, imported only when asked for
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
    s = trainer.state
    state = {"config": run["config"].to_dict(), "data": run["data"], "step": s.step,
             "epoch": s.epoch, "position": s.position, "order": s.order, "rng_state": s.rng_state,
             "losses": list(s.losses), "seconds": list(s.seconds), "evaluations": list(s.evaluations)}
    return save_checkpoint(run["out"], s.params, state)


def _finish(trainer: Trainer, run, wall: float) -> int:
    state, out, test = trainer.state, run["out"], run["test"]
    _checkpoint(trainer, run)
    save_npz_atomic(out / "params.npz", state.params)
    test_accuracy = trainer.accuracy(test)
    correct = int(round(test_accuracy * len(test)))
    metrics = {
        "config": {**run["config"].to_dict(), "data": run["data"], "workers": run["workers"],
                   "backend": run["backend"]},
        "loss": list(state.losses), "seconds": list(state.seconds),
        "evaluations": list(state.evaluations),
        "train_accuracy": trainer.accuracy(trainer.train), "test_accuracy": test_accuracy,
        "test_correct": correct, "test_total": len(test), "wall_seconds_this_session": wall,
    }
    _write_json_atomic(out / "metrics.json", metrics)
    plot_training(state.losses, state.evaluations, out / "training.png",
                  title=f"{'-'.join(map(str, run['config'].sizes))} net, {run['config'].gradient} "
                        f"gradients, {state.step} steps")
    seconds = np.asarray(state.seconds)
    print(f"median seconds per step: {np.median(seconds):.4f}; training wall time: {wall:.1f} s")
    print(f"wrote {out / 'params.npz'}, {out / 'metrics.json'}, {out / 'training.png'}")
    print(f"train accuracy: {metrics['train_accuracy']:.4f}")
    print(f"test accuracy: {test_accuracy:.4f} ({correct}/{len(test)})")
    return 0


def _write_json_atomic(path: Path, document: dict) -> None:
    atomic_write(path, lambda file: file.write(json.dumps(document, indent=1).encode()))


def _headline(run, trainer: Trainer) -> str:
    c = run["config"]
    how = ("backprop" if c.gradient == "backprop" else
           f"numerical gradients ({c.scheme}, h={c.h:g}, {c.evaluator} evaluator) on "
           f"{run['workers']} worker(s), {run['backend']}")
    start = f", resuming at step {trainer.state.step}" if trainer.state.step else ""
    return (f"training {'-'.join(map(str, c.sizes))} on {len(run['train'])} images, "
            f"{c.steps} steps of {c.batch_size}, lr {c.lr:g}; {how}{start}")


def _progress_bar(trainer: Trainer, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=trainer.config.steps, initial=trainer.state.step, unit="step",
                disable=not enabled, dynamic_ncols=True)


if __name__ == "__main__":
    raise SystemExit(main())
