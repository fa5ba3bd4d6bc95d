"""numgrad-engine: exact numerical gradients, in parallel.

The teaching text's finite differences (every weight nudged by +h and -h, the loss
evaluated twice) computed by many workers, with bit-for-bit the serial numbers.

What a user imports is this package's ``__all__``; the modules inside the subpackages
have a leading underscore and are internal. The subpackages, lowest first (an import
never goes up; `tests/test_layering.py` enforces it):

- `fd`: *what* is perturbed (one flat index space over `x`'s arrays), the difference
  schemes, and the loop evaluator that any black-box `f` takes;
- `data`, `nn`: the embedded MNIST digits; the layered model (functions, layers,
  `Sequential`), which the core does not know about;
- `batched`: the batched evaluator for layered models, and the detection of a model's loss;
- `run`: *where* chunks run (execution options, the planner, the worker loop, the pools,
  shared memory, Dask) and the one evaluation entry every place uses (`run._job`);
- `derivatives`: what users hold and call: `Gradient`, `Jacobian` and the kinds built on
  them, the one-shot calls, the per-call state check;
- `book`: the teaching text's nets; `train`: the gradient check and the trainer;
- `cli`: the command lines.
"""
from .data._data import DataError, Dataset, load_embedded_mnist, read_mnist_csv, write_mnist_csv
from ._errors import (NotDeterministicError, NumericalFallbackWarning, PayloadError,
                      StateNotShippedError, StepSizeWarning, WorkerError, WorkerLostError)
from .run._execution import Execution
from .train._gradcheck import GradientDifference, format_table, gradient_check
from .derivatives._failures import Failure
from .derivatives._gradient import Gradient
from .derivatives._sparse import Jacobian
from .derivatives._hessian import Hessian, hessian
from .fd._grouping import group_columns
from .nn._layers import Affine, Layer, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from .nn._conv import Convolution, Pooling, Reshape
from .nn._regularize import BatchNormalization, Dropout
from .nn._model import ModelLoss, Sequential, mlp
from .book._nets import MLP, SimpleNet, ThreeLayerNet
from .book._convnet import SimpleConvNet
from .derivatives._parallel import jacobian, parallel_numerical_gradient
from .derivatives._with_error import GradientWithError, gradient_with_error
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
    "gradient_with_error",
    "GradientWithError",
    "hessian",
    "Hessian",
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
    "NotDeterministicError",
    "WorkerError",
    "WorkerLostError",
    # warnings
    "NumericalFallbackWarning",
    "StepSizeWarning",
]
