"""`Hessian` / `hessian`: second derivatives as tasks on the resident workers of a `Gradient`.

A Hessian of n entries is n(n+1)/2 independent second differences (`engine.fd._second`):
the task index space of the pair evaluator, chunked and run exactly as a gradient's
entries are, with the same pool, plan, retries and per-call check. The forward scheme
first computes the n values ``f(x + h_i e_i)`` that its entries share (a call over a task
index space of n), then the entries. From a gradient callable (``grad=``), the tasks are
the n rows of the gradient's Jacobian, symmetrised.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from .._errors import warn_user
from ..batched._detect import bind
from ..fd._bounds import bounds_per_array
from ..fd._calling import ON_FAILURE, LoopOptions
from ..fd._schemes import AUTO, get_scheme
from ..fd._second import (PAIRS, SECOND_SCHEMES, SHIFTS, PairOptions, evaluation_count, pair_count,
                          pairs_to_matrix)
from ..fd._space import ParamSpace
from ..run._execution import EXECUTION_FIELDS, Execution
from ._gradient import Gradient
from ._side_effects import SIDE_EFFECTS

__all__ = ["Hessian", "hessian", "DEFAULT_MAX_SECONDS"]

PAIRS_EVALUATOR = "pairs"            # names in engine.run._job.EVALUATORS
GRADIENT_ROWS_EVALUATOR = "gradient-rows"
DEFAULT_MAX_SECONDS = 3600.0   # a call estimated to take longer is refused before it starts
_WARN_SECONDS = 60.0           # ... and one estimated past this is announced
_ESTIMATE_ABOVE = 2000         # evaluations; smaller calls start without timing `f` first


class Hessian(Gradient):
    """The Hessian of a scalar ``f(x, *args)`` with respect to an array `x`, on resident workers.

    Parameters
    ----------
    f : callable, or None with `grad`
        ``f(x, *args) -> scalar``, shipped to the workers once as by `engine.Gradient`.
    grad : callable, optional
        ``grad(x, *args) -> array`` of x.size entries (any shape, C order): differentiate
        this gradient (analytic, or an `engine.Gradient`) instead of `f`, which is then
        never called. Its Jacobian J (row i: d grad / d x_i, by the first-derivative
        schemes and ``h="auto"`` steps of `engine.Jacobian`) gives ``(J + J.T) / 2``: 2n + 1
        gradient calls (central) or n + 1 (forward); the one at `x` comes first and a
        gradient of the wrong size is refused there, before any other work. An
        `engine.Gradient` is called in this process (it has its own workers).
    h : float or "auto", default "auto"
        ``"auto"``: a relative step per entry, ``eps ** (1/4) * max(1, |x_i|)`` for central
        second differences, ``eps ** (1/3) * max(1, |x_i|)`` for forward (eps of `x`'s
        dtype), the differences divided by the steps actually stored. A second
        difference's truncation error is O(h^2) (central) or O(h) (forward) and its
        rounding error O(eps |f| / h^2); their sum is smallest near those powers. A
        number is an absolute step for every entry.
    scheme : {"central", "forward"}, default "central"
        ``"central"``: ``H_ij = (f(x + h_i e_i + h_j e_j) - f(x + h_i e_i - h_j e_j) -
        f(x - h_i e_i + h_j e_j) + f(x - h_i e_i - h_j e_j)) / (4 h_i h_j)`` for i < j and
        ``(f(x + h_i e_i) - 2 f(x) + f(x - h_i e_i)) / h_i^2`` on the diagonal: 2n^2 + 1
        evaluations, error O(h^2). ``"forward"``: ``(f(x + h_i e_i + h_j e_j) - f(x + h_i
        e_i) - f(x + h_j e_j) + f(x)) / (h_i h_j)`` (``x + 2 h_i e_i`` on the diagonal): 1 +
        n + n(n+1)/2 evaluations, error O(h).
    on_failure : {"raise", "one-sided", "nan"}, default "raise"
        An evaluation of `f` that raises an ``Exception`` or returns a non-finite value:
        ends the call, naming the point (``"raise"``); makes that entry (i, j), and its
        mirror, take the one-sided stencils in turn (for i and j each: central, then
        ``(0, +h)``, then ``(-h, 0)``; on the diagonal ``(0, h, 2h)``, then ``(-2h, -h,
        0)``) until one evaluates at all its points, NaN if none does (``"one-sided"``);
        makes that entry NaN (``"nan"``). Each evaluation is made once per entry, and a
        failed one is not retried. The non-raising modes warn once per call and keep the
        list in `failures`.
    bounds : (lower, upper), optional
        `f` is never evaluated outside ``lower <= x <= upper``: a coordinate whose
        central stencil does not fit takes ``(0, +h)`` / ``(-h, 0)`` off the diagonal
        and ``(0, h, 2h)`` / ``(-2h, -h, 0)`` on it (first order), and one where none
        fits is refused (`ValueError`, naming it).
    check_state : bool, default True
        As `engine.Gradient`: every call on the workers checks their ``f(x)`` against
        this process's.
    max_seconds : float or None, default 3600
        A call of more than 2,000 evaluations first times one evaluation of `f` at `x`
        (in this process; one more evaluation) and estimates the whole call from it and
        the worker count: past `max_seconds` it is refused (`ValueError`, with the count
        and the estimate), past 60 s it is announced (a `UserWarning`; ``progress=True``
        shows a bar). None: never refused, never timed.
    execution : Execution, optional
    **execution_options
        ``workers``, ``backend``, ``scheduler``, ``chunks_per_worker``, ``chunk_size``,
        ``retries``, ``progress``, ``dispatch``: see `engine.Execution`.

    Calling
    -------
    ``H(x, *args)`` returns the (n, n) float64 Hessian over ``x.ravel()`` (C order) for an
    ndarray `x` of n floating entries (any shape), exactly symmetric: each entry i <= j
    is computed once and mirrored. `x` is never left changed. A dict, list or tuple of
    arrays is refused: concatenate its arrays into one vector and unpack them in `f`.
    ``H.value_and_grad(x, *args)`` returns ``(f(x, *args), hessian)`` (with `grad`,
    ``(grad(x, *args), hessian)``).

    Exactness: the same bits at any worker count and backend, in this process or not.

    Raises
    ------
    TypeError, ValueError
        A bad option, at construction; at the call, before any work: `x` not one
        floating ndarray, an `f` that returns a non-scalar (at its first evaluation, f(x)),
        a `grad` that returns the wrong number of values, a call estimated past
        `max_seconds`.

    Examples
    --------
    >>> import numpy as np
    >>> f = lambda v: float(v[0] ** 2 * v[1] + 3 * v[1] ** 2)
    >>> with Hessian(f, workers=2) as H:
    ...     np.round(H(np.array([1.0, 2.0])), 6)
    array([[4., 2.],
           [2., 6.]])
    """

    def __init__(self, f: Callable | None = None, *, grad: Callable | None = None,
                 h: float | str = AUTO, scheme: str = "central", on_failure: str = ON_FAILURE[0],
                 bounds: tuple | None = None, check_state: bool = True,
                 side_effects: str = SIDE_EFFECTS[0],
                 max_seconds: float | None = DEFAULT_MAX_SECONDS, execution: Execution | None = None,
                 _shared_pool: bool = False, **execution_options: Any):
        if grad is None and not callable(f):
            raise TypeError(f"`f` must be callable (or pass `grad=`), got {type(f).__name__}")
        if grad is not None and not callable(grad):
            raise TypeError(f"`grad` must be callable, got {type(grad).__name__}")
        if f is not None and not callable(f):
            raise TypeError(f"`f` must be callable or None, got {type(f).__name__}")
        if get_scheme(scheme).name not in SECOND_SCHEMES:
            raise ValueError(f"`scheme` must be one of {SECOND_SCHEMES} for a Hessian, got {scheme!r}")
        if isinstance(h, dict):
            raise TypeError("`h` must be a number or 'auto' for a Hessian (x is one array), got a dict")
        self.max_seconds = _check_max_seconds(max_seconds)
        execution = Execution.from_options(execution, **execution_options)
        if isinstance(grad, Gradient) and execution.dispatch != "in-process":
            execution = replace(execution, dispatch="in-process")   # its own workers do the work
        super().__init__(grad if grad is not None else f, h=h, scheme=scheme, evaluator="loop",
                         check_state=check_state, on_failure=on_failure, bounds=bounds,
                         side_effects=side_effects, execution=execution, _shared_pool=_shared_pool)
        self.objective, self.grad = f, grad
        self._vector = grad is not None   # the function evaluated returns an array
        self._phase, self._shifts = PAIRS, None

    def __repr__(self) -> str:
        shown = self.grad if self.grad is not None else self.objective
        name = getattr(shown, "__name__", type(shown).__name__)
        return (f"Hessian({'grad=' if self.grad is not None else ''}{name}, "
                f"scheme={self.scheme.name!r}, workers={self.workers}, plan={self.plan})")

    # -- the hooks of a derivative kind --------------------------------------------------------

    def _evaluator_name(self, x: Any, steps: list) -> str:
        return GRADIENT_ROWS_EVALUATOR if self._vector else PAIRS_EVALUATOR

    def _task_count(self, space: ParamSpace) -> int:
        if self._vector or self._phase == SHIFTS:
            return space.size
        return pair_count(space.size)

    def _options(self, space: ParamSpace, evaluator: str) -> Any:
        bounds = bounds_per_array(self.bounds, space)
        if self._vector:
            return LoopOptions(self.on_failure, bounds, vector=True)
        return PairOptions(self.on_failure, bounds, self._phase, self._shifts)

    def _needs_center(self, evaluator: str) -> bool:
        # f(x): every diagonal entry, and every forward entry, uses it (the forward shifts do
        # not); grad(x) (the phase is always PAIRS): it checks the gradient's size first
        return self._phase == PAIRS

    def _assemble(self, space: ParamSpace, rows: np.ndarray, center: Any) -> Any:
        n = space.size
        if self._vector:
            jacobian = rows.reshape(n, n)
            return (jacobian + jacobian.T) / 2   # exactly symmetric: a + b == b + a
        if self._phase == SHIFTS:
            return tuple(float(v) for v in rows)
        return pairs_to_matrix(rows, n)

    # -- one call ------------------------------------------------------------------------------

    def _compute(self, x: Any, args: tuple, want_value: bool) -> tuple[Any, Any]:
        if not isinstance(x, np.ndarray):
            raise TypeError(
                f"`x` must be one ndarray for a Hessian (the result is over x.ravel()), got "
                f"{type(x).__name__}. For a dict of arrays, differentiate over one vector: "
                "theta = np.concatenate([a.ravel() for a in params.values()]) and a function "
                "that splits theta back into the arrays (np.split at their sizes)")
        ParamSpace(x)   # a floating, writable array: checked before the estimate calls f
        self._check_cost(x, args)
        if self._vector or self.scheme.name != "forward":
            return super()._compute(x, args, want_value)
        try:
            self._phase, self._shifts = SHIFTS, None
            shifts = super()._compute(x, args, False)[1]
            failures = self.failures
            self._phase, self._shifts = PAIRS, shifts
            value, matrix = super()._compute(x, args, want_value)
            self.failures = failures + self.failures
            return value, matrix
        finally:
            self._phase, self._shifts = PAIRS, None

    def _check_cost(self, x: np.ndarray, args: tuple) -> None:
        """Refuse (or announce) a call estimated from one timed evaluation to take too long."""
        n = x.size
        if self._vector:
            count = n * len(self.scheme.multiples) + 1
        else:
            count = evaluation_count(n, self.scheme.name)
        if self.max_seconds is None or count <= _ESTIMATE_ABOVE:
            return
        space = ParamSpace(x)
        f = bind(self.f, args, x)
        with space.restored():
            started = time.perf_counter()
            f(x)
            seconds = time.perf_counter() - started
        workers = 1 if self.plan.where == "in-process" else self.workers
        estimate = count * seconds / workers
        what = "gradient calls" if self._vector else "evaluations of `f`"
        told = (f"this Hessian of n = {n} entries needs {count:,} {what} ({self.scheme.name}); "
                f"one took {seconds:.3g} s here, so the call would take about "
                f"{_duration(estimate)} on {workers} worker(s)")
        if estimate > self.max_seconds:
            raise ValueError(f"{told}, more than max_seconds={self.max_seconds:g}. Pass more "
                             "workers, an analytic gradient (grad=: 2n + 1 calls), "
                             "scheme='forward' (about n^2/2 evaluations), or max_seconds=None "
                             "to run it anyway")
        if estimate > _WARN_SECONDS:
            warn_user(f"{told}; pass progress=True for a progress bar")


def hessian(f: Callable | None, x: np.ndarray, *args: Any, grad: Callable | None = None,
            execution: Execution | None = None, **options: Any) -> np.ndarray:
    """The Hessian of ``f(x, *args)`` at `x`, in one call: `engine.Hessian`'s one-shot form.

    Parameters
    ----------
    f : callable, or None with `grad`
        ``f(x, *args) -> scalar``.
    x : ndarray of n floating entries, any shape
    *args
        Passed to `f` (or `grad`) after `x`.
    grad, execution, **options
        As `engine.Hessian` (``h``, ``scheme``, ``on_failure``, ``bounds``, ``check_state``,
        ``max_seconds``, ``workers``, ``backend``...). ``dispatch="auto"`` means
        ``"parallel"``: a one-shot call has no earlier calls to learn from. The worker
        processes are the ones all one-shot calls share.

    Returns
    -------
    ndarray, float64, shape (n, n)
        Over ``x.ravel()``, exactly symmetric, the same bits at any worker count.

    Raises
    ------
    TypeError, ValueError
        As `engine.Hessian`, before any work.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(hessian(lambda v, a: float(a * v[0] * v[1]), np.array([1.0, 2.0]), 3.0,
    ...                  workers=1), 6)
    array([[0., 3.],
           [3., 0.]])
    """
    execution_options = {name: options.pop(name) for name in list(options) if name in EXECUTION_FIELDS}
    execution = Execution.from_options(execution, **execution_options)
    if execution.dispatch == "auto":
        execution = replace(execution, dispatch="parallel")
    with Hessian(f, grad=grad, execution=execution, _shared_pool=True, **options) as H:
        return H(x, *args)


def _check_max_seconds(value: Any) -> float | None:
    if value is None:
        return None
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating))
            or not (math.isfinite(value) and value > 0)):
        raise ValueError(f"`max_seconds` must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} hours"
    if seconds >= 60:
        return f"{seconds / 60:.3g} minutes"
    return f"{seconds:.3g} s"
