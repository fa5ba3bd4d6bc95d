"""Layers of a feed-forward net: the affine map, activations and the loss layer.

Layers hold no arrays. An :class:`Affine` layer holds only the *names* of its parameters,
looked up in a ``params`` dict at call time, so one net serves any number of parameter
sets (the perturbed copies of a finite-difference gradient among them). Backward passes
take what the forward pass saw as arguments instead of caching it on the layer.
"""

import numpy as np

from engine._functions import _check_logits_labels, sigmoid, softmax, softmax_cross_entropy


class Affine:
    """Affine map ``z @ params[weight] + params[bias]``, parameters named, not held."""

    def __init__(self, weight, bias=None):
        if not isinstance(weight, str):
            raise TypeError(f"`weight` must be a parameter name (str), got {weight!r}.")
        if bias is not None and not isinstance(bias, str):
            raise TypeError(f"`bias` must be a parameter name (str) or None, got {bias!r}.")
        self.weight = weight
        self.bias = bias

    def __repr__(self):
        return f"Affine({self.weight!r}, {self.bias!r})"

    def param_names(self):
        """Names of this layer's parameters, weight first; list of str."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def forward(self, params, z):
        """Return ``z @ W (+ b)``; `z` (..., n_in) gives (..., n_out)."""
        out = z @ params[self.weight]
        if self.bias is None:
            return out
        return out + params[self.bias]

    def backward(self, params, z, dout):
        """Return ``(dz, grads)`` for input `z` (B, n_in) and upstream `dout` (B, n_out).

        ``dz = dout @ W.T`` has shape (B, n_in); `grads` maps the weight name to
        ``z.T @ dout`` (n_in, n_out) and the bias name, if any, to ``dout.sum(0)`` (n_out,).
        """
        grads = {self.weight: z.T @ dout}
        if self.bias is not None:
            grads[self.bias] = dout.sum(axis=0)
        return dout @ params[self.weight].T, grads


class Sigmoid:
    """Logistic activation, elementwise on any shape."""

    def __repr__(self):
        return "Sigmoid()"

    def forward(self, a):
        """Return ``sigmoid(a)``, same shape as `a`."""
        return sigmoid(a)

    def backward(self, a, z, dout):
        """Return ``dout * z * (1 - z)``, using the output ``z = sigmoid(a)``."""
        return dout * z * (1.0 - z)


class ReLU:
    """Rectified linear activation ``max(a, 0)``, elementwise on any shape."""

    def __repr__(self):
        return "ReLU()"

    def forward(self, a):
        """Return ``max(a, 0)``, same shape as `a`."""
        return np.maximum(a, 0.0)

    def backward(self, a, z, dout):
        """Return ``dout * (a > 0)``; the derivative at the kink ``a == 0`` is taken as 0."""
        return dout * (a > 0)


class Tanh:
    """Hyperbolic tangent activation, elementwise on any shape."""

    def __repr__(self):
        return "Tanh()"

    def forward(self, a):
        """Return ``tanh(a)``, same shape as `a`."""
        return np.tanh(a)

    def backward(self, a, z, dout):
        """Return ``dout * (1 - z**2)``, using the output ``z = tanh(a)``."""
        return dout * (1.0 - z * z)


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
            raise ValueError(f"`logits` must have shape (B, C), got {logits.shape}.")
        _check_logits_labels(logits, labels)
        grad = softmax(logits)
        batch = grad.shape[0]
        grad[np.arange(batch), labels] -= 1.0
        grad /= batch
        return grad
