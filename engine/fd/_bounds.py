"""Bounds on `x`, per parameter array: where `f` may be evaluated."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._space import ParamSpace

__all__ = ["bounds_per_array", "check_bounds_option"]


def check_bounds_option(bounds: Any) -> None:
    """Raise `ValueError` unless `bounds` is None or a pair ``(lower, upper)``."""
    if bounds is not None and not (isinstance(bounds, tuple) and len(bounds) == 2):
        raise ValueError(f"`bounds` must be a pair (lower, upper), got {bounds!r}")


def bounds_per_array(bounds: tuple | None, space: ParamSpace) -> tuple | None:
    """``(lower, upper)`` arrays per parameter array, checked to hold `x`; None without bounds.

    Raises
    ------
    ValueError
        If a bound does not fit `x`'s structure or shapes, or `x` lies outside.
    """
    if bounds is None:
        return None
    per_side = [_members_like(side, space, name) for side, name in zip(bounds, ("lower", "upper"))]
    result = []
    for position, array in enumerate(space.arrays):
        lower, upper = (side[position] for side in per_side)
        try:
            lower, upper = (np.broadcast_to(np.asarray(b, dtype=np.float64), array.shape)
                            for b in (lower, upper))
        except ValueError:
            raise ValueError(f"`bounds` for {space.labels[position]} do not broadcast to its "
                             f"shape {array.shape}") from None
        outside = np.flatnonzero(((array < lower) | (array > upper)).reshape(-1))
        if outside.size:
            flat = int(space.offsets[position]) + int(outside[0])
            raise ValueError(f"{space.describe(flat)} lies outside `bounds` "
                             f"({outside.size} entries of {space.labels[position]} do)")
        result.append((lower, upper))
    return tuple(result)


def _members_like(side: Any, space: ParamSpace, name: str) -> list:
    if isinstance(side, dict):
        if set(side) != set(space.keys):
            raise ValueError(f"`bounds` {name} must name exactly the keys of `x`")
        return [side[key] for key in space.keys]
    if isinstance(side, (list, tuple)) and not isinstance(space.structure, np.ndarray):
        if len(side) != len(space.arrays):
            raise ValueError(f"`bounds` {name} must have one entry per member of `x`")
        return list(side)
    return [side] * len(space.arrays)
