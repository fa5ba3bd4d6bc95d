"""Measure the error of each difference scheme against backprop for a range of steps h.

The teaching text's 784-100-10 net (seed 0), one real MNIST image (the embedded train
split's first), parameters in float64 and in float32. For every scheme, dtype and h,
the relative error ``max|g_num - g_bp| / max(max|g_num|, max|g_bp|)`` of each parameter
array is measured and the worst array is kept. Plots error against h (log-log) and
prints the minimum of each curve and the issue's goal points. A second panel does the
same for a smooth black box, ``exp(a) sin(b) log(c)`` at (0.5, 1.2, 3), where the exact
gradient is known: the three schemes, the complex step, the second-order one-sided
difference at a bound, and `gradient_with_error` (its own steps: a level, not a curve).

    python docs/error_vs_h.py                  # writes docs/error_vs_h.png, ~6 s
    python docs/error_vs_h.py --loop-check     # also the goal points with the loop evaluator
    python docs/error_vs_h.py --survey         # also a grid of nets: the CLI's tolerances
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from engine import (MLP, ThreeLayerNet, gradient_check, gradient_with_error, load_embedded_mnist,
                    parallel_numerical_gradient)

SCHEMES = ("forward", "central", "central4")
DTYPES = ("float64", "float32")
GOALS = (("central", 1e-4, 1e-8), ("central4", 3e-3, 1e-10))   # scheme, h, relative error
FLOAT32_ADVICE = (("central", 1e-4), ("central", 2e-3), ("central4", 1e-2))   # scheme, h
SURVEY_NETS = ([784, 100, 10], [784, 100, 50, 10], [784, 50, 50, 50, 10])
SURVEY_CHECKS = (("float64", "central", 1e-4), ("float64", "central4", 1e-4),
                 ("float64", "central4", 3e-3), ("float64", "forward", 1e-4),
                 ("float32", "central", 1e-4), ("float32", "central", 2e-3),
                 ("float32", "central4", 1e-2))
STYLE = {"forward": "tab:red", "central": "tab:blue", "central4": "tab:green",
         "complex": "tab:purple", "one-sided (bound)": "tab:orange"}
BLACKBOX_X = (0.5, 1.2, 3.0)


def blackbox(v):
    """exp(a) sin(b) log(c): smooth, with every derivative known."""
    return float(np.exp(v[0]) * np.sin(v[1]) * np.log(v[2]))


def blackbox_complex(v):
    return np.exp(v[0]) * np.sin(v[1]) * np.log(v[2])


def blackbox_gradient(v):
    e, s, c, l_ = np.exp(v[0]), np.sin(v[1]), np.cos(v[1]), np.log(v[2])
    return np.array([e * s * l_, e * c * l_, e * s / v[2]])


def make_net(dtype: str):
    """The 784-100-10 net, seed 0, parameters in `dtype`."""
    if dtype == "float64":
        return ThreeLayerNet(seed=0)
    return MLP([784, 100, 10], dtype=np.float32, seed=0)


def worst_relative(net, x, t, scheme: str, h: float, evaluator: str = "batched",
                   workers: int = 1) -> tuple[float, str]:
    """The largest relative error over the parameter arrays, and that array's name."""
    report = gradient_check(net, x, t, scheme=scheme, h=h, workers=workers, evaluator=evaluator)
    name = max(report, key=lambda k: report[k].relative)
    return report[name].relative, name


def _worst_or_one(net, x, t, scheme: str, h: float) -> float:
    """The worst relative error; 1 where x_i + h rounds back to x_i (the engine refuses it)."""
    try:
        return worst_relative(net, x, t, scheme, h)[0]
    except ValueError as error:
        if "rounds back" not in str(error):
            raise
        return 1.0


def sweep(steps: np.ndarray, x, t) -> dict[tuple[str, str], np.ndarray]:
    """Worst relative error for every (scheme, dtype), one value per step."""
    curves = {}
    for dtype in DTYPES:
        net = make_net(dtype)
        for scheme in SCHEMES:
            curves[scheme, dtype] = np.array([_worst_or_one(net, x, t, scheme, h)
                                              for h in steps])
    return curves


def blackbox_sweep(steps: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Worst relative error over the entries of the black box, per scheme and step; and
    `gradient_with_error`'s (which picks its own steps)."""
    x = np.array(BLACKBOX_X)
    truth = blackbox_gradient(x)
    variants = {"forward": dict(scheme="forward"), "central": dict(scheme="central"),
                "central4": dict(scheme="central4"),
                "complex": dict(scheme="complex", f=blackbox_complex),
                "one-sided (bound)": dict(scheme="central", bounds=(x.copy(), np.inf))}
    curves = {}
    for name, options in variants.items():
        options = dict(options)
        f = options.pop("f", blackbox)
        errors = []
        for h in steps:
            try:
                got = parallel_numerical_gradient(f, x.copy(), h=h, workers=1,
                                                  dispatch="in-process", **options)
                errors.append(float(np.max(np.abs(got - truth) / np.abs(truth))))
            except ValueError:   # x_i + h rounds back to x_i
                errors.append(1.0)
        curves[name] = np.array(errors)
    value, _ = gradient_with_error(blackbox, x.copy(), workers=1, dispatch="in-process")
    return curves, float(np.max(np.abs(value - truth) / np.abs(truth)))


def plot(steps: np.ndarray, curves: dict, out: Path, box: tuple | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    for (scheme, dtype), errors in curves.items():
        ax.loglog(steps, np.maximum(errors, 1e-17), marker="o" if dtype == "float64" else "s",
                  markersize=3.5, color=STYLE[scheme], alpha=0.85,
                  linestyle="-" if dtype == "float64" else "--",
                  label=f"{scheme}, {dtype} parameters")
    for scheme, h, goal in GOALS:
        ax.axhline(goal, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"goal: {scheme}, h={h:g}", (h, goal), xytext=(4, 3),
                    textcoords="offset points", fontsize=7, color="grey")
    ax.set_xlabel("step h")
    ax.set_ylabel("relative error vs backprop, worst array\nmax|num - bp| / max(max|num|, max|bp|)")
    ax.set_title("Numerical gradient error vs step size\n"
                 "784-100-10 net (seed 0), one MNIST image, batched evaluator")
    ax.grid(True, which="major", alpha=0.4)
    ax.legend(fontsize=8, loc="lower left")
    if box is not None:
        box_curves, richardson = box
        for name, errors in box_curves.items():
            right.loglog(steps, np.maximum(errors, 1e-17), marker="o", markersize=3.5,
                         color=STYLE[name], alpha=0.85, label=name)
        right.axhline(max(richardson, 1e-17), color="black", linestyle="--", linewidth=1.2,
                      label=f"gradient_with_error (own steps): {richardson:.1e}")
        right.set_xlabel("step h")
        right.set_ylabel("relative error vs the exact gradient, worst entry")
        right.set_title("A smooth black box: exp(a) sin(b) log(c) at (0.5, 1.2, 3)\n"
                        "errors of exactly 0 drawn at 1e-17")
        right.grid(True, which="major", alpha=0.4)
        right.legend(fontsize=7, loc="lower right")
    else:
        right.set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def minima_table(steps: np.ndarray, curves: dict) -> str:
    lines = [f"{'scheme':<10}{'dtype':<9}{'min error':>11}{'at h':>10}"]
    for (scheme, dtype), errors in curves.items():
        best = int(np.argmin(errors))
        lines.append(f"{scheme:<10}{dtype:<9}{errors[best]:>11.2e}{steps[best]:>10.2e}")
    return "\n".join(lines)


def goals_table(x, t, evaluator: str, workers: int) -> str:
    net = make_net("float64")
    lines = [f"goals, float64, evaluator={evaluator}, workers={workers}:"]
    for scheme, h, goal in GOALS:
        start = time.perf_counter()
        error, name = worst_relative(net, x, t, scheme, h, evaluator, workers)
        verdict = "met" if error <= goal else "NOT MET"
        lines.append(f"  {scheme:<9} h={h:<7g} worst {error:.2e} ({name}), goal <= {goal:g}: "
                     f"{verdict}  [{time.perf_counter() - start:.1f} s]")
    return "\n".join(lines)


def float32_table(x, t) -> str:
    net = make_net("float32")
    lines = ["float32 parameters, evaluator=batched:"]
    for scheme, h in FLOAT32_ADVICE:
        error, name = worst_relative(net, x, t, scheme, h)
        lines.append(f"  {scheme:<9} h={h:<7g} worst {error:.2e} ({name})")
    return "\n".join(lines)


def survey(train) -> str:
    """Worst relative error of a correct backprop over a grid of nets (the CLI's defaults)."""
    head = "".join(f"{dtype[-2:]} {scheme} {h:g}".rjust(19) for dtype, scheme, h in SURVEY_CHECKS)
    lines = [f"{'net':<17}{'act':<8}{'B':>3}{'std':>6}{head}"]
    worst_seen = np.zeros(len(SURVEY_CHECKS))
    for sizes in SURVEY_NETS:
        for activation in ("sigmoid", "tanh"):
            for batch in (1, 10):
                for std in (0.01, 0.1):
                    x, t = train.images[:batch], train.labels[:batch]
                    cells = []
                    for k, (dtype, scheme, h) in enumerate(SURVEY_CHECKS):
                        net = MLP(sizes, activation, std, seed=0, dtype=np.dtype(dtype))
                        error, name = worst_relative(net, x, t, scheme, h)
                        worst_seen[k] = max(worst_seen[k], error)
                        cells.append(f"{error:.1e} ({name})".rjust(19))
                    net_name = "-".join(map(str, sizes))
                    lines.append(f"{net_name:<17}{activation:<8}{batch:>3}{std:>6g}"
                                 + "".join(cells))
    lines.append(f"{'worst':<34}" + "".join(f"{e:.1e}".rjust(19) for e in worst_seen))
    return "\n".join(lines)


def blackbox_table(steps: np.ndarray, box: tuple) -> str:
    curves, richardson = box
    lines = ["black box exp(a) sin(b) log(c) at (0.5, 1.2, 3), worst entry:",
             f"{'scheme':<19}{'min error':>11}{'at h':>10}"]
    for name, errors in curves.items():
        best = int(np.argmin(errors))
        lines.append(f"{name:<19}{errors[best]:>11.2e}{steps[best]:>10.2e}")
    lines.append(f"{'gradient_with_error':<19}{richardson:>11.2e}{'(own)':>10}")
    return "\n".join(lines)


def auto_table(steps: np.ndarray, curves: dict, x, t) -> str:
    """h="auto" (a relative step per entry, divided by the stored step) against the best fixed h."""
    lines = ["h='auto' vs the best fixed h on the grid (worst array):",
             f"{'dtype':8} {'scheme':9} {'auto':>9} {'best fixed':>11} {'at h':>9} {'ratio':>6}"]
    for dtype in DTYPES:
        net = make_net(dtype)
        for scheme in SCHEMES:
            auto = worst_relative(net, x, t, scheme, "auto")[0]
            curve = curves[scheme, dtype]
            best = int(np.argmin(curve))
            lines.append(f"{dtype:8} {scheme:9} {auto:9.2e} {curve[best]:11.2e} {steps[best]:9.2e} "
                         f"{auto / curve[best]:5.1f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".png"),
                        help="where to write the plot (default: docs/error_vs_h.png)")
    parser.add_argument("--per-decade", type=int, default=4,
                        help="steps per decade between 1e-1 and 1e-10 (default: 4, 37 steps)")
    parser.add_argument("--loop-check", action="store_true",
                        help="also measure the goal points with the loop evaluator, 2 workers "
                             "(about a minute)")
    parser.add_argument("--survey", action="store_true",
                        help="also the worst relative error of a correct backprop over 3- to "
                             "5-layer sigmoid/tanh nets (the CLI's default tolerances; ~2 minutes)")
    args = parser.parse_args(argv)
    if args.per_decade < 1:
        parser.error(f"--per-decade must be >= 1, got {args.per_decade}")

    train, _ = load_embedded_mnist()
    x, t = train.images[0], train.labels[0]
    steps = np.logspace(-1, -10, 9 * args.per_decade + 1)
    start = time.perf_counter()
    curves = sweep(steps, x, t)
    print(f"{len(steps)} steps x {len(curves)} curves in {time.perf_counter() - start:.1f} s")
    print(minima_table(steps, curves))
    print(goals_table(x, t, "batched", 1))
    print(float32_table(x, t))
    print(auto_table(steps, curves, x, t))
    box = blackbox_sweep(steps)
    print(blackbox_table(steps, box))
    if args.loop_check:
        print(goals_table(x, t, "loop", 2))
    if args.survey:
        print(survey(train))
    plot(steps, curves, args.out, box)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
