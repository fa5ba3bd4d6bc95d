"""Gradient check: a net's numerical gradient against its backprop, array by array.

`gradient_check` answers "is my backprop right?" with the teaching text's figure (the
mean absolute difference) and a scale-free one, the relative error
``max|g_num - g_bp| / max(max|g_num|, max|g_bp|, RELATIVE_FLOOR)`` over the entries that
no kink explains (see `engine.train._kinks`). The floor keeps an array whose gradient is
zero to rounding (the bias before a batch normalization) from failing on differences of
1e-12. The ``engine-gradcheck`` command (`engine.cli.gradcheck`) runs it on an MLP and
real MNIST images.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..run._execution import Execution
from ..nn._functions import to_labels
from ..book._nets import Net
from ..derivatives._parallel import parallel_numerical_gradient
from ..batched._detect import AUTO_EVALUATOR
from ..fd._schemes import AUTO, DEFAULT_SCHEME, DEFAULT_STEP
from ._kinks import KINK_HINT, kink_entries

__all__ = ["GradientDifference", "gradient_check", "failures", "format_table", "default_tol",
           "LABEL_FORMS", "DEFAULT_WORKERS", "RELATIVE_FLOOR"]

LABEL_FORMS = ("auto", "one-hot", "int")
DEFAULT_WORKERS = 1   # a check runs in this process unless told otherwise
# The smallest gradient scale a relative error divides by. The rounding of a central
# difference at h = 1e-4 is about eps * |loss| / h ~ 1e-12 for the book's losses, so an
# array whose gradients are all below 1e-6 passes the float64 tolerance 1e-5 while its
# differences stay below 1e-11, and fails when backprop is off by more.
RELATIVE_FLOOR = 1e-6

# Largest relative error accepted by default, at h = 1e-4 (docs/accuracy.md). A correct
# backprop measured up to 2.8e-6 (central, central4; float64) and 1.8e-4 (float32) over
# 3- and 4-layer sigmoid/tanh nets; typical bugs give 1e-2 (a 1% scale) to 1 (a missing
# term). Forward differences are too coarse for a sharp default: up to 6.5e-3 on the
# book's net, 5e-2 to 0.5 on deeper ones.
_DEFAULT_TOL = {
    ("float64", "forward"): 1e-2,
    ("float64", "central"): 1e-5,
    ("float64", "central4"): 1e-5,
    ("float32", "forward"): 1e-2,
    ("float32", "central"): 1e-3,
    ("float32", "central4"): 1e-3,
}


@dataclass(frozen=True)
class GradientDifference:
    """How far one array's numerical gradient is from its backprop gradient."""

    max_abs: float    # max |g_num - g_bp|
    mean_abs: float   # mean |g_num - g_bp|, the figure the teaching text prints
    relative: float   # max |g_num - g_bp| over the entries not in `kinks`, / max(max_grad, RELATIVE_FLOOR)
    max_grad: float   # max(max |g_num|, max |g_bp|)
    kinks: tuple = ()  # indices of the entries a ReLU/max-pool kink explains (engine.train._kinks)


def gradient_check(net: Any, x: Any, t: Any, *, scheme: str = DEFAULT_SCHEME,
                   h: float | str | dict = DEFAULT_STEP, evaluator: str = AUTO_EVALUATOR,
                   labels: str = "auto", train: bool = True, tol: float | None = None,
                   execution: Execution | None = None,
                   **execution_options: Any) -> dict[str, GradientDifference]:
    """Compare the numerical gradient of ``net.loss(x, t)`` with ``net.gradient(x, t)``.

    Parameters
    ----------
    net : object
        A net with the teaching text's ``params`` (dict of float arrays),
        ``loss(x, t)`` and ``gradient(x, t)`` (the backprop under test, returning a
        dict with the keys of ``params``): an `engine._nets.Net`, or a hand-written
        one such as the book's ``TwoLayerNet``. An engine net's loss goes through
        ``net.numerical_gradient``, so the batched evaluator can be used; any other
        net's through ``parallel_numerical_gradient(lambda w: net.loss(x, t), net.params)``.
    x : ndarray, shape (B, n_in) or (n_in,)
        Inputs.
    t : array_like
        Class labels, integers (B,) or one-hot rows (B, C), converted as `labels`
        says; anything else (regression targets, None) is passed on unchanged.
    scheme : {"central", "forward", "central4"}, default "central"
    h : float, "auto" or dict, default 1e-4
        Step size, or a dict of per-array steps.
    evaluator : {"auto", "loop", "batched"}, default "auto"
        See `engine.Gradient`.
    labels : {"auto", "one-hot", "int"}, default "auto"
        The form of class labels ``net.loss`` and ``net.gradient`` are called with.
        ``"one-hot"``: float rows (B, C), C from `t` or from ``net.predict(x)``;
        ``"int"``: int64 (B,). ``"auto"``: an `engine._nets.Net` gets `t` as given
        (it takes both); any other net gets one-hot labels, the form every one of the
        book's ``TwoLayerNet`` classes takes (chapter 4's backprop ``(y - t) / batch``
        needs it), and integer labels if one-hot ones make ``net.loss`` or
        ``net.gradient`` raise. Both methods are called once with the chosen form
        before the numerical gradient starts.
    train : bool, default True
        Differentiate the training-mode loss, the one backprop differentiates (batch
        normalization on the batch's statistics, dropout's mask). An engine net's
        gradients are always of ``net.loss(x, t, train=True)``; any other net's `loss`
        is called with ``train_flg=True`` (the book's keyword) or ``train=True`` when its
        signature has one of them, and as ``net.loss(x, t)`` with ``train=False``.
    tol : float, optional
        The relative error that `failures` will be given; default `default_tol` for the
        scheme and the parameters' dtype. Entries whose difference exceeds it are probed
        for kinks: where the one-sided differences disagree by more and backprop lies
        between them, the entry is listed in ``kinks`` and left out of ``relative``
        (at most 1,000 probes per array, two to six loss evaluations each, in this
        process).
    execution : Execution, optional
        Where the numerical gradient runs; default ``Execution(workers=1)``, this
        process. The keywords below replace its fields.
    **execution_options
        ``workers``, ``backend``, ...: see `engine.Execution`.

    Returns
    -------
    dict of str to GradientDifference
        One entry per array of ``net.params``, in its order. Both gradients are
        compared in float64, whatever the dtype of the parameters. ``relative`` is
        ``max |num - bp|`` over the entries not in ``kinks``, divided by
        ``max(max_grad, RELATIVE_FLOOR)`` (``RELATIVE_FLOOR = 1e-6``).

    Raises
    ------
    TypeError
        If `net` lacks ``params``, ``loss`` or ``gradient``.
    ValueError
        If `labels` is unknown; if `tol` is not a number >= 0; if `t` cannot be given
        in the form `labels` asks (the message says why); if ``net.loss`` or
        ``net.gradient`` raise ``ValueError``,
        ``IndexError`` or ``TypeError`` with every form of the labels tried (the
        message names each form, its shape, and the error); if ``net.gradient`` does
        not return the arrays of ``net.params`` with their shapes; or if an engine
        option is bad (see `engine.parallel_numerical_gradient`). All before the
        numerical gradient starts.

    Examples
    --------
    >>> from ..book._nets import MLP
    >>> net = MLP([4, 3, 2], seed=0)
    >>> report = gradient_check(net, np.ones(4), 1)
    >>> all(d.relative < 1e-6 for d in report.values())
    True
    """
    _check_net(net)
    if labels not in LABEL_FORMS:
        raise ValueError(f"`labels` must be one of {', '.join(map(repr, LABEL_FORMS))}, "
                         f"got {labels!r}")
    tol = _check_tol(tol, scheme, net.params)
    execution = Execution.from_options(Execution(workers=DEFAULT_WORKERS) if execution is None else execution,
                                       **execution_options)
    options = dict(scheme=scheme, h=h, evaluator=evaluator, execution=execution)
    loss = _loss_in_mode(net, train)
    t, exact = _labels_the_net_takes(net, x, t, labels, loss)
    if isinstance(net, Net):   # its ModelLoss lets the batched evaluator in
        numerical = net.numerical_gradient(x, t, **options)
    else:                      # the book's f = lambda w: net.loss(x, t)
        numerical = parallel_numerical_gradient(lambda w: loss(x, t), net.params, **options)
    _check_same_arrays(numerical, exact)
    report = {}
    for name in numerical:
        scale = _scale(numerical[name], exact[name])
        step = h.get(name, DEFAULT_STEP) if isinstance(h, dict) else h
        kinks = kink_entries(lambda: loss(x, t), net.params[name], numerical[name], exact[name],
                             None if step == AUTO else step, tol * scale)
        report[name] = _difference(numerical[name], exact[name], kinks)
    return report


def _check_tol(tol: Any, scheme: str, params: dict) -> float:
    """`tol`, or the default for `scheme` and the parameters' dtype; ValueError if negative."""
    if tol is None:
        small = any(np.asarray(a).dtype.itemsize < 8 for a in params.values()
                    if np.asarray(a).dtype.kind == "f")
        return default_tol(scheme, "float32" if small else "float64")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not tol >= 0:
        raise ValueError(f"`tol` must be a number >= 0, got {tol!r}")
    return float(tol)


def _loss_in_mode(net: Any, train: bool) -> Callable[[Any, Any], float]:
    """``loss(x, t)``: `net`'s loss in training mode (if `train`) or as the net calls it by default."""
    if isinstance(net, Net):
        return lambda x, t: net.loss(x, t, train=True)
    if train:
        try:
            names = inspect.signature(net.loss).parameters
        except (TypeError, ValueError):   # a builtin without a signature: no mode to set
            names = {}
        for keyword in ("train_flg", "train"):
            if keyword in names:
                return lambda x, t: net.loss(x, t, **{keyword: True})
    return net.loss


def _labels_the_net_takes(net: Any, x: Any, t: Any, labels: str, loss: Callable) -> tuple[Any, Any]:
    """The labels to call `net` with, and ``net.gradient(x, t)`` computed with them."""
    forms = None if labels == "auto" and isinstance(net, Net) else _label_forms(net, x, t, labels)
    if forms is None:   # nothing to convert: the net's own errors reach the caller as they are
        return t, net.gradient(x, t)
    failed = []
    for name, candidate in forms:
        try:
            exact = net.gradient(x, candidate)
            loss(x, candidate)
        except (ValueError, IndexError, TypeError) as error:
            failed.append(f"with {name} labels of shape {np.shape(candidate)}: "
                          f"{type(error).__name__}: {error}")
            last = error
            continue
        return candidate, exact
    hint = " Pass labels='int' or labels='one-hot' to choose the form." if labels == "auto" else ""
    raise ValueError("`net.gradient(x, t)` or `net.loss(x, t)` raised " + "; and ".join(failed)
                     + "." + hint) from last


def _label_forms(net: Any, x: Any, t: Any, labels: str) -> list[tuple[str, Any]] | None:
    """Forms of `t` to try, in order: [(name, labels)]; None when `t` is not class labels."""
    given = _as_class_labels(x, t)
    if given is None:
        if labels == "auto":
            return None
        raise ValueError(f"labels={labels!r} needs `x` of shape (B, n_in) and `t` of B class "
                         f"labels, integers (B,) or one-hot rows (B, C); got `x` of shape "
                         f"{np.shape(x)} and `t` of shape {np.shape(t)}")
    ints, n_classes = given
    if n_classes is None:
        n_classes = _n_classes_from_predict(net, x)
    if n_classes is None:
        if labels == "one-hot":
            raise ValueError("labels='one-hot' needs the number of classes: give `t` as "
                             "one-hot rows (B, C), or a net whose `predict(x)` returns (B, C)")
        return [("integer", ints)]
    if ints.size and ints.max() >= n_classes:
        raise ValueError(f"`t` holds the label {ints.max()}, but `net.predict(x)` gives "
                         f"{n_classes} classes")
    one_hot = np.eye(n_classes)[ints]   # float64, as the book's load_mnist(one_hot_label=True)
    return {"one-hot": [("one-hot", one_hot)], "int": [("integer", ints)],
            "auto": [("one-hot", one_hot), ("integer", ints)]}[labels]


def _as_class_labels(x: Any, t: Any) -> tuple[np.ndarray, int | None] | None:
    """``(int64 labels (B,), C or None)`` if `t` holds class labels for the B rows of `x`.

    None for anything else (no batch `x`, `t` None, non-integer 1-D targets, 2-D rows
    that are not one-hot): such a `t` is not labels and is passed on as given.
    """
    if t is None or np.ndim(x) != 2:
        return None
    t = np.asarray(t)
    if t.dtype.kind not in "biuf" or t.ndim not in (1, 2) or (t.ndim == 1 and t.dtype.kind not in "iu"):
        return None
    batch = np.shape(x)[0]
    if len(t) != batch:
        raise ValueError(f"`t` holds {len(t)} rows of labels but `x` has {batch} rows")
    if t.ndim == 1:
        if t.min(initial=0) < 0:
            raise ValueError(f"integer labels `t` must be >= 0, got {t.min()}")
        return t.astype(np.int64), None
    try:
        return to_labels(t, t.shape[1], batch_size=batch), t.shape[1]
    except ValueError:   # rows that are not one-hot: targets of another kind
        return None


def _n_classes_from_predict(net: Any, x: Any) -> int | None:
    predict = getattr(net, "predict", None)
    if not callable(predict):
        return None
    try:
        shape = np.shape(predict(x))
    except Exception:   # a net whose predict needs more than x: no class count from it
        return None
    return int(shape[-1]) if len(shape) == 2 and shape[0] == np.shape(x)[0] else None


def _check_net(net: Any) -> None:
    for method in ("loss", "gradient"):
        if not callable(getattr(net, method, None)):
            raise TypeError(f"`net` must have a `{method}(x, t)` method; "
                            f"{type(net).__name__} has none")
    if not isinstance(getattr(net, "params", None), dict):
        raise TypeError(f"`net` must have a `params` dict of arrays; {type(net).__name__} has none")


def _check_same_arrays(numerical: dict, exact: Any) -> None:
    if not isinstance(exact, dict) or set(exact) != set(numerical):
        got = sorted(exact) if isinstance(exact, dict) else type(exact).__name__
        raise ValueError(f"`net.gradient` must return a dict with the keys of `net.params` "
                         f"{list(numerical)}, got {got}")
    for name in numerical:
        if np.shape(numerical[name]) != np.shape(exact[name]):
            raise ValueError(f"`net.gradient` returned shape {np.shape(exact[name])} for "
                             f"{name!r}; the parameter has shape {np.shape(numerical[name])}")


def _scale(numerical: Any, exact: Any) -> float:
    """``max(max|num|, max|bp|, RELATIVE_FLOOR)``, what a relative error divides by."""
    g_num, g_bp = np.asarray(numerical, np.float64), np.asarray(exact, np.float64)
    if g_num.size == 0:
        return RELATIVE_FLOOR
    largest = float(max(np.abs(g_num).max(), np.abs(g_bp).max()))
    return largest if largest > RELATIVE_FLOOR else RELATIVE_FLOOR   # NaN: the floor


def _difference(numerical: Any, exact: Any, kinks: np.ndarray = ()) -> GradientDifference:
    g_num = np.asarray(numerical, dtype=np.float64)
    g_bp = np.asarray(exact, dtype=np.float64)
    if g_num.size == 0:
        return GradientDifference(0.0, 0.0, 0.0, 0.0)
    diff = np.abs(g_num - g_bp)
    max_abs = float(diff.max())
    max_grad = float(max(np.abs(g_num).max(), np.abs(g_bp).max()))
    rest = np.delete(diff.reshape(-1), np.asarray(kinks, dtype=np.int64))
    relative = float(rest.max()) / _scale(g_num, g_bp) if rest.size else 0.0   # NaN stays NaN
    where = tuple(tuple(int(i) for i in np.unravel_index(k, g_num.shape)) for k in kinks)
    return GradientDifference(max_abs, float(diff.mean()), relative, max_grad, where)


def default_tol(scheme: str, dtype: str = "float64") -> float:
    """The relative-error tolerance `main` uses when ``--tol`` is not given.

    Raises
    ------
    ValueError
        For an unknown scheme or a dtype other than ``"float64"`` / ``"float32"``.
    """
    try:
        return _DEFAULT_TOL[(str(np.dtype(dtype)), scheme)]
    except (KeyError, TypeError):
        raise ValueError(f"no default tolerance for scheme={scheme!r}, dtype={dtype!r}") from None


def format_table(results: dict[str, GradientDifference], tol: float | None = None) -> str:
    """The differences as a plain-text table, one row per array.

    With `tol`, a last column says ``ok`` or ``FAIL`` (relative error above `tol`). Where an
    array has entries at a kink, a column counts them and a last line says what they are.

    Examples
    --------
    >>> print(format_table({"w": GradientDifference(2e-12, 1e-12, 1e-11, 0.2)}))
    array    max |num-bp|  mean |num-bp|   max |grad|     relative
    w            2.00e-12       1.00e-12     2.00e-01     1.00e-11
    """
    header = ["array", "max |num-bp|", "mean |num-bp|", "max |grad|", "relative"]
    rows = [[name, *(f"{v:.2e}" for v in (d.max_abs, d.mean_abs, d.max_grad, d.relative))]
            for name, d in results.items()]
    widths = [max(len(row[0]) for row in [header] + rows) + 2, 14, 15, 13, 13]
    kinks = sum(len(d.kinks) for d in results.values())
    if kinks:
        header.append("kinks")
        widths.append(7)
        for row, d in zip(rows, results.values()):
            row.append(str(len(d.kinks)))
    if tol is not None:
        header.append("")
        widths.append(6)
        for row, d in zip(rows, results.values()):
            row.append("ok" if _passes(d, tol) else "FAIL")
    lines = [_row(cells, widths) for cells in [header] + rows]
    if kinks:
        lines.append(f"{kinks} entries (left out of `relative`) {KINK_HINT}")
    return "\n".join(lines)


def _row(cells: list[str], widths: list[int]) -> str:
    first, *rest = cells
    return (first.ljust(widths[0]) + "".join(c.rjust(w) for c, w in zip(rest, widths[1:]))).rstrip()


def _passes(difference: GradientDifference, tol: float) -> bool:
    return bool(difference.relative <= tol)   # False for NaN


def failures(results: dict[str, GradientDifference], tol: float) -> list[str]:
    """Names of the arrays whose relative error is above `tol` (or NaN)."""
    return [name for name, d in results.items() if not _passes(d, tol)]
