"""The complex-step evaluator: ``Im f(x + ih) / h`` for each entry, one call of `f` each.

For an `f` that is analytic in the entry, ``f(x + ih) = f(x) + ih f'(x) - h**2 f''(x) / 2
- ...``, so the imaginary part over h is the derivative with an error of ``h**2 f'''/6``
and no difference of two values: no cancellation, a tiny h, derivatives to rounding.

`x`'s arrays are real and stay so. Each chunk makes one complex copy of the member it
differentiates, sets one entry's imaginary part at a time and resets it by assignment,
and hands `f` the structure of `x` with that member replaced by the copy. The caller's
(or the worker's resident) arrays are only read; the bits of a derivative depend only on
the entry and its step, so any chunking and any worker count give the same numbers.
For a sparse Jacobian (`complex_grouped_evaluate`) every member is a complex copy and the
columns of a group take their imaginary steps together.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from ._calling import LoopOptions, Report, annotate_error, checked_output
from ._schemes import COMPLEX, Scheme, auto_step
from ._space import ParamSpace

__all__ = ["complex_evaluate", "complex_grouped_evaluate", "DROPPED_CAUSES"]

DROPPED_CAUSES = ("`abs`/`np.abs` (the modulus is real), `math.exp`/`math.sin`/... or "
                  "`float(...)` (real functions), a cast such as `.astype(float)` or writing "
                  "into a float array, or an `f` that reads the parameters from somewhere else "
                  "than its argument (a closure over a net)")


def complex_evaluate(
    f: Callable[[Any], Any],
    space: ParamSpace,
    steps: list[float | None],
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    loop: LoopOptions | None = None,
    report: Report | None = None,
) -> np.ndarray:
    """Complex-step derivatives of `f` for the flat entries ``start .. stop-1`` of `space`.

    `f` is called with `x`'s structure in which the member being differentiated is a
    complex copy (complex64 for float32 and float16, complex128 for float64) whose entry
    is ``x_i + ih``; it must return a complex scalar (or, with ``loop.vector``, a complex
    array) whose imaginary part carries the derivative. A step of None is ``h="auto"``:
    1e-20 * max(1, |x_i|). The result is divided by the step actually stored in the
    copy's imaginary part. Bounds do not apply (the real part never moves);
    ``on_failure="one-sided"`` acts as ``"nan"`` (there is no other side).

    Returns
    -------
    ndarray, float64, shape (stop - start,), or (stop - start, m) for a vector `f`

    Where an imaginary part is exactly 0, `f` is evaluated at ``x_i -+ h`` (real, h =
    eps**(1/3) * max(1, |x_i|)) to tell a zero derivative from a dropped imaginary part:
    two more calls for such entries only.

    Raises
    ------
    TypeError
        If `f` returns a real value for a complex input, or an imaginary part of 0 where
        the real difference says the derivative is not 0 (it dropped the imaginary part),
        or raises `TypeError` on it: the message names the entry and the likely causes.
    ValueError
        If the step underflows to 0 in the copy's dtype.
    FloatingPointError
        If `f` returns a non-finite value (with ``on_failure="raise"``).
    """
    cache = {} if cache is None else cache
    report = Report() if report is None else report
    loop = LoopOptions() if loop is None else loop
    values = None
    for segment in space.segments(start, stop):
        array = space.arrays[segment.position]
        copy = array.astype(np.result_type(array.dtype, np.complex64))
        members = list(space.arrays)
        members[segment.position] = copy
        structure = space.rebuild(members)
        step = steps[segment.position]
        for k, index in enumerate(space.multi_indices(segment.position, segment.start,
                                                      segment.stop)):
            flat = segment.offset + k
            derivative = _entry(f, structure, copy, index, step, space, flat, loop, report, cache)
            if values is None:
                values = np.empty((stop - start,) + np.shape(derivative), dtype=np.float64)
            values[flat - start] = derivative
    return np.empty(0) if values is None else values


def _call(f, structure, where: str, on_failure: str):
    """``(f(structure), None)``, or ``(None, error)`` for an error that `on_failure` replaces.

    A `TypeError` means `f` cannot take complex input: raised, naming the likely causes.
    """
    try:
        return f(structure), None
    except TypeError as error:
        raise TypeError(f"`f` cannot take the complex input of scheme='complex' at {where}: "
                        f"{type(error).__name__}: {error}. Likely causes: {DROPPED_CAUSES}; "
                        "use scheme='central' for such an f") from error
    except Exception as error:
        annotate_error(error, f"raised by `f` while evaluating {where}")
        if on_failure == "raise":
            raise
        return None, error


def _entry(f, structure, copy, index, step, space, flat, loop, report, cache):
    """One entry's ``Im f(x + ih) / h``, the copy's entry reset to x_i afterwards."""
    original = copy[index]
    base = float(original.real)
    h = auto_step_complex(base) if step is None else step
    copy[index] = complex(base, h)
    stored = float(copy[index].imag)
    try:
        if stored == 0:
            raise ValueError(f"{space.describe(flat)}: the complex step {h!r} underflows to 0 in "
                             f"{copy.dtype}; use a larger `h`")
        where = f"{space.describe(flat)} + {stored!r}i"
        value, error = _call(f, structure, where, loop.on_failure)
        if error is not None:
            return _failed(f, space, loop, report, cache, flat, error)
        imaginary = _imaginary(value, where, loop.vector)
        finite = bool(np.all(np.isfinite(value)))
        if finite and np.any(imaginary == 0):
            _check_zero(f, structure, [(copy, index, base)], imaginary, where)
    finally:
        copy[index] = original
    if not finite:
        error = FloatingPointError(f"`f` returned a non-finite value at {where}")
        if loop.on_failure == "raise":
            raise error
        return _failed(f, space, loop, report, cache, flat, error)
    return imaginary / stored


def auto_step_complex(base: float) -> float:
    """``h="auto"`` for the complex step: 1e-20 * max(1, |x_i|), whatever the dtype."""
    return auto_step(COMPLEX, np.float64) * max(1.0, abs(base))


def _imaginary(value: Any, where: str, vector: bool) -> Any:
    """The imaginary part of `f`'s value (float64), or a clear error where `f` dropped it."""
    array = np.asarray(value)
    if not np.iscomplexobj(array):
        raise TypeError(
            f"`f` returned a real {'array' if vector else 'value'} ({array.dtype}) for the "
            f"complex input at {where}: it dropped the imaginary part, so the complex step "
            f"would give a derivative of 0. Likely causes: {DROPPED_CAUSES}. Use "
            "scheme='central' for such an f")
    if vector:
        return np.asarray(array.imag, dtype=np.float64)
    if array.ndim != 0:
        raise TypeError(f"`f` must return a scalar loss, got an array of shape {array.shape} "
                        f"at {where}")
    return float(array.imag)


def _check_zero(f, structure, moved, imaginary, where, rows=None):
    """Where the imaginary part is exactly 0, make sure the derivative is: an `f` that drops
    the imaginary part of one entry but not of the others (``abs(v[0]) + v[1]``) returns a
    complex value whose imaginary part is 0. Two real evaluations, every entry of `moved`
    (``(copy, index, base)``) at ``base -+ h``, ``h = eps**(1/3) * max(1, |base|)``, decide:
    if they differ by more than rounding, the derivative is not 0 and `f` lost it. `rows`:
    the outputs to look at (all by default)."""
    sides = []
    for sign in (1.0, -1.0):
        for copy, index, base in moved:
            eps = float(np.finfo(copy.real.dtype).eps)
            copy[index] = base + sign * eps ** (1 / 3) * max(1.0, abs(base))
        sides.append(np.real(np.asarray(f(structure), dtype=np.complex128)).reshape(np.shape(imaginary)))
    for copy, index, base in moved:
        copy[index] = base
    eps = float(np.finfo(moved[0][0].real.dtype).eps)
    difference = np.abs(sides[0] - sides[1])
    noise = 64 * eps * (np.abs(sides[0]) + np.abs(sides[1]))
    lost = (imaginary == 0) & (difference > noise)
    if rows is not None:
        lost = lost[rows]
        difference = difference[rows]
    if np.any(lost):
        raise TypeError(
            f"`f` returned an imaginary part of exactly 0 at {where}, but moving the entry "
            f"by -+eps**(1/3) changes f by {float(np.max(difference[lost])):.3g}, more than "
            "rounding: the derivative is not 0, so `f` dropped the imaginary part of this "
            f"entry. Likely causes: {DROPPED_CAUSES}. Use scheme='central' for such an f")


def complex_grouped_evaluate(f, space: ParamSpace, steps: list, scheme: Scheme, start: int,
                             stop: int, cache: dict | None = None, options: Any = None,
                             report: Report | None = None) -> np.ndarray:
    """The complex step for a sparse Jacobian's column groups ``start .. stop-1``.

    `options` is the grouped evaluator's (`engine.fd._grouped.GroupedOptions`). Every
    member of `x` is handed to `f` as a complex copy; the columns of group k are set to
    ``x_j + i h_j`` together, and since no output depends on two of them, each output's
    imaginary part over its column's step is that entry of the Jacobian. The checks of
    `complex_evaluate` apply, per group; bounds do not (the real parts never move).

    Returns
    -------
    ndarray, float64, shape (stop - start, m): the grouped evaluator's rows.
    """
    report = Report() if report is None else report
    m, n = options.pattern.shape
    if space.size != n:
        raise ValueError(f"`sparsity` has {n} columns but `x` has {space.size} entries")
    copies = [a.astype(np.result_type(a.dtype, np.complex64)) for a in space.arrays]
    structure = space.rebuild(copies)
    out = np.zeros((stop - start, m), dtype=np.float64)
    for k in range(start, stop):
        columns = options.group_columns[options.group_ptr[k]:options.group_ptr[k + 1]]
        if columns.size:
            out[k - start] = _group(f, space, steps, copies, structure, options, report, k,
                                    columns.tolist())
    return out


def _group(f, space, steps, copies, structure, options, report, number, columns):
    """One group's row: ``Im f / h`` at each output's column, 0 elsewhere."""
    moved, stored = [], []
    for column in columns:
        position, index = space.locate(column)
        copy = copies[position]
        base = float(copy[index].real)
        h = auto_step_complex(base) if steps[position] is None else steps[position]
        copy[index] = complex(base, h)
        moved.append((copy, index, base))
        stored.append(float(copy[index].imag))
    row = np.zeros(options.pattern.shape[0])
    rows, owner = options.pattern.entries(np.asarray(columns, dtype=np.int64))
    named = ", ".join(space.describe(c) for c in columns[:3])
    where = f"group {number} ({named}{' and more' if len(columns) > 3 else ''}) + ih"
    try:
        if 0.0 in stored:
            raise ValueError(f"{where}: a complex step underflows to 0; use a larger `h`")
        value, error = _call(f, structure, where, options.on_failure)
        if error is not None:
            failure = (type(error).__name__, str(error))
        if value is not None:
            imaginary = _imaginary(value, where, True).reshape(-1)
            if imaginary.size != row.size:
                raise ValueError(f"`f` returned {imaginary.size} values but `sparsity` has "
                                 f"{row.size} rows")
            finite = bool(np.all(np.isfinite(value)))
            if finite and np.any(imaginary[rows] == 0):
                _check_zero(f, structure, moved, imaginary, where, rows)
    finally:
        for copy, index, base in moved:
            copy[index] = base
    if value is None or not finite:
        if options.on_failure == "raise":
            raise FloatingPointError(f"`f` returned a non-finite value at {where}")
        if value is not None:
            failure = ("FloatingPointError", f"`f` returned a non-finite value at {where}")
        for column in columns:
            report.failures.append((column, 1) + failure)
        row[rows] = np.nan
        return row
    row[rows] = imaginary[rows] / np.asarray(stored)[owner]
    return row


def _failed(f, space, loop, report, cache, flat, error):
    """A failed evaluation under on_failure 'nan' or 'one-sided': recorded, and NaN."""
    report.failures.append((flat, 1, type(error).__name__, str(error)))
    if not loop.vector:
        return math.nan
    if "center" not in cache:
        cache["center"] = checked_output(f(space.structure), "the unperturbed x")
    return np.full(np.shape(cache["center"]), np.nan)
