"""``engine-gradcheck`` (also ``python -m engine.cli.gradcheck``): backprop against the
numerical gradient on an MLP and real MNIST images; prints a table, exits 1 above a tolerance,
2 for bad flags."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from engine.data._data import N_CLASSES, N_PIXELS, DataError, load_embedded_mnist
from engine.batched._detect import EVALUATOR_CHOICES
from engine.run._execution import DEFAULT_BACKEND
from engine.train._gradcheck import DEFAULT_WORKERS, default_tol, failures, format_table, gradient_check
from engine.nn._model import DEFAULT_ACTIVATION, WEIGHT_INITS
from engine.book._nets import MLP
from engine.fd._schemes import AUTO, DEFAULT_STEP
from engine.train._training import TrainConfig
from engine.cli._flags import add_shared_flags, default_text, flag_words
from engine.cli._setup import EXIT_BAD_INPUT

__all__ = ["main"]

_BOOK_RUN = TrainConfig()   # the teaching text's net, batch, seed and differences: the defaults
_DTYPES = ("float64", "float32")
# The book's MultiLayerNetExtend starts from He's scale. Batch normalization makes the loss
# blind to each weight column's scale, so its curvature grows as 1 / scale**2: from weights
# of 0.01, the step h = 1e-4 is too coarse for some columns (relative errors 1e-3).
_BATCH_NORM_INIT = "he"


def _weight_init_flag(text: str) -> float | str:
    """--weight-init-std's value: a name of `WEIGHT_INITS`, or a number (the net checks it)."""
    if text in WEIGHT_INITS:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor one of "
                                         f"{', '.join(WEIGHT_INITS)}") from None


def _initial_scale(args: argparse.Namespace) -> float | str:
    """The initial weights' scale the flags ask for: --weight-init-std, or its default."""
    if args.weight_init_std is not None:
        return args.weight_init_std
    return _BATCH_NORM_INIT if args.batch_norm else _BOOK_RUN.weight_init_std


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine-gradcheck",
        description="Check backprop against the numerical gradient on an MLP and real MNIST "
                    "images (the embedded train split). Prints, per parameter array, the max "
                    "and mean absolute difference and the relative error max|num-bp| / "
                    "max(max|num|, max|bp|, 1e-6) over the entries no ReLU kink explains "
                    "(counted in a 'kinks' column); exits 0 if every relative error is <= --tol, "
                    "1 if not, 2 for bad flags or without the embedded data (the [train] extra).")
    shared = {"h": DEFAULT_STEP, "scheme": _BOOK_RUN.scheme, "workers": DEFAULT_WORKERS,
              "backend": DEFAULT_BACKEND, "activation": DEFAULT_ACTIVATION}
    add_shared_flags(parser, shared)
    parser.set_defaults(**shared)
    add = parser.add_argument
    add("--sizes", type=int, nargs="+", default=list(_BOOK_RUN.sizes), metavar="N",
        help=f"layer widths, input first: {N_PIXELS} (the image), hidden..., at least "
             f"{N_CLASSES} outputs, the teaching text's net by default"
             + default_text(_BOOK_RUN.sizes))
    add("--batch-norm", action="store_true",
        help="a batch normalization after each hidden affine layer (the book's chapter-6 "
             "MultiLayerNetExtend); checked in training mode")
    add("--batch-size", type=int, default=_BOOK_RUN.batch_size, metavar="B",
        help="check on the first B images of the embedded MNIST train split"
             + default_text(_BOOK_RUN.batch_size))
    add("--evaluator", choices=EVALUATOR_CHOICES, default=_BOOK_RUN.evaluator,
        help="loop: one loss per perturbation, as the teaching text; batched: blocks of "
             "perturbations through the layers (the same differences to ~1e-10, hundreds of "
             "times faster); auto: batched" + default_text(_BOOK_RUN.evaluator))
    add("--seed", type=int, default=_BOOK_RUN.seed, metavar="N",
        help="seed of the initial weights" + default_text(_BOOK_RUN.seed))
    add("--weight-init-std", type=_weight_init_flag, default=None, metavar="STD",
        help="standard deviation of the initial weights, or the book's 'he' (sqrt(2 / n_in) "
             "per layer) or 'xavier' (sqrt(1 / n_in)) [default: "
             f"{_BOOK_RUN.weight_init_std:g}; with --batch-norm, {_BATCH_NORM_INIT!r}, the "
             "book's MultiLayerNetExtend]")
    add("--dtype", choices=_DTYPES, default=_DTYPES[0],
        help="dtype of the parameters (with float32, --scheme central4 --h 1e-2 is far more "
             "accurate, see docs/accuracy.md)" + default_text(_DTYPES[0]))
    add("--tol", type=float, default=None, metavar="TOL",
        help="largest relative error accepted, per array [default: "
             f"{default_tol('central'):g} for central and central4, {default_tol('forward'):g} "
             f"for forward; {default_tol('central', 'float32'):g} for central and central4 with "
             "float32; see docs/accuracy.md]")
    return parser


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, n_images: int) -> None:
    if len(args.sizes) < 2 or args.sizes[0] != N_PIXELS:
        parser.error(f"--sizes must start with {N_PIXELS} (the MNIST image) and name at least "
                     f"two widths, got {' '.join(map(str, args.sizes))}")
    if args.sizes[-1] < N_CLASSES:
        parser.error(f"--sizes must end with at least {N_CLASSES} outputs (ten digits), "
                     f"got {args.sizes[-1]}")
    if not 1 <= args.batch_size <= n_images:
        parser.error(f"--batch-size must be between 1 and {n_images}, got {args.batch_size}")
    if args.tol is not None and not args.tol >= 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``engine-gradcheck``; return its exit status (0 ok, 1 above tol, 2 bad flags or no data)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        train, _ = load_embedded_mnist()
    except DataError as error:   # the embedded split needs the [train] extra
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _check_flags(parser, args, len(train.images))
    tol = default_tol(args.scheme, args.dtype) if args.tol is None else args.tol
    x, t = train.images[:args.batch_size], train.labels[:args.batch_size]
    try:
        net = MLP(args.sizes, args.activation, _initial_scale(args), args.seed,
                  dtype=np.dtype(args.dtype), batch_norm=args.batch_norm)
        results = gradient_check(net, x, t, scheme=args.scheme, h=args.h, workers=args.workers,
                                 evaluator=args.evaluator, backend=args.backend, tol=tol)
    except (ValueError, TypeError) as error:   # a flag the engine rejects
        parser.error(flag_words(str(error)))
    norm = ", batch norm" if args.batch_norm else ""
    scale = _initial_scale(args)
    scale = f"{scale:g}" if isinstance(scale, float) else scale
    print(f"gradient check: MLP {'-'.join(map(str, args.sizes))} ({args.activation}{norm}, "
          f"{args.dtype}, seed {args.seed}), weights {scale}, {args.batch_size} MNIST image(s), "
          f"scheme={args.scheme}, h={args.h if args.h == AUTO else format(args.h, 'g')}, "
          f"evaluator={args.evaluator}")
    print(format_table(results, tol))
    bad = failures(results, tol)
    if bad:
        print(f"FAIL: relative error above tol={tol:g} in {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"ok: every relative error <= tol={tol:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
