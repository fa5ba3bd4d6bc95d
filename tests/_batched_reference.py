"""The batched evaluator as it was before per-sample sparsity (commit 2152a6f), kept unchanged.

The reference for `engine.batched._batched`, which must give the same bits: every sample of the
batch is computed for every perturbation. Only the imports and the calls of the layers
(their common interface, engine.nn._layers: `kind`, ``forward(params, z)``) differ from that
version.

Original docstring follows.

How a chunk is evaluated, faster: blocks of perturbations through a layered model.

Still a true finite difference: for every entry the loss is computed at
``theta + m*h*e_i`` for each multiple m of the scheme, and the values are combined by
the same expression as in the loop evaluator. What changes is how each loss is
computed. Perturbing ``W[i, j]`` of an affine layer (or ``b[j]``) changes only
column j of that layer's output, by ``delta * z_prev[:, i]`` (or ``delta``); an
element-wise activation keeps the change in column j; the next affine layer turns it
into a rank-one update of its output. Layers before the perturbed one are computed
once per call and never again, and K perturbations travel together as a
``(K, batch, width)`` stack through the layers after it.

`delta` is the change the loop evaluator makes, ``dtype(x_i + m*h) - x_i``, so the
only difference from the loop evaluator is rounding inside the loss (relative
differences of order 1e-10 in the gradient, measured in the tests). An entry whose
input ``z_prev[:, i]`` is exactly zero for every sample cannot change the loss: it is
exactly 0, as the loop evaluator finds too, and is not evaluated.
"""
from __future__ import annotations

import numpy as np

from engine.nn._layers import AFFINE
from engine.fd._schemes import Scheme
from engine.fd._space import ParamSpace

__all__ = ["batched_evaluate", "DEFAULT_BLOCK_MEMORY"]

DEFAULT_BLOCK_MEMORY = 256 * 2**20   # bytes of temporaries per worker, at most
_TEMPORARIES = 8                     # (K, batch, width) float64 arrays alive at once, at most


def batched_evaluate(
    f,
    space: ParamSpace,
    steps: list[float],
    scheme: Scheme,
    start: int,
    stop: int,
    cache: dict | None = None,
    block_memory: int = DEFAULT_BLOCK_MEMORY,
) -> np.ndarray:
    """Derivatives for the flat entries ``start .. stop-1``; `f` is a `ModelLoss` over `space`.

    Parameters
    ----------
    f : engine.nn._model.ModelLoss
        The loss whose `params` dict is ``space.structure``.
    cache : dict, optional
        Kept for one call: holds the unperturbed forward pass, computed once.
    block_memory : int
        Upper bound, in bytes, on the temporaries of one block of perturbations.

    Returns
    -------
    ndarray, shape (stop - start,), float64
    """
    cache = {} if cache is None else cache
    if "forward" not in cache:
        cache["forward"] = _Forward(f)
    forward = cache["forward"]
    values = np.zeros(stop - start, dtype=np.float64)
    for segment in space.segments(start, stop):
        name = space.keys[segment.position]
        entries = np.arange(segment.start, segment.stop)
        out = values[segment.offset - start: segment.offset - start + entries.size]
        forward.derivatives(name, entries, steps[segment.position], scheme, out, block_memory)
    return values


class _Forward:
    """The unperturbed forward pass of one call, and the losses of perturbed columns."""

    def __init__(self, f):
        self.model, self.params, self.labels = f.model, f.params, f.labels
        self.trace = f.model.trace(f.params, f.x)   # input of each layer, then the logits
        # Each affine layer's product before its bias is added: the loop evaluator's
        # forward pass computes (z @ W) + b in that order, and so does this one.
        self.products = {k: self.trace[k] @ f.params[layer.weight]
                         for k, layer in enumerate(f.model.layers) if layer.kind == AFFINE}
        self.batch = f.x.shape[0]
        self.width = max(t.shape[-1] for t in self.trace)
        self.roles = {}
        for k, layer in enumerate(self.model.layers):
            if layer.kind == AFFINE:
                self.roles[layer.weight] = (k, "weight")
                if layer.bias is not None:
                    self.roles[layer.bias] = (k, "bias")
        self.center = float(np.mean(self.model.loss_layer.per_sample(self.trace[-1], self.labels)))

    def derivatives(self, name, entries, h, scheme, out, block_memory):
        """Write the derivatives of the C-order `entries` of ``params[name]`` into `out`."""
        k, role = self.roles[name]
        array = self.params[name]
        if role == "weight":
            rows, columns = np.divmod(entries, array.shape[1])
            inputs = self.trace[k][:, rows].T                      # (n, B): z_prev[:, i]
            live = np.flatnonzero(np.any(inputs != 0, axis=1))      # others are exactly 0
        else:
            rows, columns = None, entries
            inputs, live = None, np.arange(entries.size)
        block = max(1, block_memory // (_TEMPORARIES * 8 * self.batch * self.width))
        for lo in range(0, live.size, block):
            sel = live[lo:lo + block]
            originals = array[rows[sel], columns[sel]] if rows is not None else array[columns[sel]]
            losses = [self._losses(k, columns[sel], originals, m * h,
                                   None if inputs is None else inputs[sel])
                      for m in scheme.multiples]
            out[sel] = scheme.combine(losses, self.center, h)

    def _losses(self, k, columns, originals, step, inputs):
        """Mean losses (K,) with each entry moved from `originals` to ``dtype(originals + step)``."""
        exact = originals.astype(np.float64)
        moved = (exact + step).astype(originals.dtype)
        if inputs is None:   # a bias entry: the column is (z @ W)[:, j] + b'[j], as in the loop
            column = self.products[k][:, columns].T + moved[:, None]
        else:                # a weight entry: (z @ W')[:, j] = (z @ W)[:, j] + delta * z[:, i]
            column = self.products[k][:, columns].T + (moved - exact)[:, None] * inputs
            column = self._add_bias(k, columns, column)
        return self._propagate(k + 1, columns, column)

    def _add_bias(self, k, columns, column):
        bias = self.model.layers[k].bias
        return column if bias is None else column + self.params[bias][columns][:, None]

    def _propagate(self, layer_index, columns, column):
        """Losses when the output column `columns[r]` of layer ``layer_index - 1`` is `column[r]`."""
        layers, trace = self.model.layers, self.trace
        dense = None
        for index in range(layer_index, len(layers)):
            layer = layers[index]
            if dense is not None:
                dense = layer.forward(self.params, dense)
            elif layer.kind == AFFINE:
                weight = self.params[layer.weight]
                change = column - trace[index][:, columns].T             # (K, B)
                dense = self.products[index][None] + change[:, :, None] * weight[columns][:, None, :]
                if layer.bias is not None:
                    dense = dense + self.params[layer.bias]
            else:
                column = layer.forward(self.params, column)
        if dense is None:  # the perturbed layer was the last one: only its logit column moved
            dense = np.repeat(trace[-1][None], column.shape[0], axis=0)
            dense[np.arange(column.shape[0]), :, columns] = column
        per_sample = self.model.loss_layer.per_sample(dense, self.labels, check_labels=False)
        return per_sample.mean(axis=-1)
