"""`parallel_numerical_gradient`: the one-shot form of `Gradient`, for the book's pattern.

The teaching text builds a new closure ``f = lambda w: net.loss(x, t)`` for every
gradient. This call ships that `f` with `x` to the workers every time, which is what a
new closure needs; the worker processes themselves are shared by all one-shot calls
and started once per process. Code that calls the gradient in a loop with the same `f`
should keep a `Gradient`, which ships `f` once.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from ..run._execution import EXECUTION_FIELDS, Execution
from ._gradient import Gradient
from ._sparse import Jacobian

__all__ = ["parallel_numerical_gradient", "jacobian"]


def parallel_numerical_gradient(f: Callable[[Any], Any], x: Any, *,
                                execution: Execution | None = None, **options: Any) -> Any:
    """Numerical gradient of `f` at `x`, computed by several workers, exactly.

    With the loop evaluator, gives bit-for-bit the result of ``numerical_gradient(f, x,
    h, scheme=scheme)`` whatever the number of workers, the backend and the chunking.
    Every evaluator gives the same bits at any worker count; the batched evaluator
    (the default for a layered model's loss) agrees with the loop evaluator to rounding.
    The entries of all arrays of `x` form one flat index space, cut into contiguous
    chunks; each worker receives one copy of ``(f, x)`` per call (pickled together, so
    a closure over the net that owns ``x['w1']`` still reads the array the worker
    perturbs) and perturbs only its own entries, in its own copy.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``, the loss, called with (a copy of) the object passed as `x`.
    x : ndarray, or dict / list / tuple of ndarray
        Writable floating-point arrays of any shape. Never left changed: bit-identical
        after the call, also when `f` raises or writes into them.
    execution : Execution, optional
        Where and how chunks run. Its keywords (``workers``, ``backend``, ``scheduler``,
        ``chunks_per_worker``, ``chunk_size``, ``retries``, ``progress``, ``dispatch``; see
        `engine.Execution`) may be given here instead and replace its fields.
        ``dispatch="auto"`` means ``"parallel"`` here: a one-shot call has no earlier
        calls to learn from.
    on_failure, bounds
        See `engine.Gradient`.
    h : float, "auto" or dict, default 1e-4
        Step size, ``"auto"`` (relative, per entry), or a dict of per-array steps for a
        dict `x`; see `engine.Gradient`.
    scheme : {"central", "forward", "central4"}, default "central"
    evaluator : {"auto", "loop", "batched"}, default "auto"
        ``"loop"`` calls `f` once per perturbation and works for any `f`;
        ``"batched"`` evaluates blocks of perturbations at once and needs `f` to be a
        `engine.ModelLoss` over `x`; ``"auto"`` picks batched when it can.
    block_memory : int, default 256 MiB
        Batched evaluator only: the most bytes of temporaries one worker uses.
    check_state : bool, default True
        Compute one entry in this process too and check the workers' value equals it
        exactly; a mismatch raises `StateNotShippedError` instead of returning a wrong
        gradient. Turn off only for an `f` that is not deterministic.

    Returns
    -------
    ndarray or the same structure as `x`
        The gradient, with `x`'s shapes and dtypes.

    Raises
    ------
    TypeError
        `f` not callable; `x` not floating arrays; `f` returns a non-scalar.
    ValueError
        Read-only `x`; bad `h`, `workers`, `backend`, `scheme`, `evaluator`, `retries`
        or chunking, before any work.
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
    return _one_shot(Gradient, f, x, execution, options)


def jacobian(f: Callable[[Any], Any], x: Any, *, execution: Execution | None = None,
             **options: Any) -> Any:
    """The Jacobian of a vector-valued `f` at `x`, in one call: `engine.Jacobian`'s one-shot form.

    `execution` and `options` are `engine.Jacobian`'s (``h``, ``scheme``, ``on_failure``,
    ``bounds``, ``workers``, ``backend``...); ``dispatch="auto"`` means ``"parallel"``. For a 1-D `x`
    of n entries and an `f` of m outputs the result has shape ``(m, n)``; parallel
    results equal serial ones exactly.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(jacobian(lambda v: np.array([v.sum(), v[0] * v[1]]), np.array([1.0, 2.0]),
    ...                   workers=1), 6)
    array([[1., 1.],
           [2., 1.]])
    """
    return _one_shot(Jacobian, f, x, execution, options)


def _one_shot(kind: type[Gradient], f: Callable, x: Any, execution: Execution | None,
              options: dict[str, Any]) -> Any:
    """One call of a `kind` built from `options`, on the shared worker processes."""
    execution_options = {name: options.pop(name) for name in list(options) if name in EXECUTION_FIELDS}
    execution = Execution.from_options(execution, **execution_options)
    if execution.dispatch == "auto":   # nothing to learn from in a single call
        execution = replace(execution, dispatch="parallel")
    gradient = kind(f, execution=execution, _shared_pool=True, **options)
    with gradient:
        return gradient(x)
