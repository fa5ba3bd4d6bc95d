"""The bundle shipped to workers: `f` and `x`, pickled together, once per call.

Pickling `f` and `x` in one stream keeps the references between them: a closure
over the net that owns ``x['w1']`` still reaches the very array the worker perturbs.
Arrays that share memory with a member of `x` (the member's base array, and every
view of it) travel as views of one shared base, so an `f` that reads the base, or
another view of it, still sees the perturbation. Other arrays (a data set that a
mini-batch is sliced from, say) travel as plain copies of their own entries.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Callable

import cloudpickle
import numpy as np

from .._errors import PayloadError

__all__ = ["dumps_bundle", "loads_bundle"]


def dumps_bundle(f: Callable, x: Any, views: list[np.ndarray], args: tuple = ()) -> bytes:
    """Pickle ``(f, x, args)`` as one stream.

    Parameters
    ----------
    f, x
        The loss and its parameters, as passed by the caller.
    views : list of ndarray
        The parameter arrays of `x`. Every array in the stream that is a view of the
        same contiguous (C or Fortran) base as one of them is pickled as (base, offset, strides),
        so the worker's copies are again views into one copy of that base.
    args : tuple
        Extra arguments of `f` (``f(x, *args)``), shipped in the same stream.

    Raises
    ------
    PayloadError
        If something in `f` or `x` cannot be pickled; the message suggests the fixes.
    """
    buffer = io.BytesIO()
    try:
        _BundlePickler(buffer, {id(_owner(v)) for v in views}).dump((f, x, tuple(args)))
    except Exception as exc:  # pickling raises many types: PicklingError, TypeError...
        raise PayloadError(
            f"`f` cannot be pickled to give each worker its own copy of (f, x) "
            f"({type(exc).__name__}: {exc}). Define `f` at module level, or as a closure over "
            "picklable objects only (arrays, nets, plain data: no locks, open files or "
            "generators). Threads need the same, since each one perturbs a private copy; "
            "workers=1 needs no copy at all."
        ) from exc
    return buffer.getvalue()


def loads_bundle(data: bytes) -> tuple[Callable, Any, tuple]:
    """Unpickle ``(f, x, args)``: a private, writable copy for one worker."""
    return pickle.loads(data)


class _BundlePickler(cloudpickle.Pickler):
    def __init__(self, file, owner_ids: set[int]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._owner_ids = owner_ids

    def reducer_override(self, obj):
        if _is_view_of_plain_base(obj) and id(obj.base) in self._owner_ids:
            base = obj.base
            offset = obj.__array_interface__["data"][0] - base.__array_interface__["data"][0]
            return _rebuild_view, (base, offset, obj.shape, obj.strides, obj.dtype)
        return super().reducer_override(obj)


def _owner(array: np.ndarray) -> np.ndarray:
    return array.base if _is_view_of_plain_base(array) else array


def _is_view_of_plain_base(array: Any) -> bool:
    base = getattr(array, "base", None)
    return (
        type(array) is np.ndarray
        and type(base) is np.ndarray
        and (base.flags.c_contiguous or base.flags.f_contiguous)
        and base.dtype != object
    )


def _rebuild_view(base, offset, shape, strides, dtype):
    # A Fortran-ordered base has the same memory as its C-contiguous transpose.
    memory = base if base.flags.c_contiguous else base.T
    return np.ndarray(shape, dtype=dtype, buffer=memory, offset=offset, strides=strides)
