"""A convolution's filter entries for the batched evaluator: one output channel at a time.

Perturbing the filter entry ``W[f, c, i, j]`` by ``delta`` changes only output channel f
of the convolution, by ``delta`` times one column of the im2col matrix (the inputs that
entry meets); a bias entry ``b[f]`` moves the whole channel by ``delta``. The evaluator
carries that one channel through the layers up to the first affine layer (elementwise
layers, max pooling: its argmax recomputed, so a pooling kink is evaluated as the loop
evaluates it), where it is a block of that layer's input columns: the layer's output is
``(z @ W) + d_block @ W[block]``, and the layers after it run on the (B, width) rows as in
the forward pass.

Each entry is computed on its own, with arrays of the same shapes whatever the chunk it
falls in, so the numbers do not depend on the number of workers. They agree with the loop
evaluator's to rounding (the sum ``z @ W`` is split in two), as the affine layers' do.

Taken: ``[parameterless layers..., Convolution, (elementwise | Pooling)..., Reshape(-1),
Affine, ...]``; `conv_prefix` returns None for any other model, whose prefix parameters
are then left to the loop evaluator.
"""
from __future__ import annotations

import numpy as np

from ..fd._schemes import auto_step
from ..nn._conv import Convolution, Pooling, Reshape, im2col
from ..nn._layers import AFFINE, ELEMENTWISE

__all__ = ["conv_prefix", "ConvPrefix"]


def conv_prefix(model, forward):
    """A `ConvPrefix` for `model`'s convolution if the model has the shape above, else None."""
    layers = model.layers
    kinds = [getattr(layer, "kind", None) for layer in layers]
    if AFFINE not in kinds:
        return None
    first = kinds.index(AFFINE)
    convs = [k for k in range(first) if isinstance(layers[k], Convolution)]
    if len(convs) != 1 or any(layers[k].param_names() for k in range(convs[0])):
        return None
    conv = convs[0]
    between = layers[conv + 1:first - 1]
    flatten = layers[first - 1]
    if not (isinstance(flatten, Reshape) and len(flatten.shape) == 1 and first - 1 > conv):
        return None
    if not all(kind == ELEMENTWISE or isinstance(layer, Pooling)
               for layer, kind in zip(between, kinds[conv + 1:first - 1])):
        return None
    return ConvPrefix(forward, conv, first)


class ConvPrefix:
    """The unperturbed pieces one call reuses: im2col, the filters' products, the next layer's."""

    def __init__(self, forward, conv, first):
        self.forward, self.conv, self.first = forward, conv, first
        self.layer = forward.model.layers[conv]
        params, trace = forward.params, forward.trace
        weight = params[self.layer.weight]
        self.fn, _, self.fh, self.fw = weight.shape
        z = trace[conv]
        self.batch, (self.oh, self.ow) = z.shape[0], trace[conv + 1].shape[2:]
        self.col = im2col(z, self.fh, self.fw, self.layer.stride, self.layer.pad)
        self.products = self.col @ weight.reshape(self.fn, -1).T   # (B*OH*OW, FN), as the forward's
        self.pooled = trace[first - 1]                            # (B, C', PH, PW)
        self.block = int(np.prod(self.pooled.shape[2:]))          # inputs of one channel
        self.inputs = trace[first].reshape(self.batch, -1)
        affine = forward.model.layers[first]
        self.affine_weight = params[affine.weight]
        self.affine_bias = None if affine.bias is None else params[affine.bias]
        self.names = {self.layer.weight: "weight"}
        if self.layer.bias is not None:
            self.names[self.layer.bias] = "bias"

    def derivatives(self, name, entries, h, scheme, out):
        """Write the derivatives of the C-order `entries` of ``params[name]`` into `out`."""
        array = self.forward.params[name]
        center = self.forward.center
        for e, entry in enumerate(entries):
            index = np.unravel_index(int(entry), array.shape)
            original = array[index]
            step = h if h is not None else auto_step(scheme, array.dtype) * max(1.0, abs(float(original)))
            losses, stored = [], []
            for m in scheme.multiples:
                moved = (np.float64(original) + m * step).astype(array.dtype)
                change = float(moved) - float(original)
                if change == 0:
                    raise ValueError(f"x[{name!r}]{list(map(int, index))} = {float(original)!r} + "
                                     f"{float(step)!r} rounds back to itself in {array.dtype}: nothing "
                                     "would be perturbed. Use a larger `h`, h='auto', or float64")
                losses.append(self._loss(name, index, moved, change))
                stored.append(change)
            if h is None:
                out[e] = scheme.combine_stored(losses, center, stored)
            else:
                out[e] = scheme.combine(losses, center, h)

    def _channel(self, name, index, moved, change):
        """Output channel f of the convolution, (B, 1, OH, OW), with the entry moved."""
        params = self.forward.params
        f = index[0]
        if self.names[name] == "weight":
            q = np.ravel_multi_index(index[1:], (self.col.shape[1] // (self.fh * self.fw), self.fh, self.fw))
            channel = self.products[:, f] + change * self.col[:, q]
            if self.layer.bias is not None:
                channel = channel + params[self.layer.bias][f]
        else:
            channel = self.products[:, f] + moved
        return channel.reshape(self.batch, self.oh, self.ow)[:, None]

    def _loss(self, name, index, moved, change):
        """The mean loss with the entry `index` of ``params[name]`` at `moved`."""
        params, layers = self.forward.params, self.forward.model.layers
        f = index[0]
        channel = self._channel(name, index, moved, change)
        for layer in layers[self.conv + 1:self.first - 1]:
            channel = layer.forward(params, channel)
        columns = slice(f * self.block, (f + 1) * self.block)
        delta = channel.reshape(self.batch, self.block) - self.inputs[:, columns]
        value = self.forward.products[self.first] + delta @ self.affine_weight[columns]
        if self.affine_bias is not None:
            value = value + self.affine_bias
        for layer in layers[self.first + 1:]:
            value = layer.forward(params, value)
        per_sample = self.forward.model.loss_layer.per_sample(value, self.forward.labels,
                                                               check_labels=False)
        return float(np.add.reduce(per_sample) / per_sample.shape[-1])
