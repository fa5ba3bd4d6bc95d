"""``engine-gradcheck`` (also ``python -m engine.cli.gradcheck``): backprop against the
numerical gradient on an MLP and real MNIST images; prints a table, exits 1 above a tolerance."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from engine._data import load_embedded_mnist
from engine._gradcheck import default_tol, failures, format_table, gradient_check
from engine._layers import ACTIVATIONS
from engine._nets import MLP
from engine._schemes import AUTO, DEFAULT_STEP, SCHEMES

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine-gradcheck",
        description="Check backprop against the numerical gradient on an MLP and real MNIST "
                    "images (the embedded train split). Prints, per parameter array, the max "
                    "and mean absolute difference and the relative error max|num-bp| / "
                    "max(max|num|, max|bp|); exits 0 if every relative error is <= --tol, "
                    "1 if not, 2 for bad flags.")
    add = parser.add_argument
    add("--sizes", type=int, nargs="+", default=[784, 100, 10], metavar="N",
        help="layer widths, input first: 784 (the image), hidden..., at least 10 outputs "
             "(default: 784 100 10, the teaching text's net)")
    add("--activation", choices=sorted(ACTIVATIONS), default="sigmoid",
        help="activation between affine layers (default: sigmoid)")
    add("--batch-size", type=int, default=1, metavar="B",
        help="check on the first B images of the embedded MNIST train split (default: 1)")
    add("--scheme", choices=list(SCHEMES), default="central",
        help="difference formula: central (error O(h^2)), forward (O(h)), central4 (O(h^4)) "
             "(default: central)")
    add("--h", type=_step, default=DEFAULT_STEP,
        help="finite-difference step, or 'auto' (default: 1e-4; with --dtype float32, --scheme central4 "
             "--h 1e-2 is far more accurate, see docs/accuracy.md)")
    add("--workers", type=int, default=1,
        help="workers for the numerical gradient; -1 for all cores (default: 1)")
    add("--backend", default="loky", help="parallel backend when --workers > 1 (default: loky)")
    add("--evaluator", choices=["auto", "loop", "batched"], default="auto",
        help="loop: one loss per perturbation, as the teaching text; batched: blocks of "
             "perturbations through the layers (the same differences to ~1e-10, hundreds of "
             "times faster); auto: batched (default: auto)")
    add("--seed", type=int, default=0, help="seed of the initial weights (default: 0)")
    add("--weight-init-std", type=float, default=0.01, metavar="STD",
        help="standard deviation of the initial weights (default: 0.01)")
    add("--dtype", choices=["float64", "float32"], default="float64",
        help="dtype of the parameters (default: float64)")
    add("--tol", type=float, default=None,
        help="largest relative error accepted, per array (default: "
             f"{default_tol('central'):g} for central and central4, {default_tol('forward'):g} "
             f"for forward; {default_tol('central', 'float32'):g} for central and central4 with "
             "float32; see docs/accuracy.md)")
    return parser


def _step(text: str) -> float | str:
    """--h: a number, or 'auto'."""
    return AUTO if text == AUTO else float(text)


def _check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace, n_images: int) -> None:
    if len(args.sizes) < 2 or args.sizes[0] != 784:
        parser.error(f"--sizes must start with 784 (the MNIST image) and name at least two "
                     f"widths, got {' '.join(map(str, args.sizes))}")
    if args.sizes[-1] < 10:
        parser.error(f"--sizes must end with at least 10 outputs (ten digits), "
                     f"got {args.sizes[-1]}")
    if not 1 <= args.batch_size <= n_images:
        parser.error(f"--batch-size must be between 1 and {n_images}, got {args.batch_size}")
    if args.tol is not None and not args.tol >= 0:
        parser.error(f"--tol must be >= 0, got {args.tol}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``engine-gradcheck``; return its exit status (0 ok, 1 above tol, 2 bad flags)."""
    parser = _parser()
    args = parser.parse_args(argv)
    train, _ = load_embedded_mnist()
    _check_flags(parser, args, len(train.images))
    tol = default_tol(args.scheme, args.dtype) if args.tol is None else args.tol
    x, t = train.images[:args.batch_size], train.labels[:args.batch_size]
    try:
        net = MLP(args.sizes, args.activation, args.weight_init_std, args.seed,
                  dtype=np.dtype(args.dtype))
        results = gradient_check(net, x, t, scheme=args.scheme, h=args.h, workers=args.workers,
                                 evaluator=args.evaluator, backend=args.backend)
    except (ValueError, TypeError) as error:   # a flag the engine rejects
        parser.error(str(error))
    print(f"gradient check: MLP {'-'.join(map(str, args.sizes))} ({args.activation}, "
          f"{args.dtype}, seed {args.seed}), {args.batch_size} MNIST image(s), "
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
