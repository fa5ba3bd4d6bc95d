"""`Gradient`: a numerical gradient configured once and called many times, its workers resident.

An optimizer or a training loop calls the gradient thousands of times with new values
of the same parameters. A `Gradient` ships `f` and the structure of `x` to its workers
once (`engine.derivatives._link`); every later call sends only the new values of `x`'s
arrays and the call's extra arguments, and gets chunks of derivatives back. Every call
on the workers verifies itself against this process (``check_state``). When the first
calls show that the workers lose to evaluating in this process, it evaluates in this
process and says so (`Gradient.plan`).

The numbers never depend on where they were computed: every evaluator gives
bit-for-bit the same derivatives at any worker count, in-process or not, and the loop
evaluator gives exactly `numerical_gradient`'s.

A derivative kind (a Jacobian, a Hessian, a sparse Jacobian) subclasses `Gradient` and
overrides the hooks `_evaluator_name`, `_task_count`, `_options`, `_needs_center` and
`_assemble`; chunking, the pool, retries, the plan and the check come with it.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import replace
from typing import Any, Callable, NamedTuple

import numpy as np

from .._errors import NumericalFallbackWarning, StateNotShippedError, StepSizeWarning, warn_user
from ..batched._batched import DEFAULT_BLOCK_MEMORY
from ..batched._detect import AUTO_EVALUATOR, EVALUATOR_CHOICES, bind, choose_evaluator
from ..fd._bounds import bounds_per_array, check_bounds_option
from ..fd._evaluators import ON_FAILURE, LoopOptions, Report
from ..fd._schemes import AUTO, DEFAULT_SCHEME, DEFAULT_STEP, check_step, get_scheme, resolve_steps
from ..fd._space import ParamSpace
from ..run._execution import Execution, check_positive_int
from ..run._job import CENTER, BatchedOptions, Job, Point, Raised, evaluate, value_at
from ..run._planning import Plan, Planner, default_chunks_per_worker, plan_chunks
from ._link import WorkerLink

__all__ = ["Gradient", "Jacobian", "Failure"]

_CENTER_TASK = -1            # task numbers of f(x), and of the state check's points
_CHECK_TASK = -2
_PROBE_TASK = -3
_STEP_TOLERANCE = 0.01       # warn when the stored step differs from h by more than this share
_PROBE_SCALE = 2.0 ** -10    # the state probe moves each entry by this share of max(1, |x_i|)


class Failure(NamedTuple):
    """An evaluation of `f` that failed and was replaced (see ``on_failure``)."""

    entry: str      # e.g. "x['w1'][2, 3]"
    side: str       # "x_i + 1*h" or "x_i - 1*h"
    error: str      # the exception's type name (FloatingPointError for a non-finite value)
    message: str


class _StateChanged(Exception):
    """The workers' f disagreed with this process's at a checked point."""

    def __init__(self, what: str, ours: Any, theirs: Any, fresh: bool):
        super().__init__(what)
        self.what, self.ours, self.theirs, self.fresh = what, ours, theirs, fresh


class Gradient:
    """The numerical gradient of ``f(x, *args)`` with respect to `x`, on resident workers.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> scalar``. Shipped to the workers once, with everything it
        references; between calls only `x`'s values and `args` travel. State that changes
        between calls should come through `x` or `args`: a closure over a changed
        mini-batch is caught by the state check and shipped again (correct, but the whole
        of `f` travels on such calls; a warning says so once). A model's own loss,
        ``model.loss`` (called as ``g(params, inputs, labels)``), is evaluated by the
        batched evaluator.
    h : float, "auto" or dict, default 1e-4
        Step size (the teaching text's formula: ``(f(x+h) - f(x-h)) / 2h``); a call raises
        `ValueError` naming the entry where ``x_i ± h`` rounds back to ``x_i``, and warns
        (`StepSizeWarning`) where the step actually stored differs from `h` by more than
        1%. ``"auto"``: a relative step per entry, ``eps ** (1/k) * max(1, |x_i|)`` (k = 2,
        3, 5 for forward, central, central4; eps of `x`'s dtype), the difference divided
        by the steps actually stored. A dict gives per-array steps for a dict `x`.
    scheme : {"central", "forward", "central4"}, default "central"
    evaluator : {"auto", "loop", "batched"}, default "auto"
        ``"loop"`` calls `f` once per perturbation and works for any `f`; ``"batched"``
        evaluates blocks of perturbations through a layered model (``model.loss``, or a
        `engine.ModelLoss` over `x`); ``"auto"`` picks batched where it can.
    block_memory : int, default 256 MiB
        Batched evaluator: the most bytes of temporaries per worker.
    check_state : bool, default True
        Every call on the workers verifies itself: this process computes ``f(x)`` while
        the workers work, and a worker's ``f(x)`` must be bit-identical to it (a closure,
        module state or `args` that changed, or values that did not arrive, all break
        that). After each shipping, ``f`` at a point where every entry of `x` is moved
        is compared the same way, so an `f` that ignores the workers' copy of `x`
        (module state read by reference) is caught even where single derivatives are 0.
        Cost: one evaluation of `f` here per call, overlapped with the workers, one
        more on a worker, and two more per shipping. A mismatch ships ``(f, x)`` again
        and repeats the call once; a second mismatch raises `StateNotShippedError`.
        ``False`` turns the check off (an `f` that is not deterministic, or one that
        could crash this process: the check runs `f` here).
    on_failure : {"raise", "one-sided", "nan"}, default "raise"
        An evaluation of `f` that raises an ``Exception`` or returns a non-finite value:
        ends the call (``"raise"``, with the error and where it happened); is replaced by
        the other side's one-sided difference with ``f(x)`` (computed once per call), or
        NaN where both sides failed (``"one-sided"``); makes the entry NaN (``"nan"``).
        The non-raising modes warn once per call (`NumericalFallbackWarning`) and keep
        the list in `failures`. Loop evaluator only.
    bounds : (lower, upper), optional
        `f` is never evaluated outside ``lower <= x <= upper`` (scalars, arrays
        broadcastable to a bare array `x`, or structures like `x`); entries at or near a
        bound take the one-sided difference that stays inside. Loop evaluator only.
    execution : Execution, optional
        Where chunks run; the keywords below replace its fields.
    **execution_options
        ``workers``, ``backend``, ``scheduler``, ``chunks_per_worker``, ``chunk_size``,
        ``retries``, ``progress``, ``dispatch``: see `engine.Execution`.

    Calling
    -------
    ``g(x, *args)`` returns the gradient, with `x`'s structure, shapes and dtypes; `x` is
    an ndarray or a dict / list / tuple of writable floating arrays, never left changed.
    ``g.value_and_grad(x, *args)`` returns ``(f(x, *args), gradient)``, `f(x)` computed
    in the same parallel batch. Use as ``scipy.optimize.minimize(g.value_and_grad, x0,
    jac=True)`` or ``minimize(f, x0, jac=g)``.

    Exactness: the loop evaluator gives exactly `numerical_gradient`'s numbers; every
    evaluator gives the same bits at any worker count, in this process or not, call
    after call. The batched evaluator agrees with the loop evaluator to rounding
    (relative 1e-9 or better on the book's net).

    Lifetime: ``with Gradient(...) as g:`` or ``g.close()`` stops the workers and frees
    the shared memory; both also happen when `g` is garbage-collected and at exit.

    Threads: a `Gradient` may be called from several threads; its calls run one at a
    time (a lock), each on its own values. For calls that overlap, give each thread
    its own `Gradient`. In-process evaluation perturbs the caller's arrays in place
    (restored after), so no other thread may use those arrays during a call.

    Raises
    ------
    TypeError, ValueError
        For a bad option, at construction; for a bad `x` or `args`, at the call, before
        any work.

    Examples
    --------
    >>> import numpy as np
    >>> with Gradient(lambda w, a: float(a * (w ** 2).sum()), workers=2) as g:
    ...     g(np.array([1.0, 2.0]), 3.0)
    array([ 6., 12.])
    """

    _vector = False   # a Jacobian: f returns an array

    def __init__(self, f: Callable, *, h: float | str | dict = DEFAULT_STEP,
                 scheme: str = DEFAULT_SCHEME, evaluator: str = AUTO_EVALUATOR,
                 block_memory: int = DEFAULT_BLOCK_MEMORY, check_state: bool = True,
                 on_failure: str = ON_FAILURE[0], bounds: tuple | None = None,
                 execution: Execution | None = None, _shared_pool: bool = False,
                 **execution_options: Any):
        if not callable(f):
            raise TypeError(f"`f` must be callable, got {type(f).__name__}")
        if not isinstance(h, dict) and not (isinstance(h, str) and h == AUTO):
            check_step(h)
        if on_failure not in ON_FAILURE:
            raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}")
        check_bounds_option(bounds)
        if evaluator not in EVALUATOR_CHOICES:
            raise ValueError(f"`evaluator` must be one of {EVALUATOR_CHOICES}, "
                             f"got {evaluator!r}")
        if not isinstance(check_state, (bool, np.bool_)):
            raise ValueError(f"`check_state` must be True or False, got {check_state!r}")
        self.f, self.h, self.evaluator = f, h, evaluator
        self.on_failure, self.bounds = on_failure, bounds
        self.failures: list[Failure] = []   # the last call's replaced evaluations
        self.scheme = get_scheme(scheme)
        self.block_memory = check_positive_int("block_memory", block_memory)
        self.check_state = bool(check_state)
        self.execution = Execution.from_options(execution, **execution_options)
        self.workers = self.execution.n_workers
        self._link = WorkerLink(self.execution, shared=_shared_pool)   # one-shot calls share one
        self._finalizer = weakref.finalize(self, self._link.release)
        self._planner = Planner(self.execution, self.workers)
        self._entry_seconds = None   # measured seconds per task, for the chunking
        self._calls = 0              # calls so far; values are sent to the workers once per call
        self._probed = None          # the signature whose shipped copy passed the probe
        self._warned_reship = False
        self._lock = threading.RLock()   # one call at a time, whichever thread makes it

    # -- calling -----------------------------------------------------------------------------

    def __call__(self, x: Any, *args: Any) -> Any:
        with self._lock:
            return self._compute(x, args, want_value=False)[1]

    def value_and_grad(self, x: Any, *args: Any) -> tuple[float, Any]:
        """``(f(x, *args), gradient)``; `f(x)` is computed with the perturbations, once."""
        with self._lock:
            return self._compute(x, args, want_value=True)

    @property
    def plan(self) -> Plan:
        """Where this gradient evaluates and why (decided by its first calls with ``dispatch="auto"``)."""
        return self._planner.plan

    def calibrate(self, x: Any, *args: Any) -> Plan:
        """Make the calls that decide `plan` now (their results are dropped); return it."""
        while self._planner.plan.where == "measuring":
            self(x, *args)
        return self.plan

    def reship(self) -> None:
        """Ship `f` and `x` again on the next call (after changing state that `f` reads)."""
        with self._lock:
            self._link.reship()
            self._probed = None

    def close(self) -> None:
        """Stop this gradient's workers and free its shared memory. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Gradient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({getattr(self.f, '__name__', type(self.f).__name__)}, "
                f"scheme={self.scheme.name!r}, workers={self.workers}, plan={self.plan})")

    # -- the hooks of a derivative kind --------------------------------------------------------

    def _evaluator_name(self, x: Any, steps: list) -> str:
        """The evaluator for this call (a name in `engine.run._job.EVALUATORS`)."""
        return choose_evaluator(self.evaluator, self.f, x, loop_only=self._loop_only(steps))

    def _task_count(self, space: ParamSpace) -> int:
        """The size of the task index space: one row of the evaluator per task index."""
        return space.size

    def _options(self, space: ParamSpace, evaluator: str) -> Any:
        """The options object the evaluator receives."""
        if evaluator == "batched":
            return BatchedOptions(self.block_memory)
        return LoopOptions(self.on_failure, bounds_per_array(self.bounds, space), self._vector)

    def _needs_center(self, evaluator: str) -> bool:
        """f(x) is computed once per call, before the chunks, when they all need it."""
        return evaluator == "loop" and (
            self.scheme.uses_center or self.bounds is not None or self.on_failure == "one-sided")

    def _assemble(self, space: ParamSpace, rows: np.ndarray, center: Any) -> Any:
        """The result from the rows of every task index, in order (and f(x) where computed)."""
        return space.assemble(rows, np.shape(center) if self._vector else ())

    def _loop_only(self, steps: list) -> str | None:
        """Why this gradient needs the loop evaluator, if it does."""
        if self._vector:
            return "a Jacobian"
        if self.on_failure != "raise":
            return f"on_failure={self.on_failure!r}"
        if self.bounds is not None:
            return "bounds"
        return None

    # -- one call ------------------------------------------------------------------------------

    def _compute(self, x: Any, args: tuple, want_value: bool) -> tuple[Any, Any]:
        if not self._finalizer.alive:
            raise ValueError(f"this {type(self).__name__} is closed")
        self._calls += 1
        space = ParamSpace(x)
        steps = resolve_steps(self.h, space.keys, space.labels)
        evaluator = self._evaluator_name(x, steps)
        bound = bind(self.f, args, x)   # also checks a model's loss's arguments before any work
        job = Job(evaluator, self.scheme.name, tuple(steps), self._options(space, evaluator),
                  vector=self._vector)
        count = self._task_count(space)
        want_center = want_value or self._vector or self._needs_center(evaluator)
        where = self._planner.where(_signature(space, evaluator), count)
        if where == "estimate":
            where = self._planner.estimate(self._time_one_task(space, bound, job, count), count)
        started = time.perf_counter()
        if where == "parallel":
            center, rows, report, shipping = self._on_workers(space, args, bound, job, count,
                                                              want_center)
        else:
            (center, rows, report), shipping = self._in_process(space, bound, job, count,
                                                                want_center), 0.0
        elapsed = time.perf_counter() - started
        self._planner.record(where, elapsed - shipping)
        if count:
            workers = self._planner.plan.workers if where == "parallel" else 1
            self._entry_seconds = (elapsed - shipping) * workers / count
        self._tell(space, report)
        return (center if want_value else None), self._assemble(space, rows, center)

    def _in_process(self, space: ParamSpace, f: Callable, job: Job, count: int, want_center: bool):
        """Evaluate here, on the caller's arrays, restored afterwards whatever `f` does.

        Returns ``(f(x) or None, rows, report)``; `f(x)` is computed once, first.
        """
        cache: dict = {}
        with space.restored():
            center = evaluate(job, f, space, CENTER, cache)[0] if want_center else None
            rows, report = evaluate(job, f, space, (0, count), cache)
        return center, rows, report

    def _time_one_task(self, space: ParamSpace, f: Callable, job: Job, count: int) -> float:
        started = time.perf_counter()
        with space.restored():
            evaluate(job, f, space, (count - 1, count), {})
        return time.perf_counter() - started

    def _on_workers(self, space: ParamSpace, args: tuple, f: Callable, job: Job, count: int,
                    want_center: bool):
        """Evaluate on the workers, verified; ``(f(x) or None, rows, report, seconds shipping)``."""
        try:
            return self._run_checked(space, args, f, job, count, want_center)
        except _StateChanged as changed:
            if changed.fresh:
                raise self._not_shipped(space, changed) from None
            self._link.reship()
            self._probed = None
            self._warn_reshipped()
        try:
            return self._run_checked(space, args, f, job, count, want_center)
        except _StateChanged as changed:
            raise self._not_shipped(space, changed) from None

    def _run_checked(self, space: ParamSpace, args: tuple, f: Callable, job: Job, count: int,
                     want_center: bool):
        chunks = self._chunks(space, job.evaluator, count)
        signature = _signature(space, job.evaluator)
        check = self.check_state
        mine: dict[int, Any] = {}     # this process's own values at the checked points
        checks: dict[int, Any] = {}   # the checked tasks, by number
        if check and self._probed != signature:
            checks[_PROBE_TASK] = Point(_probe_values(space, self.bounds))

        def here(tasks: dict[int, Any]) -> Callable[[], None]:
            def evaluate_here() -> None:
                for number, point in tasks.items():
                    mine[number] = value_at(f, space, point.values, self._vector)
            return evaluate_here

        shipping, center = 0.0, None
        if self._needs_center(job.evaluator):
            # f(x) first, once, so that every chunk uses the same centre: n + 1 calls of f
            first = {_CENTER_TASK: CENTER, **checks}
            theirs = {_CENTER_TASK: Point(None), **checks} if check else {}
            results, shipping = self._link.run(self.f, space, args, job, first, signature,
                                               self._calls, here(theirs))
            self._verify(mine, results, space)
            mine.clear()
            center, checks = results[_CENTER_TASK][0], {}
            job = replace(job, center=center)
        tasks: dict[int, Any] = dict(enumerate(chunks))
        mine_now: dict[int, Any] = {}
        if center is None and want_center:
            tasks[_CENTER_TASK] = CENTER
            mine_now[_CENTER_TASK] = Point(None)
        elif center is None and check:
            tasks[_CHECK_TASK] = mine_now[_CHECK_TASK] = Point(None)
        tasks.update(checks)
        mine_now.update(checks)
        results, more = self._link.run(self.f, space, args, job, tasks, signature, self._calls,
                                       here(mine_now) if check else None)
        if check:
            self._verify(mine, results, space)
            self._probed = signature
        if center is None and want_center:
            center = results[_CENTER_TASK][0]
        report = Report()
        for number in range(len(chunks)):
            report.merge(results[number][1])
        rows = np.concatenate([results[number][0] for number in range(len(chunks))]) if chunks \
            else np.zeros((0,))
        return center, rows, report, shipping + more

    def _verify(self, mine: dict[int, Any], results: dict[int, Any], space: ParamSpace) -> None:
        """Raise `_StateChanged` where a worker's value differs from this process's in any bit."""
        fresh = self._link.shipped_now
        for number, ours in mine.items():
            theirs = results[number][0]
            if not _identical(ours, theirs):
                what = "f at the state probe's point" if number == _PROBE_TASK else "f(x)"
                raise _StateChanged(what, ours, theirs, fresh or number == _PROBE_TASK)

    def _chunks(self, space: ParamSpace, evaluator: str, count: int | None = None
                ) -> list[tuple[int, int]]:
        """The call's chunks over the task index space, after sizing the pool to them."""
        count = self._task_count(space) if count is None else count
        wanted = len(self._chunks_for(count, evaluator, self.workers))
        workers = self._link.workers_for(min(self.workers, max(wanted, 1)))
        self._planner.use_workers(workers)
        return self._chunks_for(count, evaluator, workers)

    def _chunks_for(self, count: int, evaluator: str, workers: int) -> list[tuple[int, int]]:
        ex = self.execution
        if ex.chunk_size is not None:
            return plan_chunks(count, workers, chunk_size=ex.chunk_size)
        per_worker = ex.chunks_per_worker
        if per_worker is None:
            per_worker = default_chunks_per_worker(evaluator, self._entry_seconds, count, workers)
        return plan_chunks(count, workers, per_worker)

    # -- what the caller is told --------------------------------------------------------------

    def _tell(self, space: ParamSpace, report: Report) -> None:
        """Warn once per call about replaced evaluations and steps that are not `h`."""
        self.failures = [Failure(space.describe(flat), f"x_i {'+' if m > 0 else '-'} {abs(m)}*h",
                                 error, message)
                         for flat, m, error, message in sorted(report.failures)]
        if self.failures:
            listed = "; ".join(f"{f.entry} at {f.side}: {f.error}: {f.message}"
                               for f in self.failures[:10])
            more = f" (and {len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
            warn_user(f"{len(self.failures)} evaluation(s) of `f` failed and were replaced "
                      f"(on_failure={self.on_failure!r}): {listed}{more}", NumericalFallbackWarning)
        if report.step_deviation > _STEP_TOLERANCE:
            warn_user(f"the step actually stored, dtype(x_i + h) - x_i, differs from `h` by "
                      f"up to {report.step_deviation:.1%} of h: the difference is divided by "
                      "the nominal h (the teaching text's formula). h='auto' divides by the "
                      "stored step", StepSizeWarning)

    def _warn_reshipped(self) -> None:
        if self._warned_reship:
            return
        self._warned_reship = True
        warn_user("`f` computes another f(x) here than the workers' copy of it, shipped on an "
                  "earlier call: state that `f` reads changed since (a closure over a new "
                  "mini-batch, say). `f` and `x` were shipped again and the call repeated, so the "
                  "result is right, but each such call ships the whole of `f`. Pass what changes "
                  "between calls as arguments instead: g(x, batch, labels) with "
                  "f(x, batch, labels). (Said once per gradient.)")

    def _not_shipped(self, space: ParamSpace, changed: _StateChanged) -> StateNotShippedError:
        self._link.reship()
        self._probed = None
        return StateNotShippedError(
            f"the workers computed {_shown(changed.theirs)} for {changed.what}, but this process "
            f"computes {_shown(changed.ours)}, on a freshly shipped copy of `f` and `x`, so the "
            "workers' gradient would be wrong. Their copy of `f` does not compute what `f` "
            "computes here: `f` reads state that did not travel with it (a module-level net or "
            "array of an importable module, which pickle sends by reference, so each worker "
            "uses its own import-time copy), or `f` is not deterministic, or `f` changes state (or `x`) "
            "when called. Pass the state through `x` or `args`, or close over it in a function "
            "(a closure or lambda), which is shipped together with `x`. If `f` is not "
            "deterministic, pass check_state=False.")


def _probe_values(space: ParamSpace, bounds: tuple | None) -> tuple[np.ndarray, ...]:
    """A point where every entry of `x` moves (inside `bounds`): x_i + s * max(1, |x_i|) / 1024."""
    limits = bounds_per_array(bounds, space) if bounds is not None else None
    values = []
    for position, array in enumerate(space.arrays):
        moved = array + (_PROBE_SCALE * np.maximum(1.0, np.abs(array))).astype(array.dtype)
        if limits is not None:
            lower, upper = limits[position]
            back = array - (moved - array)
            moved = np.where(moved <= upper, moved, np.where(back >= lower, back, array))
        values.append(np.asarray(moved, dtype=array.dtype))
    return tuple(values)


def _identical(ours: Any, theirs: Any) -> bool:
    if isinstance(ours, Raised) or isinstance(theirs, Raised):
        return ours == theirs
    return np.array_equal(np.asarray(ours), np.asarray(theirs), equal_nan=True) and \
        np.shape(ours) == np.shape(theirs)


def _shown(value: Any) -> str:
    if isinstance(value, Raised):
        return f"an error ({value.error}: {value.message})"
    return repr(value)


def _signature(space: ParamSpace, evaluator: str) -> tuple:
    """What the workers' resident copy depends on: the structure, not the values."""
    return (type(space.structure), tuple(space.keys), evaluator,
            tuple((a.shape, a.dtype.str, a.strides) for a in space.arrays))


class Jacobian(Gradient):
    """The Jacobian of a vector-valued ``f(x, *args)`` with respect to `x`, on resident workers.

    Everything as `Gradient` (options, exactness, lifetime), for an `f` that returns an
    array of any shape (flattened in C order, m entries). ``J(x, *args)`` returns, for
    a 1-D `x` of n entries, an array of shape ``(m, n)``; in general, `x`'s structure
    with each member of shape ``out_shape + member.shape``. ``J.value_and_grad`` returns
    ``(f(x), jacobian)``. Use as ``scipy.optimize.least_squares(fun, x0, jac=J)``.
    Always the loop evaluator; ``f(x)`` is evaluated once per call, with the perturbations.

    Examples
    --------
    >>> import numpy as np
    >>> with Jacobian(lambda v: np.array([v[0] * v[1], v[0] ** 2]), workers=2) as J:
    ...     np.round(J(np.array([2.0, 3.0])), 6)
    array([[3., 2.],
           [4., 0.]])
    """

    _vector = True
