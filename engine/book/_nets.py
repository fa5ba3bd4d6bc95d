"""The teaching text's nets, in its own vocabulary, on top of the layered model and the engine.

`SimpleNet` and `ThreeLayerNet` keep the book's names (`params['w1']`, `predict`,
`loss`, `accuracy`, `numerical_gradient`, `gradient`); `MLP` is the same thing with
any number of layers. Each holds a `engine.Sequential` and a params dict; the
numerical gradient goes through `parallel_numerical_gradient`, backprop through the
model.
"""
from __future__ import annotations

import hashlib
from typing import Any

import cloudpickle
import numpy as np

from ..nn._functions import softmax
from ..run._execution import Execution
from ..derivatives._gradient import Gradient
from ..data._data import N_CLASSES, N_PIXELS
from ..nn._layers import Affine, SoftmaxCrossEntropy
from ..nn._model import DEFAULT_ACTIVATION, DEFAULT_WEIGHT_STD, ModelLoss, Sequential, init_params, mlp

__all__ = ["Net", "SimpleNet", "ThreeLayerNet", "MLP", "BOOK_SIZES"]

BOOK_SIZES = (N_PIXELS, 100, N_CLASSES)   # the teaching text's net: 784-100-10


_KEPT_GRADIENTS = 4   # resident Gradients a net keeps, one per settings, the least recently used closed


def _settings_key(execution: Execution | None, options: dict[str, Any]) -> bytes:
    """The settings' identity: a digest of their pickled bytes (every entry of an array counts)."""
    data = cloudpickle.dumps((execution, sorted(options.items())))
    return hashlib.blake2b(data, digest_size=16).digest()

class Net:
    """A model and its parameters, with the book's methods.

    `model` is the net in training mode: `numerical_gradient` and `gradient` differentiate
    its loss. `predict`, `accuracy` and ``loss(x, t)`` use ``model.for_inference()`` (the
    same net unless it holds batch normalization or dropout), which reads the running
    statistics from `state`; ``loss(x, t, train=True)`` is the loss the gradients are of.
    `update_state` advances `state` by a training batch, once per step.
    """

    def __init__(self, model: Sequential, params: dict[str, np.ndarray],
                 state: dict[str, np.ndarray] | None = None):
        self.model = model
        self.params = params
        self.state = {} if state is None else state   # running statistics: not differentiated
        self._gradients: dict[bytes, Gradient] = {}   # resident Gradients by settings, oldest first

    def __getstate__(self) -> dict:
        # A net travels (in the book's closure, say) without its gradients' workers.
        return {**self.__dict__, "_gradients": {}}

    def _mode(self, train: bool) -> tuple[Sequential, dict[str, np.ndarray]]:
        """The model and the arrays it reads, in training or inference mode."""
        if train:
            return self.model, self.params
        return self.model.for_inference(), {**self.params, **self.state}

    def predict(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """Class probabilities, shape (B, C) (B = 1 for a 1-D `x`); inference mode unless `train`."""
        model, arrays = self._mode(train)
        return softmax(model.logits(arrays, x))

    def loss(self, x: np.ndarray, t: Any, train: bool = False) -> float:
        """Mean softmax cross-entropy over the batch; `t` int labels or one-hot.

        With ``train=True``, the training-mode loss, which `gradient` and
        `numerical_gradient` differentiate; by default the inference-mode loss (the
        same for a net without batch normalization or dropout).
        """
        model, arrays = self._mode(train)
        return model.loss(arrays, x, t)

    def accuracy(self, x: np.ndarray, t: Any) -> float:
        """Fraction of samples whose largest logit (inference mode) is the true class."""
        f = self.loss_function(x, t)
        model, arrays = self._mode(False)
        return float(np.mean(np.argmax(model.logits(arrays, f.x), axis=1) == f.labels))

    def update_state(self, x: np.ndarray) -> None:
        """Advance the running statistics by the training batch `x`; nothing for a net without any."""
        if self.state or self.model.state_names():
            self.model.update_state(self.params, self.state, x)

    def loss_function(self, x: np.ndarray, t: Any) -> ModelLoss:
        """The book's ``f = lambda w: net.loss(x, t, train=True)``, as a picklable `ModelLoss`."""
        return ModelLoss(self.model, self.params, x, t)

    def numerical_gradient(self, x: np.ndarray, t: Any, *, execution: Execution | None = None,
                           **options: Any) -> dict[str, np.ndarray]:
        """Gradient of ``loss(x, t, train=True)`` by finite differences, through a resident `Gradient`.

        `execution` and `options` are those of `engine.Gradient`: the difference
        (``h``, ``scheme``, ``evaluator``...) and where it runs (an `engine.Execution`,
        or its keywords ``workers``, ``backend``, ``dispatch``...). The default evaluator,
        ``"auto"``, evaluates perturbations in blocks (see `engine._batched`);
        ``evaluator="loop"`` does it the book's way. The net keeps one `Gradient` for each
        set of settings, so later calls reuse its workers and ship only the new values of
        `params` and the batch.
        """
        key = _settings_key(execution, options)
        gradient = self._gradients.pop(key, None)
        if gradient is None:
            # worker processes shared with other nets and the one-shot calls
            gradient = Gradient(self.model.loss, execution=execution, _shared_pool=True, **options)
        self._gradients[key] = gradient   # the most recently used last
        while len(self._gradients) > _KEPT_GRADIENTS:
            self._gradients.pop(next(iter(self._gradients))).close()
        return gradient(self.params, x, t)

    def gradient(self, x: np.ndarray, t: Any) -> dict[str, np.ndarray]:
        """Gradient of ``loss(x, t, train=True)`` by backpropagation: exact up to rounding."""
        return self.model.gradient(self.params, x, t)


class SimpleNet(Net):
    """The book's first example: ``predict(x) = x @ w``, softmax cross-entropy, w of shape (2, 3)."""

    def __init__(self, shape: tuple[int, int] = (2, 3), seed: int | None = None):
        model = Sequential([Affine("w", None)], SoftmaxCrossEntropy())
        super().__init__(model, {"w": np.random.default_rng(seed).standard_normal(shape)})


class MLP(Net):
    """A multi-layer perceptron of widths `sizes`, e.g. ``[784, 100, 50, 10]``.

    With ``batch_norm=True`` and/or ``dropout > 0``, the book's ``MultiLayerNetExtend``
    (see `engine.mlp`); its running statistics start in `state` (means 0, variances 1).
    `weight_init_std` is a std or a name of the book's, ``"he"`` or ``"xavier"`` (see
    `engine.nn._model.init_params`).
    """

    def __init__(self, sizes, activation: str = DEFAULT_ACTIVATION,
                 weight_init_std: float | str = DEFAULT_WEIGHT_STD, seed: int | None = None,
                 dtype=np.float64, *, batch_norm: bool = False, dropout: float = 0.0):
        model = mlp(sizes, activation, batch_norm=batch_norm, dropout=dropout)
        params = init_params(sizes, weight_init_std, seed=seed, dtype=dtype, batch_norm=batch_norm)
        super().__init__(model, params, model.init_state(params, np.zeros((1, sizes[0]))))
        self.sizes = list(sizes)


class ThreeLayerNet(MLP):
    """The book's net: ``x @ w1 + b1 -> sigmoid -> @ w2 + b2 -> softmax``, params w1, b1, w2, b2."""

    def __init__(self, input_size: int = BOOK_SIZES[0], hidden_size: int = BOOK_SIZES[1],
                 output_size: int = BOOK_SIZES[2], weight_init_std: float = DEFAULT_WEIGHT_STD,
                 seed: int | None = None):
        super().__init__([input_size, hidden_size, output_size], DEFAULT_ACTIVATION, weight_init_std,
                         seed)
