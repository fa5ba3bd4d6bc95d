"""What runs inside a worker: resident copies of ``(f, x)``, kept between calls, and the task loop.

A worker (a process or a thread) holds one `Resident` per gradient that uses it: its
private, unpickled copy of ``f`` and ``x``, shipped once. Each later call sends only the
new values of `x`'s arrays (copied *into* the resident arrays, so a closure over the net
that owns ``x['w1']`` sees them) and the call's extra arguments. Then it sends tasks:
chunks of the task index space, ``None`` for ``f(x)`` itself, or a `Point` (``f`` at
given values: the caller's state check).

`serve` is the loop both kinds of worker run, over a channel with ``send`` and
``recv``: a pipe for a process, a pair of queues for a thread. Messages to a worker:

- ``("ship", key, bundle, layout)``: unpickle ``(f, x)`` as the resident `key`. A process
  then receives, on the same socket, the file descriptor of the shared memory through
  which later values arrive, laid out as `layout`; threads get None and no descriptor.
- ``("task", call, key, number, job, task, update)``: evaluate; replies ``("done", call,
  number, (values, report))`` or ``("error", call, number, exception)``. The first task of a call
  to each worker carries the call's update, ``(key, values, args)``: new values (None:
  read them from the shared memory) and args as ``(pickle, buffers)`` (None: keep the last ones).
- ``("drop", key)``, ``("stop",)``.

Replies carry the caller's call number so that a call never reads a late reply of an
earlier, abandoned one. Per-call runners (Dask, other joblib backends) use
`evaluate_chunk` instead: there the bundle travels with every call.
"""
from __future__ import annotations

import mmap
import os
import pickle
import signal
import threading
import traceback
from dataclasses import dataclass, field
from multiprocessing.reduction import recv_handle
from typing import Any, TypeAlias

import numpy as np

from .._errors import WorkerError
from ..batched._detect import bind
from ..fd._space import ParamSpace
from ._job import Job, Point, evaluate
from ._bundle import loads_bundle

__all__ = ["Task", "Resident", "serve", "serve_process", "evaluate_chunk", "portable_error",
           "InlineBundle"]

Task: TypeAlias = "tuple[int, int] | Point | None"   # a chunk (start, stop), a Point, or CENTER (None)

_WATCH_PARENT_SECONDS = 0.25   # how often a worker process checks that its caller is alive


class Resident:
    """One gradient's private ``(f, x)`` in a worker, and the current call's arguments."""

    def __init__(self, f: Any, x: Any, args: tuple = ()):
        self.f, self.space, self.args = f, ParamSpace(x), tuple(args)
        self.shared: list[np.ndarray] | None = None   # views of the values' shared memory
        self._mapping = None
        self._reset()

    @classmethod
    def from_bundle(cls, bundle: bytes) -> Resident:
        return cls(*loads_bundle(bundle))

    def attach(self, fd: int, layout: list[tuple[int, tuple, str]]) -> None:
        """Map the shared values behind `fd` (then closed); `layout`: (offset, shape, dtype) per array."""
        try:
            self._mapping = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        self.shared = [np.ndarray(shape, dtype=np.dtype(dtype), buffer=self._mapping, offset=offset)
                       for offset, shape, dtype in layout]

    def update(self, values: list[np.ndarray] | None, args: tuple | None) -> None:
        """Copy new values into the resident arrays (in place) and take new arguments.

        `args` is ``(pickle, buffers)`` (protocol 5, the arrays' data out of band), or None
        to keep the last ones.
        """
        source = self.shared if values is None else values
        for array, value in zip(self.space.arrays, source):
            array[...] = value
        if args is not None:
            data, buffers = args
            self.args = pickle.loads(data, buffers=buffers)
        self._reset()

    def evaluate(self, job: Job, task: Any):
        """``(values, report)`` for one task of `job` (see `engine.run._job.evaluate`)."""
        if self._bound is None:
            self._bound = bind(self.f, self.args, self.space.structure)
        return evaluate(job, self._bound, self.space, task, self._cache)

    def close(self) -> None:
        self.shared = None
        if self._mapping is not None:
            self._mapping.close()
            self._mapping = None

    def _reset(self) -> None:
        self._cache: dict = {}   # per update: the centre loss, the batched forward pass
        self._bound = None


def serve(channel: Any) -> None:
    """Answer messages on `channel` until ``("stop",)``; see the module docstring."""
    residents: dict[str, Resident] = {}
    broken: dict[str, BaseException] = {}   # an update that failed, reported by its next task
    while True:
        message = channel.recv()
        kind = message[0]
        if kind == "task":
            _, call, key, number, job, task, update = message
            if update is not None:
                _update(residents, broken, *update)
            try:
                if key in broken:
                    raise broken[key]
                channel.send(("done", call, number, residents[key].evaluate(job, task)))
            except BaseException as exc:   # f's own error, with where it happened
                channel.send(("error", call, number, portable_error(exc)))
        elif kind == "ship":
            _, key, bundle, layout = message
            _drop(residents, broken, key)
            # the values' file descriptor follows the message on the same socket
            fd = recv_handle(channel) if layout is not None else None
            try:
                residents[key] = Resident.from_bundle(bundle)
                if fd is not None:
                    residents[key].attach(fd, layout)
                    fd = None
                channel.send(("shipped", key, None))
            except Exception as exc:
                channel.send(("shipped", key, portable_error(exc)))
            finally:
                if fd is not None:
                    os.close(fd)
        elif kind == "drop":
            _drop(residents, broken, message[1])
        elif kind == "stop":
            return


def serve_process(connection: Any, caller: int) -> None:
    """The life of a worker process: serve its caller, and never outlive it.

    The process exits when its pipe closes (the caller closed it or died) or when its
    parent is no longer `caller` (the caller was killed while `f` ran here).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the caller's to handle
    watchdog = threading.Thread(target=_exit_when_orphaned, args=(caller,), daemon=True,
                                name="numgrad-watchdog")
    watchdog.start()
    try:
        serve(connection)
    except (EOFError, OSError):   # the caller is gone: nobody to answer
        os._exit(0)


def _exit_when_orphaned(caller: int) -> None:
    stop = threading.Event()
    while not stop.wait(_WATCH_PARENT_SECONDS):
        if os.getppid() != caller:
            os._exit(0)


def _update(residents: dict, broken: dict, key: str, values, args) -> None:
    try:
        residents[key].update(values, args)
        broken.pop(key, None)
    except Exception as exc:   # reported by the task that carried it
        broken[key] = exc


def _drop(residents: dict, broken: dict, key: str) -> None:
    resident = residents.pop(key, None)
    broken.pop(key, None)
    if resident is not None:
        resident.close()


def portable_error(exc: BaseException) -> BaseException:
    """`exc`, or a `WorkerError` saying the same, whichever survives a pickle round trip.

    The worker's traceback text is attached as the ``__cause__`` of what the caller raises
    (see `engine._errors.RemoteTraceback`), so it is sent along as an attribute.
    """
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        clone = pickle.loads(pickle.dumps(exc))
        if type(clone) is not type(exc):
            raise TypeError("changed type in a pickle round trip")
    except Exception:
        notes = "".join(f"\n{note}" for note in getattr(exc, "__notes__", ()))
        name = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
        exc = WorkerError(name, f"{exc}{notes}", text)
    exc.worker_traceback = text
    return exc


@dataclass(frozen=True)
class InlineBundle:
    """One call's bundle ``(f, x, args)``, carried in its tasks (Dask, joblib backends)."""

    data: bytes
    call_id: str = field(default="")


_per_thread = threading.local()   # per worker thread: (call id, Resident) of the current call


def evaluate_chunk(job: Job, bundle: InlineBundle, task: tuple[int, int] | None):
    """A task of a per-call runner: unpickle the call's bundle once per thread, evaluate."""
    if getattr(_per_thread, "call_id", None) != bundle.call_id:
        _per_thread.resident = None   # drop the previous call's copy before loading the next
        _per_thread.resident = Resident.from_bundle(bundle.data)
        _per_thread.call_id = bundle.call_id
    return _per_thread.resident.evaluate(job, task)

