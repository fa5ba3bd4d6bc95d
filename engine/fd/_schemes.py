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

__all__ = ["Scheme", "SCHEMES", "COMPLEX", "DEFAULT_STEP", "DEFAULT_SCHEME", "AUTO", "get_scheme",
           "resolve_steps", "check_step", "auto_step", "one_sided", "fit_to_bounds",
           "COMPLEX_AUTO_STEP"]

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
    complex_step: bool = False           # f is evaluated at x + i*h, not at real points


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

# The complex step, Im f(x + ih) / h, takes no difference of two values, so a tiny h loses
# nothing to cancellation; its truncation error, h**2 |f'''| / 6, is then far below
# rounding for any f whose scale is above ~1e-12 (1e-20 / sqrt(eps)).
COMPLEX_AUTO_STEP = 1e-20


def _complex(v, center, h):
    return v[0] / h


def _complex_stored(v, center, s):
    return v[0] / s[0]


# Not in SCHEMES (the real-valued schemes every evaluator runs): the loop evaluator only.
COMPLEX = Scheme("complex", (1,), False, _complex, _complex_stored, order=2, auto_root=0,
                 complex_step=True)

AUTO = "auto"   # h="auto": a relative step per entry, from the scheme and the dtype


def auto_step(scheme: Scheme, dtype: Any) -> float:
    """The relative step of ``h="auto"``: ``eps ** (1 / root)`` of `dtype` (root 2, 3, 5 for
    forward, central, central4), to be multiplied by ``max(1, |x_i|)``; for the complex
    step `COMPLEX_AUTO_STEP` (1e-20) whatever the dtype."""
    if scheme.complex_step:
        return COMPLEX_AUTO_STEP
    return float(np.finfo(dtype).eps) ** (1.0 / scheme.auto_root)


# -- one-sided stencils: where a centred scheme does not fit (bounds) or one side failed --------

def _one_sided1(v, center, h):
    return (v[0] - center) / h


def _one_sided2(v, center, h):
    return (-3 * center + 4 * v[0] - v[1]) / (2 * h)


def _one_sided4(v, center, h):
    return (-25 * center + 48 * v[0] - 36 * v[1] + 16 * v[2] - 3 * v[3]) / (12 * h)


def _nodes_stored(v, center, s):
    """The derivative at 0 of the polynomial through (0, center) and every (s_j, v_j):
    exact for polynomials of degree len(s), whatever steps the dtype stored."""
    total = 0.0
    for j, (value, node) in enumerate(zip(v, s)):
        weight = 1.0 / node
        for k, other in enumerate(s):
            if k != j:
                weight *= other / (other - node)
        total = total + weight * (value - center)
    return total


class _Mirrored:
    """A one-sided formula written for steps toward +h, used toward -h."""

    def __init__(self, combine):
        self.combine = combine

    def __call__(self, v, center, h):
        return self.combine(v, center, -h)


_ONE_SIDED = {1: _one_sided1, 2: _one_sided2, 4: _one_sided4}


def one_sided(order: int, side: int) -> Scheme:
    """The one-sided scheme of `order` (1, 2 or 4) toward `side` (+1 or -1).

    It evaluates ``x + side*m*h`` for m = 1 .. order and uses f(x); order 2 is
    ``(-3 f(x) + 4 f(x + h) - f(x + 2h)) / 2h``, and toward -1 its mirror (h -> -h).
    Its `combine_stored` is exact for polynomials of degree `order` at the stored points.
    """
    combine = _ONE_SIDED[order]
    multiples = tuple(side * m for m in range(1, order + 1))
    return Scheme(f"one-sided{order}{'+' if side > 0 else '-'}", multiples, True,
                  combine if side > 0 else _Mirrored(combine), _nodes_stored,
                  order=order, auto_root=order + 1)


def fit_to_bounds(scheme: Scheme, base: float, h: float, lower: float,
                  upper: float) -> tuple[Scheme, float]:
    """The scheme and step to use at `base` so that every point lies in ``[lower, upper]``.

    In order: `scheme` itself with `h`; the one-sided scheme of the same order (2 for
    central, 4 for central4, 1 for forward) with `h`, upward first; else the step is shrunk
    to fit, keeping whichever of `scheme` centred and the one-sided scheme toward the larger
    room allows the larger step (centred on a tie, its error constant being smaller). The
    step returned is 0 where there is no room at all: the caller refuses it.
    """
    if _fits(scheme, base, h, lower, upper):
        return scheme, h
    order = min(scheme.order, 4)
    up, down = one_sided(order, 1), one_sided(order, -1)
    for candidate in (up, down):
        if _fits(candidate, base, h, lower, upper):
            return candidate, h
    room_up, room_down = upper - base, base - lower
    side = up if room_up >= room_down else down
    options = [(_shrunk(side, base, max(room_up, room_down) / order, lower, upper), 1, side)]
    if min(scheme.multiples) < 0 < max(scheme.multiples):
        reach = max(abs(m) for m in scheme.multiples)
        step = _shrunk(scheme, base, min(room_up, room_down) / reach, lower, upper)
        options.append((step, 2, scheme))
    step, _, chosen = max(options, key=lambda option: option[:2])
    return chosen, step


def _fits(scheme: Scheme, base: float, step: float, lower: float, upper: float) -> bool:
    return all(lower <= base + m * step <= upper for m in scheme.multiples)


def _shrunk(scheme: Scheme, base: float, step: float, lower: float, upper: float) -> float:
    """`step`, less an ulp at a time while rounding puts a point of `scheme` outside."""
    step = max(float(step), 0.0)
    while step > 0 and not _fits(scheme, base, step, lower, upper):
        step = float(np.nextafter(step, 0.0))
    return step


def get_scheme(scheme: str | Scheme) -> Scheme:
    """Look a scheme up by name (``"central"``, ``"forward"``, ``"central4"``, ``"complex"``).

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, str) and scheme == COMPLEX.name:
        return COMPLEX
    try:
        return SCHEMES[scheme]
    except (KeyError, TypeError):
        raise ValueError(
            f"`scheme` must be one of {sorted(SCHEMES) + [COMPLEX.name]}, got {scheme!r}"
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
