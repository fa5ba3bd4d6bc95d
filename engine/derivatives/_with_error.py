"""Gradients with an error estimate: Richardson extrapolation over several steps per entry.

`GradientWithError` is a derivative kind of `engine.derivatives._gradient.Gradient`: its
tasks are x's entries, its evaluator (`engine.fd._richardson`) returns each entry's
central differences at every step in one task, and its `_assemble` extrapolates them all
in the caller, so the value and the error are the same bits at any worker count.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..fd._richardson import RICHARDSON, RichardsonOptions, extrapolate
from ..fd._space import ParamSpace
from ..run._execution import EXECUTION_FIELDS, Execution
from ._gradient import Gradient
from ._side_effects import SIDE_EFFECTS
from ._parallel import _one_shot

__all__ = ["GradientWithError", "gradient_with_error"]


class GradientWithError(Gradient):
    """The gradient of a scalar ``f(x, *args)`` and, per entry, an estimate of its error.

    Calling it returns ``(value, error)``, each with `x`'s structure, shapes and dtypes.
    See `gradient_with_error` for the parameters and what the estimate means.
    """

    def __init__(self, f: Callable, *, levels: int = RichardsonOptions.levels,
                 base: float = RichardsonOptions.base, ratio: float = RichardsonOptions.ratio,
                 terms: int = RichardsonOptions.terms, check_state: bool = True,
                 side_effects: str = SIDE_EFFECTS[0], execution: Execution | None = None,
                 _shared_pool: bool = False,
                 **execution_options: Any):
        others = sorted(set(execution_options) - EXECUTION_FIELDS)
        if others:
            raise TypeError(f"{', '.join(f'`{name}`' for name in others)} does not apply to a "
                            "gradient with an error estimate (its steps are its own: `levels`, "
                            "`base`, `ratio`, `terms`; central differences; no bounds, no "
                            "on_failure); the other options are the execution's")
        self.richardson = RichardsonOptions(levels, base, ratio, terms)
        self.richardson.check()
        super().__init__(f, h="auto", check_state=check_state, side_effects=side_effects,
                         execution=execution,
                         _shared_pool=_shared_pool, **execution_options)

    def _evaluator_name(self, x: Any, steps: list) -> str:
        return RICHARDSON

    def _options(self, space: ParamSpace, evaluator: str) -> Any:
        return self.richardson

    def _needs_center(self, evaluator: str) -> bool:
        return False

    def _assemble(self, space: ParamSpace, rows: np.ndarray, center: Any) -> Any:
        value, error = extrapolate(rows, self.richardson)
        return space.assemble(value), space.assemble(error)


def gradient_with_error(f: Callable[[Any], Any], x: Any, *, levels: int = RichardsonOptions.levels,
                        base: float = RichardsonOptions.base,
                        ratio: float = RichardsonOptions.ratio,
                        terms: int = RichardsonOptions.terms,
                        execution: Execution | None = None, **options: Any) -> tuple[Any, Any]:
    """The gradient of a scalar `f` at `x` by Richardson extrapolation, with a per-entry error.

    Each entry takes central differences at ``levels`` steps, ``h_k = base * max(1,
    |x_i|) / ratio**k``, all computed by the same task (``2 * levels`` evaluations of `f`
    per entry; 24 by default), and extrapolates them on every window of ``terms + 1``
    consecutive steps (removing the error terms h**2 .. h**(2 terms)). The window with
    the smallest error estimate gives the value.

    The error estimate of an entry is the change the window's last extrapolation made
    (the size of the last error term removed, which exceeds the next one where the
    steps are in the region where the expansion converges) plus ten times the rounding
    of ``f`` carried through the extrapolation (``eps (|f(x+h)| + |f(x-h)|) / 2h`` per
    difference). It is a heuristic bound, not a guarantee: on smooth functions it was
    above the true error in every case tested (``tests/test_accuracy.py``), typically
    by 10 to 1000 times; a periodic `f` whose period is near the largest step can fool it.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``. A step where `f` returns a non-finite value is left out (a
        window containing it is not used); where no window is finite the entry's value
        is NaN and its error inf.
    x : ndarray, or dict / list / tuple of ndarray
        Writable floating-point arrays (float64 advised: the steps are divided by what
        the dtype stores, but the extrapolation assumes the exact ratio). Never left
        changed.
    levels : int, default 12
        Steps per entry; at least ``terms + 2``.
    base : float, default 0.125
        The largest step, relative to ``max(1, |x_i|)``.
    ratio : float, default 2
        The ratio of consecutive steps, > 1.
    terms : int, default 3
        Extrapolation rounds per window.
    execution : Execution, optional
        Where chunks run; ``workers``, ``backend``... may be given as keywords (see
        `engine.Execution`), and ``check_state`` (see `engine.Gradient`).

    Returns
    -------
    value, error : ndarray or the same structure as `x`
        The gradient and the error estimate per entry (non-negative), with `x`'s
        structure, shapes and dtypes. Bit-identical at any worker count.

    Raises
    ------
    ValueError
        Bad `levels`, `base`, `ratio`, `terms` (naming it), or an execution option; a
        step that rounds back to ``x_i``.
    TypeError
        `f` not callable, `x` not floating arrays, `f` not returning a scalar; an option
        of `engine.Gradient` that does not apply here (``h``, ``scheme``, ``bounds``,
        ``on_failure``, ``evaluator``, ...), naming it.

    Examples
    --------
    >>> import numpy as np
    >>> value, error = gradient_with_error(lambda v: float(np.exp(v[0]) * np.sin(v[1])),
    ...                                    np.array([0.5, 1.0]), workers=1)
    >>> bool(np.all(np.abs(value - [np.exp(0.5) * np.sin(1.0), np.exp(0.5) * np.cos(1.0)])
    ...             <= error)), bool(np.all(error < 1e-10))
    (True, True)
    """
    return _one_shot(GradientWithError, f, x, execution,
                     dict(options, levels=levels, base=base, ratio=ratio, terms=terms))
