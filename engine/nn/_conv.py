"""Layers over images: convolution, max pooling, and reshaping between images and rows.

An image batch has shape (B, C, H, W); the per-sample shape ``(C, H, W)`` is what
`check` receives as `n_in` and returns for these layers (`Reshape` turns it into a flat
width and back). Convolution is an im2col product: every (FH, FW) window of the padded
input becomes a row, and the filters a matrix.

None of these layers has a `kind` of the batched evaluator's: it takes them before the
first affine layer of a net (see `engine.batched._batched`); a net with one after an
affine layer is evaluated by the loop evaluator (``evaluator="auto"`` warns, naming it).
"""
from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ._layers import Layer, _lookup

__all__ = ["Convolution", "Pooling", "Reshape", "im2col", "col2im", "output_size"]


def _check_int(name, value, least):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"`{name}` must be an int >= {least}, got {value!r}")
    return int(value)


def output_size(size, window, stride, pad):
    """Number of window positions along an axis of `size` (padded by `pad` each side)."""
    return (size + 2 * pad - window) // stride + 1


def _windows(z, fh, fw, stride, pad):
    """Read-only view (B, C, OH, OW, FH, FW) of the (FH, FW) windows of the padded `z`."""
    if pad:
        z = np.pad(z, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return sliding_window_view(z, (fh, fw), axis=(2, 3))[:, :, ::stride, ::stride]


def im2col(z, fh, fw, stride=1, pad=0):
    """Windows of an image batch as rows.

    Parameters
    ----------
    z : ndarray, shape (B, C, H, W)
    fh, fw : int
        Window height and width.
    stride, pad : int
        Step between windows; zeros added on each side of H and W.

    Returns
    -------
    ndarray, shape (B * OH * OW, C * FH * FW)
        Row ``(b * OH + i) * OW + j`` is the window at output place (i, j) of sample b,
        in (C, FH, FW) order; ``OH = output_size(H, fh, stride, pad)``, likewise OW.
    """
    win = _windows(z, fh, fw, stride, pad)
    batch, channels, oh, ow = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(batch * oh * ow, channels * fh * fw)


def _fold(cols, shape, stride, pad):
    """Sum window values (B, C, FH, FW, OH, OW) back onto an image of `shape` (B, C, H, W)."""
    batch, channels, height, width = shape
    fh, fw, oh, ow = cols.shape[2:]
    image = np.zeros((batch, channels, height + 2 * pad, width + 2 * pad), dtype=cols.dtype)
    for i in range(fh):
        for j in range(fw):
            image[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] += cols[:, :, i, j]
    return image[:, :, pad:pad + height, pad:pad + width]


def col2im(col, shape, fh, fw, stride=1, pad=0):
    """The adjoint of :func:`im2col`: add each row's entries back at their image places.

    Parameters
    ----------
    col : ndarray, shape (B * OH * OW, C * FH * FW)
    shape : tuple of int
        (B, C, H, W), the image shape given to :func:`im2col`.
    fh, fw, stride, pad : int
        As given to :func:`im2col`.

    Returns
    -------
    ndarray, shape (B, C, H, W)
        An entry that lies in several windows receives the sum of their values.
    """
    batch, channels, height, width = shape
    oh, ow = output_size(height, fh, stride, pad), output_size(width, fw, stride, pad)
    cols = col.reshape(batch, oh, ow, channels, fh, fw).transpose(0, 3, 4, 5, 1, 2)
    return _fold(cols, shape, stride, pad)


def _image_shape(layer, n_in):
    """`n_in` as (C, H, W), or ValueError saying that `layer` needs images."""
    if not isinstance(n_in, tuple) or len(n_in) != 3:
        raise ValueError(f"{layer!r} needs images, samples of shape (C, H, W), got {n_in!r}: "
                         "give x of shape (B, C, H, W), or put Reshape((C, H, W)) before it")
    return n_in


class Convolution(Layer):
    """Filters ``params[weight]`` (FN, C, FH, FW) slid over (B, C, H, W), plus ``params[bias]`` (FN,)."""

    def __init__(self, weight, bias=None, stride=1, pad=0):
        for name, value in (("weight", weight), ("bias", bias)):
            if not (isinstance(value, str) or (name == "bias" and value is None)):
                raise TypeError(f"`{name}` must be a parameter name (str), got {value!r}")
        self.weight, self.bias = weight, bias
        self.stride = _check_int("stride", stride, 1)
        self.pad = _check_int("pad", pad, 0)

    def __repr__(self):
        return f"Convolution({self.weight!r}, {self.bias!r}, stride={self.stride}, pad={self.pad})"

    def param_names(self):
        """Names of this layer's parameters, weight first; list of str."""
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    def check(self, params, n_in):
        """Return (FN, OH, OW) for input samples `n_in` = (C, H, W); ValueError naming a bad array."""
        channels, height, width = _image_shape(self, n_in)
        w_shape = np.shape(_lookup(params, self.weight))
        if len(w_shape) != 4 or w_shape[1] != channels:
            raise ValueError(f"`params[{self.weight!r}]` must have shape (FN, {channels}, FH, FW), "
                             f"got {w_shape}")
        if self.bias is not None and np.shape(_lookup(params, self.bias)) != w_shape[:1]:
            raise ValueError(f"`params[{self.bias!r}]` must have shape ({w_shape[0]},), "
                             f"got {np.shape(params[self.bias])}")
        oh = output_size(height, w_shape[2], self.stride, self.pad)
        ow = output_size(width, w_shape[3], self.stride, self.pad)
        if oh < 1 or ow < 1:
            raise ValueError(f"`params[{self.weight!r}]`'s filters {w_shape[2:]} do not fit images "
                             f"{(height, width)} padded by {self.pad}")
        return (w_shape[0], oh, ow)

    def forward(self, params, z):
        """Return the feature maps (B, FN, OH, OW) of images `z` (B, C, H, W)."""
        w = params[self.weight]
        col = im2col(z, w.shape[2], w.shape[3], self.stride, self.pad)
        out = col @ w.reshape(w.shape[0], -1).T
        if self.bias is not None:
            out = out + params[self.bias]
        oh = output_size(z.shape[2], w.shape[2], self.stride, self.pad)
        return out.reshape(z.shape[0], oh, -1, w.shape[0]).transpose(0, 3, 1, 2)

    def backward(self, params, z, out, dout):
        """Return ``(dz, grads)`` for images `z` (B, C, H, W) and `dout` (B, FN, OH, OW).

        ``dz`` has the shape of `z`; `grads` maps the weight name to (FN, C, FH, FW) and
        the bias name, if any, to (FN,).
        """
        w = params[self.weight]
        fn, _, fh, fw = w.shape
        col = im2col(z, fh, fw, self.stride, self.pad)
        rows = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        grads = {self.weight: (rows.T @ col).reshape(w.shape)}
        if self.bias is not None:
            grads[self.bias] = rows.sum(axis=0)
        dz = col2im(rows @ w.reshape(fn, -1), z.shape, fh, fw, self.stride, self.pad)
        return dz, grads


class Pooling(Layer):
    """Max over (pool_h, pool_w) windows of each channel, `stride` apart (default: the window)."""

    def __init__(self, pool_h, pool_w, stride=None):
        self.pool_h = _check_int("pool_h", pool_h, 1)
        self.pool_w = _check_int("pool_w", pool_w, 1)
        self.stride = self.pool_h if stride is None else _check_int("stride", stride, 1)

    def __repr__(self):
        return f"Pooling({self.pool_h}, {self.pool_w}, stride={self.stride})"

    def check(self, params, n_in):
        """Return (C, OH, OW) for input samples `n_in` = (C, H, W); ValueError if the window does not fit."""
        channels, height, width = _image_shape(self, n_in)
        oh = output_size(height, self.pool_h, self.stride, 0)
        ow = output_size(width, self.pool_w, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r} does not fit images of size {(height, width)}")
        return (channels, oh, ow)

    def _flat_windows(self, z):
        win = _windows(z, self.pool_h, self.pool_w, self.stride, 0)
        return win.reshape(*win.shape[:4], -1)   # (B, C, OH, OW, pool_h * pool_w)

    def forward(self, params, z):
        """Return the window maxima (B, C, OH, OW) of `z` (B, C, H, W)."""
        return self._flat_windows(z).max(axis=-1)

    def backward(self, params, z, out, dout):
        """Return ``(dz, {})``: each window's `dout` goes to its first largest entry."""
        flat = self._flat_windows(z)
        cols = np.zeros(flat.shape, dtype=dout.dtype)
        np.put_along_axis(cols, flat.argmax(axis=-1)[..., None], dout[..., None], axis=-1)
        cols = cols.reshape(*cols.shape[:4], self.pool_h, self.pool_w).transpose(0, 1, 4, 5, 2, 3)
        return _fold(cols, z.shape, self.stride, 0), {}


class Reshape(Layer):
    """Give each sample the shape `shape` (one entry may be -1): images to rows or back."""

    def __init__(self, shape):
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
        for size in shape:
            if isinstance(size, bool) or not isinstance(size, numbers.Integral) or \
                    (size < 1 and size != -1):
                raise ValueError(f"`shape` must hold positive ints and at most one -1, got {shape!r}")
        if shape.count(-1) > 1:
            raise ValueError(f"`shape` may hold at most one -1, got {shape!r}")
        self.shape = tuple(int(s) for s in shape)

    def __repr__(self):
        return f"Reshape({self.shape!r})"

    def check(self, params, n_in):
        """Return the new sample shape (an int for one axis); ValueError if the sizes differ."""
        size = int(np.prod(n_in))
        known = int(np.prod([s for s in self.shape if s != -1]))
        shape = tuple(size // known if s == -1 else s for s in self.shape)
        if int(np.prod(shape)) != size:
            raise ValueError(f"{self!r} cannot take samples of shape {n_in!r} ({size} entries)")
        return shape[0] if len(shape) == 1 else shape

    def forward(self, params, z):
        """Return `z` (B, ...) reshaped to (B, *shape)."""
        return z.reshape(z.shape[0], *self.shape)

    def backward(self, params, z, out, dout):
        """Return ``(dout reshaped like z, {})``."""
        return dout.reshape(z.shape), {}
