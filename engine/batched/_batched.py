"""How a chunk is evaluated, faster: perturbations through a layered model, sample by sample.

Still a true finite difference: for every entry the loss is computed at
``theta + m*h*e_i`` for each multiple m of the scheme, and the values are combined by
the same expression as in the loop evaluator. What changes is how each loss is
computed. Perturbing ``W[i, j]`` of an affine layer (or ``b[j]``) changes only
column j of that layer's output, by ``delta * z_prev[:, i]`` (or ``delta``); an
element-wise activation keeps the change in column j; the next affine layer turns it
into a rank-one update of its output. Layers before the perturbed one are computed
once per call and never again. Every layer from the first affine layer on must therefore
declare itself affine or elementwise (its `kind`, see engine._layers); `unsupported_layer`
finds one that does not.

Layers before the first affine layer may be anything (a convolution, pooling, a reshape):
they are computed once, with the rest of the forward pass. A convolution's filters and
biases there (``[..., Convolution, elementwise or pooling layers..., Reshape(-1), Affine,
...]``) are perturbed one output channel at a time (`engine.batched._conv_rows`), to
rounding of the loop evaluator's numbers; any other parameter before the first affine
layer is perturbed by the loop evaluator itself, entry by entry through the whole loss,
and gets its numbers bit for bit.

The work is done per (entry, sample) *row*, and only where the sample's loss can move:

- for ``W[i, j]``, a sample whose input ``z_prev[b, i]`` is exactly zero is not evaluated:
  its column is ``(z @ W)[b, j] + delta * 0 (+ b[j])``, the forward pass's own value, so
  its loss is the unperturbed one. An entry whose input is zero for every sample is
  exactly 0, as the loop evaluator finds too (up to the rounding of the scheme's
  combination of equal losses), and is not evaluated at all;
- a row whose column comes out exactly unchanged where it meets the next affine layer
  (a ReLU that stays off, a saturated sigmoid) keeps the unperturbed loss too;
- the batch loss of a perturbation is the mean of the full per-sample vector: the rows
  evaluated are scattered into a copy of the unperturbed losses, which is reduced by
  the same ``per_sample.mean(axis=-1)`` call as when every sample was computed.

Both shortcuts are exact because the forward pass runs in float64 whatever the
parameters' dtype (`ModelLoss` keeps `x` in float64), so the unchanged rows compute
exactly what the forward pass did. Every evaluated row goes through the same
element-wise operations as in the evaluator that computed every sample (kept in the
tests as the reference), and where a matrix product follows, each row sits at its own
sample's place in a ``(batch, width)`` block of the same shape, because a BLAS
product's rounding depends on the shape and on the row's place in it. The results are
identical to that evaluator's, bit for bit.

`delta` is the change the loop evaluator makes, ``dtype(x_i + m*h) - x_i``, so the
only difference from the loop evaluator is rounding inside the loss (relative
differences of order 1e-10 in the gradient, measured in the tests).
"""
from __future__ import annotations

import numpy as np

from ..fd._evaluators import loop_evaluate
from ._conv_rows import conv_prefix
from ..nn._loss_by_class import losses_by_class
from ..nn._layers import AFFINE, ELEMENTWISE
from ..fd._schemes import Scheme, auto_step
from ..fd._space import ParamSpace

__all__ = ["batched_evaluate", "unsupported_layer", "BATCHED_KINDS", "DEFAULT_BLOCK_MEMORY"]

BATCHED_KINDS = (AFFINE, ELEMENTWISE)   # the layer kinds (engine._layers) the column trick takes

DEFAULT_BLOCK_MEMORY = 256 * 2**20   # bytes of temporaries per worker, at most
_TEMPORARIES = 8                     # (entries, batch, width) float64 arrays alive at once, at most
_BLOCK_ROWS = 16384                  # (entry, sample) rows per block: a block's arrays stay in cache


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
    f : engine.ModelLoss
        The loss whose `params` dict is ``space.structure``.
    cache : dict, optional
        Kept for one call: holds the unperturbed forward pass, computed once.
    block_memory : int
        Upper bound, in bytes, on the temporaries of one block of perturbations.

    Returns
    -------
    ndarray, shape (stop - start,), float64

    Raises
    ------
    ValueError
        For ``scheme="complex"``, which evaluates `f` at complex points: loop evaluator only.
    """
    if scheme.complex_step:
        raise ValueError("scheme='complex' runs on the loop evaluator only (the batched "
                         "evaluator's blocks are real): pass evaluator='loop'")
    cache = {} if cache is None else cache
    if "forward" not in cache:
        cache["forward"] = _Forward(f)
    forward = cache["forward"]
    values = np.zeros(stop - start, dtype=np.float64)
    for segment in space.segments(start, stop):
        name = space.keys[segment.position]
        entries = np.arange(segment.start, segment.stop)
        out = values[segment.offset - start: segment.offset - start + entries.size]
        if name in forward.roles:
            forward.derivatives(name, entries, steps[segment.position], scheme, out, block_memory)
            continue
        if "conv prefix" not in cache:
            cache["conv prefix"] = conv_prefix(f.model, forward)
        prefix = cache["conv prefix"]
        if prefix is not None and name in prefix.names:   # a filter entry: its one channel
            prefix.derivatives(name, entries, steps[segment.position], scheme, out)
        else:   # any other parameter before the first affine layer: the loop's way
            out[:] = loop_evaluate(f, space, steps, scheme, segment.offset,
                                   segment.offset + entries.size, cache)
    return values


class _Rows:
    """(entry, sample) pairs of a block, entry-major, and what every multiple reuses.

    `column` is the output column j each entry moves, `inputs` its input ``z_prev[sample, i]``
    (None for a bias entry). Gathers that do not depend on the step are made once.
    """

    def __init__(self, entry, sample, column, width, inputs=None):
        self.entry, self.sample, self.column, self.inputs = entry, sample, column, inputs
        self.flat = sample * width + column      # index into a (B, width) array
        self._memo = {}

    def __len__(self):
        return self.sample.size

    def at(self, array):
        """``array[sample[r], column[r]]`` for a (B, width) `array`, shape (R,)."""
        return array.reshape(-1).take(self.flat)

    def once(self, key, make):
        """``make()``, computed on the first call with this `key` and kept."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def subset(self, keep):
        """The rows `keep` (indices), a fresh `_Rows` with nothing kept."""
        rows = _Rows(self.entry[keep], self.sample[keep], self.column[keep], 1)
        rows.flat = self.flat[keep]
        return rows


class _Forward:
    """The unperturbed forward pass of one call, and the losses of perturbed columns."""

    def __init__(self, f):
        layer = unsupported_layer(f.model)
        if layer is not None:
            raise ValueError(f"the batched evaluator cannot take the layer {layer!r}: its `kind` "
                             f"is not one of {BATCHED_KINDS}; use the loop evaluator")
        self.model, self.params, self.labels = f.model, f.params, f.labels
        self.trace = f.model.trace(f.params, f.x)   # input of each layer, then the logits
        # Each affine layer's product before its bias is added: the loop evaluator's
        # forward pass computes (z @ W) + b in that order, and so does this one.
        self.products = {k: self.trace[k] @ f.params[layer.weight]
                         for k, layer in enumerate(f.model.layers) if layer.kind == AFFINE}
        self.batch = f.x.shape[0]
        self.roles = {}
        for k, layer in enumerate(self.model.layers):
            if layer.kind == AFFINE:
                self.roles[layer.weight] = (k, "weight")
                if layer.bias is not None:
                    self.roles[layer.bias] = (k, "bias")
        self.unchanged = self.model.loss_layer.per_sample(self.trace[-1], self.labels)
        self.center = float(np.mean(self.unchanged))
        self._memo = {}

    def _once(self, key, make):
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def derivatives(self, name, entries, h, scheme, out, block_memory):
        """Write the derivatives of the C-order `entries` of ``params[name]`` into `out`."""
        k, role = self.roles[name]
        array = self.params[name]
        if role == "weight":
            rows, columns = np.divmod(entries, array.shape[1])
            starts = self.support(k)[0]
            counts = starts[rows + 1] - starts[rows]
        else:
            rows, columns = None, entries
            counts = np.full(entries.size, self.batch)
        live = np.flatnonzero(counts)   # the others are exactly 0: no sample's loss moves
        # A block of E entries has at most E * batch rows, each with temporaries no wider
        # than the widest layer after layer k.
        width = max(t.shape[-1] for t in self.trace[k + 1:])
        most = max(1, block_memory // (_TEMPORARIES * 8 * self.batch * width))
        for sel in _blocks(counts[live], most, _BLOCK_ROWS):
            sel = live[sel]
            if rows is None:
                block = self._bias_rows(k, columns[sel])
                originals = array[columns[sel]]
            else:
                block = self._weight_rows(k, rows[sel], columns[sel], counts[sel])
                originals = array[rows[sel], columns[sel]]
            step = h if h is not None else (  # h="auto": relative to each entry
                auto_step(scheme, array.dtype) * np.maximum(1.0, np.abs(originals.astype(np.float64))))
            moved = [self._mean_losses(k, block, columns[sel], originals, m * step)
                     for m in scheme.multiples]
            losses, stored = [loss for loss, _ in moved], [change for _, change in moved]
            _check_moved(stored, name, array.shape, entries[sel], originals, step)
            if h is None:
                out[sel] = scheme.combine_stored(losses, self.center, stored)
            else:
                out[sel] = scheme.combine(losses, self.center, h)

    def support(self, k):
        """Samples with a non-zero input, per input unit i of layer `k`: CSR ``(starts, samples, values)``."""
        def make():
            inputs = self.trace[k].T                       # (n_in, B)
            nonzero = inputs != 0
            starts = np.concatenate([[0], np.cumsum(np.count_nonzero(nonzero, axis=1))])
            return starts, np.nonzero(nonzero)[1], inputs[nonzero]
        return self._once(("support", k), make)

    def _weight_rows(self, k, rows, columns, counts):
        """The rows of the weight entries ``(rows[e], columns[e])``: each sample with an input."""
        starts, samples, values = self.support(k)
        entry = np.repeat(np.arange(rows.size), counts)
        where = np.arange(entry.size) + np.repeat(starts[rows] - (np.cumsum(counts) - counts), counts)
        return _Rows(entry, samples[where], columns[entry], self.products[k].shape[1], values[where])

    def _bias_rows(self, k, columns):
        """The rows of the bias entries `columns`: every sample."""
        entry = np.repeat(np.arange(columns.size), self.batch)
        sample = np.tile(np.arange(self.batch), columns.size)
        return _Rows(entry, sample, columns[entry], self.products[k].shape[1])

    def _mean_losses(self, k, rows, columns, originals, step):
        """Mean losses (E,) with each entry moved from `originals` to ``dtype(originals + step)``,
        and the change actually stored, ``moved - originals`` (E,), float64."""
        exact = originals.astype(np.float64)
        moved = (exact + step).astype(originals.dtype)
        base = rows.once("product", lambda: rows.at(self.products[k]))
        if rows.inputs is None:   # a bias entry: the column is (z @ W)[:, j] + b'[j], as in the loop
            per_row = self._row_losses(k + 1, rows, base + moved[rows.entry])
        else:                     # a weight entry: (z @ W')[:, j] = (z @ W)[:, j] + delta * z[:, i]
            value = self._add_bias(k, rows, base + (moved - exact)[rows.entry] * rows.inputs)
            per_row = self._row_losses(k + 1, rows, value)
        per_sample = np.repeat(self.unchanged[None], columns.size, axis=0)   # the rows not evaluated
        scatter = rows.once("scatter", lambda: rows.entry * self.batch + rows.sample)
        per_sample.reshape(-1)[scatter] = per_row
        return per_sample.mean(axis=-1), moved - exact

    def _add_bias(self, k, rows, value):
        bias = self.model.layers[k].bias
        if bias is None:
            return value
        return value + rows.once("bias", lambda: self.params[bias][rows.column])

    def _row_losses(self, index, rows, value):
        """Losses (R,) when output column ``rows.column`` of layer ``index - 1`` is `value`."""
        layers = self.model.layers
        while index < len(layers) and layers[index].kind == ELEMENTWISE:
            value = layers[index].forward(self.params, value)
            index += 1
        if index == len(layers):
            return self._logit_column_losses(rows, value)
        change = value - rows.once(("input", index), lambda: rows.at(self.trace[index]))
        if np.count_nonzero(change) == len(rows):
            return self._rank_one_losses(index, rows, change)
        moved = np.flatnonzero(change)          # the other rows keep the unchanged loss
        losses = self.unchanged[rows.sample]
        if moved.size:
            losses[moved] = self._rank_one_losses(index, rows.subset(moved), change[moved])
        return losses

    def _logit_column_losses(self, rows, value):
        """The perturbed layer was the last: only the logit ``(sample, column)`` moves, to `value`."""
        logits = self.trace[-1]
        value = value.astype(logits.dtype)     # stored into a copy of the logits, as always
        moved = np.flatnonzero(value != rows.once("logit", lambda: rows.at(logits)))
        losses = self.unchanged[rows.sample]
        if moved.size:
            part = rows.subset(moved)
            by_class = self._once("logits by class", lambda: np.ascontiguousarray(logits.T))
            by_class = by_class.take(part.sample, axis=1)
            by_class[part.column, np.arange(moved.size)] = value[moved]
            losses[moved] = self._losses(by_class, part)
        return losses

    def _rank_one_losses(self, index, rows, change):
        """Losses (R,) when input column ``rows.column`` of affine layer `index` moves by `change`.

        The layer's output is ``(z @ W) + change * W[j]`` (+ b), summed in that order as
        when every sample was computed (``t = change * W[j]; t += z @ W`` is the same sum).
        """
        layer, rest = self.model.layers[index], self.model.layers[index + 1:]
        weight, bias = self.params[layer.weight], layer.bias
        if any(later.kind == AFFINE for later in rest):   # rows (R, width): products follow
            dense = change[:, None] * rows.once(("weight rows", index), lambda: weight[rows.column])
            dense += rows.once(("product rows", index), lambda: self.products[index][rows.sample])
            if bias is not None:
                dense += self.params[bias]
            return self._losses(self._through_products(index + 1, rows.sample, dense).T, rows)
        products, weights = self._once(("by class", index), lambda: (
            np.ascontiguousarray(self.products[index].T), np.ascontiguousarray(weight.T)))
        dense = change * rows.once(("weight by class", index), lambda: weights.take(rows.column, axis=1))
        dense += rows.once(("product by class", index), lambda: products.take(rows.sample, axis=1))
        if bias is not None:
            dense += self.params[bias][:, None]
        for later in rest:   # elementwise, all of them
            dense = later.forward(self.params, dense)
        return self._losses(dense, rows)

    def _through_products(self, index, sample, dense):
        """Logits (R, C) of the rows `dense` (R, width) through layers ``index ..``.

        Each row travels at its sample's place in a (batch, width) block, as when every
        sample was computed: a matrix product's rounding depends on the shape and on the
        row's place in it. Places no row takes hold zeros and are discarded.
        """
        order = np.argsort(sample, kind="stable")
        counts = np.bincount(sample, minlength=self.batch)
        slot = np.empty_like(sample)
        slot[order] = np.arange(sample.size) - (np.cumsum(counts) - counts)[sample[order]]
        stack = np.zeros((counts.max(), self.batch, dense.shape[1]), dtype=dense.dtype)
        stack[slot, sample] = dense
        for layer in self.model.layers[index:]:
            stack = layer.forward(self.params, stack)
        return stack[slot, sample]

    def _losses(self, by_class, rows):
        """Per-sample losses (R,) of the logits `by_class` (C, R) of `rows`."""
        labels = rows.once("labels", lambda: self.labels[rows.sample])
        return losses_by_class(self.model.loss_layer, by_class, labels)


def unsupported_layer(model):
    """The first layer of `model` the evaluator cannot take, or None if it takes them all.

    The evaluator follows a perturbed column through the layers after an affine layer,
    which only affine and elementwise layers keep apart; any other layer there would mix
    columns it cannot see. Before the first affine layer any layer will do (see above),
    unless it shares a parameter with a layer after it.
    """
    kinds = [getattr(layer, "kind", None) for layer in model.layers]
    first = kinds.index(AFFINE) if AFFINE in kinds else len(kinds)
    later = {name for layer in model.layers[first:] for name in layer.param_names()}
    for layer in model.layers[:first]:
        if later.intersection(layer.param_names()):
            return layer
    return next((layer for layer, kind in zip(model.layers[first:], kinds[first:])
                 if kind not in BATCHED_KINDS), None)


def _check_moved(stored, name, shape, entries, originals, step) -> None:
    """Raise if an entry's stored change is zero: ``x_i + m*h`` rounded back to ``x_i``."""
    for change in stored:
        zero = np.flatnonzero(change == 0)
        if zero.size:
            first = zero[0]
            index = ", ".join(map(str, np.unravel_index(int(entries[first]), shape)))
            h = step if np.ndim(step) == 0 else step[first]
            raise ValueError(
                f"x[{name!r}][{index}] = {float(originals[first])!r} + {float(h)!r} rounds back "
                f"to itself in {originals.dtype}: nothing would be perturbed. Use a larger `h`, "
                "h='auto' (a step relative to |x_i| and the dtype), or float64")


def _blocks(counts, most_entries, most_rows):
    """Consecutive slices of the entries whose `counts` (rows each) sum to at most `most_rows`.

    A slice holds at least one entry and at most `most_entries`.
    """
    ends = np.cumsum(counts)
    lo = 0
    while lo < counts.size:
        before = ends[lo - 1] if lo else 0
        hi = int(np.searchsorted(ends, before + most_rows, side="right"))
        hi = min(max(hi, lo + 1), lo + most_entries)
        yield slice(lo, hi)
        lo = hi
