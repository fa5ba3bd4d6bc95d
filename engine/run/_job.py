"""One call's work, and the one place it is evaluated: in the caller and in every worker alike.

A `Job` says how every task of one call is evaluated; a task is a chunk ``(start, stop)``
of the call's task index space (for a gradient, `x`'s flat entries), `CENTER` for
``f(x)`` itself, or a `Point`: ``f`` at given values of `x` (the state check). `evaluate`
runs a task on the arrays of a `ParamSpace` with the evaluator the job names; the
in-process path, the resident workers and the per-call runners all call it, so the
numbers cannot depend on where a task ran.

An evaluator is a function ``(f, space, steps, scheme, start, stop, cache, options,
report) -> ndarray`` with one float64 row per task index in ``[start, stop)``, registered
by name in `EVALUATORS`. It perturbs `x` through `space` and restores every entry by
assignment; `cache` is kept per call (``cache["center"]`` holds ``f(x)`` when the caller
computed it); `options` is the evaluator's own frozen options object.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..batched._detect import get_evaluator
from ..fd._evaluators import LoopOptions, Report, checked_output, loss_at
from ..fd._complex import complex_evaluate, complex_grouped_evaluate
from ..fd._grouped import grouped_evaluate
from ..fd._richardson import RICHARDSON, richardson_evaluate
from ..fd._schemes import get_scheme
from ..fd._second import gradient_rows_evaluate, pair_evaluate
from ..fd._space import ParamSpace
from ._blas import one_blas_thread

__all__ = ["Job", "Point", "Raised", "CENTER", "EVALUATORS", "evaluate", "value_at", "shown",
           "BatchedOptions"]

CENTER = None   # the task of f(x) itself


@dataclass(frozen=True)
class Point:
    """A task of the state check: ``f`` at these values of `x`'s arrays (None: at `x` itself).

    Its result is the value, or a `Raised` naming what `f` raised: a check never fails a call.
    """

    values: tuple[np.ndarray, ...] | None = None


@dataclass(frozen=True)
class Raised:
    """What `f` raised at a `Point`, in place of a value."""

    error: str
    message: str


def shown(value: Any) -> str:
    """A value of `value_at` as a message shows it: its repr, or what `f` raised."""
    if isinstance(value, Raised):
        return f"an error ({value.error}: {value.message})"
    return repr(value)


@dataclass(frozen=True)
class BatchedOptions:
    """The batched evaluator's options."""

    block_memory: int


@dataclass(frozen=True)
class Job:
    """How every task of one call is evaluated."""

    evaluator: str                 # a name in EVALUATORS
    scheme: str                    # a name in engine.fd._schemes.SCHEMES
    steps: tuple[Any, ...]         # one step per array of x (a float, or None for "auto")
    options: Any = None            # the evaluator's own options (LoopOptions, BatchedOptions, ...)
    center: Any = None             # f(x), when the caller already has it
    vector: bool = False           # f returns an array (a Jacobian)


def _loop(f, space, steps, scheme, start, stop, cache, options, report):
    if scheme.complex_step:   # the loop evaluator's work, at x + ih on a complex copy
        return complex_evaluate(f, space, steps, scheme, start, stop, cache, options, report)
    return get_evaluator("loop")(f, space, steps, scheme, start, stop, cache,
                                 loop=options or LoopOptions(), report=report)


def _grouped(f, space, steps, scheme, start, stop, cache, options, report):
    if scheme.complex_step:   # the column groups at x + ih, on complex copies
        return complex_grouped_evaluate(f, space, steps, scheme, start, stop, cache, options,
                                        report)
    return grouped_evaluate(f, space, steps, scheme, start, stop, cache, options, report)


def _batched(f, space, steps, scheme, start, stop, cache, options, report):
    return get_evaluator("batched")(f, space, steps, scheme, start, stop, cache,
                                    block_memory=options.block_memory)


EVALUATORS: dict[str, Callable[..., np.ndarray]] = {
    "loop": _loop,
    "batched": _batched,
    "grouped": _grouped,   # a sparse Jacobian's column groups (engine.fd._grouped)
    RICHARDSON: richardson_evaluate,   # several steps per entry, extrapolated (engine.fd._richardson)
    "pairs": pair_evaluate,        # a Hessian's entries i <= j (engine.fd._second)
    "gradient-rows": gradient_rows_evaluate,   # a Hessian from a gradient callable (grad=)
}


def evaluate(job: Job, f: Callable, space: ParamSpace, task: Any, cache: dict) -> tuple[Any, Report]:
    """Run one task of `job`; ``(values, report)``.

    `f` is the one-argument callable ``g(x)`` over ``space.structure``. For a chunk,
    `values` holds the evaluator's rows; for `CENTER`, ``f(x)`` (computed once per
    `cache`); for a `Point`, ``f`` at the point, `x`'s values put back afterwards.
    """
    report = Report()
    with one_blas_thread():
        if task is CENTER:
            return center(f, space, cache, job.vector), report
        if isinstance(task, Point):
            return value_at(f, space, task.values, job.vector), report
        if job.center is not None:
            cache["center"] = job.center
        rows = EVALUATORS[job.evaluator](f, space, list(job.steps), get_scheme(job.scheme),
                                         task[0], task[1], cache, job.options, report)
        return rows, report


def center(f: Callable, space: ParamSpace, cache: dict, vector: bool = False) -> Any:
    """``f(x)``, computed once per `cache`."""
    if "center" not in cache:
        cache["center"] = loss_at(f, space, "the unperturbed x", checked_output if vector else None)
    return cache["center"]


def value_at(f: Callable, space: ParamSpace, values: tuple[np.ndarray, ...] | None,
             vector: bool = False) -> Any:
    """``f`` with `x`'s arrays set to `values` (None: as they are), or `Raised`.

    `x`'s own values are put back by assignment afterwards.
    """
    saved = [np.array(array, copy=True) for array in space.arrays]
    try:
        if values is not None:
            for array, value in zip(space.arrays, values):
                array[...] = value
        return loss_at(f, space, "the state check's point", checked_output if vector else None)
    except Exception as exc:
        return Raised(type(exc).__name__, str(exc))
    finally:
        for array, value in zip(space.arrays, saved):
            array[...] = value
