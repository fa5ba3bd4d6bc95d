"""The teaching text's numerical_gradient, written as the book writes it (np.nditer loop).

Kept in the tests only, as an independent reference for the engine's serial function.
"""
import numpy as np


def book_numerical_gradient(f, x, h=1e-4):
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = float(f(x))
        x[idx] = float(tmp_val) - h
        fxh2 = float(f(x))
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad
