"""How close the default SimpleConvNet's numerical filter gradients come to backprop, and why.

The default chapter-7 net (`engine.SimpleConvNet(seed=0)`: 1x28x28, 30 filters of 5x5,
std 0.01) on the first embedded MNIST image. For each step h, per array (``w1``, ``b1``
and the others for reference): the normwise error ``||num - bp|| / ||bp||`` over all
entries and over the entries `gradient_check` does not call kinks, its ``relative``
(max-based), its kink count, and a direct count of the entries whose steps +-h change
the forward pass's pattern: a sign of a convolution output (the first ReLU), an argmax
of a 2x2 pooling window, or a sign of a hidden unit (the second ReLU). Prints JSON.

    python benchmarks/convnet_accuracy.py --h 1e-4 1e-5
"""
from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from engine import SimpleConvNet, gradient_check, load_embedded_mnist

CONV_RELU, POOL, HIDDEN_RELU = 2, 3, 6   # the layers whose inputs decide the pattern


def pattern(net, x):
    """The piecewise-linear pieces the forward pass is on: (conv signs, pool argmaxes, hidden signs)."""
    trace = net.model.trace(net.params, x)
    pooled = trace[POOL]
    b, c, height, width = pooled.shape
    windows = pooled.reshape(b, c, height // 2, 2, width // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return (trace[CONV_RELU] > 0, windows.reshape(b, c, height // 2, width // 2, 4).argmax(-1),
            trace[HIDDEN_RELU] > 0)


def crossing_entries(net, x, name, h):
    """Flat indices of `name`'s entries whose step of +h or -h changes the pattern."""
    array, base = net.params[name], pattern(net, x)
    crossing = []
    for flat in range(array.size):
        index = np.unravel_index(flat, array.shape)
        old = array[index]
        changed = False
        for step in (h, -h):
            array[index] = old + step
            changed |= any(not np.array_equal(a, b) for a, b in zip(pattern(net, x), base))
        array[index] = old
        if changed:
            crossing.append(flat)
    return np.asarray(crossing, dtype=np.int64)


def normwise(numerical, exact, left_out=()):
    keep = np.ones(exact.size, bool)
    keep[np.asarray(left_out, dtype=np.int64)] = False
    diff = (numerical - exact).reshape(-1)[keep]
    return float(np.linalg.norm(diff) / np.linalg.norm(exact))


def measure(net, x, t, h):
    numerical = net.numerical_gradient(x, t, h=h, workers=1)
    exact = net.gradient(x, t)
    report = gradient_check(net, x, t, h=h)
    rows = {}
    for name in net.params:
        kinks = [np.ravel_multi_index(k, exact[name].shape) for k in report[name].kinks]
        row = {"normwise_all": normwise(numerical[name], exact[name]),
               "normwise_without_kinks": normwise(numerical[name], exact[name], kinks),
               "gradient_check_relative": report[name].relative,
               "gradient_check_kinks": len(kinks)}
        if name in ("w1", "b1"):
            crossing = crossing_entries(net, x, name, h)
            row["entries"] = int(exact[name].size)
            row["entries_crossing_a_kink"] = int(crossing.size)
            row["normwise_without_crossing"] = normwise(numerical[name], exact[name], crossing)
        rows[name] = row
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=float, nargs="+", default=[1e-4, 1e-5])
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    train, _ = load_embedded_mnist()
    net = SimpleConvNet(seed=0)
    x, t = train.images[:1], train.labels[:1]
    print(json.dumps({f"h={h:g}": measure(net, x, t, h) for h in args.h}, indent=1))


if __name__ == "__main__":
    main()
