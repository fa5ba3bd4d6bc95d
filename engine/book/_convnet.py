"""The book's chapter-7 convolutional net, in its vocabulary, on the engine's layers.

``conv - relu - pool - affine - relu - affine - softmax``; parameters ``w1, b1`` (the
filters), ``w2, b2``, ``w3, b3``. It takes the flat MNIST rows (B, 784) of
`engine.load_embedded_mnist` as well as images (B, 1, 28, 28). Its numerical gradient
takes the batched evaluator (``evaluator="auto"``): the filters one output channel at a
time, the affine layers as in the MLPs (see `engine.batched._batched`).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..data._data import N_CLASSES
from ..nn._conv import Convolution, Pooling, Reshape
from ..nn._layers import Affine, ReLU, SoftmaxCrossEntropy
from ..nn._model import DEFAULT_WEIGHT_STD, Sequential
from ._nets import Net

__all__ = ["SimpleConvNet", "MNIST_IMAGE"]

MNIST_IMAGE = (1, 28, 28)   # channels, height, width
POOL = 2                    # the book's 2x2 max pooling, stride 2


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return int(value)


class SimpleConvNet(Net):
    """The book's ``SimpleConvNet``: one convolution layer, 2x2 max pooling, two affine layers.

    Parameters
    ----------
    input_dim : tuple of 3 int, default (1, 28, 28)
        (C, H, W) of one image; inputs may be images (B, C, H, W) or rows (B, C*H*W).
    filter_num, filter_size, pad, stride : int, default 30, 5, 0, 1
        The convolution: `filter_num` filters of `filter_size` x `filter_size`.
    hidden_size, output_size : int, default 100, 10
    weight_init_std : float, default 0.01
        Standard deviation of the Gaussian weights; biases are zero.
    seed : int or None
        Seed of the one generator that draws ``w1``, ``w2``, ``w3`` in that order.

    Raises
    ------
    ValueError
        Naming the argument: a size that is not a positive int, `pad` negative, or
        filters that do not fit the image.

    Examples
    --------
    >>> net = SimpleConvNet(seed=0)
    >>> {k: v.shape for k, v in net.params.items()}["w2"]
    (4320, 100)
    """

    def __init__(self, input_dim: tuple[int, int, int] = MNIST_IMAGE, filter_num: int = 30,
                 filter_size: int = 5, pad: int = 0, stride: int = 1, hidden_size: int = 100,
                 output_size: int = N_CLASSES, weight_init_std: float = DEFAULT_WEIGHT_STD,
                 seed: int | None = None):
        input_dim = tuple(input_dim)
        if len(input_dim) != 3:
            raise ValueError(f"`input_dim` must be (C, H, W), got {input_dim!r}")
        channels, height, width = (_positive("input_dim", d) for d in input_dim)
        sizes = {name: _positive(name, value) for name, value in (
            ("filter_num", filter_num), ("filter_size", filter_size), ("hidden_size", hidden_size),
            ("output_size", output_size))}
        if not (np.isfinite(weight_init_std) and weight_init_std >= 0):
            raise ValueError(f"`weight_init_std` must be finite and >= 0, got {weight_init_std!r}")
        conv = Convolution("w1", "b1", stride=stride, pad=pad)
        model = Sequential([Reshape(input_dim), conv, ReLU(), Pooling(POOL, POOL, stride=POOL),
                            Reshape(-1), Affine("w2", "b2"), ReLU(), Affine("w3", "b3")],
                           SoftmaxCrossEntropy())
        filters = (sizes["filter_num"], channels, sizes["filter_size"], sizes["filter_size"])
        probe = {"w1": np.empty(filters), "b1": np.empty(filters[0])}
        try:
            _, conv_h, conv_w = conv.check(probe, (channels, height, width))
        except ValueError as error:
            raise ValueError(f"`filter_size` {filter_size} with pad {pad} does not fit "
                             f"`input_dim` {input_dim}: {error}") from None
        pooled = filters[0] * (conv_h // POOL) * (conv_w // POOL)
        if pooled == 0:
            raise ValueError(f"`input_dim` {input_dim} leaves no place for the {POOL}x{POOL} pooling "
                             "after the convolution")
        rng = np.random.default_rng(seed)
        shapes = {"w1": filters, "w2": (pooled, sizes["hidden_size"]),
                  "w3": (sizes["hidden_size"], sizes["output_size"])}
        params = {}
        for i, shape in enumerate(shapes.values(), start=1):
            params[f"w{i}"] = weight_init_std * rng.standard_normal(shape)
            params[f"b{i}"] = np.zeros(shape[0] if i == 1 else shape[1])
        super().__init__(model, params)
        self.input_dim = input_dim
