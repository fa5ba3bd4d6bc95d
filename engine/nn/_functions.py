"""The book's functions, made numerically stable: activations, softmax and the losses.

Everything here is plain numpy and works on the last axis, so a stack of batches of shape
``(K, B, C)`` is handled exactly like one batch of shape ``(B, C)``.

For finite input nothing overflows: every ``exp`` sees an argument ``<= 0``. Underflow to
``0.0`` does happen (``exp(-1e4)``) and is the correct result; numpy ignores it by default.
"""
from __future__ import annotations

import numpy as np

__all__ = ["sigmoid", "logsumexp", "softmax", "log_softmax", "to_labels", "cross_entropy_error",
           "check_logits_labels", "softmax_cross_entropy"]


def _as_float(a: np.ndarray) -> np.ndarray:
    """Return `a` as an ndarray, converting non-floating input to float64."""
    a = np.asarray(a)
    if a.dtype.kind != "f":
        a = a.astype(np.float64)
    return a


def _require_last_axis(a: np.ndarray, name: str) -> None:
    """Raise ValueError when `a` has no last axis to work on."""
    if a.ndim == 0:
        raise ValueError(f"`{name}` must have at least 1 dimension, got a scalar")


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-a))``, elementwise and without overflow.

    Parameters
    ----------
    a : array_like, any shape
        Pre-activations. Integer input is converted to float64; float32 stays float32.

    Returns
    -------
    ndarray, same shape as `a`
        Values in ``[0, 1]``, accurate to a few ulp for every finite `a`.

    Examples
    --------
    >>> sigmoid(np.array([-1e4, 0.0, 1e4]))
    array([0. , 0.5, 1. ])
    """
    a = _as_float(a)
    # exp(-|a|) <= 1, so neither branch can overflow; for a < 0 use exp(a) / (1 + exp(a)).
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0, e) / (1.0 + e)


def _logsumexp_shifted(a, m):
    """``log(sum(exp(a)))`` over the last axis of `a`, computed around the shift `m` (..., 1)."""
    return np.log(np.add.reduce(np.exp(a - m), axis=-1)) + m[..., 0]


def logsumexp(a: np.ndarray) -> np.ndarray:
    """``log(sum(exp(a)))`` along the last axis, shifted by the maximum so it never overflows.

    Parameters
    ----------
    a : array_like, shape (..., C)
        Logits.

    Returns
    -------
    ndarray, shape (...)
        Float. A row holding ``+inf`` gives ``inf``; a row entirely ``-inf`` gives
        ``-inf`` (numpy's divide-by-zero warning for ``log(0)`` is not silenced).

    Raises
    ------
    ValueError
        If `a` is a scalar.

    Examples
    --------
    >>> round(float(logsumexp([1e4, 1e4])) - 1e4, 6)  # log(2), no overflow
    0.693147
    """
    a = _as_float(a)
    _require_last_axis(a, "a")
    m = np.maximum.reduce(a, axis=-1, keepdims=True)
    # Shifting an infinite row by its own max would give inf - inf = nan; shift it by 0.
    m[~np.isfinite(m)] = 0.0
    return _logsumexp_shifted(a, m)


def softmax(a: np.ndarray) -> np.ndarray:
    """Softmax along the last axis, computed as ``exp(a - max(a))`` normalised.

    Parameters
    ----------
    a : array_like, shape (..., C)
        Logits.

    Returns
    -------
    ndarray, shape (..., C)
        Float probabilities; each row sums to 1 (to rounding).

    Raises
    ------
    ValueError
        If `a` is a scalar.

    Examples
    --------
    >>> softmax(np.array([0.0, 1e4]))
    array([0., 1.])
    """
    a = _as_float(a)
    _require_last_axis(a, "a")
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(a: np.ndarray) -> np.ndarray:
    """Logarithm of :func:`softmax` along the last axis, ``a - logsumexp(a)``.

    Parameters
    ----------
    a : array_like, shape (..., C)
        Logits.

    Returns
    -------
    ndarray, shape (..., C)
        Float log-probabilities, all ``<= 0``; finite even where softmax underflows to 0.

    Raises
    ------
    ValueError
        If `a` is a scalar.

    Examples
    --------
    >>> log_softmax(np.array([0.0, 1e4]))
    array([-10000.,      0.])
    """
    a = _as_float(a)
    _require_last_axis(a, "a")
    return a - logsumexp(a)[..., None]


def _labels_from_one_hot(t, n_classes):
    """Int64 labels of the one-hot rows `t` (shape (B, C)), or ValueError."""
    if t.shape[-1] != n_classes:
        raise ValueError(
            f"one-hot `t` has {t.shape[-1]} columns but there are {n_classes} classes"
        )
    bad = ~(((t == 0) | (t == 1)).all(axis=-1) & (t.sum(axis=-1) == 1))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"`t` row {row} is not one-hot: {t[row]!r}")
    return t.argmax(axis=-1).astype(np.int64)


def _labels_from_ints(t, n_classes):
    """Int64 copy of the integer labels `t` (shape (B,)), or ValueError."""
    if t.dtype.kind == "f" and not np.array_equal(t, np.round(t)):
        raise ValueError(f"float labels `t` must be whole numbers, got {t!r}")
    if t.dtype.kind not in "iuf":
        raise ValueError(f"labels `t` must be integers, got dtype {t.dtype}")
    bad = (t < 0) | (t >= n_classes)
    if bad.any():
        raise ValueError(
            f"labels `t` must lie in [0, {n_classes}), got {t[bad][0]!r}"
        )
    return t.astype(np.int64)


def _is_one_hot_vector(t, n_classes, batch_size):
    """Decide whether the 1-D `t` is one one-hot row rather than B integer labels."""
    if t.size != n_classes:
        return False
    if batch_size is not None:
        return batch_size == 1
    return t.dtype.kind in "fb"


def to_labels(t: np.ndarray, n_classes: int, batch_size: int | None = None) -> np.ndarray:
    """Normalise targets, integer labels or one-hot rows, to int64 labels.

    Parameters
    ----------
    t : array_like
        Scalar label, int labels of shape (B,), one-hot rows of shape (B, C) or one
        one-hot row of shape (C,). Float labels are accepted when they are whole numbers.
    n_classes : int
        Number of classes C.
    batch_size : int, optional
        Number of samples B the labels must describe. It settles whether a 1-D `t` of
        length C is one one-hot row (B == 1) or C labels. Without it, a 1-D `t` of length
        C is read as one-hot when its dtype is float or bool, as labels otherwise.

    Returns
    -------
    ndarray of int64, shape (B,)
        A fresh array; a scalar label gives shape (1,).

    Raises
    ------
    ValueError
        If `t` has more than 2 dimensions, a one-hot row has the wrong length or is not
        one-hot, a label is outside ``[0, n_classes)``, or the count differs from
        `batch_size`.

    Examples
    --------
    >>> to_labels(np.eye(3)[[2, 0]], 3)
    array([2, 0])
    >>> to_labels(1, 3)
    array([1])
    """
    t = np.asarray(t)
    if t.ndim > 2:
        raise ValueError(f"`t` must have at most 2 dimensions, got shape {t.shape}")
    if t.ndim == 2:
        labels = _labels_from_one_hot(t, n_classes)
    elif t.ndim == 1 and _is_one_hot_vector(t, n_classes, batch_size):
        labels = _labels_from_one_hot(t[None, :], n_classes)
    else:
        labels = _labels_from_ints(np.atleast_1d(t), n_classes)
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"`t` gives {labels.shape[0]} labels but the batch has {batch_size} samples"
        )
    return labels


def cross_entropy_error(y: np.ndarray, t: np.ndarray) -> float:
    """The book's cross entropy of probabilities `y` against targets `t`, batch mean.

    Unlike the book this adds no ``1e-7`` inside the log: the value is exact, and a true
    class given probability 0 yields ``inf``.

    Parameters
    ----------
    y : array_like, shape (B, C) or (C,)
        Probabilities, e.g. the output of :func:`softmax`. A 1-D `y` means B == 1.
    t : array_like
        Int labels (B,) or scalar, or one-hot (B, C) or (C,); see :func:`to_labels`.

    Returns
    -------
    float
        ``-mean(log(y[b, t[b]]))`` over the batch.

    Raises
    ------
    ValueError
        If `y` is not 1-D or 2-D, holds negative values, or `t` does not fit it.

    Examples
    --------
    >>> y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    >>> round(cross_entropy_error(y, 2), 6)
    0.510826
    """
    y = np.atleast_2d(_as_float(y))
    if y.ndim != 2:
        raise ValueError(f"`y` must be 1-D or 2-D, got shape {y.shape}")
    if (y < 0).any():
        raise ValueError("`y` must hold probabilities, got a negative value")
    labels = to_labels(t, y.shape[1], batch_size=y.shape[0])
    picked = y[np.arange(y.shape[0]), labels]
    with np.errstate(divide="ignore"):
        return float(-np.log(picked).mean())


def check_logits_labels(logits: np.ndarray, labels: np.ndarray) -> None:
    """Raise ValueError unless `labels` are valid int labels for `logits` (..., B, C)."""
    if logits.ndim < 2:
        raise ValueError(f"`logits` must have shape (..., B, C), got {logits.shape}")
    if labels.shape != logits.shape[-2:-1]:
        raise ValueError(
            f"`labels` must have shape {logits.shape[-2:-1]} to match `logits` "
            f"{logits.shape}, got {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise ValueError(f"`labels` must be integers, got dtype {labels.dtype}")
    n_classes = logits.shape[-1]
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(f"`labels` must lie in [0, {n_classes}), got {labels[bad][0]}")


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, *,
                          check_labels: bool = True) -> np.ndarray:
    """Per-sample softmax cross entropy, ``logsumexp(logits) - logits[label]``.

    Never overflows, even for logits like ``1e4``, and is exact where the
    softmax-then-log route would take ``log(0)``.

    Parameters
    ----------
    logits : array_like, shape (..., B, C)
        Scores; leading axes are extra batch axes (e.g. K stacked perturbed copies).
    labels : ndarray of int, shape (B,)
        True class of each sample, shared by all leading axes.
    check_labels : bool, default True
        Validate shapes and label range. Pass False only for labels already checked
        (the hot path of :class:`engine.ModelLoss`); a label outside ``[0, C)``
        then raises IndexError or, if negative, silently picks from the end.

    Returns
    -------
    ndarray, shape (..., B)
        Float losses, each ``>= 0``; ``nan`` for a row holding ``nan`` or ``+inf`` or
        entirely ``-inf``.

    Raises
    ------
    ValueError
        If `logits` has fewer than 2 dimensions, or `labels` has the wrong shape, is not
        integer, or is outside ``[0, C)``.

    Examples
    --------
    >>> softmax_cross_entropy(np.array([[0.0, 1e4]]), np.array([0]))
    array([10000.])
    """
    logits = _as_float(logits)
    labels = np.asarray(labels)
    if check_labels:
        check_logits_labels(logits, labels)
    # Unlike logsumexp, no guard for infinite row maxima (this is the hot path): the loss of
    # such a row is inf - inf, undefined anyway.
    lse = _logsumexp_shifted(logits, np.maximum.reduce(logits, axis=-1, keepdims=True))
    return lse - logits[..., np.arange(logits.shape[-2]), labels]
