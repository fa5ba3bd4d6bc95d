"""Where and how a gradient's chunks run: one configured object, `Execution`.

Everything that changes the speed of a numerical gradient and never its numbers lives
here: the number of workers, the backend, the chunking, retries after lost workers,
the progress bar, and whether to use the workers at all (`dispatch`). A `Gradient`, a
net's `numerical_gradient`, the gradient check and the trainer all take one of these
(or its keywords), validated once, before any work.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from joblib import cpu_count

__all__ = ["Execution", "resolve_workers", "check_positive_int", "BUILTIN_BACKENDS",
           "DEFAULT_BACKEND", "DISPATCH_MODES", "EXECUTION_FIELDS", "MAX_WORKERS_PER_CORE"]

BUILTIN_BACKENDS = ("loky", "threading", "dask")   # and any backend registered with joblib
DEFAULT_BACKEND = "loky"
DISPATCH_MODES = ("auto", "parallel", "in-process")
MAX_WORKERS_PER_CORE = 4          # local backends refuse more workers than this many per core
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class Execution:
    """How the chunks of a numerical gradient are run. Changes the speed, never the numbers.

    Parameters
    ----------
    workers : int or None, default None
        Number of workers; ``None`` or ``-1`` for every available core. ``1`` runs in
        the caller's process with no pool. Local backends refuse more than
        ``MAX_WORKERS_PER_CORE`` (4) per core, and never start more workers than there
        are chunks.
    backend : str, default "loky"
        ``"loky"`` (worker processes that keep `f` and `x` between calls),
        ``"threading"`` (threads, each with a private copy), ``"dask"`` (a Dask cluster,
        see `scheduler`), or another registered joblib backend (e.g. ``"multiprocessing"``,
        which ships `f` and `x` with every call).
    scheduler : str, optional
        With ``backend="dask"``: the address of a running scheduler.
    chunks_per_worker : int, optional
        The flat index space is cut into ``workers * chunks_per_worker`` chunks of
        near-equal size. Default: 4 for the loop evaluator, fewer when the call is short
        (each chunk then carries at least ~10 ms of work); 1 for the batched evaluator.
    chunk_size : int, optional
        Entries per chunk; overrides `chunks_per_worker`.
    retries : int, default 2
        How often chunks lost with dead worker processes are re-run on fresh workers
        before `WorkerLostError` is raised. Chunks that failed because `f` raised are
        never re-run.
    progress : bool, default False
        A tqdm progress bar over chunks.
    dispatch : {"auto", "parallel", "in-process"}, default "auto"
        ``"auto"``: a `Gradient` measures its first calls in-process and on the workers
        and keeps whichever is faster (see ``Gradient.plan``); ``"parallel"`` always uses
        the workers (for benchmarks); ``"in-process"`` never does.

    Raises
    ------
    ValueError
        For a bad value of any field, naming it.
    """

    workers: int | None = None
    backend: str = DEFAULT_BACKEND
    scheduler: str | None = None
    chunks_per_worker: int | None = None
    chunk_size: int | None = None
    retries: int = DEFAULT_RETRIES
    progress: bool = False
    dispatch: str = "auto"

    def __post_init__(self):
        resolve_workers(self.workers, self.backend if isinstance(self.backend, str) else DEFAULT_BACKEND)
        check_backend(self.backend)
        if self.scheduler is not None and self.backend != "dask":
            raise ValueError(f"`scheduler` is only used with backend='dask', got "
                             f"backend={self.backend!r}")
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise ValueError(f"`scheduler` must be an address string, got {self.scheduler!r}")
        if self.chunks_per_worker is not None:
            check_positive_int("chunks_per_worker", self.chunks_per_worker)
        if self.chunk_size is not None:
            check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("retries", self.retries, zero_allowed=True)
        if not isinstance(self.progress, (bool, np.bool_)):
            raise ValueError(f"`progress` must be True or False, got {self.progress!r}")
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"`dispatch` must be one of {DISPATCH_MODES}, got {self.dispatch!r}")

    @classmethod
    def from_options(cls, execution: Execution | None = None, **options: Any) -> Execution:
        """`execution` (or the defaults) with the given fields replaced.

        Raises
        ------
        TypeError
            For a keyword that is not a field of `Execution`.
        """
        unknown = sorted(set(options) - EXECUTION_FIELDS)
        if unknown:
            raise TypeError(f"unknown execution option(s) {unknown}; the options are "
                            f"{sorted(EXECUTION_FIELDS)}")
        base = cls() if execution is None else execution
        if not isinstance(base, Execution):
            raise TypeError(f"`execution` must be an engine.Execution, got {type(base).__name__}")
        return replace(base, **options) if options else base

    @property
    def n_workers(self) -> int:
        """The number of workers asked for, ``None`` / ``-1`` resolved to the cores."""
        return resolve_workers(self.workers, self.backend)


# The keywords that configure an `Execution`; the rest of a call's keywords are the gradient's.
EXECUTION_FIELDS = frozenset(field.name for field in fields(Execution))


def resolve_workers(workers: Any, backend: str = DEFAULT_BACKEND) -> int:
    """The number of workers that `workers` asks for.

    ``None`` or ``-1`` mean every available core (cgroup and affinity limits
    respected); a positive int is taken as it is, up to ``MAX_WORKERS_PER_CORE`` per core
    for local backends (a Dask cluster may have more cores than this machine).

    Raises
    ------
    ValueError
        For 0, negatives other than -1, anything that is not an int, and too many workers.
    """
    if workers is None or (_is_int(workers) and workers == -1):
        return cpu_count()
    if not _is_int(workers):
        raise ValueError(f"`workers` must be a positive int, -1 or None, got {workers!r}")
    if workers == 0:
        raise ValueError("`workers` == 0 has no meaning: use a positive int, or -1/None for all cores")
    if workers < 0:
        raise ValueError(f"`workers` must be a positive int, -1 or None, got {workers}")
    limit = MAX_WORKERS_PER_CORE * cpu_count()
    if backend != "dask" and workers > limit:
        raise ValueError(f"`workers`={workers} is more than {MAX_WORKERS_PER_CORE} per core on this "
                         f"machine ({cpu_count()} cores, at most {limit}); more would only "
                         "compete for the same cores. Use backend='dask' for a cluster.")
    return int(workers)


def check_backend(backend: Any) -> str:
    """`backend` if it names a backend the engine can run on.

    Raises
    ------
    ValueError
        If it is not a string naming ``"loky"``, ``"threading"``, ``"dask"`` or a backend
        registered with joblib.
    """
    from joblib.parallel import BACKENDS   # joblib's registry (register_parallel_backend)

    names = sorted(set(BUILTIN_BACKENDS) | set(BACKENDS))
    if not isinstance(backend, str) or backend not in names:
        raise ValueError(f"`backend` must be one of {names}, got {backend!r}")
    return backend


def check_positive_int(name: str, value: Any, *, zero_allowed: bool = False) -> int:
    """`value` as an int if it is a positive int (or 0, with `zero_allowed`).

    Raises
    ------
    ValueError
        Naming `name`, for a bool, a float, a negative number, or 0 unless allowed.
    """
    if not _is_int(value) or value < 0 or (value == 0 and not zero_allowed):
        kind = "a non-negative" if zero_allowed else "a positive"
        raise ValueError(f"`{name}` must be {kind} int, got {value!r}")
    return int(value)


def in_daemonic_process() -> bool:
    """True inside a daemonic process (a multiprocessing.Pool worker), which cannot have children."""
    return bool(multiprocessing.current_process().daemon)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
