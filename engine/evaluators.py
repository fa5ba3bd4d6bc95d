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

from .model import ModelLoss, Sequential
from .schemes import Scheme
from .space import ParamSpace

__all__ = ["loop_evaluate", "get_evaluator", "checked_loss", "annotate_error", "bind",
           "is_model_objective", "loss_at", "EVALUATOR_NAMES"]

EVALUATOR_NAMES = ("loop", "batched")


def is_model_objective(f: Any) -> bool:
    """True for a layered model's own loss, ``model.loss(params, x, t)`` (a bound method)."""
    return getattr(f, "__func__", None) is Sequential.loss and isinstance(f.__self__, Sequential)


def bind(f: Callable, args: tuple, x: Any) -> Callable:
    """``f(x, *args)`` as the one-argument callable ``g(x)`` that the evaluators call.

    A model's own loss ``model.loss`` with ``args = (inputs, labels)`` becomes a
    `ModelLoss` over `x`, which the batched evaluator understands.

    Raises
    ------
    TypeError
        If `f` is ``model.loss`` and `args` is not ``(inputs, labels)``.
    """
    if is_model_objective(f):
        if len(args) != 2:
            raise TypeError("`f` is a model's loss, f(params, x, t): call the gradient with the "
                            f"params, the inputs and the labels, got {len(args)} argument(s) "
                            "after the params")
        return ModelLoss(f.__self__, x, *args)
    if not args:
        return f
    return _WithArguments(f, tuple(args))


class _WithArguments:
    """``f(x, *args)`` with `args` fixed: the evaluators call ``g(x)``."""

    __slots__ = ("f", "args")

    def __init__(self, f: Callable, args: tuple):
        self.f, self.args = f, args

    def __call__(self, x: Any) -> Any:
        return self.f(x, *self.args)


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
        cache["center"] = loss_at(f, space, "the unperturbed x")
    return cache["center"]


def perturbed_losses(f, space, array, index, h, multiples, flat) -> list[float]:
    """``f(x)`` with entry `index` of `array` set to ``float(x_i) + m*h`` for each m."""
    original = array[index]
    base = float(original)
    losses = []
    try:
        for m in multiples:
            array[index] = base + m * h
            losses.append(loss_at(f, space, lambda: _describe(space, flat, m)))
    finally:
        array[index] = original
    return losses


def _describe(space: ParamSpace, flat: int, m: int) -> str:
    return f"{space.describe(flat)} (x_i {'+' if m > 0 else '-'} {abs(m)}*h)"


def loss_at(f, space: ParamSpace, where: str | Callable[[], str]) -> float:
    """``f(x)`` as a checked float; `where` names the perturbation (a callable: built only for errors)."""
    try:
        value = f(space.structure)
    except Exception as exc:
        annotate_error(exc, f"raised by `f` while evaluating {_text(where)}")
        raise
    # The fast path for what losses usually are; everything else gets the full check.
    loss = float(value) if isinstance(value, float) else checked_loss(value, _text(where))
    if not math.isfinite(loss):
        raise FloatingPointError(f"`f` returned a non-finite loss ({loss}) at {_text(where)}")
    return loss


def _text(where: str | Callable[[], str]) -> str:
    return where if isinstance(where, str) else where()


def checked_loss(value: Any, where: str) -> float:
    """`value` as a Python float, or a clear error if it is not a finite scalar.

    Raises
    ------
    TypeError
        If `value` is not a real scalar (an array of more than one element, a string, a
        bool...).
    FloatingPointError
        If `value` is NaN or infinite; the message names the entry being perturbed.
    """
    if np.ndim(value) != 0 or isinstance(value, (str, bytes, bool, complex, np.bool_,
                                                 np.complexfloating)):
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
    """Say where an error happened, as a note (PEP 678) that tracebacks print; once per error.

    The exception keeps its type and its ``args`` untouched, so it prints and compares
    as the user's code made it.
    """
    notes = getattr(exc, "__notes__", ())
    if any(note.startswith(_CONTEXT_MARK) for note in notes):
        return
    exc.add_note(f"{_CONTEXT_MARK}{context}")


_CONTEXT_MARK = "numgrad: "
