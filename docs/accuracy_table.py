"""Error and evaluations per entry: the engine's schemes against numdifftools and SciPy.

Gradients of smooth scalar functions (SciPy's dense test functions of
`scipy/optimize/tests/test__numdiff.py`, each output taken as a scalar function, and
exp/sin/log products) by: the engine's central differences (``h="auto"``), its complex
step (``h="auto"``), `engine.gradient_with_error` (Richardson, default options);
numdifftools' default `Gradient` (``nd.Derivative`` for one entry, with
``full_output=True`` for its error estimate); `scipy.differentiate.derivative` (default
options, one entry at a time). For each: the worst relative error over the entries, the
mean evaluations of `f` per entry, and, where a method estimates its error, whether the
estimate was at least the true error for every entry.

    python docs/accuracy_table.py          # prints the Markdown table of docs/accuracy.md
"""
from __future__ import annotations

import warnings

import numpy as np

from engine import gradient_with_error, parallel_numerical_gradient


def vector_scalar(x):
    return np.sin(x[0] * x[1]) * np.log(x[0])


def vector_scalar_grad(x):
    return np.array([x[1] * np.cos(x[0] * x[1]) * np.log(x[0]) + np.sin(x[0] * x[1]) / x[0],
                     x[0] * np.cos(x[0] * x[1]) * np.log(x[0])])


def vector_vector(x):
    return np.array([x[0] * np.sin(x[1]), x[1] * np.cos(x[0]), x[0] ** 3 * x[1] ** -0.5])


def vector_vector_jac(x):
    return np.array([
        [np.sin(x[1]), x[0] * np.cos(x[1])],
        [-x[1] * np.sin(x[0]), np.cos(x[0])],
        [3 * x[0] ** 2 * x[1] ** -0.5, -0.5 * x[0] ** 3 * x[1] ** -1.5]])


def exp_sin_log(v):
    return np.exp(v[0]) * np.sin(v[1]) * np.log(v[2])


def exp_sin_log_grad(v):
    return np.array([exp_sin_log(v), np.exp(v[0]) * np.cos(v[1]) * np.log(v[2]),
                     np.exp(v[0]) * np.sin(v[1]) / v[2]])


def _row(f, i):
    return lambda v: f(v)[i]


CASES = [   # name, f (scalar, of a 1-D array), x, exact gradient
    ("sinh(x) at 1", lambda v: np.sinh(v[0]), [1.0], lambda v: np.cosh(v)),
    ("x0^2 at 1", lambda v: v[0] ** 2, [1.0], lambda v: 2 * v),
    ("tan(x0) at 1", lambda v: np.tan(v[0]), [1.0], lambda v: np.cos(v) ** -2),
    ("sin(x0 x1) log(x0) at (100, -0.5)", vector_scalar, [100.0, -0.5], vector_scalar_grad),
    *[(f"vector_vector[{i}] at (-100, 0.2)", _row(vector_vector, i), [-100.0, 0.2],
       _row(vector_vector_jac, i)) for i in range(3)],
    ("exp(a) sin(b) log(c) at (0.5, 1.2, 3)", exp_sin_log, [0.5, 1.2, 3.0], exp_sin_log_grad),
    ("exp(a) sin(b) log(c) at (-3, 40, 0.2)", exp_sin_log, [-3.0, 40.0, 0.2], exp_sin_log_grad),
]


class Counted:
    """`f` as a float-returning callable that counts its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, v):
        self.calls += 1
        return self.f(v)


def engine_central(f, x):
    g = Counted(lambda v: float(f(v)))
    return parallel_numerical_gradient(g, x.copy(), h="auto", workers=1, dispatch="in-process"), \
        None, g.calls


def engine_complex(f, x):
    g = Counted(f)
    return parallel_numerical_gradient(g, x.copy(), scheme="complex", h="auto", workers=1,
                                       dispatch="in-process"), None, g.calls


def engine_richardson(f, x):
    g = Counted(lambda v: float(f(v)))
    value, error = gradient_with_error(g, x.copy(), workers=1, dispatch="in-process")
    return value, error, g.calls


def numdifftools_default(f, x):
    import numdifftools as nd
    g = Counted(f)
    if x.size == 1:
        result = nd.Derivative(lambda t: g(np.array([t])), full_output=True)(x[0])
    else:
        result = nd.Gradient(g, full_output=True)(x)
    return (np.ravel(result.estimate), np.ravel(result.error_estimate), g.calls)


def scipy_differentiate(f, x):
    from scipy.differentiate import derivative
    values, errors, calls = [], [], 0
    for i in range(x.size):
        def along(t, i=i):
            out = np.empty(np.shape(t))
            for k in np.ndindex(np.shape(t)):
                y = x.copy()
                y[i] = t[k]
                out[k] = f(y)
            return out
        result = derivative(along, x[i])
        values.append(float(result.df))
        errors.append(float(result.error))
        calls += int(result.nfev)
    return np.array(values), np.array(errors), calls


METHODS = [
    ("engine central, h='auto'", engine_central),
    ("engine complex, h='auto'", engine_complex),
    ("engine gradient_with_error", engine_richardson),
    ("numdifftools Gradient/Derivative", numdifftools_default),
    ("scipy.differentiate.derivative", scipy_differentiate),
]


def measure():
    """{(case, method): (worst relative error, evaluations per entry, estimate bounds error)}."""
    results = {}
    for name, f, x, exact in CASES:
        x = np.array(x)
        truth = np.asarray(exact(x), dtype=float).reshape(-1)
        for label, method in METHODS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value, error, calls = method(f, x)
            value = np.asarray(value, dtype=float).reshape(-1)
            relative = np.abs(value - truth) / np.abs(truth)
            bounds = None if error is None else bool(np.all(np.abs(value - truth) <= error))
            results[name, label] = (float(relative.max()), calls / x.size, bounds)
    return results


def table(results) -> str:
    head = "| function | " + " | ".join(label for label, _ in METHODS) + " |"
    lines = [head, "|" + " --- |" * (len(METHODS) + 1)]
    for name, *_ in CASES:
        cells = []
        for label, _ in METHODS:
            error, evaluations, bounds = results[name, label]
            mark = "" if bounds is None else (" ✓" if bounds else " ✗")
            cells.append(f"{error:.1e} ({evaluations:.1f}){mark}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    worst = [max(results[name, label][0] for name, *_ in CASES) for label, _ in METHODS]
    lines.append("| **worst** | " + " | ".join(f"**{w:.1e}**" for w in worst) + " |")
    return "\n".join(lines)


def main() -> int:
    print(table(measure()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
