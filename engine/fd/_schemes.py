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

__all__ = ["Scheme", "SCHEMES", "DEFAULT_STEP", "DEFAULT_SCHEME", "AUTO", "get_scheme", "resolve_steps",
           "check_step", "auto_step"]

DEFAULT_STEP = 1e-4   # the teaching text's h
DEFAULT_SCHEME = "central"   # and its formula, (f(x + h) - f(x - h)) / 2h


@dataclass(frozen=True)
class Scheme:
    """A difference formula: step multiples, whether f(x) itself is needed, and the combination.

    `combine` is the teaching text's formula with the nominal step h; `combine_stored`
    divides by the steps actually stored instead (``h="auto"``): `stored` holds, per
    multiple, ``dtype(x_i + m*h) - x_i``.
    """

    name: str
    multiples: tuple[int, ...]
    uses_center: bool
    combine: Callable[..., Any]          # combine(values, center, h) -> derivative
    combine_stored: Callable[..., Any]   # combine_stored(values, center, stored) -> derivative
    order: int                           # the error is O(h ** order)
    auto_root: int                       # h="auto" takes eps ** (1 / auto_root), relative


def _central(v, center, h):
    return (v[0] - v[1]) / (2 * h)


def _forward(v, center, h):
    return (v[0] - center) / h


def _central4(v, center, h):
    return (-v[0] + 8 * v[1] - 8 * v[2] + v[3]) / (12 * h)


def _central_stored(v, center, s):
    return (v[0] - v[1]) / (s[0] - s[1])


def _forward_stored(v, center, s):
    return (v[0] - center) / s[0]


def _central4_stored(v, center, s):
    return (-v[0] + 8 * v[1] - 8 * v[2] + v[3]) / (6 * (s[1] - s[2]))


SCHEMES = {
    "central": Scheme("central", (1, -1), False, _central, _central_stored, order=2,
                      auto_root=3),
    "forward": Scheme("forward", (1,), True, _forward, _forward_stored, order=1, auto_root=2),
    "central4": Scheme("central4", (2, 1, -1, -2), False, _central4, _central4_stored,
                       order=4, auto_root=5),
}

AUTO = "auto"   # h="auto": a relative step per entry, from the scheme and the dtype


def auto_step(scheme: Scheme, dtype: Any) -> float:
    """The relative step of ``h="auto"``: ``eps ** (1 / root)`` of `dtype` (root 2, 3, 5 for
    forward, central, central4), to be multiplied by ``max(1, |x_i|)``."""
    return float(np.finfo(dtype).eps) ** (1.0 / scheme.auto_root)


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
    h : float, "auto" or dict
        A positive finite step for every array, ``"auto"`` (returned as None: a
        relative step per entry), or (for dict inputs) a dict mapping each key of `x`
        to its own step.
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
        return [None if isinstance(h[k], str) and h[k] == AUTO else check_step(h[k], f"h[{k!r}]")
                for k in keys]
    if isinstance(h, str) and h == AUTO:
        return [None] * len(keys)
    step = check_step(h, "h")
    return [step] * len(keys)


def check_step(h: Any, name: str = "h") -> float:
    """`h` as a float if it is a positive, finite real scalar.

    Raises
    ------
    TypeError
        If `h` is not a real scalar (a bool, a string, an array...), naming `name`.
    ValueError
        If it is not finite and positive, or too large for a float.
    """
    if (isinstance(h, (bool, np.bool_)) or np.ndim(h) != 0
            or not isinstance(h, (int, float, np.integer, np.floating))):
        raise TypeError(f"`{name}` must be a positive finite number, got {type(h).__name__} "
                        f"{h!r}")
    try:
        value = float(h)
    except OverflowError:
        raise ValueError(f"`{name}` must be a positive finite number, got {h!r} (too large "
                         "for a float)") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {h!r}")
    return value
