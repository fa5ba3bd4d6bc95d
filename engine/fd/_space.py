"""What is perturbed: one flat index space over every parameter array.

A gradient's input `x` may be a single array, a dict of arrays, or a list/tuple of
arrays; a list or tuple of numbers is the 1-D float64 array it spells. `ParamSpace` lays
their entries end to end, each array in C order, so that entry `k` of the whole structure
has one flat index. Chunks are contiguous ranges of
that index, which is all a worker needs to know about its share of the work.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

__all__ = ["ParamSpace", "Segment", "split_range"]


@dataclass(frozen=True)
class Segment:
    """The part of one parameter array that a flat range covers."""

    position: int      # which array of the space
    start: int         # first entry, a C-order index into that array
    stop: int          # one past the last entry
    offset: int        # flat index of `start` in the whole space


class ParamSpace:
    """The parameter arrays of `x`, their labels, and their joint flat index.

    Parameters
    ----------
    x : ndarray, dict of ndarray, list/tuple of ndarray, or list/tuple of numbers
        The structure whose entries are perturbed. Every array must be a writable
        NumPy array with a floating dtype. A non-empty list or tuple whose members are
        all real numbers (int or float, not bool) becomes a new float64 array of shape
        (n,), which is then `structure`: `f` receives that array and the gradient has its
        shape; the caller's list is left as it is.

    Raises
    ------
    TypeError
        If `x` (or a member of it) is not a floating-point ndarray; for a number, or a list
        mixing numbers and arrays, the message names ``np.asarray``.
    ValueError
        If an array is read-only.
    """

    def __init__(self, x: Any):
        x = _numbers_as_array(x)
        self.structure = x
        self.keys, self.arrays = _members(x)
        self.labels = [_label(x, key) for key in self.keys]
        for label, array in zip(self.labels, self.arrays):
            _check_array(label, array)
        self.sizes = [int(a.size) for a in self.arrays]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes, dtype=np.int64)])

    @property
    def size(self) -> int:
        """Total number of entries over all arrays."""
        return int(self.offsets[-1])

    def segments(self, start: int, stop: int) -> Iterator[Segment]:
        """Yield the per-array pieces of the flat range ``[start, stop)``."""
        for position in range(len(self.sizes)):
            first, end = int(self.offsets[position]), int(self.offsets[position + 1])
            lo, hi = max(start, first), min(stop, end)
            if lo < hi:
                yield Segment(position, lo - first, hi - first, lo)

    def locate(self, flat_index: int) -> tuple[int, tuple[int, ...]]:
        """Return ``(position, multi_index)`` of one flat index."""
        position = int(np.searchsorted(self.offsets, flat_index, side="right")) - 1
        local = flat_index - int(self.offsets[position])
        return position, self.multi_indices(position, local, local + 1)[0]

    def multi_indices(self, position: int, start: int, stop: int) -> list[tuple[int, ...]]:
        """Multi-indices of the C-order entries ``start .. stop-1`` of one array."""
        shape = self.arrays[position].shape
        if not shape:
            return [()] * (stop - start)
        columns = np.unravel_index(np.arange(start, stop), shape)
        return list(zip(*(c.tolist() for c in columns)))

    def describe(self, flat_index: int) -> str:
        """A readable name for one entry, e.g. ``x['w1'][3, 7]``."""
        position, index = self.locate(flat_index)
        return f"{self.labels[position]}[{', '.join(map(str, index))}]"

    @contextmanager
    def restored(self) -> Iterator[None]:
        """Put every array back as it was on exit, whatever the block (or `f`) wrote into them."""
        saved = [a.copy() for a in self.arrays]
        try:
            yield
        finally:
            for array, before in zip(self.arrays, saved):
                array[...] = before

    def zeros_like(self) -> list[np.ndarray]:
        """One gradient array per parameter array, same shape and dtype, C order."""
        return [np.zeros(a.shape, dtype=a.dtype) for a in self.arrays]

    def assemble(self, values: np.ndarray, out_shape: tuple[int, ...] = ()) -> Any:
        """Pour flat derivatives into `x`'s structure.

        Parameters
        ----------
        values : ndarray, float64, shape (size,), or (size, m) for a vector `f`
        out_shape : tuple of int
            The shape of `f`'s output (m entries); () for a scalar `f`.

        Returns
        -------
        The structure of `x`, each member of shape ``out_shape + member.shape`` and the
        member's dtype: each value is cast on assignment, exactly as the serial reference
        stores ``grad[idx] = value``.
        """
        outputs = int(np.prod(out_shape, dtype=np.int64))
        grads = [np.zeros(tuple(out_shape) + a.shape, dtype=a.dtype) for a in self.arrays]
        for grad, first, last in zip(grads, self.offsets[:-1], self.offsets[1:]):
            block = values[first:last]
            if out_shape:
                grad.reshape(outputs, -1)[...] = block.reshape(last - first, outputs).T
            else:
                grad.reshape(-1)[...] = block
        return self.rebuild(grads)

    def rebuild(self, arrays: list[np.ndarray]) -> Any:
        """Put one array per member back into `x`'s kind of structure."""
        x = self.structure
        if isinstance(x, np.ndarray):
            return arrays[0]
        if isinstance(x, dict):
            return dict(zip(self.keys, arrays))
        return type(x)(arrays) if isinstance(x, tuple) else list(arrays)


def split_range(size: int, n_chunks: int) -> list[tuple[int, int]]:
    """Cut ``range(size)`` into `n_chunks` contiguous pieces whose lengths differ by at most one.

    Empty pieces are dropped, so fewer than `n_chunks` come back when ``size < n_chunks``.
    """
    n_chunks = max(1, min(n_chunks, size))
    bounds = [size * i // n_chunks for i in range(n_chunks + 1)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if lo < hi]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


def _numbers_as_array(x: Any) -> Any:
    """A non-empty list/tuple of real numbers as a new 1-D float64 array; anything else as given."""
    if isinstance(x, (list, tuple)) and x and all(_is_number(v) for v in x):
        return np.array(x, dtype=np.float64)
    return x


def _members(x: Any) -> tuple[list, list]:
    if _is_number(x):
        raise TypeError(f"`x` must be an array, got the number {float(x)!r}: pass "
                        f"np.array([{float(x)!r}]) (one entry) or np.array({float(x)!r}) (0-d)")
    if isinstance(x, np.ndarray):
        return [None], [x]
    if isinstance(x, dict):
        return list(x.keys()), list(x.values())
    if isinstance(x, (list, tuple)):
        return list(range(len(x))), list(x)
    raise TypeError(
        "`x` must be a floating-point ndarray, or a dict, list or tuple of them; "
        f"got {type(x).__name__}"
    )


def _label(x: Any, key: Any) -> str:
    return "x" if key is None else f"x[{key!r}]"


def _check_array(label: str, array: Any) -> None:
    if _is_number(array):
        raise TypeError(f"`{label}` is a number among arrays: a list or tuple is either numbers "
                        "(one vector) or arrays (one per parameter); for one vector pass "
                        "np.asarray(x, dtype=float), or make every member an array")
    if not isinstance(array, np.ndarray):
        raise TypeError(f"`{label}` must be a NumPy array, got {type(array).__name__}")
    if isinstance(array, (np.ma.MaskedArray, np.matrix)):
        raise TypeError(
            f"`{label}` is a {type(array).__name__}, whose entries do not behave as a plain "
            "array's under perturbation (a masked array's hidden data, a matrix's shapes); "
            "pass a plain array (e.g. np.ma.getdata(a) or np.asarray(a)) and handle the "
            "mask in `f`")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(
            f"`{label}` has the complex dtype {array.dtype}, but needs a real floating dtype: "
            "the engine differentiates with respect to real entries. Pass the real and "
            "imaginary parts as separate real arrays (x.real, x.imag); for the complex step, "
            "keep `x` real")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(
            f"`{label}` must have a floating dtype, got {array.dtype}: x + h would be "
            "truncated in an integer array; convert with .astype(np.float64)"
        )
    if not array.flags.writeable:
        raise ValueError(
            f"`{label}` is read-only; the engine perturbs entries in place and restores "
            "them, so it needs a writable array (pass a copy)"
        )
