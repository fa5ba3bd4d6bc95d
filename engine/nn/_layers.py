"""Layers of a feed-forward net: the affine map, activations and the loss layer.

Layers hold no arrays. A layer holds at most the *names* of its parameters, looked up in
a ``params`` dict at call time, so one net serves any number of parameter sets (the
perturbed copies of a finite-difference gradient among them). Backward passes take what
the forward pass saw as arguments instead of caching it on the layer.

Every layer of a :class:`~engine.Sequential` but the loss layer has one interface,
so that the forward pass, backprop and the batched evaluator walk the layers without
asking their types:

``forward(params, z)``
    The output, shape (..., n_out), for the input `z`, shape (..., n_in): a batch (B, n_in)
    or a stack of batches.
``backward(params, z, out, dout)``
    ``(dz, grads)`` for the input `z` (B, n_in), the output ``out = forward(params, z)``
    and the gradient `dout` of the loss with respect to `out`: ``dz`` (B, n_in) and a dict
    from the name of each of the layer's parameters to its gradient (``{}`` for none).
``param_names()``
    The names of the layer's parameters in `params`, a list of str (``[]`` for none).
``check(params, n_in)``
    The output width for the input width `n_in`; ValueError naming the entry of `params`
    that is missing or has the wrong shape. The net calls it before any work. For
    samples of more than one axis (images (B, C, H, W), see :mod:`engine.nn._conv`)
    `n_in` and the result are the sample's shape, a tuple such as ``(C, H, W)``.
``kind``
    What the batched evaluator (:mod:`engine._batched`) may assume of the layer:

    - ``AFFINE``: the output is ``z @ params[weight] (+ params[bias])``, with the names
      in the attributes ``weight`` and ``bias`` (None for no bias);
    - ``ELEMENTWISE``: no parameters, each output entry a function of the input entry at
      its place, for input of any shape;
    - None (also for a layer without ``kind``): anything else. A net with such a layer is
      evaluated by the loop evaluator.

Optional, for layers that act differently in training (:mod:`engine.nn._regularize`):
``for_inference()`` returns the layer in inference mode; ``state_names()``,
``init_state(n_in)`` and ``update_state(params, z, state)`` name, create and advance
state that is not differentiated (running statistics), which the inference-mode
``forward`` reads from the dict it is given.

A new layer type subclasses :class:`Layer`, which gives the defaults of a layer without
parameters, and is complete in its own class; :data:`ACTIVATIONS` names the activations
that :func:`engine.mlp` can build.
"""
from __future__ import annotations

import numpy as np

from ._functions import check_logits_labels, sigmoid, softmax, softmax_cross_entropy

__all__ = ["Layer", "Affine", "Sigmoid", "ReLU", "Tanh", "SoftmaxCrossEntropy", "ACTIVATIONS",
           "AFFINE", "ELEMENTWISE", "LAYER_METHODS"]

AFFINE = "affine"
ELEMENTWISE = "elementwise"
LAYER_METHODS = ("forward", "backward", "param_names", "check")   # besides the attribute `kind`


def _lookup(params, name):
    """Return ``params[name]``, or ValueError naming the missing parameter."""
    try:
        return params[name]
    except KeyError:
        raise ValueError(f"`params` has no entry {name!r}") from None


class Layer:
    """Defaults for a layer without parameters that keeps the width; add forward and backward."""

    kind = None

    def __repr__(self):
        return f"{type(self).__name__}()"

    def param_names(self):
        """Names of this layer's parameters: none; list of str."""
        return []

    def check(self, params, n_in):
        """Return the output width, `n_in`: there is nothing to check."""
        return n_in


class Affine(Layer):
    """Affine map ``z @ params[weight] + params[bias]``, parameters named, not held."""

    kind = AFFINE

    def __init__(self, weight, bias=None):
        if not isinstance(weight, str):
            raise TypeError(f"`weight` must be a parameter name (str), got {weight!r}")
        if bias is not None and not isinstance(bias, str):
            raise TypeError(f"`bias` must be a parameter name (str) or None, got {bias!r}")
        self.weight = weight
        self.bias = bias

    def __repr__(self):
        return f"Affine({self.weight!r}, {self.bias!r})"

    def param_names(self):
        """Names of this layer's parameters, weight first; list of str."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def check(self, params, n_in):
        """Return n_out; ValueError unless W is (n_in, n_out) and b, if named, is (n_out,)."""
        if isinstance(n_in, tuple):
            raise ValueError(f"{self!r} needs rows, samples of one axis, but `x` (or the layer "
                             f"before) gives samples of shape {n_in}: put Reshape(-1) before it")
        w_shape = np.shape(_lookup(params, self.weight))
        if len(w_shape) != 2 or w_shape[0] != n_in:
            raise ValueError(
                f"`params[{self.weight!r}]` must have shape ({n_in}, n_out), got {w_shape}"
            )
        if self.bias is not None:
            b_shape = np.shape(_lookup(params, self.bias))
            if b_shape != (w_shape[1],):
                raise ValueError(
                    f"`params[{self.bias!r}]` must have shape ({w_shape[1]},), got {b_shape}"
                )
        return w_shape[1]

    def forward(self, params, z):
        """Return ``z @ W (+ b)``; `z` (..., n_in) gives (..., n_out)."""
        out = z @ params[self.weight]
        if self.bias is None:
            return out
        return out + params[self.bias]

    def backward(self, params, z, out, dout):
        """Return ``(dz, grads)`` for input `z` (B, n_in) and upstream `dout` (B, n_out).

        ``dz = dout @ W.T`` has shape (B, n_in); `grads` maps the weight name to
        ``z.T @ dout`` (n_in, n_out) and the bias name, if any, to ``dout.sum(0)`` (n_out,).
        `out` is not needed.
        """
        grads = {self.weight: z.T @ dout}
        if self.bias is not None:
            grads[self.bias] = dout.sum(axis=0)
        return dout @ params[self.weight].T, grads


class Sigmoid(Layer):
    """Logistic activation, elementwise on any shape."""

    kind = ELEMENTWISE

    def forward(self, params, z):
        """Return ``sigmoid(z)``, same shape as `z`."""
        return sigmoid(z)

    def backward(self, params, z, out, dout):
        """Return ``(dout * out * (1 - out), {})``, using the output ``out = sigmoid(z)``."""
        return dout * out * (1.0 - out), {}


class ReLU(Layer):
    """Rectified linear activation ``max(z, 0)``, elementwise on any shape."""

    kind = ELEMENTWISE

    def forward(self, params, z):
        """Return ``max(z, 0)``, same shape as `z`."""
        return np.maximum(z, 0.0)

    def backward(self, params, z, out, dout):
        """Return ``(dout * (z > 0), {})``; the derivative at the kink ``z == 0`` is taken as 0."""
        return dout * (z > 0), {}


class Tanh(Layer):
    """Hyperbolic tangent activation, elementwise on any shape."""

    kind = ELEMENTWISE

    def forward(self, params, z):
        """Return ``tanh(z)``, same shape as `z`."""
        return np.tanh(z)

    def backward(self, params, z, out, dout):
        """Return ``(dout * (1 - out**2), {})``, using the output ``out = tanh(z)``."""
        return dout * (1.0 - out * out), {}


ACTIVATIONS = {"sigmoid": Sigmoid, "relu": ReLU, "tanh": Tanh}


class SoftmaxCrossEntropy:
    """Loss layer: softmax of the logits, then cross entropy against int labels."""

    def __repr__(self):
        return "SoftmaxCrossEntropy()"

    def per_sample(self, logits, labels, *, check_labels=True):
        """Per-sample losses; `logits` (..., B, C) and int `labels` (B,) give (..., B).

        See :func:`engine._functions.softmax_cross_entropy`, which this is.
        """
        return softmax_cross_entropy(logits, labels, check_labels=check_labels)

    def loss(self, logits, labels, *, check_labels=True):
        """Mean over the batch axis B of :meth:`per_sample`; shape (...), 0-d for (B, C)."""
        per = self.per_sample(logits, labels, check_labels=check_labels)
        return np.add.reduce(per, axis=-1) / per.shape[-1]

    def backward(self, logits, labels):
        """Gradient of :meth:`loss` for 2-D `logits` (B, C): ``(softmax - onehot) / B``.

        Raises ValueError if `logits` is not 2-D or `labels` do not fit it.
        """
        logits, labels = np.asarray(logits), np.asarray(labels)
        if logits.ndim != 2:
            raise ValueError(f"`logits` must have shape (B, C), got {logits.shape}")
        check_logits_labels(logits, labels)
        grad = softmax(logits)
        batch = grad.shape[0]
        grad[np.arange(batch), labels] -= 1.0
        grad /= batch
        return grad
