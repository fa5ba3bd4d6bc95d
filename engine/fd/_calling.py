"""Calling `f`: its extra arguments bound, its output checked, its errors said where they happened.

What every evaluator shares, below all of them: `loss_at` calls `f` at the current `x`
and returns a checked float (or float64 array), raising `EvaluationFailed` where the
caller can fall back; `LoopOptions` and `Report` say what an evaluator does beyond its
formula and what it saw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ._space import ParamSpace

__all__ = ["ON_FAILURE", "with_arguments", "LoopOptions", "Report", "EvaluationFailed", "loss_at",
           "checked_output", "checked_loss", "annotate_error"]

ON_FAILURE = ("raise", "one-sided", "nan")   # what a failed evaluation of f does; the first is the default


def with_arguments(f: Callable, args: tuple) -> Callable:
    """``f(x, *args)`` as the one-argument callable ``g(x)`` that the evaluators call."""
    return _WithArguments(f, tuple(args)) if args else f


class _WithArguments:
    """``f(x, *args)`` with `args` fixed: the evaluators call ``g(x)``."""

    __slots__ = ("f", "args")

    def __init__(self, f: Callable, args: tuple):
        self.f, self.args = f, args

    def __call__(self, x: Any) -> Any:
        return self.f(x, *self.args)


@dataclass(frozen=True)
class LoopOptions:
    """What the loop evaluator does beyond the teaching text's formula.

    Attributes
    ----------
    on_failure : {"raise", "one-sided", "nan"}
        What an evaluation of `f` that raises (an ``Exception``) or returns a non-finite
        value does: end the call; use the side that evaluated, with ``f(x)``, to second
        order where ``x_i -+ 2h`` evaluates too (first order with the forward scheme, or
        where it does not); or make the entry NaN.
    bounds : list of (lower, upper) arrays, or None
        Per parameter array, bounds broadcast to its shape: `f` is never evaluated
        outside them. Near a bound an entry takes the one-sided scheme of the scheme's
        order (``(-3 f(x) + 4 f(x + h) - f(x + 2h)) / 2h`` for central) toward the side
        with room; where neither fits, the step is shrunk to fit (`fit_to_bounds`).
    vector : bool
        `f` returns an array (a Jacobian), not a scalar.
    """

    on_failure: str = ON_FAILURE[0]
    bounds: tuple | None = None
    vector: bool = False


@dataclass
class Report:
    """What one chunk's evaluation noticed: failed evaluations, the steps actually stored."""

    failures: list = field(default_factory=list)   # (flat, multiple, type name, message)
    step_deviation: float = 0.0                     # max |stored - m*h| / |m*h| with a numeric h

    def merge(self, other: Report) -> None:
        self.failures.extend(other.failures)
        self.step_deviation = max(self.step_deviation, other.step_deviation)


class EvaluationFailed(Exception):
    """An evaluation of `f` failed (raised, or gave a non-finite value); the cause is its error."""


def loss_at(f, space: ParamSpace, where: str | Callable[[], str],
            check: Callable | None = None, failures: bool = False) -> Any:
    """``f(x)`` as a checked float (or, with ``check=checked_output``, a float64 array).

    `where` names the perturbation (a callable: built only for errors). With
    `failures`, an exception raised by `f` or a non-finite value is raised as `EvaluationFailed`
    (its ``__cause__`` the error), so the caller can fall back.
    """
    try:
        value = f(space.structure)
    except Exception as exc:
        annotate_error(exc, f"raised by `f` while evaluating {_text(where)}")
        if failures:
            raise EvaluationFailed() from exc
        raise
    try:
        if check is not None:
            return check(value, _text(where))
        # The fast path for what losses usually are; everything else gets the full check.
        loss = float(value) if isinstance(value, float) else checked_loss(value, _text(where))
        if not math.isfinite(loss):
            raise FloatingPointError(f"`f` returned a non-finite loss ({loss}) at {_text(where)}")
        return loss
    except FloatingPointError as exc:
        if failures:
            raise EvaluationFailed() from exc
        note = _non_finite_x(space)
        if note:
            exc.add_note(note)
        raise


def _non_finite_x(space: ParamSpace) -> str | None:
    """Where `x` itself holds a NaN or an infinity (the likely cause of a non-finite f), if it does."""
    for position, array in enumerate(space.arrays):
        bad = np.flatnonzero(~np.isfinite(array.reshape(-1)))
        if bad.size:
            flat = int(space.offsets[position]) + int(bad[0])
            return (f"`x` itself is not finite: {space.describe(flat)} is "
                    f"{float(array.reshape(-1)[bad[0]])!r} ({bad.size} non-finite entries in "
                    f"{space.labels[position]}), so `f` may be non-finite without any perturbation")
    return None


def checked_output(value: Any, where: str) -> np.ndarray:
    """`value` as a float64 array of finite values (a vector `f`'s output).

    Raises
    ------
    TypeError
        If it is not real numbers.
    FloatingPointError
        If an element is NaN or infinite.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`f` must return an array of real numbers, got "
                        f"{type(value).__name__} at {where}") from None
    if np.iscomplexobj(value) or getattr(value, "dtype", None) == np.bool_:
        raise TypeError(f"`f` must return real numbers, got {np.asarray(value).dtype} at {where}")
    if not np.all(np.isfinite(array)):
        raise FloatingPointError(f"`f` returned non-finite values at {where}")
    return array


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
