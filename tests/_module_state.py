"""A loss that reads a module-level net: the pattern whose state does not travel.

pickle sends `loss_of_module_net` by reference (module and name), so a worker
process imports this module afresh and reads its own, unperturbed `NET_PARAMS`.
"""
import numpy as np

NET_PARAMS = {"w": np.linspace(-1.0, 1.0, 12).reshape(3, 4)}


def loss_of_module_net(_):
    return float(np.sum(np.sin(NET_PARAMS["w"])))
