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
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..fd._schemes import auto_step, get_scheme

__all__ = ["kink_entries", "KINK_PROBES", "KINK_HINT"]

KINK_PROBES = 1000   # entries probed per array at most (two loss evaluations each), worst first
KINK_HINT = "cross a ReLU/max-pool kink: try a smaller h, or ignore them"


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
        and put back, bit for bit, before this returns (also if `loss` raises).
    numerical, exact : ndarray, shape of `array`
        The central-difference and backprop gradients.
    step : float or None
        The step h; None for ``h="auto"``: the central scheme's relative step for the
        dtype of `array` times ``max(1, |x_i|)``, as the engine takes it.
    tol_abs : float
        An entry is a suspect when ``|numerical - exact| > tol_abs``; it is a kink when
        its one-sided differences differ by ``d > tol_abs`` and ``exact`` is within
        ``d / 10`` (plus their rounding) of one of them.
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


def _is_kink(loss, array, index, center, step, bp, tol_abs) -> bool:
    old = array[index]
    h = step if step is not None else _auto_step(array.dtype) * max(1.0, abs(float(old)))
    try:
        array[index] = old + h
        up, moved_up = loss(), float(array[index]) - float(old)
        array[index] = old - h
        down, moved_down = loss(), float(old) - float(array[index])
    finally:
        array[index] = old
    if moved_up == 0 or moved_down == 0:
        return False
    forward, backward = (up - center) / moved_up, (center - down) / moved_down
    apart = abs(forward - backward)
    rounding = 2 * np.finfo(np.float64).eps * max(abs(up), abs(center), abs(down)) \
        / min(moved_up, moved_down)
    nearer = min(abs(bp - forward), abs(bp - backward))
    return bool(apart > tol_abs and nearer <= apart / 10 + rounding)
