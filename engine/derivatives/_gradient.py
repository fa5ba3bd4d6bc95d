"""`Gradient`: a numerical gradient configured once and called many times, its workers resident.

An optimizer or a training loop calls the gradient thousands of times with new values
of the same parameters. A `Gradient` ships `f` and the structure of `x` to its workers
once; every later call sends only the new values of `x`'s arrays (through shared memory,
copied into each worker's resident arrays in place) and the call's extra arguments, and
gets chunks of derivatives back over a pipe (`engine._backends`). When the first calls
show that the workers lose to evaluating in this process, it evaluates in this process
and says so (`Gradient.plan`).

The numbers never depend on where they were computed: every evaluator gives
bit-for-bit the same derivatives at any worker count, in-process or not, and the loop
evaluator gives exactly `numerical_gradient`'s.
"""
from __future__ import annotations

import pickle
import time
import uuid
import warnings
import weakref
from contextlib import nullcontext
from dataclasses import replace
from typing import Any, Callable, NamedTuple

import numpy as np

from ..run._threads import one_blas_thread
from ..run._worker import Job
from ..run._backends import make_pool, shared_pool
from ..batched._batched import DEFAULT_BLOCK_MEMORY
from ..batched._detect import AUTO_EVALUATOR, EVALUATOR_CHOICES, bind, choose_evaluator, get_evaluator
from .._errors import (NumericalFallbackWarning, StateNotShippedError, StepSizeWarning,
                     WorkerLost, WorkerLostError)
from ..fd._evaluators import ON_FAILURE, LoopOptions, Report, checked_output, loss_at
from ..run._execution import Execution, check_positive_int
from ..run._payload import dumps_bundle
from ..run._planning import Plan, Planner, default_chunks_per_worker, plan_chunks
from ..fd._schemes import AUTO, DEFAULT_SCHEME, DEFAULT_STEP, check_step, get_scheme, resolve_steps
from ..fd._space import ParamSpace

__all__ = ["Gradient", "Jacobian", "Failure"]

CENTER = -1                  # the task number of f(x) itself
_STEP_TOLERANCE = 0.01       # warn when the stored step differs from h by more than this share


class Failure(NamedTuple):
    """An evaluation of `f` that failed and was replaced (see ``on_failure``)."""

    entry: str      # e.g. "x['w1'][2, 3]"
    side: str       # "x_i + 1*h" or "x_i - 1*h"
    error: str      # the exception's type name (FloatingPointError for a non-finite value)
    message: str


class Gradient:
    """The numerical gradient of ``f(x, *args)`` with respect to `x`, on resident workers.

    Parameters
    ----------
    f : callable
        ``f(x, *args) -> scalar``. Shipped to the workers once, with everything it
        references; between calls only `x`'s values and `args` travel, so state that `f`
        reads must come through `x` or `args` (or call `reship`). A model's own loss,
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
        Whenever `f` and `x` are shipped, compute one entry in this process too and
        raise `StateNotShippedError` unless the workers' value is identical.
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
                 execution: Execution | None = None, **execution_options: Any):
        if not callable(f):
            raise TypeError(f"`f` must be callable, got {type(f).__name__}")
        if not isinstance(h, dict) and not (isinstance(h, str) and h == AUTO):
            check_step(h)
        if on_failure not in ON_FAILURE:
            raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}")
        if bounds is not None and not (isinstance(bounds, tuple) and len(bounds) == 2):
            raise ValueError(f"`bounds` must be a pair (lower, upper), got {bounds!r}")
        self.on_failure, self.bounds = on_failure, bounds
        self.failures: list[Failure] = []   # the last call's replaced evaluations
        if evaluator not in EVALUATOR_CHOICES:
            raise ValueError(f"`evaluator` must be one of {EVALUATOR_CHOICES}, "
                             f"got {evaluator!r}")
        if not isinstance(check_state, (bool, np.bool_)):
            raise ValueError(f"`check_state` must be True or False, got {check_state!r}")
        self.f, self.h, self.evaluator = f, h, evaluator
        self.scheme = get_scheme(scheme)
        self.block_memory = check_positive_int("block_memory", block_memory)
        self.check_state = bool(check_state)
        self.execution = Execution.from_options(execution, **execution_options)
        self.workers = self.execution.n_workers
        self._resources = _Resources(uuid.uuid4().hex)
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._shipped = None         # (pool, generation, signature) of what the workers hold
        self._probe = None           # (flat entry, value computed here), checked after a ship
        self._planner = Planner(self.execution, self.workers)
        self._entry_seconds = None   # measured seconds per entry, for the chunking
        self._calls = 0              # calls so far; values are sent to the workers once per call
        self._sent = None            # (call, pool generation) whose values the workers hold

    # -- calling -----------------------------------------------------------------------------

    def __call__(self, x: Any, *args: Any) -> Any:
        return self._compute(x, args, want_value=False)[1]

    def value_and_grad(self, x: Any, *args: Any) -> tuple[float, Any]:
        """``(f(x, *args), gradient)``; `f(x)` is computed with the perturbations, once."""
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
        self._shipped = None

    def close(self) -> None:
        """Stop this gradient's workers and free its shared memory. Idempotent."""
        self._finalizer()

    def __enter__(self) -> Gradient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Gradient({getattr(self.f, '__name__', type(self.f).__name__)}, "
                f"scheme={self.scheme.name!r}, workers={self.workers}, plan={self.plan})")

    # -- one call ------------------------------------------------------------------------------

    def _compute(self, x: Any, args: tuple, want_value: bool) -> tuple[float | None, Any]:
        if not self._finalizer.alive:
            raise ValueError("this Gradient is closed")
        self._calls += 1
        space = ParamSpace(x)
        steps = resolve_steps(self.h, space.keys, space.labels)
        evaluator = choose_evaluator(self.evaluator, self.f, x, loop_only=self._loop_only(steps))
        bound = bind(self.f, args, x)   # also checks a model's loss's arguments before any work
        if evaluator == "batched":
            options = (("block_memory", self.block_memory),)
        else:
            loop = LoopOptions(self.on_failure, _bounds_per_array(self.bounds, space), self._vector)
            options = (("loop", loop),)
        job = Job(evaluator, self.scheme.name, tuple(steps), options, vector=self._vector)
        where = self._planner.where(_signature(space, evaluator), space.size)
        if where == "estimate":
            where = self._planner.estimate(self._time_one_entry(space, args, job), space.size)
        started = time.perf_counter()
        report = Report()
        if where == "parallel":
            value, values, shipping = self._on_workers(space, args, job, report, want_value)
        else:
            (value, values), shipping = self._in_process(space, bound, job, report, want_value), 0.0
        elapsed = time.perf_counter() - started
        self._planner.record(where, elapsed - shipping)
        if space.size:
            workers = self._planner.plan.workers if where == "parallel" else 1
            self._entry_seconds = (elapsed - shipping) * workers / space.size
        self._tell(space, report)
        out_shape = np.shape(value) if self._vector else ()
        return (value if want_value else None), space.assemble(values, out_shape)

    def _loop_only(self, steps: list) -> str | None:
        """Why this gradient needs the loop evaluator, if it does."""
        if self._vector:
            return "a Jacobian"
        if self.on_failure != "raise":
            return f"on_failure={self.on_failure!r}"
        if self.bounds is not None:
            return "bounds"
        return None

    def _needs_center(self, job: Job) -> bool:
        """f(x) is computed once per call, before the chunks, when they all need it."""
        return job.evaluator == "loop" and (
            self.scheme.uses_center or self.bounds is not None or self.on_failure == "one-sided")

    def _tell(self, space: ParamSpace, report: Report) -> None:
        """Warn once per call about replaced evaluations and steps that are not `h`."""
        self.failures = [Failure(space.describe(flat), f"x_i {'+' if m > 0 else '-'} {abs(m)}*h",
                                 error, message)
                         for flat, m, error, message in sorted(report.failures)]
        if self.failures:
            listed = "; ".join(f"{f.entry} at {f.side}: {f.error}: {f.message}"
                               for f in self.failures[:10])
            more = f" (and {len(self.failures) - 10} more)" if len(self.failures) > 10 else ""
            warnings.warn(f"{len(self.failures)} evaluation(s) of `f` failed and were replaced "
                          f"(on_failure={self.on_failure!r}): {listed}{more}",
                          NumericalFallbackWarning, stacklevel=4)
        if report.step_deviation > _STEP_TOLERANCE:
            warnings.warn(f"the step actually stored, dtype(x_i + h) - x_i, differs from `h` by "
                          f"up to {report.step_deviation:.1%} of h: the difference is divided by "
                          "the nominal h (the teaching text's formula). h='auto' divides by the "
                          "stored step", StepSizeWarning, stacklevel=4)

    def _in_process(self, space: ParamSpace, f: Callable, job: Job, report: Report,
                    want_value: bool):
        """Evaluate here, on the caller's arrays, which are restored afterwards whatever `f` does.

        `f` is ``f(x, *args)`` bound to one argument (`engine._evaluators.bind`). Returns
        ``(f(x), values)``; `f(x)` is computed once, first, where it is used.
        """
        cache = {}
        options = dict(job.options)
        if job.evaluator == "loop":
            options["report"] = report
        with space.restored(), one_blas_thread():
            value = None
            if want_value or self._vector or self._needs_center(job):   # a Jacobian's shape
                value = cache["center"] = loss_at(f, space, "the unperturbed x",
                                                  checked_output if self._vector else None)
            values = get_evaluator(job.evaluator)(f, space, list(job.steps), self.scheme, 0,
                                                  space.size, cache, **options)
        return value, values

    def _time_one_entry(self, space: ParamSpace, args: tuple, job: Job) -> float:
        started = time.perf_counter()
        self._evaluate_here(space, args, job, space.size - 1)
        return time.perf_counter() - started

    def _evaluate_here(self, space: ParamSpace, args: tuple, job: Job, entry: int):
        """One entry's derivative, computed in this process (the caller's arrays restored)."""
        f = bind(self.f, args, space.structure)
        cache = {} if job.center is None else {"center": job.center}
        options = dict(job.options)
        if job.evaluator == "loop":
            options["report"] = Report()
        with space.restored(), one_blas_thread():
            return get_evaluator(job.evaluator)(f, space, list(job.steps), self.scheme, entry,
                                                entry + 1, cache, **options)[0]

    def _on_workers(self, space: ParamSpace, args: tuple, job: Job, report: Report,
                    want_value: bool):
        """Evaluate on the workers; ``(f(x) or None, values, seconds spent shipping)``."""
        chunks = self._chunks(space, job.evaluator)
        tasks: dict[int, Any] = dict(enumerate(chunks))
        shipping = 0.0
        if self._needs_center(job):
            # f(x) first, once, so that every chunk uses the same centre: n + 1 calls of f
            results, shipping = self._run(space, args, job, {CENTER: None})
            job = replace(job, center=results[CENTER][0])
        elif want_value or self._vector:   # f(x), in the same batch (a Jacobian's shape)
            tasks[CENTER] = None
        results, more = self._run(space, args, job, tasks)
        value = job.center if job.center is not None else results.get(CENTER, (None,))[0]
        for number in range(len(chunks)):
            if results[number][1] is not None:
                report.merge(results[number][1])
        values = np.concatenate([results[number][0] for number in range(len(chunks))])
        if self._probe is not None:
            self._check_probe(space, values)
        return value, values, shipping + more

    def _run(self, space: ParamSpace, args: tuple, job: Job, tasks: dict[int, Any]):
        """Run `tasks` on the workers, re-running those lost with dead workers.

        Returns ``(results, seconds spent shipping)``.
        """
        pending, results = dict(tasks), {}
        bar = _progress_bar(len(tasks)) if self.execution.progress else None
        # Threads: the BLAS limit is set here too, since OpenBLAS (0.3.31) ignores one set by
        # a thread other than the main one, so worker threads rely on their caller's.
        limit = one_blas_thread() if self.execution.backend == "threading" else nullcontext()
        try:
            with limit:
                return self._attempts(space, args, job, pending, results, bar)
        finally:
            if bar is not None:
                bar.close()

    def _attempts(self, space, args, job, pending: dict, results: dict, bar):
        """Run `pending` to completion, on fresh workers after a loss; (results, seconds shipping)."""
        shipping, retries = 0.0, self.execution.retries
        for attempt in range(retries + 1):
            pool = self._pool(space, job.evaluator)
            try:
                with pool.lock:
                    stream, seconds = self._stream(pool, space, args, job, dict(pending))
                    shipping += seconds
                    for number, values in stream:
                        results[number] = values
                        del pending[number]
                        if bar is not None:
                            bar.update()
                return results, shipping
            except WorkerLost as lost:
                self._shipped = None
                if attempt == retries:
                    raise WorkerLostError(_lost_message(pending, retries, lost)) from lost
        raise AssertionError("unreachable")

    def _stream(self, pool, space: ParamSpace, args: tuple, job: Job, tasks: dict):
        """The pool's stream of finished tasks, after shipping what the workers lack."""
        key = self._resources.key
        started = time.perf_counter()
        if not pool.resident:   # the bundle travels with every call
            self._probe = self._probe_entry(space, args, job) if self.check_state else None
            bundle = dumps_bundle(self.f, space.structure, space.arrays, args)
            return pool.run_once(job, bundle, tasks), time.perf_counter() - started
        pool.ensure_started()
        signature = _signature(space, job.evaluator)
        shipping = 0.0
        if self._shipped != (id(pool), pool.generation, signature) or not pool.holds(key):
            self._probe = self._probe_entry(space, args, job) if self.check_state else None
            pool.ship(key, dumps_bundle(self.f, space.structure, space.arrays), space.arrays)
            self._shipped = (id(pool), pool.generation, signature)
            shipping = time.perf_counter() - started
        if shipping or self._sent != (self._calls, pool.generation):
            pool.update(key, space.arrays, pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL))
            self._sent = (self._calls, pool.generation)
        return pool.run(key, job, tasks), shipping

    def _pool(self, space: ParamSpace, evaluator: str):
        """This gradient's pool: started on first use, with no more workers than chunks."""
        resources = self._resources
        if resources.pool is None:
            workers = min(self.workers, len(self._chunks(space, evaluator)))
            ex = self.execution
            make = shared_pool if resources.shared else make_pool
            resources.pool = make(ex.backend, workers, ex.scheduler)
            self._planner.workers = workers
            self._planner.plan = replace(self._planner.plan, workers=workers)
        return resources.pool

    def _chunks(self, space: ParamSpace, evaluator: str) -> list[tuple[int, int]]:
        ex = self.execution
        workers = self._planner.workers
        if ex.chunk_size is not None:
            return plan_chunks(space.size, workers, chunk_size=ex.chunk_size)
        per_worker = ex.chunks_per_worker
        if per_worker is None:
            per_worker = default_chunks_per_worker(evaluator, self._entry_seconds, space.size,
                                                    workers)
        return plan_chunks(space.size, workers, per_worker)

    # -- the state probe -------------------------------------------------------------------------

    def _probe_entry(self, space: ParamSpace, args: tuple, job: Job) -> tuple[int, Any]:
        entry = space.size - 1
        return entry, self._evaluate_here(space, args, job, entry)

    def _check_probe(self, space: ParamSpace, values: np.ndarray) -> None:
        (entry, expected), self._probe = self._probe, None
        got = values[entry]
        if np.array_equal(expected, got, equal_nan=True):
            return
        self._shipped = None
        raise StateNotShippedError(
            f"the workers computed {got!r} for {space.describe(entry)}, but the same entry "
            f"computed in this process is {expected!r}, so the workers' gradient would be "
            "wrong. The workers' copy of `f` does not compute what `f` computes here: `f` "
            "reads state that did not travel with `x` (a module-level net in an importable "
            "module, say, which pickle sends by reference, so each worker uses its own "
            "import-time copy; or a global changed after import), or `f` is not "
            "deterministic. Pass the state through `x` or `args`, or close over it in a "
            "function (a closure or lambda), which is shipped together with `x`. If `f` is "
            "not deterministic, pass check_state=False."
        )


def _bounds_per_array(bounds: tuple | None, space: ParamSpace) -> tuple | None:
    """``(lower, upper)`` arrays per parameter array, checked to hold `x`; None without bounds.

    Raises
    ------
    ValueError
        If a bound does not fit `x`'s structure or shapes, or `x` lies outside.
    """
    if bounds is None:
        return None
    per_side = [_members_like(side, space, name) for side, name in zip(bounds, ("lower", "upper"))]
    result = []
    for position, array in enumerate(space.arrays):
        lower, upper = (side[position] for side in per_side)
        try:
            lower, upper = (np.broadcast_to(np.asarray(b, dtype=np.float64), array.shape)
                            for b in (lower, upper))
        except ValueError:
            raise ValueError(f"`bounds` for {space.labels[position]} do not broadcast to its "
                             f"shape {array.shape}") from None
        outside = np.flatnonzero(((array < lower) | (array > upper)).reshape(-1))
        if outside.size:
            flat = int(space.offsets[position]) + int(outside[0])
            raise ValueError(f"{space.describe(flat)} lies outside `bounds` "
                             f"({outside.size} entries of {space.labels[position]} do)")
        result.append((lower, upper))
    return tuple(result)


def _members_like(side: Any, space: ParamSpace, name: str) -> list:
    if isinstance(side, dict):
        if set(side) != set(space.keys):
            raise ValueError(f"`bounds` {name} must name exactly the keys of `x`")
        return [side[key] for key in space.keys]
    if isinstance(side, (list, tuple)) and not isinstance(space.structure, np.ndarray):
        if len(side) != len(space.arrays):
            raise ValueError(f"`bounds` {name} must have one entry per member of `x`")
        return list(side)
    return [side] * len(space.arrays)


def _signature(space: ParamSpace, evaluator: str) -> tuple:
    """What the workers' resident copy depends on: the structure, not the values."""
    return (type(space.structure), tuple(space.keys), evaluator,
            tuple((a.shape, a.dtype.str, a.strides) for a in space.arrays))


class _Resources:
    """What a `Gradient` holds outside itself; released by `close`, the GC, or at exit."""

    def __init__(self, key: str, shared: bool = False):
        self.key, self.shared, self.pool = key, shared, None

    def release(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        if self.shared and pool.resident:   # the pool serves other one-shot calls too
            pool.drop(self.key)
        else:
            pool.close()


def _lost_message(pending: dict, retries: int, lost: Exception) -> str:
    entries = sum(hi - lo for lo, hi in (task for task in pending.values() if task is not None))
    return (f"worker processes died and {len(pending)} chunk(s) ({entries} entries) were "
            f"still lost after {retries} retries on fresh workers ({lost}); no gradient is "
            "returned. Killed workers usually mean running out of memory: try fewer workers.")


def _progress_bar(total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="chunk", desc="gradient", leave=False)


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
