"""numgrad-engine: exact numerical gradients, in parallel.

The teaching text's finite differences (every weight nudged by +h and -h, the loss
evaluated twice) computed by many workers, with bit-for-bit the serial numbers.

Layers, lowest first: data (`engine.data`) and the layered model (`engine.model`,
`engine.layers`, `engine.functions`); the gradient engine (`engine.space`: what is
perturbed; `engine.evaluators` / `engine.batched`: how a chunk is evaluated;
`engine.backends`: where chunks run; `engine.parallel`: the public core); the book's
nets (`engine.nets`); the trainer and the command lines (`engine.training`,
`engine.train`).
"""
from importlib import import_module
from typing import TYPE_CHECKING

from .errors import (NumericalFallbackWarning, PayloadError, StateNotShippedError,
                     StepSizeWarning, WorkerError, WorkerLostError)
from .execution import Execution
from .gradient import Failure, Gradient, Jacobian, Plan, plan_chunks
from .nets import MLP, SimpleNet, ThreeLayerNet
from .parallel import jacobian, parallel_numerical_gradient
from .serial import numerical_gradient

# engine.data and engine.gradcheck are also commands (python -m engine.data): imported here
# eagerly, runpy would find them already in sys.modules and warn. Their names load on use.
_LAZY = {"Dataset": "data", "DataError": "data", "load_embedded_mnist": "data",
         "read_mnist_csv": "data", "write_mnist_csv": "data",
         "gradient_check": "gradcheck", "GradientDifference": "gradcheck"}
if TYPE_CHECKING:   # for type checkers and editors, which do not run __getattr__
    from .data import Dataset, DataError, load_embedded_mnist, read_mnist_csv, write_mnist_csv
    from .gradcheck import GradientDifference, gradient_check

__all__ = [
    # gradients
    "numerical_gradient",
    "parallel_numerical_gradient",
    "Gradient",
    "jacobian",
    "Jacobian",
    "Execution",
    "Plan",
    "Failure",
    "plan_chunks",
    # gradient check
    "gradient_check",
    "GradientDifference",
    # nets
    "SimpleNet",
    "ThreeLayerNet",
    "MLP",
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


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value   # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
