"""numgrad-engine: exact numerical gradients, in parallel.

The teaching text's finite differences (every weight nudged by +h and -h, the loss
evaluated twice) computed by many workers, with bit-for-bit the serial numbers.

What a user imports is this package's ``__all__``; the modules with a leading underscore
are internal. Layers, lowest first: data (`_data`) and the layered model (`_functions`,
`_layers`, `_model`); the gradient engine (`_space`: what is perturbed; `_evaluators` /
`_batched`: how a chunk is evaluated; `_backends`: where chunks run; `_planning`: whether
the workers are worth it, and the chunks; `_gradient`: the resident gradient object;
`_parallel`, `_serial`: the one-shot calls); the book's nets (`_nets`); the gradient check
and the trainer (`_gradcheck`, `_training`); the command lines (`engine.cli`).
"""
from .data._data import DataError, Dataset, load_embedded_mnist, read_mnist_csv, write_mnist_csv
from ._errors import (NumericalFallbackWarning, PayloadError, StateNotShippedError,
                      StepSizeWarning, WorkerError, WorkerLostError)
from .run._execution import Execution
from .train._gradcheck import GradientDifference, format_table, gradient_check
from .derivatives._failures import Failure
from .derivatives._gradient import Gradient
from .derivatives._sparse import Jacobian
from .fd._grouping import group_columns
from .nn._layers import Affine, Layer, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from .nn._conv import Convolution, Pooling, Reshape
from .nn._regularize import BatchNormalization, Dropout
from .nn._model import ModelLoss, Sequential, mlp
from .book._nets import MLP, SimpleNet, ThreeLayerNet
from .book._convnet import SimpleConvNet
from .derivatives._parallel import jacobian, parallel_numerical_gradient
from .run._planning import Plan
from .derivatives._serial import numerical_gradient
from .train._training import TrainConfig, Trainer, TrainingState

__all__ = [
    # gradients
    "numerical_gradient",
    "parallel_numerical_gradient",
    "Gradient",
    "jacobian",
    "Jacobian",
    "group_columns",
    "Execution",
    "Plan",
    "Failure",
    # gradient check
    "gradient_check",
    "GradientDifference",
    "format_table",
    # the book's nets
    "SimpleNet",
    "ThreeLayerNet",
    "MLP",
    "SimpleConvNet",
    # layered models
    "Sequential",
    "mlp",
    "ModelLoss",
    "Layer",
    "Affine",
    "Sigmoid",
    "ReLU",
    "Tanh",
    "Convolution",
    "Pooling",
    "Reshape",
    "BatchNormalization",
    "Dropout",
    "SoftmaxCrossEntropy",
    # training
    "Trainer",
    "TrainConfig",
    "TrainingState",
    # data
    "Dataset",
    "DataError",
    "load_embedded_mnist",
    "read_mnist_csv",
    "write_mnist_csv",
    # errors
    "PayloadError",
    "StateNotShippedError",
    "WorkerError",
    "WorkerLostError",
    # warnings
    "NumericalFallbackWarning",
    "StepSizeWarning",
]
