"""`Gradient`: a numerical gradient configured once and called many times, its workers resident.

An optimizer or a training loop calls the gradient thousands of times with new values
of the same parameters. A `Gradient` ships `f` and the structure of `x` to its workers
once; every later call sends only the new values of `x`'s arrays (through shared memory,
copied into each worker's resident arrays in place) and the call's extra arguments, and
gets chunks of derivatives back over a pipe (`engine.backends`). When the first calls
show that the workers lose to evaluating in this process, it evaluates in this process
and says so (`Gradient.plan`).

The numbers never depend on where they were computed: every evaluator gives
bit-for-bit the same derivatives at any worker count, in-process or not, and the loop
evaluator gives exactly `numerical_gradient`'s.
"""
from __future__ import annotations

import logging
import pickle
import time
import uuid
import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ._threads import one_blas_thread
from ._worker import Job
from .backends import make_pool, shared_pool
from .batched import DEFAULT_BLOCK_MEMORY
from .errors import StateNotShippedError, WorkerLost, WorkerLostError
from .evaluators import EVALUATOR_NAMES, bind, get_evaluator, is_model_objective, loss_at
from .execution import Execution, check_positive_int
from .model import ModelLoss
from .payload import dumps_bundle
from .schemes import DEFAULT_STEP, check_step, get_scheme, resolve_steps
from .space import ParamSpace, split_range

__all__ = ["Gradient", "Plan", "choose_evaluator", "plan_chunks"]

log = logging.getLogger("engine")

CENTER = -1                  # the task number of f(x) itself
_MIN_CHUNK_SECONDS = 0.01    # a chunk should carry at least this much work (a task costs ~0.1 ms)
_DEFAULT_CHUNKS_PER_WORKER = 4
_SLOW_CALL_SECONDS = 0.1     # an in-process call this slow is measured once, not twice
_CLEARLY_PARALLEL_SECONDS = 1.0   # an estimated in-process call this slow goes to the workers


@dataclass(frozen=True)
class Plan:
    """Where a `Gradient` evaluates, and why.

    Attributes
    ----------
    where : {"parallel", "in-process", "measuring"}
    workers : int
        Workers used on the parallel path.
    reason : str
    in_process_seconds, parallel_seconds : float or None
        The fastest measured call of each kind (seconds), where measured.
    """

    where: str
    workers: int
    reason: str
    in_process_seconds: float | None = None
    parallel_seconds: float | None = None

    def __str__(self) -> str:
        where = f"{self.workers} workers" if self.where == "parallel" else self.where
        return f"{where} ({self.reason})"


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
    h : float or dict, default 1e-4
        Step size, or a dict of per-array steps for a dict `x`.
    scheme : {"central", "forward", "central4"}, default "central"
    evaluator : {"auto", "loop", "batched"}, default "auto"
        ``"loop"`` calls `f` once per perturbation and works for any `f`; ``"batched"``
        evaluates blocks of perturbations through a layered model (``model.loss``, or a
        `engine.model.ModelLoss` over `x`); ``"auto"`` picks batched where it can.
    block_memory : int, default 256 MiB
        Batched evaluator: the most bytes of temporaries per worker.
    check_state : bool, default True
        Whenever `f` and `x` are shipped, compute one entry in this process too and
        raise `StateNotShippedError` unless the workers' value is identical.
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

    def __init__(self, f: Callable, *, h: float | dict = DEFAULT_STEP, scheme: str = "central",
                 evaluator: str = "auto", block_memory: int = DEFAULT_BLOCK_MEMORY,
                 check_state: bool = True, execution: Execution | None = None,
                 **execution_options: Any):
        if not callable(f):
            raise TypeError(f"`f` must be callable, got {type(f).__name__}")
        if not isinstance(h, dict):
            check_step(h)
        if evaluator not in ("auto",) + EVALUATOR_NAMES:
            raise ValueError(f"`evaluator` must be one of {('auto',) + EVALUATOR_NAMES}, "
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
        self._planner = _Planner(self.execution, self.workers)
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
        evaluator = choose_evaluator(self.evaluator, self.f, x)
        bind(self.f, args, x)   # checks the arguments of a model's loss before any work
        options = (("block_memory", self.block_memory),) if evaluator == "batched" else ()
        job = Job(evaluator, self.scheme.name, tuple(steps), options)
        where = self._planner.where(_signature(space, evaluator), space.size)
        if where == "estimate":
            where = self._planner.estimate(self._time_one_entry(space, args, job), space.size)
        started = time.perf_counter()
        if where == "parallel":
            value, values, shipping = self._on_workers(space, args, job, want_value)
        else:
            (value, values), shipping = self._in_process(space, args, job, want_value), 0.0
        elapsed = time.perf_counter() - started
        self._planner.record(where, elapsed - shipping)
        if space.size:
            workers = self._planner.plan.workers if where == "parallel" else 1
            self._entry_seconds = (elapsed - shipping) * workers / space.size
        return value, space.assemble(values)

    def _in_process(self, space: ParamSpace, args: tuple, job: Job, want_value: bool):
        """Evaluate here, on the caller's arrays, which are restored afterwards whatever `f` does."""
        f = bind(self.f, args, space.structure)
        cache = {}
        with _restored(space), one_blas_thread():
            value = None
            if want_value or self.scheme.uses_center:
                value = cache["center"] = loss_at(f, space, "the unperturbed x")
            values = get_evaluator(job.evaluator)(f, space, list(job.steps), self.scheme, 0,
                                                  space.size, cache, **dict(job.options))
        return (value if want_value else None), values

    def _time_one_entry(self, space: ParamSpace, args: tuple, job: Job) -> float:
        f = bind(self.f, args, space.structure)
        started = time.perf_counter()
        with _restored(space), one_blas_thread():
            get_evaluator(job.evaluator)(f, space, list(job.steps), self.scheme,
                                         space.size - 1, space.size, {}, **dict(job.options))
        return time.perf_counter() - started

    def _on_workers(self, space: ParamSpace, args: tuple, job: Job, want_value: bool):
        chunks = self._chunks(space, job.evaluator)
        tasks: dict[int, Any] = dict(enumerate(chunks))
        value, shipping = None, 0.0
        if self.scheme.uses_center and job.evaluator == "loop":
            # f(x) first, once, so that every chunk divides by the same centre: n + 1 calls of f
            results, shipping = self._run(space, args, job, {CENTER: None})
            value = float(results[CENTER][0])
            job = replace(job, center=value)
        elif want_value:
            tasks[CENTER] = None
        results, more = self._run(space, args, job, tasks)
        if want_value and value is None:
            value = float(results[CENTER][0])
        values = np.concatenate([results[number] for number in range(len(chunks))])
        if self._probe is not None:
            self._check_probe(space, values)
        return (value if want_value else None), values, shipping + more

    def _run(self, space: ParamSpace, args: tuple, job: Job, tasks: dict[int, Any]):
        """Run `tasks` on the workers, re-running those lost with dead workers; (results, seconds shipping)."""
        pending, results = dict(tasks), {}
        bar = _progress_bar(len(tasks)) if self.execution.progress else None
        # The BLAS limit is also set here: OpenBLAS (0.3.31) ignores one set by a thread
        # other than the main one, so worker threads rely on their caller's.
        try:
            with one_blas_thread():
                return self._attempts(space, args, job, pending, results, bar)
        finally:
            if bar is not None:
                bar.close()

    def _attempts(self, space, args, job, pending: dict, results: dict, bar):
        """Run `pending` to completion on the pool, on fresh workers after a loss; (results, seconds shipping)."""
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
            per_worker = _default_chunks_per_worker(evaluator, self._entry_seconds, space.size,
                                                    workers)
        return plan_chunks(space.size, workers, per_worker)

    # -- the state probe -------------------------------------------------------------------------

    def _probe_entry(self, space: ParamSpace, args: tuple, job: Job) -> tuple[int, float]:
        entry = space.size - 1
        f = bind(self.f, args, space.structure)
        cache = {} if job.center is None else {"center": job.center}
        with _restored(space), one_blas_thread():
            value = get_evaluator(job.evaluator)(f, space, list(job.steps), self.scheme, entry,
                                                 entry + 1, cache, **dict(job.options))[0]
        return entry, value

    def _check_probe(self, space: ParamSpace, values: np.ndarray) -> None:
        (entry, expected), self._probe = self._probe, None
        got = values[entry]
        if expected == got or (np.isnan(expected) and np.isnan(got)):
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


def choose_evaluator(evaluator: str, f: Any, x: Any) -> str:
    """Resolve ``"auto"`` to ``"batched"`` where `f` is a layered model's loss over `x`.

    Raises
    ------
    ValueError
        For an unknown name, or ``"batched"`` with an `f` it cannot evaluate.
    """
    batched_ok = (isinstance(f, ModelLoss) and f.params is x) or (
        is_model_objective(f) and isinstance(x, dict))
    if evaluator == "auto":
        return "batched" if batched_ok else "loop"
    if evaluator not in EVALUATOR_NAMES:
        raise ValueError(f"`evaluator` must be one of {('auto',) + EVALUATOR_NAMES}, got {evaluator!r}")
    if evaluator == "batched" and not batched_ok:
        raise ValueError(
            "evaluator='batched' needs `f` to be a layered model's loss: `model.loss` with a "
            "params dict as `x` (g(params, inputs, labels)), or an engine.model.ModelLoss "
            "over `x` (net.loss_function(inputs, labels) with x = net.params); use 'loop' "
            "for any other f")
    return evaluator


def plan_chunks(size: int, workers: int, chunks_per_worker: int = _DEFAULT_CHUNKS_PER_WORKER,
                chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges covering ``range(size)``.

    ``workers * chunks_per_worker`` chunks of near-equal length, or chunks of
    `chunk_size` entries (the last one shorter) when that is given.
    """
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
        return [(lo, min(lo + chunk_size, size)) for lo in range(0, size, chunk_size)]
    return split_range(size, workers * chunks_per_worker)


def _default_chunks_per_worker(evaluator: str, entry_seconds: float | None, size: int,
                               workers: int) -> int:
    if evaluator == "batched":
        return 1
    if entry_seconds is None:
        return _DEFAULT_CHUNKS_PER_WORKER
    estimated = entry_seconds * size
    return int(np.clip(estimated / (workers * _MIN_CHUNK_SECONDS), 1, _DEFAULT_CHUNKS_PER_WORKER))


def _signature(space: ParamSpace, evaluator: str) -> tuple:
    """What the workers' resident copy depends on: the structure, not the values."""
    return (type(space.structure), tuple(space.keys), evaluator,
            tuple((a.shape, a.dtype.str, a.strides) for a in space.arrays))


class _restored:
    """Put the arrays of `space` back as they were on exit, whatever `f` did to them."""

    def __init__(self, space: ParamSpace):
        self.arrays = space.arrays

    def __enter__(self):
        self.saved = [a.copy() for a in self.arrays]

    def __exit__(self, *exc_info):
        for array, saved in zip(self.arrays, self.saved):
            array[...] = saved
        return False


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


class _Planner:
    """Decides, from the first calls, whether the workers are worth it (``dispatch="auto"``)."""

    def __init__(self, execution: Execution, workers: int):
        self.mode, self.workers = execution.dispatch, workers
        self.signature = None
        self._reset()

    def _reset(self) -> None:
        self.samples = {"in-process": [], "parallel": []}
        if self.workers == 1:
            self.plan = Plan("in-process", 1, "workers=1")
        elif self.mode == "parallel":
            self.plan = Plan("parallel", self.workers, "dispatch='parallel'")
        elif self.mode == "in-process":
            self.plan = Plan("in-process", self.workers, "dispatch='in-process'")
        else:
            self.plan = Plan("measuring", self.workers, "the first calls are timed both ways")

    def where(self, signature: tuple, size: int) -> str:
        """``"parallel"``, ``"in-process"``, or ``"estimate"`` (time one entry first)."""
        if size <= 1:
            return "in-process"
        if signature != self.signature and self.mode == "auto" and self.workers > 1:
            self.signature = signature
            self._reset()
            if signature[2] == "loop":   # an unknown f: its cost decides whether to measure
                return "estimate"
        if self.plan.where != "measuring":
            return self.plan.where
        needed_in = 1 if any(s > _SLOW_CALL_SECONDS for s in self.samples["in-process"]) else 2
        return "in-process" if len(self.samples["in-process"]) < needed_in else "parallel"

    def estimate(self, entry_seconds: float, size: int) -> str:
        estimated = entry_seconds * size
        if estimated > _CLEARLY_PARALLEL_SECONDS:
            self._decide("parallel", f"estimated {estimated:.3g} s per call in-process")
            return "parallel"
        return self.where(self.signature, size)

    def record(self, where: str, seconds: float) -> None:
        if self.plan.where != "measuring":
            return
        self.samples[where].append(seconds)
        inside, outside = self.samples["in-process"], self.samples["parallel"]
        if len(outside) >= 2 and inside:
            best_in, best_out = min(inside), min(outside)
            if best_out < best_in:
                self._decide("parallel", f"measured {best_out * 1e3:.3g} ms per call on "
                             f"{self.workers} workers vs {best_in * 1e3:.3g} ms in-process",
                             best_in, best_out)
            else:
                self._decide("in-process", f"measured {best_in * 1e3:.3g} ms per call "
                             f"in-process vs {best_out * 1e3:.3g} ms on {self.workers} workers",
                             best_in, best_out)

    def _decide(self, where: str, reason: str, inside=None, outside=None) -> None:
        self.plan = Plan(where, self.workers, reason, inside, outside)
        log.info("numerical gradient plan: %s", self.plan)


def _lost_message(pending: dict, retries: int, lost: Exception) -> str:
    entries = sum(hi - lo for lo, hi in (task for task in pending.values() if task is not None))
    return (f"worker processes died and {len(pending)} chunk(s) ({entries} entries) were "
            f"still lost after {retries} retries on fresh workers ({lost}); no gradient is "
            "returned. Killed workers usually mean running out of memory: try fewer workers.")


def _progress_bar(total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="chunk", desc="gradient", leave=False)
