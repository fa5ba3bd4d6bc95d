"""State that `f` keeps between calls and changes: found, named, and put back on request.

Workers evaluate `f` on their own copies, so whatever `f` changes besides returning its
value (a batch-normalization layer's running statistics, a random generator it draws
from, a counter) changes in the workers, not in the caller: after a gradient on the
workers the caller's state is not what the serial loop, 2n calls of `f` here, leaves.

Such state is found by evaluating ``f(x)`` twice in this process on a gradient's first
call and recording, before and after each, the state reachable from `f` and `args`
(`Snapshot`). What differs between the state after the first and after the second
evaluation is state `f` accumulates. A cache that `f` overwrites with the same values
at the same `x` (a layer's saved input or ReLU mask) does not differ and is not
reported. Two different values of ``f(x)`` mean `f` is not deterministic, and its
differences would be noise.

Reachable means: the object of a bound method, a closure's variables, the globals
`f`'s code names, a `functools.partial`'s arguments, a callable object's attributes,
and `args`; from there through dicts, lists, tuples and objects' attributes, to arrays,
numbers, strings and random generators; plus NumPy's and `random`'s global generators.
Arrays that share memory with `x` are left out (the engine restores `x` itself), and so
are the objects of the engine's and the pools' own machinery (a `Gradient` that `f`
calls counts its calls). The walk follows 8 levels below each root and records at most
10,000 values; each object is visited once (an array reached twice is named by its
first path); arrays past 256 MiB in all are compared by a digest, so they can be named
but not put back.
"""
from __future__ import annotations

import functools
import hashlib
import pickle
import random
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._errors import NotDeterministicError, warn_user
from ..fd._space import ParamSpace
from ..run._blas import one_blas_thread
from ..run._job import Raised, shown, value_at

__all__ = ["SIDE_EFFECTS", "Snapshot", "EffectsProbe"]

SIDE_EFFECTS = ("warn", "restore", "ignore")   # the `side_effects` option; the first is the default

_MAX_DEPTH = 8               # attributes / items followed below a root
_MAX_LEAVES = 10_000         # values recorded at most (the walk stops there)
_COPY_LIMIT = 256 * 2 ** 20  # bytes of arrays copied; beyond, arrays are compared by a digest
_SHOWN = 5                   # state paths a message names

_LEAF_TYPES = (bool, int, float, complex, str, bytes, type(None), np.generic)
_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
           types.CodeType, types.FrameType, types.GeneratorType, functools.partial, property)
# Objects of these packages are execution machinery (pools, locks, executors), not f's state.
_RUNTIME_PACKAGES = ("threading", "multiprocessing", "concurrent", "asyncio", "queue", "logging",
                     "loky", "joblib", "dask", "distributed", "tqdm", "weakref", "_thread",
                     __name__.split(".")[0] + ".run", __name__.split(".")[0] + ".derivatives")


@dataclass
class _Leaf:
    """A value found at `path`: the object, a comparable record of it, how to bind it again."""

    path: str
    obj: Any
    record: Any
    bind: Callable[[Any], None] | None   # None: the path cannot be rebound (a tuple's item)
    saved: Any = None                    # what `restore` puts back (None: cannot, a digest only)


class Snapshot:
    """The state reachable from ``(f, args)`` at one moment, outside `x`'s arrays."""

    def __init__(self, f: Callable, args: tuple, space: ParamSpace):
        self._f, self._args, self._space = f, args, space
        self.leaves: dict[str, _Leaf] = {}
        self._seen: set[int] = set()
        self._copied = 0
        for path, obj, bind in _roots(f, args):
            self._walk(obj, path, bind, 0)

    def again(self) -> Snapshot:
        """A snapshot of the same roots, now."""
        return Snapshot(self._f, self._args, self._space)

    def differences(self, other: Snapshot) -> list[str]:
        """The paths whose values differ between this snapshot and `other`, in walk order."""
        changed = [path for path, leaf in self.leaves.items()
                   if path not in other.leaves or not _same(leaf.record, other.leaves[path].record)]
        return changed + [path for path in other.leaves if path not in self.leaves]

    def restore(self) -> list[str]:
        """Put back every recorded value that changed since; the paths that could not be."""
        now, failed = self.again(), []
        for path in self.differences(now):
            leaf = self.leaves.get(path)
            if leaf is None:
                continue   # a value that appeared since: nothing recorded to put back
            if not _put_back(leaf, now.leaves.get(path)):
                failed.append(path)
        return failed

    def _walk(self, obj: Any, path: str, bind, depth: int) -> None:
        if len(self.leaves) >= _MAX_LEAVES:
            return
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject:
                return   # object arrays: their bytes are pointers, not state
            if id(obj) in self._seen or any(np.may_share_memory(obj, a) for a in self._space.arrays):
                return
            self._seen.add(id(obj))
            self.leaves[path] = self._array_leaf(obj, path, bind)
            return
        if isinstance(obj, _LEAF_TYPES):
            self.leaves[path] = _Leaf(path, obj, _scalar_record(obj), bind, obj)
            return
        state = _rng_state(obj)
        if state is not None:
            if id(obj) not in self._seen:
                self._seen.add(id(obj))
                self.leaves[path] = _Leaf(path, obj, ("rng", pickle.dumps(state)), bind, state)
            return
        if depth >= _MAX_DEPTH or id(obj) in self._seen or not _walkable(obj):
            return
        self._seen.add(id(obj))
        if isinstance(obj, (list, dict)):   # items added or taken out: the whole set put back
            name = f"{path}[:]" if isinstance(obj, list) else f"{path}.keys()"
            self.leaves[name] = _Leaf(name, obj, ("items", _keys(obj)),
                                      functools.partial(_refill, obj), _items(obj))
        try:
            members = list(_members(obj))
        except Exception:   # an object whose attributes cannot be listed: not followed
            return
        for name, value, rebind in members:
            self._walk(value, f"{path}{name}", rebind, depth + 1)

    def _array_leaf(self, array: np.ndarray, path: str, bind) -> _Leaf:
        if self._copied + array.nbytes > _COPY_LIMIT:
            digest = hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8)).digest()
            return _Leaf(path, array, ("digest", array.dtype.str, array.shape, digest), bind)
        self._copied += array.nbytes
        copy = np.array(array, copy=True)
        return _Leaf(path, array, ("array", array.dtype.str, array.shape, copy.tobytes()), bind, copy)


class EffectsProbe:
    """The first call's test for state `f` accumulates, and for `f` that is not deterministic.

    `run` evaluates ``f(x)`` twice in this process (on the workers' path, while the
    workers work), then puts the state back as it was before; `tell` warns about the
    state that changed from the first evaluation to the second and raises if the two
    values differ.
    """

    def __init__(self, f: Callable, args: tuple, space: ParamSpace, *, vector: bool, warn: bool):
        self._f, self._args, self._space = f, args, space
        self._vector, self._warn = vector, warn
        self.changed: list[str] = []
        self.values: tuple[Any, Any] | None = None
        self.unrestored: list[str] = []

    def run(self, bound: Callable) -> None:
        """``f(x)`` twice here, the state recorded around each; the state put back after."""
        before = Snapshot(self._f, self._args, self._space)
        with one_blas_thread():   # as every evaluation: the same bits wherever it runs
            first = value_at(bound, self._space, None, self._vector)
            after_one = before.again()
            second = value_at(bound, self._space, None, self._vector)
        self.changed = after_one.differences(after_one.again())
        self.unrestored = before.restore()
        if not (isinstance(first, Raised) and isinstance(second, Raised)):   # raising at x: the loop's
            self.values = (first, second)

    def not_deterministic(self) -> NotDeterministicError | None:
        """The error to raise when the two values of ``f(x)`` differ."""
        if self.values is None:
            return None
        first, second = self.values
        if isinstance(first, Raised) or isinstance(second, Raised):   # one raised, one did not
            same = False
        else:
            same = np.shape(first) == np.shape(second) and np.array_equal(
                np.asarray(first), np.asarray(second), equal_nan=True)
        if same:
            return None
        drawn = _named(self.changed)
        return NotDeterministicError(
            f"`f` is not deterministic: two evaluations at the same x gave {_short(first)} and "
            f"{_short(second)}, so its differences would be noise, not a gradient"
            f"{f' (between them it changed {drawn})' if drawn else ''}. Draw random numbers "
            "from a seed that `x` or `args` carry, the same for every evaluation of one call "
            "(a dropout mask per call, say), or pass check_state=False to compute the "
            "differences anyway.")

    def tell(self) -> None:
        """Raise `NotDeterministicError`, or warn about the state `f` changed."""
        error = self.not_deterministic()
        if error is not None:
            raise error
        if self._warn and self.changed:
            lost = (f" ({_named(self.unrestored)} could not be put back after the engine's own "
                    "test calls)") if self.unrestored else ""
            warn_user(f"`f` changes state that it keeps between calls: {_named(self.changed)}. "
                      "Evaluations on workers change the workers' copies only, and the serial loop "
                      "changes it once per evaluation, so after a gradient this state depends on "
                      "where it was computed (the gradient itself does not). Pass "
                      "side_effects='restore' to keep it as it was before each call, or "
                      f"side_effects='ignore' to say that it does not matter.{lost} (Said on a "
                      "gradient's first call.)")


def check_side_effects_option(side_effects: Any) -> str:
    if not isinstance(side_effects, str) or side_effects not in SIDE_EFFECTS:
        raise ValueError(f"`side_effects` must be one of {SIDE_EFFECTS}, got {side_effects!r}")
    return side_effects


def _roots(f: Callable, args: tuple):
    """``(path, object, bind)`` for each object `f` and `args` reach directly."""
    yield from _global_generators()
    yield from _function_roots(f, "f")
    for i, arg in enumerate(args):
        yield f"args[{i}]", arg, None


def _global_generators():
    # the generators behind np.random.rand and random.random: their functions' `__self__`
    yield "numpy.random's global generator", np.random.get_state.__self__, None
    yield "random's global generator", random.getstate.__self__, None


def _function_roots(f: Any, label: str):
    if isinstance(f, types.MethodType):
        yield f"{label}.__self__", f.__self__, None
        f = f.__func__
    if isinstance(f, functools.partial):
        yield from _function_roots(f.func, f"{label}.func")
        for i, arg in enumerate(f.args):
            yield f"{label}.args[{i}]", arg, None
        for key, arg in f.keywords.items():
            yield f"{label}.keywords[{key!r}]", arg, functools.partial(f.keywords.__setitem__, key)
        return
    if isinstance(f, types.FunctionType):
        for name, cell in zip(f.__code__.co_freevars, f.__closure__ or ()):
            try:
                contents = cell.cell_contents
            except ValueError:   # a variable not bound yet
                continue
            yield name, contents, functools.partial(setattr, cell, "cell_contents")
        for name in f.__code__.co_names:
            if name in f.__globals__:
                yield name, f.__globals__[name], functools.partial(f.__globals__.__setitem__, name)
        return
    if not isinstance(f, _OPAQUE) and hasattr(f, "__dict__"):
        yield label, f, None   # a callable object: its attributes


def _walkable(obj: Any) -> bool:
    if isinstance(obj, (dict, list, tuple)):
        return True
    if isinstance(obj, _OPAQUE) or not hasattr(obj, "__dict__"):
        return False
    module = type(obj).__module__ or ""
    return not module.startswith(_RUNTIME_PACKAGES)


def _members(obj: Any):
    """``(path suffix, value, bind)`` of a container's items or an object's attributes."""
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            yield f"[{key!r}]", value, functools.partial(obj.__setitem__, key)
    elif isinstance(obj, list):
        for i, value in enumerate(list(obj)):
            yield f"[{i}]", value, functools.partial(obj.__setitem__, i)
    elif isinstance(obj, tuple):
        for i, value in enumerate(obj):
            yield f"[{i}]", value, None
    else:
        for name, value in list(vars(obj).items()):
            yield f".{name}", value, functools.partial(setattr, obj, name)


def _rng_state(obj: Any) -> Any:
    """A random generator's state (NumPy's Generator or RandomState, `random.Random`), or None."""
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    if isinstance(obj, np.random.RandomState):
        return obj.get_state()
    if isinstance(obj, random.Random):
        return obj.getstate()
    return None


def _set_rng_state(obj: Any, state: Any) -> None:
    if isinstance(obj, np.random.Generator):
        obj.bit_generator.state = state
    elif isinstance(obj, np.random.RandomState):
        obj.set_state(state)
    else:
        obj.setstate(state)


def _scalar_record(value: Any) -> tuple:
    try:
        return ("scalar", type(value), pickle.dumps(value))   # exact bits, NaN equal to itself
    except Exception:   # an unpicklable subclass of str or int, say
        return ("scalar", type(value), repr(value))


def _same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1:] == b[1:]


def _put_back(leaf: _Leaf, now: _Leaf | None) -> bool:
    """Restore one changed value; False where it cannot be (a digest only, a tuple's item)."""
    kind = leaf.record[0]
    if kind == "rng":
        _set_rng_state(leaf.obj, leaf.saved)
        if now is not None and now.obj is not leaf.obj:
            return _rebind(leaf, leaf.obj)
        return True
    if kind == "digest":
        return False
    if kind == "items":
        leaf.bind(leaf.saved)
        return True
    if kind == "array":
        if not leaf.obj.flags.writeable:
            return _rebind(leaf, np.array(leaf.saved, copy=True))
        leaf.obj[...] = leaf.saved   # the caller's own array, also where f rebound the name
        return now is not None and now.obj is leaf.obj or _rebind(leaf, leaf.obj)
    return _rebind(leaf, leaf.saved)


def _keys(container: list | dict) -> Any:
    """What a container's set of items is compared by: a list's length, a dict's keys."""
    return len(container) if isinstance(container, list) else tuple(map(id, container))


def _items(container: list | dict) -> list:
    return list(container) if isinstance(container, list) else list(container.items())


def _refill(container: list | dict, items: list) -> None:
    """Put a list's items or a dict's keys and values back as they were (the same objects)."""
    if isinstance(container, list):
        container[:] = items
    else:
        container.clear()
        container.update(items)


def _rebind(leaf: _Leaf, value: Any) -> bool:
    if leaf.bind is None:
        return False
    try:
        leaf.bind(value)
    except Exception:   # an attribute that cannot be set (a property, a frozen dataclass)
        return False
    return True


def _named(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" (and {len(paths) - _SHOWN} more)" if len(paths) > _SHOWN else "")


def _short(value: Any) -> str:
    text = shown(value)
    return text if len(text) <= 60 else text[:57] + "..."
