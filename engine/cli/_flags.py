"""The flags every command shares, written once: ``--h``, ``--scheme``, ``--workers``,
``--backend``, ``--activation`` and ``--version``, with one help text and one defaults style.

Each shared flag parses to None when it is not given, so a command can tell the flags given
(``engine-train --resume`` compares them with its checkpoint) and fill in its own default;
the help shows that default as ``[default: X]``, as every other flag of the commands does.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import re
from typing import Any

from engine.fd._schemes import AUTO, SCHEMES
from engine.nn._layers import ACTIVATIONS
from engine.run._execution import BUILTIN_BACKENDS

__all__ = ["add_shared_flags", "default_text", "flag_words", "version", "SHARED_FLAGS", "ALL_CORES"]

ALL_CORES = -1   # --workers -1: every core, as the engine's workers=-1
SHARED_FLAGS = ("--h", "--scheme", "--workers", "--backend", "--activation")
# The engine's parameter names as the commands' flags, for messages that come from the engine.
_FLAG_OF_PARAMETER = {"h": "--h", "scheme": "--scheme", "workers": "--workers",
                      "backend": "--backend", "activation": "--activation",
                      "evaluator": "--evaluator", "batch_size": "--batch-size", "lr": "--lr",
                      "weight_init_std": "--weight-init-std", "seed": "--seed",
                      "eval_every": "--eval-every", "steps": "--iters", "net": "--net",
                      "shuffle": "--shuffle", "gradient": "--gradient"}


def default_text(value: Any) -> str:
    """A default as the help shows it: `` [default: X]``, lists space-separated."""
    shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return f" [default: {shown}]"


def version() -> str:
    """The installed distribution's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("numgrad-engine")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_shared_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Add the shared flags and ``--version`` to `parser`.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    defaults : dict
        The command's defaults, shown in the help, for the keys ``h``, ``scheme``,
        ``workers`` (an int, or a phrase such as ``"all cores"``), ``backend`` and
        ``activation``. The flags themselves parse to None when not given.
    """
    add = parser.add_argument
    add("--version", action="version", version=f"%(prog)s {version()}")
    add("--h", metavar="H", type=_step, help=f"finite-difference step: a positive number, or "
        f"'{AUTO}' (a step relative to each |x_i| and the dtype)" + default_text(defaults["h"]))
    add("--scheme", choices=list(SCHEMES), help="difference formula: central (error O(h^2)), "
        "forward (O(h)), central4 (O(h^4))" + default_text(defaults["scheme"]))
    add("--workers", metavar="N", type=_workers, help="worker processes for the numerical "
        f"gradient; {ALL_CORES} for all cores; 1 computes it in this process"
        + default_text(defaults["workers"]))
    add("--backend", metavar="NAME", help=f"where chunks run: "
        f"{', '.join(BUILTIN_BACKENDS)}, or a registered joblib backend"
        + default_text(defaults["backend"]))
    add("--activation", choices=sorted(ACTIVATIONS), help="activation between the affine layers"
        + default_text(defaults["activation"]))


def flag_words(message: str) -> str:
    """An engine message in the commands' words: `` `workers` `` as ``--workers``, and a
    suggested keyword such as ``backend='dask'`` or ``workers=1`` as ``--backend dask`` /
    ``--workers 1``."""
    message = re.sub(r"(?<![-\w])(\w+)=(?:'([\w.-]+)'|(-?\d+)\b)",
                     lambda m: f"{_FLAG_OF_PARAMETER[m.group(1)]} {m.group(2) or m.group(3)}"
                     if m.group(1) in _FLAG_OF_PARAMETER else m.group(0), message)
    return re.sub(r"`(\w+)`", lambda m: _FLAG_OF_PARAMETER.get(m.group(1), m.group(0)), message)


def _step(text: str) -> float | str:
    if text == AUTO:
        return AUTO
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor '{AUTO}'") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a positive finite step; try 1e-4 or "
                                         f"'{AUTO}'")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value == 0 or value < ALL_CORES:
        raise argparse.ArgumentTypeError(f"{value} workers has no meaning: give 1 or more, or "
                                         f"{ALL_CORES} for all cores")
    return value
