"""Which entries of a gradient check a kink explains: one-sided differences that disagree.

A ReLU or a max pool makes the loss piecewise smooth. When ``[x_i - h, x_i + h]`` holds a
kink, the central difference averages two slopes, while backprop (correctly) gives the
slope of the piece ``x_i`` lies on. Such an entry shows both signs: its forward and
backward differences ``(f(x + h) - f(x)) / h`` and ``(f(x) - f(x - h)) / h`` disagree by
``d`` > the tolerance, and backprop agrees with one of them, to within ``d / 10`` plus
their rounding ``2 eps |f| / h``. On a smooth stretch the one-sided differences differ
only by ``d ~ h |f''|``, and a backprop bug of size b leaves backprop ``|b - d/2|`` from
the nearer one: the bug is taken for a kink only when b lies within ``0.4 d .. 0.6 d``,
that is, when it is as small as the curvature term of the step itself.

Where the curvature is strong (batch normalization from small weights), the smooth side's
first-order difference is itself off by ``h |f''| / 2``; that side's second-order
difference, from ``f(x +- 2h)`` too, is not, and backprop meeting it (within the tolerance,
and ten times closer than the central difference) also marks a kink.

Kinks on both sides of ``x_i`` leave neither one-sided difference at h near backprop; at
``h / 10``, clear of them, the one-sided differences agree (100 times better than at h,
where a smooth curvature gives 10 times) and the central difference meets backprop within
the tolerance: a kink too. This rule, like the second-order one, needs backprop within the
tolerance of a difference that is accurate where `f` is smooth, so neither hides a bug
larger than the tolerance plus that difference's truncation error.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..fd._schemes import auto_step, get_scheme

__all__ = ["kink_entries", "KINK_PROBES", "KINK_HINT"]

KINK_PROBES = 1000   # entries probed per array at most (two to six loss evaluations each), worst first
KINK_HINT = "cross a ReLU/max-pool kink: try a smaller h, or ignore them"
_FINER = 10         # the step a kink on both sides of an entry is looked for within, h / _FINER


def _auto_step(dtype):
    return auto_step(get_scheme("central"), dtype)


def kink_entries(loss: Callable[[], float], array: np.ndarray, numerical: np.ndarray,
                 exact: np.ndarray, step: float | None, tol_abs: float,
                 limit: int = KINK_PROBES) -> np.ndarray:
    """Flat indices (C order) of the entries of `array` whose error a kink explains.

    Parameters
    ----------
    loss : callable
        ``loss()``, the loss at the current values of `array` (read in place).
    array : ndarray
        The parameter array; each probed entry is moved to ``x_i + h`` and ``x_i - h``
        (and ``x_i +- 2h``, ``x_i +- h / 10`` where the first tests fail) and put back, bit
        for bit, before this returns (also if `loss` raises).
    numerical, exact : ndarray, shape of `array`
        The central-difference and backprop gradients.
    step : float or None
        The step h; None for ``h="auto"``: the central scheme's relative step for the
        dtype of `array` times ``max(1, |x_i|)``, as the engine takes it.
    tol_abs : float
        An entry is a suspect when ``|numerical - exact| > tol_abs``; it is a kink when
        its one-sided differences differ by ``d > tol_abs`` and ``exact`` is within
        ``d / 10`` (plus their rounding) of one of them, or meets one side's second-order
        difference (see the module's note).
    limit : int
        At most this many suspects, the worst first, are probed; the others are not kinks.

    Returns
    -------
    ndarray of int64, sorted
    """
    error = np.abs(np.asarray(numerical, np.float64) - np.asarray(exact, np.float64)).reshape(-1)
    suspects = np.flatnonzero(error > tol_abs)
    suspects = suspects[np.argsort(-error[suspects], kind="stable")][:limit]
    if suspects.size == 0:
        return suspects.astype(np.int64)
    center = loss()
    bp = np.asarray(exact, np.float64).reshape(-1)
    found = [flat for flat in suspects
             if _is_kink(loss, array, np.unravel_index(flat, array.shape), center, step,
                         bp[flat], tol_abs)]
    return np.sort(np.asarray(found, dtype=np.int64))


def _both_sides(loss, array, index, old, h) -> tuple[float, float, float, float]:
    """``(f(x + h), step up, f(x - h), step down)``, the steps as stored; `x` put back."""
    try:
        array[index] = old + h
        up, moved_up = loss(), float(array[index]) - float(old)
        array[index] = old - h
        down, moved_down = loss(), float(old) - float(array[index])
    finally:
        array[index] = old
    return up, moved_up, down, moved_down


def _rounding(up, center, down, moved_up, moved_down) -> float:
    """The rounding of a one-sided difference of these values over the shorter step."""
    return 2 * np.finfo(np.float64).eps * max(abs(up), abs(center), abs(down)) \
        / min(moved_up, moved_down)


def _is_kink(loss, array, index, center, step, bp, tol_abs) -> bool:
    old = array[index]
    h = step if step is not None else _auto_step(array.dtype) * max(1.0, abs(float(old)))
    up, moved_up, down, moved_down = _both_sides(loss, array, index, old, h)
    if moved_up == 0 or moved_down == 0:
        return False
    forward, backward = (up - center) / moved_up, (center - down) / moved_down
    apart = abs(forward - backward)
    rounding = _rounding(up, center, down, moved_up, moved_down)
    if not apart > tol_abs:
        return False
    if min(abs(bp - forward), abs(bp - backward)) <= apart / 10 + rounding:
        return True
    # Beside strong curvature the smooth side's first-order difference misses backprop by
    # h f''/2, as much as the kink's side does; its second-order difference does not. It must
    # meet backprop within tol_abs and ten times closer than the central difference: on a
    # smooth stretch, where the two are off by 2e and e (e = h^2 f'''/6, the central
    # difference's truncation error), a bug b passes for a kink only if |b - 2e| <= |b - e| / 10.
    off_center = abs(bp - (up - down) / (moved_up + moved_down))
    for sign, near, moved in ((1.0, up, moved_up), (-1.0, down, -moved_down)):
        slope = _second_order_slope(loss, array, index, old, sign * 2 * h, center, near, moved)
        if abs(bp - slope) <= tol_abs and 10 * (abs(bp - slope) + 3 * rounding) <= off_center:
            return True
    return _kinks_on_both_sides(loss, array, index, old, h / _FINER, center, bp, tol_abs, apart)


def _kinks_on_both_sides(loss, array, index, old, h, center, bp, tol_abs, apart) -> bool:
    """Kinks within (h, FINER h] on both sides: at the finer step `h` the one-sided
    differences agree `FINER`^2 times better than at the coarse one (a smooth curvature
    gives only FINER times), and the central difference there meets backprop within `tol_abs`."""
    up, moved_up, down, moved_down = _both_sides(loss, array, index, old, h)
    if moved_up == 0 or moved_down == 0:
        return False
    rounding = _rounding(up, center, down, moved_up, moved_down)
    fine_apart = abs((up - center) / moved_up - (center - down) / moved_down)
    central = (up - down) / (moved_up + moved_down)
    return bool(fine_apart <= apart / _FINER ** 2 + rounding and abs(bp - central) <= tol_abs)


def _second_order_slope(loss, array, index, old, step, center, near, moved):
    """The slope at ``x_i`` of the parabola through f at x_i, x_i + `moved` and x_i + `step`.

    ``(-f(x + 2s) + 4 f(x + s) - 3 f(x)) / 2s`` for steps stored exactly; NaN (never within
    a tolerance) if x_i + `step` rounds onto one of the other two points.
    """
    try:
        array[index] = old + step
        far, moved_far = loss(), float(array[index]) - float(old)
    finally:
        array[index] = old
    a, b = moved, moved_far
    if b == 0 or b == a:
        return float("nan")
    return -(a + b) / (a * b) * center + b / (a * (b - a)) * near - a / (b * (b - a)) * far
