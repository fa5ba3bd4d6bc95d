"""numgrad-engine: exact numerical gradients, in parallel.

The teaching text's finite differences (every weight nudged by +h and -h, the loss
evaluated twice) computed by many workers, with bit-for-bit the serial numbers.
"""
from .errors import PayloadError, StateNotShippedError, WorkerLostError
from .parallel import parallel_numerical_gradient, plan_chunks
from .serial import numerical_gradient

__all__ = [
    # gradients
    "numerical_gradient",
    "parallel_numerical_gradient",
    "plan_chunks",
    # errors
    "PayloadError",
    "StateNotShippedError",
    "WorkerLostError",
]
