"""Where chunks run: worker processes or threads that keep `f` resident, or per-call runners.

Resident pools (``"loky"`` processes, ``"threading"``) hold each gradient's ``(f, x)``
in every worker between calls (`engine.run._worker`): a call sends the new values of `x`
and its arguments, then tasks, over a lean channel of their own (a socket pair per
process, queues per thread) and gets results back as they finish; a worker that finishes early
takes the next task. loky starts the worker processes (fork + exec, one BLAS thread,
no re-import of ``__main__``); the pool watches them itself: a dead worker shows up as
the end of its pipe, and its tasks are re-run on fresh workers by the caller.

Per-call runners (``"dask"``, other joblib backends) ship ``(f, x, args)`` with every call.

Nothing outlives the caller: worker processes are daemonic (ended at exit), leave when
their pipe closes, and check every quarter second that their parent is still their
caller (so a ``kill -9`` of the caller ends them too). The values' shared memory has no
name to leave behind (`engine.run._shared_memory`): its file descriptor travels to each
worker over the socket. The pools are not multiprocessing's children, so an ``os.fork()``
child that exits does not stop its parent's workers.

The contract every pool keeps is `Pool` (`engine.run._pool`).
"""
from __future__ import annotations

import multiprocessing.process
import os
import queue
import signal
import threading
import uuid
from abc import abstractmethod
from multiprocessing.connection import wait
from multiprocessing.reduction import send_handle
from typing import Any, Callable, Iterator

import numpy as np

from ._pool import PerCallPool, Pool
from ._shared_memory import SharedValues, remove_stale_shared_files
from ._blas import SINGLE_THREAD_ENVIRONMENT
from ._worker import InlineBundle, Task, evaluate_chunk, serve, serve_process
from .._errors import PayloadError, RemoteTraceback, WorkerDied
from ._execution import in_daemonic_process

__all__ = ["make_pool", "shared_pool", "ResidentPool", "ProcessPool", "ThreadPool", "JoblibPool"]

# A fresh process's glibc returns every large temporary to the system at once and maps it
# anew on the next call (a batch of 100 images: ~96,000 page faults, 1.7x the parent's
# time); a long-lived process has raised these thresholds to their dynamic maximum (32 MiB,
# trim at twice that) by then. Workers start there. Other C libraries ignore the names.
_WORKER_ENVIRONMENT = {**SINGLE_THREAD_ENVIRONMENT,
                       "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
                       "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20)}
_START_TIMEOUT = 120.0             # seconds for a worker process to start and answer


def make_pool(backend: str, workers: int, scheduler: str | None = None):
    """A new pool of `workers` for `backend` (validated by `engine._execution.check_backend`)."""
    if backend == "loky":
        return ProcessPool(workers)
    if backend == "threading":
        return ThreadPool(workers)
    if backend == "dask":
        from ._dask import DaskPool   # an optional dependency
        return DaskPool(workers, scheduler)
    return JoblibPool(backend, workers)


_shared: dict[tuple, Any] = {}
_shared_lock = threading.Lock()


def shared_pool(backend: str, workers: int, scheduler: str | None = None):
    """The pool that one-shot calls with these settings share, started once per process.

    Resident pools are kept between calls (like a reusable executor); a pool inherited
    through ``os.fork()`` or broken by a dead worker is replaced.
    """
    if backend not in ("loky", "threading"):
        return make_pool(backend, workers, scheduler)
    with _shared_lock:
        pool = _shared.get((backend, workers))
        if pool is None or not pool.usable:
            pool = _shared[(backend, workers)] = make_pool(backend, workers)
        return pool


class ResidentPool(Pool):
    """Workers that keep residents between calls; subclasses provide the channel (the hooks)."""

    resident = True

    def __init__(self, workers: int):
        self.workers = workers
        self.generation = 0        # +1 each time the workers are replaced: residents are lost
        self.lock = threading.RLock()   # one call at a time
        self._owner = os.getpid()
        self._call = 0
        self._broken = True        # not started yet
        self._keys: set[str] = set()
        self._updates: dict[int, tuple] = {}   # per worker: the update its next task carries

    @property
    def usable(self) -> bool:
        """False after a fork (the workers belong to the parent) and after a lost worker."""
        return self._owner == os.getpid() and not self._broken

    def ensure_started(self) -> None:
        if self._owner != os.getpid():   # inherited by fork: not ours to use or stop
            self._forget_inherited()
            self._owner = os.getpid()
            self._broken = True
        if self._broken:
            self._check_can_start()
            self._stop_workers(kill=True)
            self._start()
            self._broken = False
            self.generation += 1
            self._keys.clear()
            self._updates.clear()

    def holds(self, key: str) -> bool:
        return key in self._keys

    def ship(self, key: str, bundle: bytes, arrays: list[np.ndarray]) -> None:
        """Give every worker its own ``(f, x)`` from `bundle`, kept as resident `key`."""
        values = self._shared_values(arrays)
        try:
            for worker in range(self.workers):
                self._send(worker, ("ship", key, bundle, None if values is None else values.layout))
                if values is not None:
                    self._send_descriptor(worker, values.fd)
            errors = []
            for _ in range(self.workers):
                message = self._receive_kind("shipped")
                if message[2] is not None:
                    errors.append(message[2])
        except BaseException:
            if values is not None:
                values.close()
            raise
        self._keep_values(key, values)
        self._keys.add(key)
        if errors:
            self.drop(key)
            raise PayloadError(
                "a worker could not unpickle `f` and `x` "
                f"({type(errors[0]).__name__}: {errors[0]}): everything `f` uses must be "
                "importable in the worker processes") from errors[0]

    def update(self, key: str, arrays: list[np.ndarray], args: tuple | None) -> None:
        """Stage this call's values of `x` (`arrays`, in `x`'s order) and `args` as pickled.

        They travel with the next task sent to each worker (one message, not two).
        """
        update = (key, self._publish(key, arrays), args)
        self._updates = {worker: update for worker in range(self.workers)}

    def run(self, key: str, job: Any, tasks: dict[int, Task],
            while_waiting: Callable[[], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(number, values)`` as tasks finish; raise f's error, or `WorkerDied`.

        `while_waiting` is called once, after the first tasks went out: work of the
        caller's own that overlaps with the workers'.
        """
        self._call += 1
        call, waiting, running = self._call, list(tasks.items()), {}

        def submit(worker: int) -> None:
            number, task = waiting.pop()
            self._send(worker, ("task", call, key, number, job, task,
                                self._updates.pop(worker, None)))
            running[worker] = number

        waiting.reverse()   # pop() from the end: tasks go out in order
        for worker in range(min(self.workers, len(waiting))):
            submit(worker)
        if while_waiting is not None:
            while_waiting()
        while running:
            worker, message = self._receive()
            if message[0] not in ("done", "error") or message[1] != call:
                continue   # a late reply of an earlier call that was abandoned
            del running[worker]
            if message[0] == "error":
                raise _with_remote_traceback(message[3])
            if waiting:
                submit(worker)
            yield message[2], message[3]

    def drop(self, key: str) -> None:
        """Forget resident `key` in every worker (no reply awaited)."""
        if key not in self._keys:
            return
        self._keys.discard(key)
        self._drop_values(key)
        if self.usable:
            for worker in range(self.workers):
                try:
                    self._send(worker, ("drop", key))
                except WorkerDied:
                    self._broken = True
                    return

    def close(self) -> None:
        """Stop the workers (they finish what they run) and release everything."""
        if self._owner == os.getpid():
            self._stop_workers(kill=False)
        self._broken = True

    def kill(self) -> None:
        """Stop the workers now, whatever they run (Ctrl-C)."""
        if self._owner == os.getpid():
            self._stop_workers(kill=True)
        self._broken = True

    # -- the hooks a channel provides -------------------------------------------------------

    @staticmethod
    @abstractmethod
    def _check_can_start() -> None:
        """Raise if this process may not start workers of this kind."""

    @abstractmethod
    def _start(self) -> None:
        """Start `workers` workers, each serving `engine.run._worker.serve`."""

    @abstractmethod
    def _stop_workers(self, kill: bool) -> None:
        """Stop the workers: after their task, or at once (`kill`)."""

    @abstractmethod
    def _forget_inherited(self) -> None:
        """After a fork: drop the parent's channels without touching its workers."""

    @abstractmethod
    def _shared_values(self, arrays: list[np.ndarray]) -> Any:
        """Shared memory for `arrays`' values (a `SharedValues`), or None."""

    @abstractmethod
    def _keep_values(self, key: str, values: Any) -> None:
        """Keep resident `key`'s shared values (replacing older ones)."""

    @abstractmethod
    def _publish(self, key: str, arrays: list[np.ndarray]) -> Any:
        """Make this call's values available; what the update carries (None: shared memory)."""

    @abstractmethod
    def _drop_values(self, key: str) -> None:
        """Release resident `key`'s shared values."""

    @abstractmethod
    def _send(self, worker: int, message: Any) -> None:
        """Send `message` to `worker`; `WorkerDied` if it is gone."""

    @abstractmethod
    def _receive(self) -> tuple[int, Any]:
        """The next ``(worker, message)``; `WorkerDied` if a worker died."""

    def _send_descriptor(self, worker: int, fd: int) -> None:
        raise NotImplementedError("this pool has no shared memory")

    def _receive_kind(self, kind: str):
        while True:
            _, message = self._receive()
            if message[0] == kind:
                return message

    def _guarded(self, wait_for):
        """Run a blocking wait; on Ctrl-C (or any abort) the workers are stopped at once."""
        try:
            return wait_for()
        except WorkerDied:
            self._broken = True
            self._stop_workers(kill=True)
            raise
        except BaseException:
            self.kill()
            raise


class ProcessPool(ResidentPool):
    """Worker processes started by loky, each serving its caller over a socket pair."""

    def __init__(self, workers: int):
        self._check_can_start()
        super().__init__(workers)
        self._processes: list = []
        self._pipes: list = []
        self._values: dict[str, SharedValues] = {}

    @staticmethod
    def _check_can_start() -> None:
        if in_daemonic_process():
            raise RuntimeError(
                "this process is a daemonic worker (of multiprocessing.Pool, say), which cannot "
                "start worker processes: use workers=1, or backend='threading'")

    def _start(self) -> None:
        from joblib.externals.loky.backend.context import get_context

        remove_stale_shared_files()
        context = get_context("loky")
        for number in range(self.workers):
            ours, theirs = context.Pipe(duplex=True)
            process = context.Process(target=serve_process, args=(theirs, os.getpid()),
                                      daemon=True, env=_WORKER_ENVIRONMENT,
                                      name=f"numgrad-worker-{number}")
            process.start()
            # Not multiprocessing's child to manage: its exit handler would terminate the
            # workers in a child of os.fork() as they exit (this pool stops them itself).
            multiprocessing.process._children.discard(process)
            theirs.close()
            self._processes.append(process)
            self._pipes.append(ours)
        self._values.clear()

    def _stop_workers(self, kill: bool) -> None:
        if not kill:
            for pipe in self._pipes:
                try:
                    pipe.send(("stop",))
                except OSError:
                    pass
        for process in self._processes:
            if kill and process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
            process.join(timeout=None if kill else 5)
            if process.is_alive():   # stuck in f: it must not outlive this
                os.kill(process.pid, signal.SIGKILL)
                process.join()
        for pipe in self._pipes:
            pipe.close()
        for values in self._values.values():
            values.close()
        self._processes, self._pipes, self._values = [], [], {}

    def _forget_inherited(self) -> None:
        # The parent's workers and pipes are the parent's: close our copies, touch nothing else.
        for pipe in self._pipes:
            pipe.close()
        self._processes, self._pipes, self._values = [], [], {}

    def _shared_values(self, arrays):
        return SharedValues.create(arrays)

    def _send_descriptor(self, worker: int, fd: int) -> None:
        try:
            send_handle(self._pipes[worker], fd, self._processes[worker].pid)
        except OSError as exc:
            self._broken = True
            raise WorkerDied(f"worker process {self._processes[worker].pid} is gone ({exc})",
                             self._processes[worker].exitcode) from exc

    def _keep_values(self, key: str, values) -> None:
        previous = self._values.pop(key, None)
        if previous is not None:
            previous.close()
        self._values[key] = values

    def _publish(self, key, arrays):
        self._values[key].write(arrays)
        return None   # the workers read the values from the shared memory

    def _drop_values(self, key):
        values = self._values.pop(key, None)
        if values is not None:
            values.close()

    def _send(self, worker: int, message) -> None:
        try:
            self._pipes[worker].send(message)
        except (OSError, ValueError) as exc:   # a broken pipe: the worker died
            self._broken = True
            raise WorkerDied(f"worker process {self._processes[worker].pid} is gone ({exc})",
                             self._processes[worker].exitcode) from exc

    def _receive(self):
        def wait_for():
            while True:
                for pipe in wait(self._pipes):
                    worker = self._pipes.index(pipe)
                    try:
                        return worker, pipe.recv()
                    except (EOFError, OSError) as exc:
                        process = self._processes[worker]
                        process.join(timeout=1)
                        raise WorkerDied(f"worker process {process.pid} died (exit code "
                                         f"{process.exitcode})", process.exitcode) from exc
        return self._guarded(wait_for)


class ThreadPool(ResidentPool):
    """Threads of this process, each with its own resident copies."""

    def __init__(self, workers: int):
        super().__init__(workers)
        self._inboxes: list[queue.SimpleQueue] = []
        self._outbox: queue.SimpleQueue | None = None

    def _start(self) -> None:
        self._outbox = queue.SimpleQueue()
        self._inboxes = [queue.SimpleQueue() for _ in range(self.workers)]
        for number, inbox in enumerate(self._inboxes):
            channel = _QueueChannel(inbox, self._outbox, number)
            threading.Thread(target=serve, args=(channel,), daemon=True,
                             name=f"numgrad-thread-{number}").start()

    def _stop_workers(self, kill: bool) -> None:
        for inbox in self._inboxes:   # threads cannot be killed: they stop after their task
            inbox.put(("stop",))
        self._inboxes, self._outbox = [], None

    def _forget_inherited(self) -> None:
        self._inboxes, self._outbox = [], None

    @staticmethod
    def _check_can_start() -> None:
        pass

    def _shared_values(self, arrays):
        return None

    def _keep_values(self, key: str, values) -> None:
        pass

    def _publish(self, key, arrays):
        return [np.array(a, copy=True) for a in arrays]   # one copy, read by every thread

    def _drop_values(self, key):
        pass

    def _send(self, worker: int, message) -> None:
        self._inboxes[worker].put(message)

    def _receive(self):
        outbox = self._outbox
        return self._guarded(outbox.get)


class _QueueChannel:
    """A thread's end of its channel: ``recv`` from its inbox, ``send`` to the shared outbox."""

    def __init__(self, inbox, outbox, number: int):
        self.inbox, self.outbox, self.number = inbox, outbox, number

    def recv(self):
        return self.inbox.get()

    def send(self, message) -> None:
        self.outbox.put((self.number, message))


class JoblibPool(PerCallPool):
    """Any other joblib backend, through `joblib.Parallel`: `(f, x, args)` travel with every call."""

    def __init__(self, backend: str, workers: int):
        super().__init__(workers)
        self.backend = backend

    def run_once(self, job, bundle: bytes, tasks: dict[int, Task]):
        from joblib import Parallel, delayed
        from joblib.externals.loky.process_executor import BrokenProcessPool

        inline = InlineBundle(bundle, uuid.uuid4().hex)
        # max_nbytes=None: no auto-memmapping, which would hand workers read-only arrays.
        parallel = Parallel(n_jobs=self.workers, backend=self.backend, max_nbytes=None)
        try:
            yield from parallel(delayed(_numbered)(number, job, inline, task)
                                for number, task in tasks.items())
        except BrokenProcessPool as exc:
            raise WorkerDied(str(exc)) from exc

    def close(self) -> None:
        pass


def _numbered(number, job, inline, task):
    return number, evaluate_chunk(job, inline, task)


def _with_remote_traceback(error: BaseException) -> BaseException:
    text = getattr(error, "worker_traceback", None)
    if text and error.__cause__ is None:
        error.__cause__ = RemoteTraceback(text)
    return error
