"""A derivative's link to its workers: the pool, what the workers hold, and running one call's tasks.

The link ships ``(f, x)`` when the workers lack it (a new pool, a new structure of `x`,
or `reship`), sends each call's values and arguments once, runs the tasks with retries
on fresh workers after a loss, and reports which of them shipped in this call (so the
caller checks that the workers' copy computes what `f` computes here).
"""
from __future__ import annotations

import time
import uuid
from contextlib import nullcontext
from typing import Any, Callable

import cloudpickle
import numpy as np

from .._errors import PayloadError, WorkerDied, WorkerLostError
from ..fd._space import ParamSpace
from ..run._backends import make_pool, shared_pool
from ..run._execution import Execution
from ..run._job import Job
from ..run._bundle import dumps_bundle
from ..run._blas import one_blas_thread

__all__ = ["WorkerLink", "lost_message"]


class WorkerLink:
    """What a derivative object holds outside itself; released by `release` (close, GC, exit).

    Parameters
    ----------
    execution : Execution
        Where chunks run (backend, scheduler, retries, progress).
    shared : bool
        Use the pool that one-shot calls share (and only drop this link's residents from
        it on release) instead of a pool of its own.
    """

    def __init__(self, execution: Execution, shared: bool = False):
        self.execution, self.shared = execution, shared
        self.key = uuid.uuid4().hex
        self.pool = None
        self.shipped_now = False     # the last run shipped (f, x) to the workers
        self._shipped = None         # (pool, generation, signature) of what the workers hold
        self._sent = None            # (call, generation) whose values the workers hold
        self._args_sent = None       # (generation, pickle, buffers) of the args the workers hold

    def reship(self) -> None:
        """Ship ``(f, x)`` again on the next run."""
        self._shipped = None

    def workers_for(self, wanted: int) -> int:
        """The pool's worker count, replacing a pool started smaller than `wanted` (at most configured)."""
        if self.pool is not None and self.pool.workers < wanted:
            self.release()
        if self.pool is None:
            make = shared_pool if self.shared else make_pool
            self.pool = make(self.execution.backend, wanted, self.execution.scheduler)
        return self.pool.workers

    def run(self, f: Callable, space: ParamSpace, args: tuple, job: Job, tasks: dict[int, Any],
            signature: tuple, call: int, while_waiting: Callable[[], None] | None = None):
        """Run `tasks` to completion; ``(results by task number, seconds spent shipping)``.

        Re-runs tasks lost with dead workers on fresh ones, at most ``execution.retries``
        times; `while_waiting` runs once in this process while the workers work.

        Raises
        ------
        WorkerLostError
            If tasks were still lost after the retries.
        """
        pending, results = dict(tasks), {}
        bar = _progress_bar(len(tasks)) if self.execution.progress else None
        # Threads: the BLAS limit is set here too, since OpenBLAS (0.3.31) ignores one set by
        # a thread other than the main one, so worker threads rely on their caller's.
        limit = one_blas_thread() if self.execution.backend == "threading" else nullcontext()
        shipping, retries = 0.0, self.execution.retries
        self.shipped_now = False
        try:
            with limit:
                for attempt in range(retries + 1):
                    pool = self.pool
                    try:
                        with pool.lock:
                            stream, seconds = self._stream(f, space, args, job, dict(pending),
                                                           signature, call, while_waiting)
                            while_waiting = None   # done once, even if the workers are lost
                            shipping += seconds
                            for number, values in stream:
                                results[number] = values
                                del pending[number]
                                if bar is not None:
                                    bar.update()
                        return results, shipping
                    except WorkerDied as lost:
                        self._shipped = None
                        if attempt == retries:
                            raise WorkerLostError(lost_message(pending, retries, lost)) from lost
        finally:
            if bar is not None:
                bar.close()
        raise AssertionError("unreachable")

    def _stream(self, f, space: ParamSpace, args: tuple, job: Job, tasks: dict, signature: tuple,
                call: int, while_waiting):
        """The pool's stream of finished tasks, after shipping what the workers lack."""
        pool, started = self.pool, time.perf_counter()
        if not pool.resident:   # the bundle travels with every call
            self.shipped_now = True
            bundle = dumps_bundle(f, space.structure, space.arrays, args)
            if while_waiting is not None:
                while_waiting()
            return pool.run_once(job, bundle, tasks), time.perf_counter() - started
        pool.ensure_started()
        shipping = 0.0
        if self._shipped != (id(pool), pool.generation, signature) or not pool.holds(self.key):
            pool.ship(self.key, dumps_bundle(f, space.structure, space.arrays), space.arrays)
            self._shipped = (id(pool), pool.generation, signature)
            self._args_sent = None
            self.shipped_now = True
            shipping = time.perf_counter() - started
        if self.shipped_now or self._sent != (call, pool.generation):
            pool.update(self.key, space.arrays, self._args_update(args, pool.generation))
            self._sent = (call, pool.generation)
        return pool.run(self.key, job, tasks, while_waiting), shipping

    def _args_update(self, args: tuple, generation: int) -> tuple | None:
        """`args` for the workers, ``(pickle, buffers)``, or None when they hold the same bytes.

        Pickled with protocol 5, so the data of arrays in `args` stays out of band: telling
        an unchanged 100 MB array from a changed one costs one comparison, not a copy.
        """
        buffers: list = []
        try:
            data = cloudpickle.dumps(tuple(args), protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise PayloadError(f"the arguments after `x` cannot be pickled for the workers "
                               f"({type(exc).__name__}: {exc})") from exc
        raws = [np.frombuffer(buffer.raw(), dtype=np.uint8) for buffer in buffers]
        sent = self._args_sent
        if sent is not None and sent[0] == generation and sent[1] == data and len(sent[2]) == len(raws) \
                and all(_same_bytes(a, b) for a, b in zip(sent[2], raws)):
            return None
        kept = [raw.copy() for raw in raws]
        self._args_sent = (generation, data, kept)
        return data, kept

    def release(self) -> None:
        """Drop this link's residents from a shared pool, or close a pool of its own."""
        pool, self.pool = self.pool, None
        self._shipped = self._sent = self._args_sent = None
        if pool is None:
            return
        if self.shared and pool.resident:   # the pool serves other one-shot calls too
            pool.drop(self.key)
        else:
            pool.close()


def _same_bytes(a: np.ndarray, b: np.ndarray, block: int = 2**20) -> bool:
    """Whether two byte arrays are equal, compared a block at a time (no large temporaries)."""
    return a.size == b.size and all(np.array_equal(a[i:i + block], b[i:i + block])
                                    for i in range(0, a.size, block))


def lost_message(pending: dict, retries: int, lost: WorkerDied) -> str:
    """What `WorkerLostError` says: the chunks lost, and the likely cause from the exit status."""
    entries = sum(hi - lo for lo, hi in (task for task in pending.values() if isinstance(task, tuple)))
    return (f"worker processes died and {len(pending)} chunk(s) ({entries} entries) were "
            f"still lost after {retries} retries on fresh workers ({lost}); no gradient is "
            f"returned. {_likely_cause(getattr(lost, 'exit_code', None))}")


def _likely_cause(exit_code: int | None) -> str:
    if exit_code == -9:
        return ("SIGKILL usually means the system ran out of memory and killed the worker: "
                "try fewer workers.")
    if exit_code == -11:
        return ("SIGSEGV: `f` crashed the worker (a bug in compiled code `f` calls); in this "
                "process it would crash the caller too.")
    if exit_code is not None and exit_code < 0:
        return f"The worker was ended by signal {-exit_code}."
    return "Killed workers usually mean running out of memory: try fewer workers."


def _progress_bar(total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="chunk", desc="gradient", leave=False)
