"""A feed-forward net as a list of layers, its loss as a picklable callable, and MLP helpers.

Parameters live outside the net, in a dict ``params`` (name -> ndarray) that is passed to
every call. This is what lets a numerical gradient perturb ``params[name][i]`` in place
and re-evaluate, exactly like the book's ``f = lambda w: net.loss(x, t)``.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._functions import to_labels
from ._layers import ACTIVATIONS, LAYER_METHODS, Affine, SoftmaxCrossEntropy
from ._regularize import BatchNormalization, Dropout

__all__ = ["Sequential", "ModelLoss", "mlp", "init_params", "check_sizes", "DEFAULT_ACTIVATION",
           "DEFAULT_WEIGHT_STD", "WEIGHT_INITS", "check_weight_init"]

DEFAULT_ACTIVATION = "sigmoid"   # the teaching text's hidden layer
DEFAULT_WEIGHT_STD = 0.01        # and its initial weights' standard deviation
# The book's named scales (MultiLayerNet's weight_init_std='relu' / 'sigmoid'): each layer's
# std is sqrt(WEIGHT_INITS[name] / n_in), He's for ReLU, Xavier's for sigmoid.
WEIGHT_INITS = {"he": 2.0, "relu": 2.0, "xavier": 1.0, "sigmoid": 1.0}


def _as_batch(x):
    """Return `x` as a float batch (B, n_in) or (B, *sample); a 1-D `x` is a batch of one."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    return np.atleast_2d(x)


def _sample_shape(x):
    """What the first layer's `check` gets: the width n_in, or the shape of one sample."""
    return x.shape[1] if x.ndim == 2 else x.shape[1:]


def _backward_step(layer, params, z, out, dout, grads):
    """Backpropagate `dout` through `layer` (input `z`, output `out`); add to `grads`."""
    dz, layer_grads = layer.backward(params, z, out, dout)
    for name, g in layer_grads.items():
        # A name used by several layers (shared weights) collects all contributions.
        grads[name] = grads[name] + g if name in grads else g
    return dz


class Sequential:
    """Feed-forward net: layers applied in order, then a loss layer on the logits.

    Every layer has the interface described in :mod:`engine._layers`; TypeError names a
    layer that lacks one of its methods.
    """

    def __init__(self, layers: list, loss_layer: Any):
        layers = list(layers)
        if not layers:
            raise ValueError("`layers` is empty; a net needs at least one layer")
        for layer in layers:
            missing = [method for method in LAYER_METHODS if not hasattr(layer, method)]
            if missing:
                raise TypeError(f"`layers` holds {layer!r}, which has no {', '.join(missing)}; "
                                f"a layer needs {', '.join(LAYER_METHODS)} (see engine._layers)")
        for method in ("per_sample", "loss", "backward"):
            if not hasattr(loss_layer, method):
                raise TypeError(f"`loss_layer` {loss_layer!r} has no method {method!r}")
        self.layers = layers
        self.loss_layer = loss_layer

    def __repr__(self):
        return f"Sequential({self.layers!r}, {self.loss_layer!r})"

    def param_names(self) -> list[str]:
        """Names of the parameters the layers use, in layer order, each once; list of str."""
        names = []
        for layer in self.layers:
            names.extend(n for n in layer.param_names() if n not in names)
        return names

    def for_inference(self):
        """The net with every layer that has a ``for_inference()`` in inference mode.

        Returns
        -------
        Sequential
            `self` when no layer changes (no batch normalization or dropout); else a new
            net over the same loss layer, whose batch-normalization layers read the
            running statistics from the dict passed as `params` (``{**params, **state}``).
        """
        layers = [layer.for_inference() if hasattr(layer, "for_inference") else layer
                  for layer in self.layers]
        if all(new is old for new, old in zip(layers, self.layers)):
            return self
        return Sequential(layers, self.loss_layer)

    def state_names(self):
        """Names of the layers' state that is not differentiated (running statistics); list of str."""
        return [name for layer in self.layers for name in getattr(layer, "state_names", list)()]

    def init_state(self, params, x):
        """The state before any training step, for inputs shaped like `x`.

        Returns
        -------
        dict of str to ndarray
            One entry per name in :meth:`state_names` (``{}`` for a net without state).

        Raises
        ------
        ValueError, TypeError
            As in :meth:`logits`.
        """
        width = _sample_shape(_as_batch(x))
        state = {}
        for layer in self.layers:
            if hasattr(layer, "init_state"):
                state.update(layer.init_state(width))
            width = layer.check(params, width)
        return state

    def update_state(self, params, state, x):
        """Advance `state` (running statistics) by one training batch `x`, replacing its arrays.

        Run once per training step, after the gradient: the loss never changes the state,
        so a numerical gradient's thousands of evaluations leave it as it was.

        Raises
        ------
        ValueError, TypeError
            As in :meth:`logits`; ValueError if `state` lacks a name of :meth:`state_names`.
        """
        missing = [name for name in self.state_names() if name not in state]
        if missing:
            raise ValueError(f"`state` has no entry {missing[0]!r}; start from init_state()")
        trace = self.trace(params, x)
        for layer, z in zip(self.layers, trace):
            if hasattr(layer, "update_state"):
                layer.update_state(params, z, state)

    def _check_params(self, params, n_in):
        """Check `params` against the layers for input width `n_in`; return C."""
        if not isinstance(params, Mapping):
            raise TypeError(f"`params` must be a dict of arrays, got {type(params).__name__}")
        width = n_in
        for layer in self.layers:
            width = layer.check(params, width)
        return width

    def _inputs(self, params, x, t):
        """Validate and normalise: return x (B, n_in) float and labels int64 (B,)."""
        x = _as_batch(x)
        n_classes = self._check_params(params, _sample_shape(x))
        return x, to_labels(t, n_classes, batch_size=x.shape[0])

    def _forward(self, params, z):
        """Logits for an already checked batch `z`."""
        for layer in self.layers:
            z = layer.forward(params, z)
        return z

    def _trace(self, params, z):
        """Inputs of every layer, then the logits, for an already checked batch `z`."""
        trace = [z]
        for layer in self.layers:
            z = layer.forward(params, z)
            trace.append(z)
        return trace

    def _loss(self, params, x, labels):
        """Mean loss for a checked float batch `x` and int64 `labels`: the hot path."""
        logits = self._forward(params, x)
        return float(self.loss_layer.loss(logits, labels, check_labels=False))

    def logits(self, params: dict, x: np.ndarray) -> np.ndarray:
        """Scores before the loss layer's softmax.

        Parameters
        ----------
        params : dict of str to ndarray
            Arrays named by the layers (see :meth:`param_names`).
        x : array_like, shape (B, n_in), (n_in,) or (B, *sample)
            Inputs; 1-D means a batch of one; samples of several axes (images
            (B, C, H, W)) go to layers that take them (`engine.nn._conv`). Non-float
            input is converted to float64.

        Returns
        -------
        ndarray, shape (B, C)
            Float logits.

        Raises
        ------
        ValueError
            If a layer cannot take the samples of `x` (naming the layer), or `params`
            lacks an array or has one of the wrong shape for `x`.
        TypeError
            If `params` is not a mapping.

        Examples
        --------
        >>> net = mlp([4, 3, 2])
        >>> net.logits(init_params([4, 3, 2], seed=0), np.ones(4)).shape
        (1, 2)
        """
        x = _as_batch(x)
        self._check_params(params, _sample_shape(x))
        return self._forward(params, x)

    def trace(self, params, x):
        """Every intermediate array of the forward pass.

        Parameters
        ----------
        params : dict of str to ndarray
            As in :meth:`logits`.
        x : array_like, shape (B, n_in), (n_in,) or (B, *sample)
            As in :meth:`logits`.

        Returns
        -------
        list of ndarray, length ``len(self.layers) + 1``
            ``trace[0]`` is the float batch ``np.atleast_2d(x)``; ``trace[i]`` is the
            input of ``self.layers[i]`` (the output of ``self.layers[i - 1]``); the last
            entry ``trace[len(self.layers)]`` is the logits (B, C), as from :meth:`logits`.

        Raises
        ------
        ValueError, TypeError
            As in :meth:`logits`.

        Examples
        --------
        >>> net = mlp([4, 3, 2])
        >>> [a.shape for a in net.trace(init_params([4, 3, 2], seed=0), np.ones((5, 4)))]
        [(5, 4), (5, 3), (5, 3), (5, 2)]
        """
        x = _as_batch(x)
        self._check_params(params, _sample_shape(x))
        return self._trace(params, x)

    def loss(self, params: dict, x: np.ndarray, t: Any) -> float:
        """Mean over the batch of the per-sample loss (softmax cross entropy).

        Parameters
        ----------
        params : dict of str to ndarray
            As in :meth:`logits`.
        x : array_like, shape (B, n_in), (n_in,) or (B, *sample)
            As in :meth:`logits`.
        t : array_like
            Int labels (B,) or a scalar, or one-hot (B, C) or (C,); see
            :func:`engine._functions.to_labels`.

        Returns
        -------
        float
            The loss; :meth:`gradient` is its exact gradient.

        Raises
        ------
        ValueError, TypeError
            As in :meth:`logits`, or if `t` does not describe B labels in ``[0, C)``.

        Examples
        --------
        >>> net = mlp([4, 3, 2])
        >>> round(net.loss(init_params([4, 3, 2], weight_init_std=0.0), np.ones(4), 1), 4)
        0.6931
        """
        x, labels = self._inputs(params, x, t)
        return self._loss(params, x, labels)

    def gradient(self, params: dict, x: np.ndarray, t: Any) -> dict[str, np.ndarray]:
        """Exact gradient of :meth:`loss` with respect to every parameter, by backprop.

        Parameters
        ----------
        params, x, t
            As in :meth:`loss`.

        Returns
        -------
        dict of str to ndarray
            One entry per name in :meth:`param_names`, in that order, each a new array
            with the shape and dtype of ``params[name]``.

        Raises
        ------
        ValueError, TypeError
            As in :meth:`loss`.

        Examples
        --------
        >>> net = mlp([4, 3, 2])
        >>> grads = net.gradient(init_params([4, 3, 2], seed=0), np.ones(4), 1)
        >>> {name: g.shape for name, g in grads.items()}
        {'w1': (4, 3), 'b1': (3,), 'w2': (3, 2), 'b2': (2,)}
        """
        x, labels = self._inputs(params, x, t)
        trace = self._trace(params, x)
        dout = self.loss_layer.backward(trace[-1], labels)
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            dout = _backward_step(self.layers[i], params, trace[i], trace[i + 1], dout, grads)
        return {
            name: np.asarray(grads[name]).astype(np.asarray(params[name]).dtype)
            for name in self.param_names()
        }


class ModelLoss:
    """The loss of a net at fixed data, as a picklable callable ``f(w)`` that ignores `w`.

    The book writes ``f = lambda w: net.loss(x, t)`` and lets ``numerical_gradient(f, w)``
    perturb ``w`` in place. This is the same function with its parts visible, so a
    parallel engine can ship it to workers or evaluate perturbed parameters in batches.

    Parameters
    ----------
    model : Sequential
        The net.
    params : dict of str to ndarray
        Its parameters. Kept as the very same object (no copy): in-place changes to its
        arrays change the value of ``f``.
    x : array_like, shape (B, n_in), (n_in,) or (B, *sample)
        Inputs; stored as a float64 C-contiguous copy of shape (B, n_in) or (B, *sample).
    t : array_like
        Targets, as in :meth:`Sequential.loss`; stored as int64 labels (B,).

    Attributes
    ----------
    model : Sequential
    params : dict of str to ndarray
        The object passed in.
    x : ndarray of float64, shape (B, n_in) or (B, *sample)
    labels : ndarray of int64, shape (B,)

    Raises
    ------
    TypeError
        If `model` is not a :class:`Sequential` or `params` is not a mapping.
    ValueError
        If `x`, `t` or the shapes in `params` do not fit together.

    Examples
    --------
    >>> net, params = mlp([4, 3, 2]), init_params([4, 3, 2], seed=0)
    >>> f = ModelLoss(net, params, np.ones(4), 1)
    >>> f(params["w1"]) == net.loss(params, np.ones(4), 1)
    True
    """

    def __init__(self, model: Sequential, params: dict, x: np.ndarray, t: Any):
        if not isinstance(model, Sequential):
            raise TypeError(f"`model` must be a Sequential, got {type(model).__name__}")
        x, labels = model._inputs(params, x, t)
        self.model = model
        self.params = params
        self.x = np.array(x, dtype=np.float64, order="C")
        self.labels = labels

    def __repr__(self):
        return f"ModelLoss(model={self.model!r}, batch={self.x.shape[0]})"

    def __call__(self, w: Any) -> float:
        """Return the mean loss at the current ``self.params`` as a float; `w` is ignored."""
        return self.model._loss(self.params, self.x, self.labels)


def check_sizes(sizes: Any) -> list[int]:
    """Return `sizes` as a list of at least two positive ints, or raise."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"`sizes` needs an input and an output width, got {sizes!r}")
    for size in sizes:
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise ValueError(f"`sizes` must hold positive ints, got {size!r} in {sizes!r}")
    return [int(size) for size in sizes]


def mlp(sizes: Any, activation: str = DEFAULT_ACTIVATION, *, batch_norm: bool = False,
        dropout: float = 0.0, dropout_seed: int = 0) -> Sequential:
    """Multi-layer perceptron ``Affine, act, Affine, act, ..., Affine`` with softmax loss.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths ``[n_in, hidden..., C]``, at least two, all positive.
    activation : {"sigmoid", "relu", "tanh"}, default "sigmoid"
        Activation between consecutive affine layers.
    batch_norm : bool, default False
        A ``BatchNormalization(f"gamma{i}", f"beta{i}")`` after each hidden affine
        layer i, before its activation (the book's ``MultiLayerNetExtend``).
    dropout : float in [0, 1), default 0.0
        If positive, a ``Dropout(dropout, seed=dropout_seed + i)`` after each hidden
        activation i.
    dropout_seed : int, default 0

    Returns
    -------
    Sequential
        Layers ``Affine("w1", "b1"), act, ..., Affine(f"w{L}", f"b{L}")`` with
        ``L = len(sizes) - 1`` (and the layers above), and a :class:`SoftmaxCrossEntropy`
        loss layer.

    Raises
    ------
    ValueError
        If `sizes` is too short or holds a non-positive width, `activation` is unknown,
        or `dropout` is outside [0, 1).

    Examples
    --------
    >>> mlp([784, 100, 10]).layers
    [Affine('w1', 'b1'), Sigmoid(), Affine('w2', 'b2')]
    """
    sizes = check_sizes(sizes)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"`activation` {activation!r} is unknown; choose from {sorted(ACTIVATIONS)}"
        )
    Dropout(dropout)   # checks the ratio
    n_affine = len(sizes) - 1
    layers = []
    for i in range(1, n_affine + 1):
        layers.append(Affine(f"w{i}", f"b{i}"))
        if i < n_affine:
            if batch_norm:
                layers.append(BatchNormalization(f"gamma{i}", f"beta{i}"))
            layers.append(ACTIVATIONS[activation]())
            if dropout:
                layers.append(Dropout(dropout, seed=dropout_seed + i))
    return Sequential(layers, SoftmaxCrossEntropy())


def init_params(sizes: Any, weight_init_std: float | str = DEFAULT_WEIGHT_STD, seed: Any = None,
                dtype: Any = np.float64, *, batch_norm: bool = False) -> dict[str, np.ndarray]:
    """Parameters for :func:`mlp`: Gaussian weights, zero biases.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, as in :func:`mlp`.
    weight_init_std : float or str, default 0.01
        Standard deviation of the weights; finite and ``>= 0``. Or a name of the book's
        (`WEIGHT_INITS`): ``"he"`` (or ``"relu"``), std ``sqrt(2 / n_in)`` for each layer's
        `n_in` inputs; ``"xavier"`` (or ``"sigmoid"``), ``sqrt(1 / n_in)``.
    seed : int, numpy.random.Generator or None, default None
        Passed to ``np.random.default_rng``; None draws fresh entropy.
    dtype : floating dtype, default float64
        Dtype of every array. Weights are drawn in float64 and then rounded, so a given
        seed gives the same weights (to rounding) in every dtype.
    batch_norm : bool, default False
        Also ``gamma{i}`` (ones) and ``beta{i}`` (zeros) of shape ``(sizes[i],)`` for
        each hidden layer i, after ``b{i}``, as :func:`mlp` with ``batch_norm=True`` names them.

    Returns
    -------
    dict of str to ndarray
        Keys ``w1, b1, w2, b2, ...`` in that order; ``w{i}`` has shape
        ``(sizes[i-1], sizes[i])``, ``b{i}`` shape ``(sizes[i],)``.

    Raises
    ------
    ValueError
        If `sizes` is invalid, `weight_init_std` is negative, not finite or an unknown
        name, or `dtype` is not a floating dtype.

    Examples
    --------
    >>> {k: v.shape for k, v in init_params([784, 100, 10], seed=0).items()}
    {'w1': (784, 100), 'b1': (100,), 'w2': (100, 10), 'b2': (10,)}
    """
    sizes = check_sizes(sizes)
    check_weight_init(weight_init_std)
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"`dtype` must be a floating dtype, got {dtype}")
    rng = np.random.default_rng(seed)
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        std = np.sqrt(WEIGHT_INITS[weight_init_std] / n_in) if isinstance(weight_init_std, str) \
            else weight_init_std
        params[f"w{i}"] = (std * rng.standard_normal((n_in, n_out))).astype(dtype)
        params[f"b{i}"] = np.zeros(n_out, dtype=dtype)
        if batch_norm and i < len(sizes) - 1:
            params[f"gamma{i}"] = np.ones(n_out, dtype=dtype)
            params[f"beta{i}"] = np.zeros(n_out, dtype=dtype)
    return params


def check_weight_init(weight_init_std: Any) -> None:
    """ValueError unless `weight_init_std` is a finite number >= 0 or a name in `WEIGHT_INITS`."""
    if isinstance(weight_init_std, str):
        if weight_init_std not in WEIGHT_INITS:
            raise ValueError(f"`weight_init_std` {weight_init_std!r} is unknown; give a number or "
                             f"one of {', '.join(map(repr, WEIGHT_INITS))}")
    elif not (np.isfinite(weight_init_std) and weight_init_std >= 0):
        raise ValueError(f"`weight_init_std` must be finite and >= 0, got {weight_init_std!r}")
