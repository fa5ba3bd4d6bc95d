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
from typing import Any, Callable

import numpy as np

from .._errors import StateNotShippedError, warn_user
from ..batched._batched import DEFAULT_BLOCK_MEMORY
from ..batched._detect import AUTO_EVALUATOR, EVALUATOR_CHOICES, bind, choose_evaluator
from ..fd._bounds import bounds_per_array, check_bounds_option
from ..fd._evaluators import ON_FAILURE, LoopOptions
from ..fd._schemes import AUTO, DEFAULT_SCHEME, DEFAULT_STEP, check_step, get_scheme, resolve_steps
from ..fd._space import ParamSpace
from ..run._blas import one_blas_thread
from ..run._execution import Execution, check_positive_int
from ..run._job import CENTER, BatchedOptions, Job, evaluate
from ..run._planning import Plan, Planner, default_chunks_per_worker, plan_chunks
from ._check import WorkerCall
from ._docs import shared_doc
from ._failures import Failure, tell
from ._link import WorkerLink
from ._side_effects import SIDE_EFFECTS, EffectsProbe, Snapshot, check_side_effects_option

__all__ = ["Gradient", "Jacobian"]

@shared_doc
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
%(options)s
    Calling
    -------
    ``g(x, *args)`` returns the gradient, with `x`'s structure, shapes and dtypes; `x` is
    an ndarray or a dict / list / tuple of writable floating arrays, never left changed.
    ``g.value_and_grad(x, *args)`` returns ``(f(x, *args), gradient)``, `f(x)` computed
    in the same parallel batch. Use as ``scipy.optimize.minimize(g.value_and_grad, x0,
    jac=True)`` or ``minimize(f, x0, jac=g)``.

%(contract)s
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
                 side_effects: str = SIDE_EFFECTS[0], execution: Execution | None = None,
                 _shared_pool: bool = False, **execution_options: Any):
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
        self.side_effects = check_side_effects_option(side_effects)
        self.execution = Execution.from_options(execution, **execution_options)
        self.workers = self.execution.n_workers
        self._link = WorkerLink(self.execution, shared=_shared_pool)   # one-shot calls share one
        self._workers = WorkerCall(self._link, self.check_state)
        self._finalizer = weakref.finalize(self, self._link.release)
        self._planner = Planner(self.execution, self.workers)
        self._entry_seconds = None   # measured seconds per task, for the chunking
        self._calls = 0              # calls so far; values are sent to the workers once per call
        self._effects_probed = False  # the first call tests f for state it accumulates
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
            self._workers.reship()

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
        kept = Snapshot(self.f, args, space) if self.side_effects == "restore" else None
        try:
            center, rows, report = self._evaluate(space, args, bound, job, count, evaluator,
                                                  want_center)
        finally:
            if kept is not None:
                _restore(kept)
        self.failures = tell(space, report, self.on_failure)
        return (center if want_value else None), self._assemble(space, rows, center)

    def _evaluate(self, space: ParamSpace, args: tuple, bound: Callable, job: Job, count: int,
                  evaluator: str, want_center: bool):
        """Plan, evaluate here or on the workers, record the time; ``(f(x) or None, rows, report)``."""
        where = self._planner.where(_signature(space, evaluator), count, black_box=evaluator == "loop")
        if where == "estimate":
            where = self._planner.estimate(self._time_one_task(space, bound, job, count), count)
        probe = self._effects_probe(args, space)
        started = time.perf_counter()
        if where == "parallel":
            center, rows, report, shipping = self._on_workers(space, args, bound, job, count,
                                                              want_center, probe)
        else:
            if probe is not None:
                probe.run(bound)
                probe.tell()
            (center, rows, report), shipping = self._in_process(space, bound, job, count,
                                                                want_center), 0.0
        elapsed = time.perf_counter() - started
        self._planner.record(where, elapsed - shipping)
        if count:
            workers = self._planner.plan.workers if where == "parallel" else 1
            self._entry_seconds = (elapsed - shipping) * workers / count
        return center, rows, report

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
        with one_blas_thread():   # the first use inspects the BLAS libraries (~30 ms): not f's cost
            pass
        started = time.perf_counter()
        with space.restored():
            evaluate(job, f, space, (count - 1, count), {})
        return time.perf_counter() - started

    def _effects_probe(self, args: tuple, space: ParamSpace) -> EffectsProbe | None:
        """The first call's test of `f` for side effects and determinism (None on later calls)."""
        if self._effects_probed or not self.check_state:   # check_state=False: f never runs here
            return None
        self._effects_probed = True
        return EffectsProbe(self.f, args, space, vector=self._vector,
                            warn=self.side_effects == "warn")

    def _on_workers(self, space: ParamSpace, args: tuple, f: Callable, job: Job, count: int,
                    want_center: bool, probe: EffectsProbe | None = None):
        """Evaluate on the workers, verified; ``(f(x) or None, rows, report, seconds shipping)``.

        The side-effect `probe` runs here while the workers work; before them on threads,
        which share module state with this thread (its restoring must not race them).
        """
        if probe is not None and self.execution.backend == "threading":
            probe.run(f)
            probe.tell()   # a non-deterministic f is refused before the threads start
            probe = None
        try:
            result = self._workers.run(
                self.f, f, space, args, job, self._chunks(space, job.evaluator, count),
                _signature(space, job.evaluator), self._calls,
                needs_center=self._needs_center(job.evaluator), want_center=want_center,
                bounds=self.bounds, alongside=None if probe is None else lambda: probe.run(f))
        except StateNotShippedError:
            error = None if probe is None else probe.not_deterministic()
            if error is not None:   # the reason the workers disagreed: say that one
                raise error from None
            raise
        if probe is not None:
            probe.tell()
        return result

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


def _restore(kept: Snapshot) -> None:
    """``side_effects="restore"``: put the state back, and say what could not be."""
    failed = kept.restore()
    if failed:
        warn_user(f"side_effects='restore' could not put back {', '.join(failed)}: `f` changed it "
                  "and it cannot be set again (an item of a tuple, an attribute without a setter, "
                  "or an array too large to copy, compared by a digest only)")


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
