"""The serial reference: the teaching text's `numerical_gradient`, entry by entry."""
from __future__ import annotations

from typing import Any, Callable

from ..run._blas import one_blas_thread
from ..fd._evaluators import loop_evaluate
from ..fd._schemes import DEFAULT_SCHEME, DEFAULT_STEP, get_scheme, resolve_steps
from ..fd._space import ParamSpace

__all__ = ["numerical_gradient"]


def numerical_gradient(
    f: Callable[[Any], Any], x: Any, h: float | dict = DEFAULT_STEP, *, scheme: str = DEFAULT_SCHEME
) -> Any:
    """Numerical gradient of `f` at `x`, one entry at a time, in this process.

    For each entry in order (arrays in their order in `x`, entries in C order) the
    entry is set to ``float(x_i) + h``, ``f(x)`` is evaluated, then ``float(x_i) - h``
    and ``f(x)`` again; ``(f1 - f2) / (2*h)`` is stored and the entry is restored to
    its exact original value. `f` is called with `x` itself, so the teaching text's
    ``f = lambda w: net.loss(x, t)``, which reads the perturbed array through the
    net, works unchanged. BLAS runs with one thread meanwhile, as in every worker of
    `parallel_numerical_gradient`, so that the two agree bit for bit.

    Parameters
    ----------
    f : callable
        ``f(x) -> scalar``, the loss.
    x : ndarray, or dict / list / tuple of ndarray
        Writable floating-point arrays of any shape (0-d included), perturbed in place
        during the call and bit-identical to before it afterwards (also when `f` raises
        or writes into them).
    h : float or dict, default 1e-4
        Step size; for a dict `x`, a dict of per-array steps is also accepted.
    scheme : {"central", "forward", "central4"}, default "central"
        Difference formula: central ``(f(x+h) - f(x-h)) / 2h``; forward
        ``(f(x+h) - f(x)) / h``; central4 ``(-f(x+2h) + 8f(x+h) - 8f(x-h) + f(x-2h)) / 12h``.

    Returns
    -------
    ndarray or the same structure as `x`
        The gradient, with `x`'s shapes and dtypes.

    Raises
    ------
    TypeError
        If `f` is not callable, `x` is not a floating array (or a structure of them),
        or `f` returns a non-scalar.
    ValueError
        If `x` is read-only or `h` is not a positive finite number.
    FloatingPointError
        If `f` returns NaN or inf; the message names the entry.

    Examples
    --------
    >>> import numpy as np
    >>> numerical_gradient(lambda w: float(np.sum(w ** 2)), np.array([1.0, -2.0]))
    array([ 2., -4.])
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable, got {type(f).__name__}")
    space = ParamSpace(x)
    steps = resolve_steps(h, space.keys, space.labels)
    the_scheme = get_scheme(scheme)
    # an `f` that writes into `x` must not leave the caller's arrays changed
    with space.restored(), one_blas_thread():   # no result depends on a BLAS thread count
        values = loop_evaluate(f, space, steps, the_scheme, 0, space.size)
    return space.assemble(values)
