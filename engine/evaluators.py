"""How a chunk is evaluated: the loop evaluator, for any black-box `f`.

An evaluator takes a contiguous range of the flat index space and returns the
derivative of `f` with respect to each entry in it, as float64. The loop evaluator
does exactly what the teaching text does, one entry at a time: set the entry to
``float(x_i) + m*h`` for each multiple m of the scheme, call ``f(x)``, put the
original value back by assignment (never by arithmetic, so it is bit-exact), and
combine the losses.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .schemes import Scheme
from .space import ParamSpace

__all__ = ["loop_evaluate", "get_evaluator", "checked_loss", "annotate_error"]

EVALUATOR_NAMES = ("loop", "batched")


def get_evaluator(name: str) -> Callable:
    """The evaluation function registered under `name` (``"loop"`` or ``"batched"``)."""
    if name == "loop":
        return loop_evaluate
    if name == "batched":
        from .batched import batched_evaluate  # the layered-model evaluator
        return batched_evaluate
    raise ValueError(f"`evaluator` must be one of {EVALUATOR_NAMES} or 'auto', got {name!r}")


def loop_evaluate(
    f: Callable[[Any], Any],
    space: ParamSpace,
    steps: list[float],
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    **_ignored: Any,
) -> np.ndarray:
    """Derivatives of `f` for the flat entries ``start .. stop-1`` of `space`.

    The arrays of `space` are perturbed in place, one entry at a time, and each entry
    is restored to its exact original value before the next, also when `f` raises.
    `cache` (a dict kept for one call) holds the unperturbed loss for schemes that
    use it, so it is evaluated once per worker and call, not once per chunk.

    Returns
    -------
    ndarray, shape (stop - start,), float64
    """
    values = np.empty(stop - start, dtype=np.float64)
    center = None
    if scheme.uses_center and stop > start:
        center = _center_loss(f, space, {} if cache is None else cache)
    for segment in space.segments(start, stop):
        array, h = space.arrays[segment.position], steps[segment.position]
        indices = space.multi_indices(segment.position, segment.start, segment.stop)
        for k, index in enumerate(indices):
            flat = segment.offset + k
            losses = perturbed_losses(f, space, array, index, h, scheme.multiples, flat)
            values[flat - start] = scheme.combine(losses, center, h)
    return values


def _center_loss(f, space: ParamSpace, cache: dict) -> float:
    if "center" not in cache:
        cache["center"] = _loss_at(f, space, lambda: "the unperturbed x")
    return cache["center"]


def perturbed_losses(f, space, array, index, h, multiples, flat) -> list[float]:
    """``f(x)`` with entry `index` of `array` set to ``float(x_i) + m*h`` for each m."""
    original = array[index]
    base = float(original)
    losses = []
    try:
        for m in multiples:
            array[index] = base + m * h
            losses.append(_loss_at(f, space, lambda: _describe(space, flat, m)))
    finally:
        array[index] = original
    return losses


def _describe(space: ParamSpace, flat: int, m: int) -> str:
    return f"{space.describe(flat)} (x_i {'+' if m > 0 else '-'} {abs(m)}*h)"


def _loss_at(f, space: ParamSpace, where: Callable[[], str]) -> float:
    """``f(x)`` as a checked float; `where` names the perturbation, built only for errors."""
    try:
        value = f(space.structure)
    except Exception as exc:
        annotate_error(exc, f"raised by `f` while evaluating {where()}")
        raise
    # The fast path for what losses usually are; everything else gets the full check.
    loss = float(value) if isinstance(value, float) else checked_loss(value, where())
    if not math.isfinite(loss):
        raise FloatingPointError(f"`f` returned a non-finite loss ({loss}) at {where()}")
    return loss


def checked_loss(value: Any, where: str) -> float:
    """`value` as a Python float, or a clear error if it is not a finite scalar.

    Raises
    ------
    TypeError
        If `value` is not a real scalar (an array of more than one element, a string...).
    FloatingPointError
        If `value` is NaN or infinite; the message names the entry being perturbed.
    """
    if np.ndim(value) != 0 or isinstance(value, (str, bytes, complex, np.complexfloating)):
        shape = getattr(value, "shape", None)
        raise TypeError(
            f"`f` must return a real scalar loss, got {type(value).__name__}"
            + (f" of shape {shape}" if shape is not None else "")
            + f" at {where}"
        )
    try:
        loss = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`f` must return a real scalar loss, got {value!r} at {where}") from None
    if not math.isfinite(loss):
        raise FloatingPointError(f"`f` returned a non-finite loss ({loss}) at {where}")
    return loss


def annotate_error(exc: BaseException, context: str) -> None:
    """Add where an error happened to its message, keeping its type (once per error)."""
    if getattr(exc, "_engine_context", None):
        return
    exc._engine_context = context
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} [{context}]",) + exc.args[1:]
    else:
        exc.add_note(context)
