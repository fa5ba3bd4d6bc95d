"""Per-sample losses of logits stored class by class, ``(C, R)``: the same bits, fewer passes.

The batched evaluator computes the loss of many short rows (C = 10 logits each).
``softmax_cross_entropy`` reduces along each row, and numpy pays a call of its inner
loop per row for the maximum and for the sum: more than the ``exp`` itself. Stored
class by class, the same maximum and the same sum are element-wise operations over
whole rows of R values. The maximum is exact in any order. The sum is not, so it is
taken in numpy's own order for a contiguous row (pairwise, eight accumulators); that
order is numpy's implementation, not its promise, so it is checked once per dtype and
class count against numpy itself, and any other case, or any other loss layer, falls
back to the loss layer's own ``per_sample``.
"""
from __future__ import annotations

import functools

import numpy as np

from ._functions import softmax_cross_entropy
from ._layers import SoftmaxCrossEntropy

_PAIRWISE_BLOCK = 128   # numpy's PW_BLOCKSIZE: longer rows are split in two halves
_PROBE_ROWS = 512


def losses_by_class(loss_layer, by_class, labels):
    """``loss_layer.per_sample(by_class.T, labels)``, bit for bit.

    Parameters
    ----------
    loss_layer : object with ``per_sample(logits, labels, check_labels=False)``
    by_class : ndarray, shape (C, R)
        Logits, one row per class, one column per sample.
    labels : ndarray of int, shape (R,)
        Checked labels, one per column.

    Returns
    -------
    ndarray, shape (R,)
    """
    by_class = np.ascontiguousarray(by_class)
    if type(loss_layer) is SoftmaxCrossEntropy and _sums_like_numpy(by_class.dtype, by_class.shape[0]):
        return softmax_cross_entropy_by_class(by_class, labels)
    return loss_layer.per_sample(np.ascontiguousarray(by_class.T), labels, check_labels=False)


def softmax_cross_entropy_by_class(by_class, labels):
    """``softmax_cross_entropy(by_class.T, labels)`` for C-contiguous `by_class` (C, R).

    The same operations in the same order, where numpy sums a contiguous row as
    `pairwise_sum` does (checked by :func:`losses_by_class` before it calls this).
    """
    top = np.maximum(by_class[0], by_class[-1])
    for row in by_class[1:-1]:
        np.maximum(top, row, out=top)
    shifted = by_class - top
    np.exp(shifted, out=shifted)
    size = by_class.shape[1]
    picked = by_class.reshape(-1)[labels * size + np.arange(size)]
    return (np.log(pairwise_sum(list(shifted))) + top) - picked


def pairwise_sum(parts):
    """The element-wise sum of the arrays `parts`, in the order numpy sums a contiguous row.

    A fresh array; `parts` are not modified.
    """
    n = len(parts)
    if n == 1:
        return parts[0].copy()
    if n < 8:
        return _added(parts[0] + parts[1], parts[2:])
    if n > _PAIRWISE_BLOCK:
        half = n // 2
        half -= half % 8
        total = pairwise_sum(parts[:half])
        total += pairwise_sum(parts[half:])
        return total
    partial = [p.copy() for p in parts[:8]] if n >= 16 else list(parts[:8])
    done = 8
    while done < n - n % 8:
        for p, q in zip(partial, parts[done:done + 8]):
            p += q
        done += 8
    total = partial[0] + partial[1]
    total += partial[2] + partial[3]
    right = partial[4] + partial[5]
    right += partial[6] + partial[7]
    total += right
    return _added(total, parts[done:])


def _added(total, parts):
    """`total` with each of `parts` added in turn, in place."""
    for part in parts:
        total += part
    return total


@functools.lru_cache(maxsize=None)
def _sums_like_numpy(dtype, n_classes):
    """Whether :func:`softmax_cross_entropy_by_class` gives numpy's bits for this case."""
    rng = np.random.default_rng(n_classes)
    logits = (4 * rng.standard_normal((_PROBE_ROWS, n_classes))).astype(dtype)
    labels = rng.integers(0, n_classes, _PROBE_ROWS)
    ours = softmax_cross_entropy_by_class(np.ascontiguousarray(logits.T), labels)
    return bool(np.array_equal(ours, softmax_cross_entropy(logits, labels, check_labels=False)))
