"""The core: `parallel_numerical_gradient`, the serial reference's numbers, on many workers.

One call: validate everything; lay the entries of `x` out as one flat index space
(`space.ParamSpace`); cut it into contiguous chunks; pickle ``(f, x)`` once; let a
runner (`backends`) hand chunks to workers, each of which evaluates them on its own
private copy (`_worker`, `evaluators`); re-run chunks lost with a dead worker; pour
the values back into `x`'s structure.

Why the numbers are exact: every entry's derivative is the same floating-point
expression (`schemes`) of the same loss values, computed from a bit-identical copy
of `x` in which only that entry is perturbed. Which worker computes it, and in
which chunk, changes nothing.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import numpy as np

from ._threads import one_blas_thread
from ._worker import Job
from .backends import WorkerLost, make_runner, resolve_workers
from .batched import DEFAULT_BLOCK_MEMORY
from .errors import StateNotShippedError, WorkerLostError
from .evaluators import EVALUATOR_NAMES, get_evaluator
from .model import ModelLoss
from .payload import dumps_bundle
from .schemes import get_scheme, resolve_steps
from .space import ParamSpace, split_range

__all__ = ["parallel_numerical_gradient", "plan_chunks"]

_MIN_CHUNK_SECONDS = 0.01   # below this a chunk's task round trip (~1 ms) is a large share


def parallel_numerical_gradient(
    f: Callable[[Any], Any],
    x: Any,
    *,
    workers: int | None = None,
    h: float | dict = 1e-4,
    backend: str = "loky",
    scheme: str = "central",
    evaluator: str = "auto",
    chunks_per_worker: int | None = None,
    chunk_size: int | None = None,
    retries: int = 2,
    block_memory: int = DEFAULT_BLOCK_MEMORY,
    check_state: bool = True,
    scheduler: str | None = None,
    progress: bool = False,
) -> Any:
    """Numerical gradient of `f` at `x`, computed by several workers, exactly.

    Gives bit-for-bit the result of ``numerical_gradient(f, x, h, scheme=scheme)``
    whatever the number of workers, the backend and the chunking. The entries of
    all arrays of `x` form one flat index space, cut into contiguous chunks; each
    worker receives one copy of ``(f, x)`` per call (pickled together, so a closure
    over the net that owns ``x['w1']`` still reads the array the worker perturbs)
    and perturbs only its own entries, in its own copy.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``, the loss, called with (a copy of) the object passed as `x`.
    x : ndarray, or dict / list / tuple of ndarray
        Writable floating-point arrays of any shape. Never modified: bit-identical
        after the call, also when `f` raises.
    workers : int or None, default None
        Number of workers; ``None`` or ``-1`` for all available cores. ``1`` runs in
        this process with no pool (the caller's arrays are perturbed in place and
        restored, as in the serial reference).
    h : float or dict, default 1e-4
        Step size, or a dict of per-array steps for a dict `x`.
    backend : str, default "loky"
        ``"loky"`` (reusable worker processes), ``"threading"`` (each thread perturbs
        its own copy), ``"dask"`` (see `scheduler`), or another joblib backend name.
    scheme : {"central", "forward", "central4"}, default "central"
    evaluator : {"auto", "loop", "batched"}, default "auto"
        ``"loop"`` calls `f` once per perturbation and works for any `f`;
        ``"batched"`` evaluates blocks of perturbations at once and needs `f` to be a
        `engine.model.ModelLoss` over `x`; ``"auto"`` picks batched when it can.
    chunks_per_worker : int, optional
        The flat index space is cut into ``workers * chunks_per_worker`` chunks of
        equal size (lengths differ by at most one), so a worker that finishes early
        takes another chunk instead of idling. By default 4 for the loop evaluator,
        fewer when the whole call is short (each chunk then gets at least ~10 ms of
        work, as estimated from the probe entry, since every chunk costs a task
        round trip of about a millisecond); 1 for the batched evaluator, whose
        chunks are vectorised and cheap to balance.
    chunk_size : int, optional
        Entries per chunk; overrides `chunks_per_worker`.
    retries : int, default 2
        How many times chunks lost with a dead worker process are re-run on a fresh
        pool before `WorkerLostError` is raised.
    block_memory : int, default 256 MiB
        Batched evaluator only: the most bytes of temporaries one worker uses for a
        block of perturbations. Smaller blocks give the same numbers, more slowly.
    check_state : bool, default True
        Compute one entry in this process too and check the workers' value equals it
        exactly; a mismatch means `f` does not read the `x` that was shipped with it
        and raises `StateNotShippedError` instead of returning a wrong gradient.
        Turn off only for an `f` that is not deterministic.
    scheduler : str, optional
        With ``backend="dask"``: the address of a running scheduler.
    progress : bool, default False
        Show a tqdm progress bar over chunks.

    Returns
    -------
    ndarray or the same structure as `x`
        The gradient, with `x`'s shapes and dtypes.

    Raises
    ------
    TypeError
        `f` not callable; `x` not floating arrays; `f` returns a non-scalar.
    ValueError
        Read-only `x`; bad `h`, `workers`, `scheme`, `evaluator`, `retries` or chunking.
    FloatingPointError
        `f` returned NaN or inf; the message names the array and the index.
    PayloadError
        `f` cannot be pickled for a process backend.
    StateNotShippedError, WorkerLostError
        See `check_state` and `retries`.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> parallel_numerical_gradient(lambda v: float((w ** 2).sum()), w, workers=2)
    array([[2., 4.],
           [6., 8.]])
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable, got {type(f).__name__}")
    space = ParamSpace(x)
    steps = resolve_steps(h, space.keys, space.labels)
    the_scheme = get_scheme(scheme)
    n_workers = resolve_workers(workers)
    evaluator_name = choose_evaluator(evaluator, f, x)
    _check_counts(retries=retries, block_memory=block_memory,
                  chunks_per_worker=1 if chunks_per_worker is None else chunks_per_worker)
    _check_chunk_size(chunk_size)
    if scheduler is not None and backend != "dask":
        raise ValueError(f"`scheduler` is only used with backend='dask', got backend={backend!r}")
    options = {"block_memory": int(block_memory)} if evaluator_name == "batched" else {}

    evaluate = get_evaluator(evaluator_name)
    if n_workers == 1 or space.size <= 1:
        with one_blas_thread():
            values = evaluate(f, space, steps, the_scheme, 0, space.size, {}, **options)
        return space.assemble(values)

    probe = space.size - 1   # computed here too, to check the workers' copy (check_state)
    started = time.perf_counter()
    with one_blas_thread():
        expected = evaluate(f, space, steps, the_scheme, probe, probe + 1, {}, **options)[0]
    if chunks_per_worker is None:
        chunks_per_worker = _default_chunks_per_worker(
            evaluator_name, (time.perf_counter() - started) * space.size, n_workers)
    chunks = plan_chunks(space.size, n_workers, chunks_per_worker, chunk_size)
    job = Job(uuid.uuid4().hex, evaluator_name, the_scheme.name, tuple(steps),
              tuple(options.items()))
    bundle = dumps_bundle(f, x, space.arrays)
    values = _run(job, bundle, chunks, backend, n_workers, scheduler, retries, progress)
    if check_state:
        _check_probe(space, probe, expected, values[probe])
    return space.assemble(values)


def choose_evaluator(evaluator: str, f: Any, x: Any) -> str:
    """Resolve ``"auto"`` to ``"batched"`` where `f` exposes a layered model over `x`."""
    if evaluator == "auto":
        return "batched" if _is_model_loss_over(f, x) else "loop"
    if evaluator not in EVALUATOR_NAMES:
        raise ValueError(f"`evaluator` must be one of {('auto',) + EVALUATOR_NAMES}, got {evaluator!r}")
    if evaluator == "batched" and not _is_model_loss_over(f, x):
        raise ValueError(
            "evaluator='batched' needs `f` to be an engine.model.ModelLoss and `x` its "
            "params dict (e.g. net.loss_function(x, t) and net.params); use 'loop' for "
            "any other f"
        )
    return evaluator


def plan_chunks(size: int, workers: int, chunks_per_worker: int = 4,
                chunk_size: int | None = None) -> list[tuple[int, int]]:
    """Contiguous ``(start, stop)`` ranges covering ``range(size)``.

    ``workers * chunks_per_worker`` chunks of near-equal length, or chunks of
    `chunk_size` entries (the last one shorter) when that is given.
    """
    if chunk_size is not None:
        _check_chunk_size(chunk_size)
        return [(lo, min(lo + chunk_size, size)) for lo in range(0, size, chunk_size)]
    return split_range(size, workers * chunks_per_worker)


def _check_chunk_size(chunk_size) -> None:
    if chunk_size is not None and not (isinstance(chunk_size, (int, np.integer))
                                       and not isinstance(chunk_size, bool) and chunk_size > 0):
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}")


def _default_chunks_per_worker(evaluator: str, estimated_seconds: float, workers: int) -> int:
    if evaluator == "batched":
        return 1
    return int(np.clip(estimated_seconds / (workers * _MIN_CHUNK_SECONDS), 1, 4))


def _is_model_loss_over(f: Any, x: Any) -> bool:
    return isinstance(f, ModelLoss) and f.params is x


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
    if counts["chunks_per_worker"] == 0:
        raise ValueError("`chunks_per_worker` == 0 has no meaning: use 1 or more")


def _run(job: Job, bundle: bytes, chunks: list, backend: str, workers: int,
         scheduler: str | None, retries: int, progress: bool) -> np.ndarray:
    """Evaluate every chunk, re-running those lost with dead workers; flat float64 values."""
    pending = dict(enumerate(chunks))
    values = np.empty(chunks[-1][1], dtype=np.float64)
    bar = _progress_bar(len(chunks)) if progress else None
    try:
        for attempt in range(retries + 1):
            try:
                with make_runner(backend, workers, scheduler) as runner:
                    for number, chunk_values in runner.run(job, bundle, dict(pending)):
                        lo, hi = pending.pop(number)
                        values[lo:hi] = chunk_values
                        if bar is not None:
                            bar.update()
                return values
            except WorkerLost as lost:
                if attempt == retries:
                    raise WorkerLostError(_lost_message(pending, retries, lost)) from lost
    finally:
        if bar is not None:
            bar.close()
    raise AssertionError("unreachable")


def _lost_message(pending: dict, retries: int, lost: Exception) -> str:
    entries = sum(hi - lo for lo, hi in pending.values())
    return (f"worker processes died and {len(pending)} chunk(s) ({entries} entries) were "
            f"still lost after {retries} retries on a fresh pool ({lost}); no gradient is "
            "returned. Killed workers usually mean running out of memory: try fewer workers.")


def _check_probe(space: ParamSpace, probe: int, expected: float, got: float) -> None:
    if expected == got or (np.isnan(expected) and np.isnan(got)):
        return
    raise StateNotShippedError(
        f"the workers computed {got!r} for {space.describe(probe)}, but the same entry "
        f"computed in this process is {expected!r}. The workers' copy of `f` does not "
        "read the copy of `x` shipped with it, so their gradient would be wrong. This "
        "happens when `f` reads state that pickle sends by reference, such as a "
        "module-level net in an importable module: each worker then uses its own "
        "import-time copy. Pass the state through `x` (let f read the arrays it is "
        "given), or close over it in a function (a closure or lambda), which is "
        "shipped together with `x`. If `f` is not deterministic, pass check_state=False."
    )


def _progress_bar(total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="chunk", desc="gradient", leave=False)
