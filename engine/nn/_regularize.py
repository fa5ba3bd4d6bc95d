"""Layers that act differently in training: batch normalization and dropout.

Each is a pure function of ``(params, z)`` in both modes, so a finite difference of the
loss is the same in every worker and in the serial reference:

- `BatchNormalization` in training mode normalises with the batch's own mean and
  variance; in inference mode with running statistics, which it reads from the dict
  passed as `params` under the names in :meth:`~BatchNormalization.state_names`. The
  running statistics are *state*, never differentiated: a net keeps them apart from its
  parameters and advances them once per training step with :meth:`update_state`, not on
  every forward pass (the book's layer updates them on every pass, so a numerical
  gradient, which runs the loss thousands of times, moves them thousands of times);
- `Dropout` draws its mask from its own `seed`, the same mask for every evaluation of
  the same shape; in inference mode it scales by the kept fraction.

``for_inference()`` returns the layer in inference mode (see `engine.Sequential.for_inference`).
Neither layer has a `kind` the batched evaluator knows.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._layers import Layer, _lookup

__all__ = ["BatchNormalization", "Dropout", "DEFAULT_MOMENTUM", "DEFAULT_EPS", "DEFAULT_DROPOUT"]

DEFAULT_MOMENTUM = 0.9   # the book's: running = 0.9 * running + 0.1 * batch
DEFAULT_EPS = 1e-7       # the book's, added to the variance before the square root
DEFAULT_DROPOUT = 0.5


def _check_name(name, value):
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a parameter name (str), got {value!r}")
    return value


def _check_fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}")
    return float(value)


class BatchNormalization(Layer):
    """``gamma * (z - mean) / sqrt(var + eps) + beta`` per feature, over the batch.

    Parameters
    ----------
    gamma, beta : str
        Names of the scale and shift in `params`, each of shape (n,), where n is the
        number of entries of one sample (an image (C, H, W) counts C*H*W features).
    running_mean, running_var : str, optional
        Names of the running statistics in the state dict; default ``gamma + "_mean"``
        and ``gamma + "_var"``.
    momentum : float in [0, 1), default 0.9
    eps : float > 0, default 1e-7
    train : bool, default True
        Training mode (batch statistics) or inference mode (running statistics).
    """

    def __init__(self, gamma, beta, running_mean=None, running_var=None, *,
                 momentum=DEFAULT_MOMENTUM, eps=DEFAULT_EPS, train=True):
        self.gamma, self.beta = _check_name("gamma", gamma), _check_name("beta", beta)
        self.running_mean = _check_name("running_mean", running_mean or gamma + "_mean")
        self.running_var = _check_name("running_var", running_var or gamma + "_var")
        self.momentum = _check_fraction("momentum", momentum)
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
            raise ValueError(f"`eps` must be a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.train = bool(train)

    def __repr__(self):
        mode = "train" if self.train else "inference"
        return f"BatchNormalization({self.gamma!r}, {self.beta!r}, {mode})"

    def param_names(self):
        """``[gamma, beta]``."""
        return [self.gamma, self.beta]

    def state_names(self):
        """Names of the running statistics, ``[running_mean, running_var]``."""
        return [self.running_mean, self.running_var]

    def init_state(self, n_in):
        """Running statistics before any step: mean zeros (n,), variance ones (n,)."""
        n = int(np.prod(n_in))
        return {self.running_mean: np.zeros(n), self.running_var: np.ones(n)}

    def for_inference(self):
        """The same layer in inference mode."""
        return BatchNormalization(self.gamma, self.beta, self.running_mean, self.running_var,
                                  momentum=self.momentum, eps=self.eps, train=False)

    def check(self, params, n_in):
        """Return `n_in`; ValueError unless gamma, beta (and in inference the statistics) are (n,)."""
        n = int(np.prod(n_in))
        names = self.param_names() + ([] if self.train else self.state_names())
        for name in names:
            shape = np.shape(_lookup(params, name))
            if shape != (n,):
                raise ValueError(f"`params[{name!r}]` must have shape ({n},), got {shape}")
        return n_in

    def _statistics(self, params, rows):
        """(mean, std) of the features of `rows` (B, n): the batch's, or the running ones."""
        if self.train:
            mean = rows.mean(axis=0)
            var = np.mean((rows - mean) ** 2, axis=0)
        else:
            mean, var = params[self.running_mean], params[self.running_var]
        return mean, np.sqrt(var + self.eps)

    def forward(self, params, z):
        """Return the normalised, scaled and shifted `z` (B, ...), same shape."""
        rows = z.reshape(z.shape[0], -1)
        mean, std = self._statistics(params, rows)
        out = params[self.gamma] * ((rows - mean) / std) + params[self.beta]
        return out.reshape(z.shape)

    def backward(self, params, z, out, dout):
        """Return ``(dz, {gamma: (n,), beta: (n,)})``; in training mode through the batch statistics."""
        rows, drows = z.reshape(z.shape[0], -1), dout.reshape(z.shape[0], -1)
        mean, std = self._statistics(params, rows)
        normed = (rows - mean) / std
        grads = {self.gamma: (drows * normed).sum(axis=0), self.beta: drows.sum(axis=0)}
        dnormed = drows * params[self.gamma]
        if self.train:   # the mean and the variance move with every sample
            dnormed = dnormed - dnormed.mean(axis=0) - normed * (dnormed * normed).mean(axis=0)
        return (dnormed / std).reshape(z.shape), grads

    def update_state(self, params, z, state):
        """Move the running statistics in `state` towards the batch `z`'s (new arrays)."""
        rows = z.reshape(z.shape[0], -1)
        mean = rows.mean(axis=0)
        batch = {self.running_mean: mean, self.running_var: np.mean((rows - mean) ** 2, axis=0)}
        for name, value in batch.items():
            state[name] = self.momentum * state[name] + (1.0 - self.momentum) * value


class Dropout(Layer):
    """Zero each entry with probability `ratio`; the mask is drawn from `seed`, the same every call.

    Parameters
    ----------
    ratio : float in [0, 1), default 0.5
        Fraction of entries dropped in training mode.
    seed : int, default 0
        Seed of ``np.random.default_rng``; the mask of an input of shape S is
        ``default_rng(seed).random(S) >= ratio``: every evaluation of the loss, in any
        worker, uses the same mask. Give a new seed for a new mask.
    train : bool, default True
        Training mode (the mask), or inference mode (every entry times ``1 - ratio``).
    """

    def __init__(self, ratio=DEFAULT_DROPOUT, seed=0, *, train=True):
        self.ratio = _check_fraction("ratio", ratio)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")
        self.seed = int(seed)
        self.train = bool(train)

    def __repr__(self):
        mode = "train" if self.train else "inference"
        return f"Dropout({self.ratio}, seed={self.seed}, {mode})"

    def for_inference(self):
        """The same layer in inference mode."""
        return Dropout(self.ratio, self.seed, train=False)

    def mask(self, shape):
        """The boolean mask (True: kept) for an input of `shape`."""
        return np.random.default_rng(self.seed).random(shape) >= self.ratio

    def forward(self, params, z):
        """Return ``z * mask`` (training) or ``z * (1 - ratio)`` (inference), same shape."""
        if self.train:
            return z * self.mask(z.shape)
        return z * (1.0 - self.ratio)

    def backward(self, params, z, out, dout):
        """Return ``(dout * mask, {})`` (training) or ``(dout * (1 - ratio), {})``."""
        if self.train:
            return dout * self.mask(z.shape), {}
        return dout * (1.0 - self.ratio), {}
