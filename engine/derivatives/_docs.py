"""What the derivative objects' docstrings share, written once: their options and their contract.

`Gradient`, `Jacobian` and the kinds built on them take the same options and keep the
same promises; `shared_doc` fills ``%(options)s`` and ``%(contract)s`` in a docstring.
"""
from __future__ import annotations

__all__ = ["shared_doc", "OPTIONS", "CONTRACT"]

OPTIONS = """\
    h : float, "auto" or dict, default 1e-4
        Step size (the teaching text's formula: ``(f(x+h) - f(x-h)) / 2h``); a call raises
        `ValueError` naming the entry where ``x_i ± h`` rounds back to ``x_i``, and warns
        (`StepSizeWarning`) where the step actually stored differs from `h` by more than
        1%. ``"auto"``: a relative step per entry, ``eps ** (1/k) * max(1, |x_i|)`` (k = 2,
        3, 5 for forward, central, central4; eps of `x`'s dtype), the difference divided
        by the steps actually stored. A dict gives per-array steps for a dict `x`.
    scheme : {"central", "forward", "central4", "complex"}, default "central"
        At a bound, each takes the one-sided scheme of its order (docs/accuracy.md).
        ``"complex"``: ``Im f(x + ih) / h`` (loop evaluator; `f` must accept complex
        input; use ``h="auto"``, 1e-20 * max(1, |x_i|)).
    evaluator : {"auto", "loop", "batched"}, default "auto"
        ``"loop"`` calls `f` once per perturbation and works for any `f`; ``"batched"``
        evaluates blocks of perturbations through a layered model (``model.loss``, or a
        `engine.ModelLoss` over `x`); ``"auto"`` picks batched where it can.
    block_memory : int, default 256 MiB
        Batched evaluator: the most bytes of temporaries per worker.
    check_state : bool, default True
        Every call on the workers verifies itself: this process computes ``f(x)`` while
        the workers work, and a worker's ``f(x)`` must be bit-identical to it (a closure,
        module state or `args` that changed, or values that did not arrive, all break
        that). After each shipping, ``f`` at a point where every entry of `x` is moved
        is compared the same way, so an `f` that ignores the workers' copy of `x`
        (module state read by reference) is caught even where single derivatives are 0.
        Cost: one evaluation of `f` here per call, overlapped with the workers, one
        more on a worker, and two more per shipping. A mismatch ships ``(f, x)`` again
        and repeats the call once; a second mismatch raises `StateNotShippedError`.
        ``False`` turns the check off (an `f` that is not deterministic, or one that
        could crash this process: the check runs `f` here). With the check on, the first
        call also evaluates ``f(x)`` twice here (on the workers' path, while the workers
        work) and raises `NotDeterministicError` if the two values differ.
    side_effects : {"warn", "restore", "ignore"}, default "warn"
        State that `f` keeps between calls and changes (a batch-norm layer's running
        statistics, a random generator it draws from, a counter) changes in the workers'
        copies, not in the caller's, while the serial loop changes it 2n times: after a
        gradient that state depends on where it was computed. With ``check_state``, the
        first call finds such state (the two evaluations above, the state reachable from
        `f` and `args` recorded around each, then put back; see
        `engine.derivatives._side_effects`) and ``"warn"`` names it. ``"restore"`` puts
        every recorded value back after each call, wherever it ran, so the caller's state
        is what it was before the call (the cost: a copy of that state per call).
        ``"ignore"``: neither.
    on_failure : {"raise", "one-sided", "nan"}, default "raise"
        An evaluation of `f` that raises an ``Exception`` or returns a non-finite value:
        ends the call (``"raise"``, with the error and where it happened); is replaced by
        the other side's one-sided difference with ``f(x)`` (computed once per call), or
        NaN where both sides failed (``"one-sided"``); makes the entry NaN (``"nan"``).
        The non-raising modes warn once per call (`NumericalFallbackWarning`) and keep
        the list in `failures`. Loop evaluator only.
    bounds : (lower, upper), optional
        `f` is never evaluated outside ``lower <= x <= upper`` (scalars, arrays
        broadcastable to a bare array `x`, or structures like `x`); entries at or near a
        bound take the one-sided difference that stays inside. Loop evaluator only.
    execution : Execution, optional
        Where chunks run; the keywords below replace its fields.
    **execution_options
        ``workers``, ``backend``, ``scheduler``, ``chunks_per_worker``, ``chunk_size``,
        ``retries``, ``progress``, ``dispatch``: see `engine.Execution`.
"""

CONTRACT = """\
    Exactness: the loop evaluator gives exactly `numerical_gradient`'s numbers; every
    evaluator gives the same bits at any worker count, in this process or not, call
    after call. The batched evaluator agrees with the loop evaluator to rounding
    (relative 1e-9 or better on the book's net).

    Lifetime: ``with Gradient(...) as g:`` or ``g.close()`` stops the workers and frees
    the shared memory; both also happen when `g` is garbage-collected and at exit.

    Threads: a `Gradient` may be called from several threads; its calls run one at a
    time (a lock), each on its own values. For calls that overlap, give each thread
    its own `Gradient`. In-process evaluation perturbs the caller's arrays in place
    (restored after), so no other thread may use those arrays during a call.

"""


def shared_doc(cls: type) -> type:
    """Fill the shared sections into `cls`'s docstring (a class decorator)."""
    cls.__doc__ = cls.__doc__ % {"options": OPTIONS, "contract": CONTRACT}
    return cls
