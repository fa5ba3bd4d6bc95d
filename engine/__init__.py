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
from .data import Dataset, DataError, load_embedded_mnist, read_mnist_csv, write_mnist_csv
from .errors import (NumericalFallbackWarning, PayloadError, StateNotShippedError,
                     StepSizeWarning, WorkerError, WorkerLostError)
from .execution import Execution
from .gradcheck import GradientDifference, gradient_check
from .gradient import Failure, Gradient, Jacobian, Plan, plan_chunks
from .nets import MLP, SimpleNet, ThreeLayerNet
from .parallel import jacobian, parallel_numerical_gradient
from .serial import numerical_gradient

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
