"""One BLAS thread for every evaluation of `f`, in every process and thread.

A multi-threaded BLAS may split a matrix product differently for different thread
counts, and then rounds differently: on a 16-core machine, ``(100, 784) @ (784, 100)``
gave other bits with 4 threads than with 16. If the serial reference ran with all cores
and each of 4 workers with a quarter of them, their gradients could differ in the last
bit. So all evaluations run with exactly one BLAS thread: the serial reference, the
in-process path, the probe and every worker. The parallelism comes from the workers.

BLAS thread counts are per process, so this is process-wide state by nature: a
reference count lets threads of one process (the threading backend, a Dask worker's
threads) enter and leave concurrently, and the original limits come back when the last
one leaves.
"""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from typing import Iterator

from threadpoolctl import ThreadpoolController

__all__ = ["one_blas_thread", "SINGLE_THREAD_ENVIRONMENT"]

# Given to worker processes at start, so that their BLAS starts with one thread.
SINGLE_THREAD_ENVIRONMENT = {name: "1" for name in (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}

_lock = threading.Lock()
_holders = 0
_limit = None


@functools.lru_cache(maxsize=1)
def _controller() -> ThreadpoolController:
    # Inspecting the loaded libraries costs ~1 ms; the result is reused by the process.
    return ThreadpoolController()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS/OpenMP thread; reentrant and thread-safe."""
    global _holders, _limit
    with _lock:
        if _holders == 0:
            _limit = _controller().limit(limits=1)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _limit.restore_original_limits()
                _limit = None
