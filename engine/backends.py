"""Where chunks run: loky worker processes, threads, or any other joblib backend.

A runner takes the call's pickled bundle and a list of chunks and yields
``(chunk_number, values)`` as chunks finish. It raises `WorkerLost` when worker
processes died, after yielding every chunk that did finish, so the caller can
re-run just the lost ones on a fresh pool.

Pool reuse: the loky runner uses loky's reusable executor (shipped inside joblib),
so worker processes start once and serve every later call with the same number of
workers, the way a training loop calls the engine thousands of times.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import tempfile
from typing import Iterator

import numpy as np
from joblib import cpu_count
from joblib.externals.loky import get_reusable_executor
from joblib.externals.loky.process_executor import BrokenProcessPool

from ._threads import SINGLE_THREAD_ENVIRONMENT
from ._worker import FilePayload, InlinePayload, Job, evaluate_chunk

__all__ = ["resolve_workers", "make_runner", "WorkerLost", "BACKENDS"]

BACKENDS = ("loky", "threading", "dask")  # and any other joblib backend name

Chunk = tuple[int, int]


class WorkerLost(Exception):
    """Worker processes died; the chunks not yet yielded are lost."""


def resolve_workers(workers) -> int:
    """The number of workers that `workers` asks for.

    ``None`` or ``-1`` mean every available core (cgroup and affinity limits
    respected); a positive int is taken as it is.

    Raises
    ------
    ValueError
        For 0, negatives other than -1, and anything that is not an int.
    """
    if workers is None or (_is_int(workers) and workers == -1):
        return cpu_count()
    if not _is_int(workers):
        raise ValueError(f"`workers` must be a positive int, -1 or None, got {workers!r}")
    if workers == 0:
        raise ValueError("`workers` == 0 has no meaning: use a positive int, or -1/None for all cores")
    if workers < 0:
        raise ValueError(f"`workers` must be a positive int, -1 or None, got {workers}")
    return int(workers)


def make_runner(backend: str, workers: int, scheduler: str | None = None):
    """The runner for a joblib backend name (``"loky"``, ``"threading"``, ``"dask"``, ...)."""
    if backend == "loky":
        return LokyRunner(workers)
    if backend == "threading":
        return ThreadRunner(workers)
    if backend == "dask":
        from ._dask import DaskRunner  # optional dependency
        return DaskRunner(workers, scheduler)
    return JoblibRunner(backend, workers)


class LokyRunner:
    """Reusable loky worker processes; the bundle travels once, through a file."""

    def __init__(self, workers: int):
        self.workers = workers
        self._payload_dir = _fast_tempdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def run(self, job: Job, bundle: bytes, chunks: dict[int, Chunk]) -> Iterator[tuple[int, np.ndarray]]:
        fd, path = tempfile.mkstemp(prefix="numgrad-", suffix=".pkl", dir=self._payload_dir)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(bundle)
            executor = self._executor()
            futures = {executor.submit(evaluate_chunk, job, FilePayload(path), lo, hi): number
                       for number, (lo, hi) in chunks.items()}
            yield from _collect(futures, executor)
        finally:
            os.unlink(path)

    def _executor(self):
        # One BLAS thread per worker (see engine._threads): workers x threads <= cores.
        return get_reusable_executor(max_workers=self.workers, env=SINGLE_THREAD_ENVIRONMENT)


class ThreadRunner:
    """A thread pool for one call; each thread unpickles its own copy of ``(f, x)``."""

    def __init__(self, workers: int):
        self.workers = workers
        self._executor = cf.ThreadPoolExecutor(workers, thread_name_prefix="numgrad")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._executor.shutdown(wait=exc_info[0] is None, cancel_futures=True)
        return False

    def run(self, job, bundle, chunks):
        payload = InlinePayload(bundle)
        futures = {self._executor.submit(evaluate_chunk, job, payload, lo, hi): number
                   for number, (lo, hi) in chunks.items()}
        yield from _collect(futures, None)


class JoblibRunner:
    """Any other joblib backend, through `joblib.Parallel` (with memmapping off)."""

    def __init__(self, backend: str, workers: int):
        self.backend = backend
        self.workers = workers

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def run(self, job, bundle, chunks):
        from joblib import Parallel, delayed

        payload = InlinePayload(bundle)
        # max_nbytes=None: no auto-memmapping, which would hand workers read-only arrays.
        parallel = Parallel(n_jobs=self.workers, backend=self.backend, max_nbytes=None)
        try:
            yield from parallel(delayed(_numbered)(number, job, payload, lo, hi)
                                for number, (lo, hi) in chunks.items())
        except BrokenProcessPool as exc:
            raise WorkerLost(str(exc)) from exc


def _numbered(number, job, payload, lo, hi):
    return number, evaluate_chunk(job, payload, lo, hi)


def _collect(futures: dict, executor) -> Iterator[tuple[int, np.ndarray]]:
    """Yield finished chunks; cancel the rest on an error; kill workers on Ctrl-C."""
    yielded = set()
    try:
        for future in cf.as_completed(futures):
            if isinstance(future.exception(), BrokenProcessPool):
                yield from _finished_cleanly(futures, yielded)
                raise WorkerLost(str(future.exception())) from future.exception()
            yielded.add(future)
            yield futures[future], future.result()
    except WorkerLost:
        raise
    except Exception:
        for future in futures:
            future.cancel()
        raise
    except BaseException:  # KeyboardInterrupt, SystemExit: stop the workers now
        for future in futures:
            future.cancel()
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)
        raise


def _finished_cleanly(futures: dict, yielded: set) -> Iterator[tuple[int, np.ndarray]]:
    for future, number in futures.items():
        if future in yielded or not future.done() or future.cancelled():
            continue
        if future.exception() is None:
            yield number, future.result()


def _fast_tempdir() -> str | None:
    """A RAM-backed folder for the bundle file where the system has one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
