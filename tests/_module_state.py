"""A loss that reads a module-level net: the pattern whose state does not travel.

pickle sends `loss_of_module_net` by reference (module and name), so a worker
process imports this module afresh and reads its own, unperturbed `NET_PARAMS`.
"""
import numpy as np

NET_PARAMS = {"w": np.linspace(-1.0, 1.0, 12).reshape(3, 4)}


def loss_of_module_net(_):
    return float(np.sum(np.sin(NET_PARAMS["w"])))


# The case: x is this module's array, `f` ignores its argument and reads the
# array by name, and the last entry's derivative is 0 (an unused parameter), so a check
# of that one entry alone would pass while the workers' gradient is all zeros.
UNUSED_LAST = np.arange(1.0, 6.0)


def loss_ignoring_last(_):
    return float((UNUSED_LAST[:4] ** 2).sum())
