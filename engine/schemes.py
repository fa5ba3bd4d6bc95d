"""Finite-difference schemes: where to evaluate around an entry, and how to combine.

Each scheme evaluates the loss at ``x_i + m*h`` for its `multiples` m and combines
the values into one derivative. The combine step is shared by every evaluator and
every backend, so a difference computed anywhere is the same floating-point
expression, evaluated in the same order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Scheme", "SCHEMES", "get_scheme", "resolve_steps"]


@dataclass(frozen=True)
class Scheme:
    """A difference formula: step multiples, whether f(x) itself is needed, and the combination."""

    name: str
    multiples: tuple[int, ...]
    uses_center: bool
    combine: Callable[..., Any]   # combine(values, center, h) -> derivative
    order: int

    @property
    def evaluations_per_entry(self) -> int:
        return len(self.multiples)


def _central(v, center, h):
    return (v[0] - v[1]) / (2 * h)


def _forward(v, center, h):
    return (v[0] - center) / h


def _central4(v, center, h):
    return (-v[0] + 8 * v[1] - 8 * v[2] + v[3]) / (12 * h)


SCHEMES = {
    "central": Scheme("central", (1, -1), False, _central, order=2),
    "forward": Scheme("forward", (1,), True, _forward, order=1),
    "central4": Scheme("central4", (2, 1, -1, -2), False, _central4, order=4),
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Look a scheme up by name (``"central"``, ``"forward"``, ``"central4"``).

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    if isinstance(scheme, Scheme):
        return scheme
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(
            f"`scheme` must be one of {sorted(SCHEMES)}, got {scheme!r}"
        ) from None


def resolve_steps(h: Any, keys: list, labels: list[str]) -> list[float]:
    """One step size per parameter array.

    Parameters
    ----------
    h : float or dict
        A positive finite step for every array, or (for dict inputs) a dict mapping
        each key of `x` to its own step.
    keys, labels : list
        The keys of `x`'s members (``None`` for a bare array) and their labels.

    Raises
    ------
    TypeError, ValueError
        If a step is not a real number, not finite or not positive, or if a dict of
        steps lacks a key of `x` or names one that `x` does not have.
    """
    if isinstance(h, dict):
        unknown = set(h) - set(keys)
        missing = [k for k in keys if k not in h]
        if unknown or missing:
            raise ValueError(
                f"`h` as a dict must name exactly the keys of `x`: missing {missing}, "
                f"unknown {sorted(map(repr, unknown))}"
            )
        return [_checked_step(h[k], f"h[{k!r}]") for k in keys]
    step = _checked_step(h, "h")
    return [step] * len(keys)


def _checked_step(h: Any, name: str) -> float:
    is_number = isinstance(h, (int, float)) or hasattr(h, "__float__")
    # A boolean, Python's or NumPy's, would quietly become a step of 1.0.
    if isinstance(h, (bool, np.bool_)) or not is_number:
        raise TypeError(f"`{name}` must be a positive finite number, got {type(h).__name__}")
    value = float(h)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {h!r}")
    return value
