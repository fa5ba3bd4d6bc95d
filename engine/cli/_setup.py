"""Preparing an ``engine-train`` run: every flag, the data and a resumed checkpoint checked
before anything is written. `prepare` returns the run's settings; `UsageError` is `EXIT_BAD_INPUT`."""
from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import numpy as np

from engine.cli._flags import flag_words
from engine.train._checkpoint import CheckpointError, load_checkpoint
from engine.data._data import (BOOK_TEST_SIZE, BOOK_TRAIN_SIZE, N_CLASSES, N_PIXELS, DataError, Dataset,
                          load_embedded_mnist, read_mnist_csv)
from engine.run._execution import DEFAULT_BACKEND, Execution, check_backend
from engine.data._mnist_idx import load_mnist_dir
from engine.train._run_folder import RUNS_FOLDER
from engine.train._training import TrainConfig, TrainingState

__all__ = ["prepare", "UsageError", "DEFAULTS", "CHECKPOINT_EVERY", "EXIT_BAD_INPUT"]

EXIT_BAD_INPUT = 2   # the commands' status for bad flags, data, checkpoint or folder (argparse's too)

# Flags that set a TrainConfig field of another name; --hidden sets the middle of `sizes`.
_FLAG_OF_FIELD = {"steps": "iters"}


def _flag_defaults() -> dict[str, Any]:
    """The default of every flag that the checkpoint keeps: TrainConfig's, and the data's sizes."""
    defaults = {_FLAG_OF_FIELD.get(f.name, f.name): f.default
                for f in dataclasses.fields(TrainConfig)}
    defaults["hidden"] = list(defaults.pop("sizes")[1:-1])   # the data gives the outer widths
    return {**defaults, "train_size": BOOK_TRAIN_SIZE, "test_size": BOOK_TEST_SIZE}


# Flags default to None, so that a resume can tell the given ones; these fill in the rest.
DEFAULTS = _flag_defaults()
CHECKPOINT_EVERY = 100


class UsageError(Exception):
    """A flag, data file, checkpoint or output folder that the run cannot use; exit status 2."""


# -- preparing a run: validate everything before anything is written ---------------------------

def prepare(args) -> dict[str, Any]:
    backend = _given_or(args.backend, DEFAULT_BACKEND)
    _check_backend(backend, args.scheduler)
    try:
        execution = Execution(workers=args.workers, backend=backend, scheduler=args.scheduler)
    except ValueError as exc:   # e.g. more workers than 4 per core
        raise UsageError(flag_words(str(exc))) from None
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    if args.resume is not None:
        run = _resumed_run(args)
    else:
        run = _fresh_run(args)
    run.update(execution=execution, workers=execution.n_workers, backend=backend,
               scheduler=args.scheduler, progress=not args.no_progress)
    return run


def _given_or(value, default):
    return default if value is None else value


def _check_backend(backend: str, scheduler: str | None) -> None:
    try:
        check_backend(backend)   # the engine's own check: its backends and joblib's registry
    except ValueError as exc:
        raise UsageError(flag_words(str(exc))) from None
    if backend == "dask" and importlib.util.find_spec("distributed") is None:
        raise UsageError("--backend dask needs Dask's distributed package: "
                         "pip install 'numgrad-engine[dask]'")
    if backend != "dask" and scheduler is not None:
        raise UsageError("--scheduler is only used with --backend dask")


def _fresh_run(args) -> dict[str, Any]:
    flags = {k: _given_or(getattr(args, k), v) for k, v in DEFAULTS.items()}
    _check_flags(flags, args)
    data = _data_source(args, flags)
    train, test = _load_data(data)
    if flags["batch_size"] > len(train):
        raise UsageError(f"--batch-size {flags['batch_size']} is more than the {len(train)} "
                         "training images")
    steps_per_epoch = -(-len(train) // flags["batch_size"])
    steps = args.epochs * steps_per_epoch if args.epochs is not None else flags["iters"]
    settings = {f.name: flags[_FLAG_OF_FIELD.get(f.name, f.name)]
                for f in dataclasses.fields(TrainConfig) if f.name != "sizes"}
    config = TrainConfig(**{**settings, "steps": steps,
                            "sizes": (train.images.shape[1], *flags["hidden"], N_CLASSES)})
    return {"config": config, "data": data, "train": train, "test": test, "out": args.out,
            "state": None, "checkpoint_every": _given_or(args.checkpoint_every, CHECKPOINT_EVERY)}


def _check_flags(flags: dict, args) -> None:
    """The flags' own checks; what TrainConfig checks is its to say (`_check_config`)."""
    positive = {"--train-size": flags["train_size"], "--test-size": flags["test_size"],
                "--iters": flags["iters"]}
    if args.epochs is not None:
        positive["--epochs"] = args.epochs
    for name, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            raise UsageError(f"{name} must be a positive number, got {value}")
    if any(width < 1 for width in flags["hidden"]):
        raise UsageError(f"--hidden widths must be positive, got {flags['hidden']}")
    if flags["net"] == "convnet" and len(flags["hidden"]) != 1:
        raise UsageError(f"--net convnet has one hidden layer: give one --hidden width, "
                         f"got {flags['hidden']}")
    _check_config(flags)
    if args.mnist_dir is not None and (args.train_csv is not None or args.test_csv is not None):
        raise UsageError("--mnist-dir gives both splits; it cannot be combined with "
                         "--train-csv / --test-csv")
    if args.force and args.out is None:
        raise UsageError("--force replaces the run in --out; without --out every run gets "
                         f"its own {RUNS_FOLDER}/run-N and nothing is replaced")


def _check_config(flags: dict) -> None:
    """TrainConfig's checks of the flags, before any data is read (the data sets the outer widths)."""
    settings = {f.name: flags[_FLAG_OF_FIELD.get(f.name, f.name)]
                for f in dataclasses.fields(TrainConfig) if f.name != "sizes"}
    try:
        TrainConfig(**settings, sizes=(N_PIXELS, *flags["hidden"], N_CLASSES))
    except ValueError as exc:
        raise UsageError(flag_words(str(exc))) from None


def _data_source(args, flags) -> dict[str, Any]:
    source = {"train_csv": None, "test_csv": None, "mnist_dir": None,
              "train_size": flags["train_size"], "test_size": flags["test_size"]}
    for key in ("train_csv", "test_csv"):
        path = getattr(args, key)
        if path is not None:
            if not path.is_file():
                raise UsageError(f"--{key.replace('_', '-')}: no such file: {path}")
            source[key] = str(path.resolve())
            size_flag = key.replace("csv", "size")
            source[size_flag] = getattr(args, size_flag)   # None: the whole file
    if args.mnist_dir is not None:
        source.update(mnist_dir=str(args.mnist_dir.resolve()), train_size=args.train_size,
                      test_size=args.test_size)
    return source


def _load_data(source: dict[str, Any]) -> tuple[Dataset, Dataset]:
    if source.get("mnist_dir") is not None:
        try:
            splits = load_mnist_dir(source["mnist_dir"])
        except FileNotFoundError as exc:
            raise UsageError(f"--mnist-dir: {exc}") from exc
    else:
        embedded = None
        splits = []
        for kind in ("train", "test"):
            csv = source[f"{kind}_csv"]
            if csv is not None:
                splits.append(read_mnist_csv(csv))
            else:
                embedded = embedded or _embedded_mnist()
                splits.append(embedded[0 if kind == "train" else 1])
    datasets = []
    for kind, data in zip(("train", "test"), splits):
        size = source[f"{kind}_size"]
        if size is not None:
            if size > len(data):
                raise UsageError(f"--{kind}-size {size} is more than the {len(data)} images available")
            data = data.head(size)
        datasets.append(data)
    return datasets[0], datasets[1]


def _embedded_mnist() -> tuple[Dataset, Dataset]:
    try:
        return load_embedded_mnist()
    except DataError as exc:   # without the [train] extra
        raise UsageError(f"{exc}; or give your own data with --train-csv / --test-csv or "
                         "--mnist-dir") from exc


# -- resuming --------------------------------------------------------------------------------------

def _resumed_run(args) -> dict[str, Any]:
    folder = args.resume
    if args.out is not None and args.out.resolve() != folder.resolve():
        raise UsageError(f"--resume continues the run in its own folder, {folder}; --out "
                         f"{args.out} cannot move it (copy the folder there and resume the copy)")
    if args.force:
        raise UsageError("--force is for a fresh run into --out; --resume replaces nothing")
    params, saved = load_checkpoint(folder)
    try:
        config = TrainConfig(**{**saved["config"], "sizes": tuple(saved["config"]["sizes"])})
        data = saved["data"]
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint in {folder} lacks its configuration ({exc})") from exc
    _check_same_flags(args, config, data)
    train, test = _load_data(data)
    try:
        state = TrainingState.from_document(params, saved, config.sizes, len(train), config.net)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint in {folder} {exc}") from exc
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint in {folder} lacks its training state ({exc})") from exc
    every = _given_or(args.checkpoint_every, saved.get("checkpoint_every", CHECKPOINT_EVERY))
    return {"config": config, "data": data, "train": train, "test": test, "out": folder,
            "state": state, "checkpoint_every": every}


def _check_same_flags(args, config: TrainConfig, data: dict) -> None:
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    saved = {**config.to_dict(), **data, "hidden": list(config.sizes[1:-1]), "iters": config.steps}
    clashes = [f"--{k.replace('_', '-')} {v} (checkpoint: {saved[k]})"
               for k, v in given.items() if k in saved and saved[k] != v]
    if any(getattr(args, k) is not None for k in ("epochs", "train_csv", "test_csv", "mnist_dir")):
        clashes.append("--epochs/--train-csv/--test-csv/--mnist-dir (the checkpoint fixes the "
                       "data and length)")
    if clashes:
        raise UsageError("--resume continues a run with its own settings; these flags differ: "
                         + "; ".join(clashes))
