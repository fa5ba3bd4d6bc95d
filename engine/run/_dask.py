"""Chunks as tasks on a Dask cluster: the active client's, a scheduler's, or a local one.

Why distributed's futures API, not joblib's dask backend. The engine ships one
self-contained bundle per call, ``bytes`` pickled from ``(f, x)`` together, and
wants chunks back as they finish, a cap on the chunks in flight, and a lost chunk
told apart from an error in `f`. joblib's dask backend scatters each argument that
is over 1 kB and weak-referenceable separately: given ``f`` and ``x`` as arguments
it cuts the link between them (the book's closure then reads an unperturbed array
and the gradient is all zeros, silently). Given the bundle, it scatters nothing,
because ``bytes`` cannot be weak-referenced, so the bundle would ride in every
task; its ``scatter=`` option fixes that, but results still come back through
`Parallel`, which polls, and a dead worker fails the whole call. The futures API
gives: one `Client.scatter` per call; `as_completed` to stream results and top
up the chunks in flight; per-future errors, where `KilledWorker` and a future
cancelled because its data died with a worker become `WorkerDied`, so the engine
re-runs only the lost chunks; and `Client.cancel` on Ctrl-C.

How the data moves: the bundle is scattered once per call with ``broadcast=True``:
the client uploads it once and the workers copy it among themselves, so each
worker holds it once. Broadcasting is what spreads the chunks: Dask runs a task
only on workers that hold its data (others get work by stealing, later), and a
copy on every worker means a killed worker's chunks are simply rerun elsewhere.
Dask's active memory manager may drop copies that no running chunk needs; a worker
then fetches it again from a peer, which changes nothing but time. Inside a
worker each thread unpickles its own copy (`engine._worker`), so threads of one
worker never share an array.

Which cluster: the active `distributed.Client` (``default_client()``) if there is
one and `scheduler` is not a different address; else a `Client` connected to
`scheduler`; else a `LocalCluster` of one-thread worker processes, started and
closed by this call. Starting one takes over a second: code that calls the engine
repeatedly should create a `Client` itself, which every call then reuses.
"""
from __future__ import annotations

import contextlib
import uuid
from concurrent.futures import CancelledError
from typing import Iterator

import numpy as np

from ._job import Job
from ._pool import PerCallPool
from ._worker import InlineBundle, Task, evaluate_chunk
from .._errors import WorkerDied

try:
    import dask
    import distributed
    from distributed.comm.addressing import normalize_address
except ImportError as _missing:  # an optional dependency: say which extra brings it
    raise ModuleNotFoundError(
        "backend='dask' needs the optional dependency: pip install -e '.[dask]' "
        f"(or pip install 'numgrad-engine[dask]'); {_missing}",
        name=_missing.name,
    ) from _missing

__all__ = ["DaskPool", "DaskRunner", "open_client"]

_LOST = (distributed.KilledWorker, CancelledError)  # a chunk's worker died, not its f


class DaskPool(PerCallPool):
    """The engine's pool interface over a `DaskRunner` kept open until `close`.

    ``(f, x, args)`` travel with every call (one broadcast scatter); the connection, or
    the local cluster this pool started, is kept for the gradient's later calls.
    """

    def __init__(self, workers: int, scheduler: str | None = None):
        super().__init__(workers)
        self.scheduler = scheduler
        self._runner = None

    def run_once(self, job: Job, bundle: bytes, tasks: dict[int, Task]):
        if self._runner is None:
            runner = DaskRunner(self.workers, self.scheduler)
            self._runner = runner.__enter__()
        yield from self._runner.run(job, bundle, tasks)

    def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.__exit__(None, None, None)


class DaskRunner:
    """Runs chunks as Dask tasks, at most `workers` in flight; the bundle travels once."""

    def __init__(self, workers: int, scheduler: str | None = None):
        self.workers = workers
        self.scheduler = scheduler
        self.client = None
        self._owned = contextlib.ExitStack()   # the client and cluster this runner started

    def __enter__(self):
        try:
            self.client = self._connect()
        except BaseException:   # e.g. a LocalCluster started, then its client failed
            self._owned.close()
            raise
        return self

    def __exit__(self, *exc_info):
        self._owned.close()
        return False

    def run(self, job: Job, bundle: bytes,
            tasks: dict[int, Task]) -> Iterator[tuple[int, np.ndarray]]:
        data = self._scatter(bundle)
        flight = _Flight(self.client, job, data, tasks)
        try:
            yield from flight.stream(self.workers)
        except BaseException:  # f's error, Ctrl-C, a closed generator: stop the rest now
            flight.cancel()
            raise
        finally:
            data.release()

    def _connect(self):
        active = _active_client()
        if active is not None and _same_scheduler(active, self.scheduler):
            return active
        if self.scheduler is None:
            return self._start_local_cluster()
        return self._owned.enter_context(_connect_to(self.scheduler))

    def _start_local_cluster(self):
        return _local_client(self._owned, self.workers)

    def _scatter(self, bundle: bytes):
        try:
            return self.client.scatter(bundle, hash=False, broadcast=True)  # a fresh key each call
        except TimeoutError as exc:  # "No valid workers found"
            raise TimeoutError(
                f"the Dask scheduler at {self.client.scheduler.address} has no running "
                f"workers (waited {_connect_timeout()} s): start some with "
                f"`dask worker {self.client.scheduler.address}`"
            ) from exc


class _Flight:
    """One call's tasks on the cluster: submitted in order, at most `cap` running."""

    def __init__(self, client, job: Job, data, tasks: dict[int, Task]):
        self.client, self.job, self.data = client, job, data
        self.call_id = uuid.uuid4().hex
        self.waiting = iter(tasks.items())
        self.running = {}   # future -> chunk number
        # with_results: each result is fetched as soon as its task ends, not one by one here.
        self.done = distributed.as_completed(loop=client.loop, with_results=True,
                                             raise_errors=False)

    def stream(self, cap: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield finished chunks; after a lost one, drain the rest and raise `WorkerDied`."""
        lost = []
        for _ in range(cap):
            self._submit_next()
        for future, result in self.done:
            number = self.running.pop(future)
            failure = _failure(future, result)
            future.release()   # after reading its status: a released future reads "cancelled"
            if failure is None:
                if not lost:
                    self._submit_next()
                yield number, result
            elif isinstance(failure, _LOST):
                lost.append(f"chunk {number}: {type(failure).__name__}: {failure}")
            else:
                raise failure   # f's own error, with its type and its worker-side traceback
        if lost:
            raise WorkerDied("Dask workers died, taking chunks or the call's data with them: "
                             + "; ".join(lost))

    def cancel(self) -> None:
        self.client.cancel(list(self.running))
        self.waiting = iter(())

    def _submit_next(self) -> None:
        number, task = next(self.waiting, (None, None))
        if number is None:
            return
        # A fresh key per submission: a retry must never be handed an old, failed result.
        future = self.client.submit(_run_chunk, self.job, self.data, self.call_id, task,
                                    pure=False, key=f"numgrad-chunk-{number}-{uuid.uuid4().hex}")
        self.running[future] = number
        self.done.add(future)


def _failure(future, result) -> BaseException | None:
    """What went wrong with a finished future; `result` as `as_completed` gave it."""
    if future.status == "error":
        _, error, traceback = result
        return error.with_traceback(traceback)
    if future.status == "cancelled":   # its data was lost with a worker, or it was cancelled
        return result if isinstance(result, BaseException) else CancelledError(future.key)
    return None


def _run_chunk(job: Job, bundle: bytes, call_id: str, task) -> np.ndarray:
    """The task: Dask hands it the scattered bundle, the worker keeps one copy per thread."""
    return evaluate_chunk(job, InlineBundle(bundle, call_id), task)


@contextlib.contextmanager
def open_client(scheduler: str | None, workers: int):
    """A client for many calls (a training run): to `scheduler`, or to a new local cluster.

    While the block runs it is the default client, which every `DaskRunner` reuses, so
    a run pays for connecting (or starting `workers` one-thread worker processes) once.
    """
    with contextlib.ExitStack() as owned:
        if scheduler is not None:
            client = owned.enter_context(_connect_to(scheduler))
        else:
            client = _local_client(owned, workers)
        with client.as_current():
            yield client


def _local_client(owned: contextlib.ExitStack, workers: int):
    """A client of a new local cluster of one-thread worker processes, both closed by `owned`."""
    from joblib import cpu_count

    cluster = owned.enter_context(distributed.LocalCluster(
        n_workers=min(workers, cpu_count()), threads_per_worker=1, processes=True,
        dashboard_address=None,
        # no dashboard, and its HTTP server on any free port: 8787 may be taken
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}))
    return owned.enter_context(distributed.Client(cluster, set_as_default=False))


def _active_client():
    try:
        return distributed.default_client()
    except ValueError:  # no client has been started
        return None


def _same_scheduler(client, scheduler: str | None) -> bool:
    if scheduler is None:
        return True
    return normalize_address(client.scheduler.address) == normalize_address(scheduler)


def _connect_to(scheduler: str):
    try:
        return distributed.Client(scheduler, set_as_default=False)
    except OSError as exc:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at `scheduler`={scheduler!r} ({exc}). Is "
            f"`dask scheduler` running there? The wait is dask's "
            f"distributed.comm.timeouts.connect ({_connect_timeout()} s)."
        ) from exc


def _connect_timeout() -> float:
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
