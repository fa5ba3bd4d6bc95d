"""Black-box derivatives timed in alternation: our Jacobian against SciPy's, and least_squares.

Issue 12's goals, on `workloads.HeatRod` (a rod's thermometers as a function of its zones'
conductivities, about 1 ms per call):

- ``jacobian``: the (20, 200) Jacobian of 20 readings by 200 conductivities. Ours (a
  resident `engine.Jacobian`, central, h = 1e-4) in this process and on 2 workers
  (``dispatch="parallel"``), against SciPy's ``approx_derivative(method="3-point",
  abs_step=1e-4)`` serial and with ``workers=pool.map`` of a ``multiprocessing`` pool of 2
  kept for the whole run. Checked: ours on 2 workers equals ours serial exactly; SciPy
  agrees entry by entry within `scipy_rtol` (it divides by the step actually stored,
  ``(x+h) - (x-h)``, not ``2h``). Goal: ours >= `GOAL_VS_SCIPY` x SciPy's speed at 2 workers.
- ``least-squares``: ``scipy.optimize.least_squares`` fitting 20 zones to 200 noisy
  readings (10 times x 20 sensors), with ``jac=`` our Jacobian at 1 and 2 workers (central,
  h = 1e-4) and, with the same number of calls as SciPy's, forward with ``h="auto"`` at 2
  workers, against its own ``jac="2-point"``. Checked: every fit ends at the same solution
  as ``"2-point"`` (see `same_fit`).

Every round times every case once, the order rotated by one each round; medians and
ratios come from one run. The machine, its load average before and after, and the share
of CPU other processes used during each call are saved with the times.

    python benchmarks/blackbox.py --rounds 15 --out benchmarks/results/local/blackbox.json
    python benchmarks/blackbox.py --quick --out /tmp/blackbox.json   # every case once, tiny
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.optimize import least_squares
from scipy.optimize._numdiff import approx_derivative   # approx_fprime has no `workers` (1.17)

import engine
from measuring import Interference, describe_machine, run_rounds
from workloads import H, POOL_SIZE, HeatRod, limit_blas_threads

GOAL_VS_SCIPY = 1.2      # ours at 2 workers, times faster than SciPy at 2 workers
FIT_PARAMETER_ATOL = 1e-5   # the fits' own error against the truth is ~0.04
FIT_COST_RTOL = 1e-8        # least_squares' default ftol

SIZES = {
    "full": {"jacobian": dict(zones=200, sensors=20),
             "fit": dict(zones=20, cells_per_zone=10, sensors=20, samples=10)},
    "quick": {"jacobian": dict(zones=12, sensors=4, steps=20),
              "fit": dict(zones=4, cells_per_zone=4, sensors=4, samples=3, steps=30)},
}


@dataclass
class Case:
    """One timed call, its check, and what it measured."""

    name: str
    workers: int
    run: Callable[[], Any]
    times: list = field(default_factory=list)
    others_cpu: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"case": self.name, "workers": self.workers,
                "median_s": statistics.median(self.times), "min_s": min(self.times),
                "max_s": max(self.times), "times_s": self.times,
                "others_cpu": self.others_cpu, **self.info}


# --- the cases -------------------------------------------------------------------------------

def jacobian_cases(rod: HeatRod, pool, close_later: list) -> list[Case]:
    x0 = rod.truth   # nonzero, so that SciPy's stored steps differ from 2h
    serial = engine.Jacobian(rod, h=H, workers=1)
    parallel = engine.Jacobian(rod, h=H, workers=POOL_SIZE, dispatch="parallel")
    close_later += [serial, parallel]
    scipy = lambda workers: approx_derivative(rod, x0, method="3-point", abs_step=H,
                                              workers=workers)
    return [Case("ours, serial", 1, lambda: serial(x0.copy())),
            Case("ours, 2 workers", POOL_SIZE, lambda: parallel(x0.copy())),
            Case("SciPy approx_derivative, serial", 1, lambda: scipy(None)),
            Case("SciPy approx_derivative, pool.map", POOL_SIZE, lambda: scipy(pool.map))]


def scipy_rtol(x0: np.ndarray) -> float:
    """How far SciPy's central differences may lie from ours, relative, entry by entry.

    Both evaluate `f` at the same ``x_i + h`` and ``x_i - h``, so the numerators are the same
    bits; SciPy divides by ``(x_i + h) - (x_i - h)``, which is ``2h`` within one spacing of
    ``|x_i| + h`` (the two roundings), and both divisions round once more.
    """
    return float(np.spacing(np.max(np.abs(x0)) + H) / (2 * H) + 4 * np.finfo(np.float64).eps)


def check_jacobians(cases: list[Case], rod: HeatRod) -> None:
    """Ours equal to ours serial exactly; SciPy's within `scipy_rtol` of ours, entry by entry."""
    results = {case.name: case.run() for case in cases}
    rtol = scipy_rtol(rod.truth)
    reference = results["ours, serial"]
    if reference.shape != (rod.samples * rod.sensors, rod.size):
        raise AssertionError(f"our Jacobian has shape {reference.shape}")
    for case in cases:
        got = results[case.name]
        if case.name.startswith("ours"):
            ok = bool(np.array_equal(got, reference))
            case.info["check"] = "np.array_equal to ours, serial"
        else:
            ok = bool(np.all(np.abs(got - reference) <= rtol * np.abs(reference)))
            worst = np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-300))
            case.info["check"] = f"within rtol {rtol:.3g} of ours, serial, per entry"
            case.info["max_relative_difference"] = float(worst)
        case.info["checked"] = ok
        if not ok:
            raise AssertionError(f"{case.name}: Jacobian fails its check ({case.info['check']})")


def fit_cases(rod: HeatRod, close_later: list) -> list[Case]:
    n = rod.size
    ours = {"ours, central h=1e-4, 1 worker": (dict(workers=1), 2 * n + 1),
            "ours, central h=1e-4, 2 workers": (dict(workers=POOL_SIZE, dispatch="parallel"),
                                                2 * n + 1),
            "ours, forward h='auto', 2 workers": (dict(workers=POOL_SIZE, dispatch="parallel",
                                                      scheme="forward", h="auto"), n + 1)}
    cases = [_fit_case("SciPy jac='2-point'", 1, rod, "2-point", n)]
    for name, (options, calls) in ours.items():
        options.setdefault("h", H)
        jacobian = engine.Jacobian(rod.residuals, **options)
        close_later.append(jacobian)
        cases.append(_fit_case(name, options["workers"], rod, jacobian, calls))
    return cases


def _fit_case(name: str, workers: int, rod: HeatRod, jac, calls_per_jacobian: int) -> Case:
    """A least_squares fit from `rod.start`; `f_calls` counts the solver's calls of `f` plus
    `calls_per_jacobian` per Jacobian (SciPy's `nfev` leaves the Jacobian's calls out)."""
    info: dict = {}

    def run():
        fit = least_squares(rod.residuals, rod.start, jac=jac)
        info.update(nfev=int(fit.nfev), njev=int(fit.njev), status=int(fit.status),
                    cost=float(fit.cost), x=fit.x.tolist(),
                    f_calls=int(fit.nfev + fit.njev * calls_per_jacobian),
                    error_vs_truth=float(np.max(np.abs(fit.x - rod.truth))))
        return fit

    return Case(name, workers, run, info=info)


def same_fit(got, want) -> tuple[bool, float, float]:
    """Whether two least_squares results are the same solution: every parameter within
    FIT_PARAMETER_ATOL, the cost within FIT_COST_RTOL relative (its ftol); and the two gaps."""
    gap = float(np.max(np.abs(got.x - want.x)))
    cost_gap = abs(got.cost - want.cost) / want.cost
    return gap <= FIT_PARAMETER_ATOL and cost_gap <= FIT_COST_RTOL and got.success, gap, cost_gap


def check_fits(cases: list[Case]) -> None:
    fits = {case.name: case.run() for case in cases}
    reference = fits[cases[0].name]
    if not reference.success:
        raise AssertionError(f"least_squares with '2-point' failed: {reference.message}")
    for case in cases:
        ok, gap, cost_gap = same_fit(fits[case.name], reference)
        case.info.update(checked=ok, max_parameter_gap=gap, relative_cost_gap=cost_gap,
                         check=f"parameters within {FIT_PARAMETER_ATOL:g} and cost within "
                               f"rtol {FIT_COST_RTOL:g} of jac='2-point'")
        if not ok:
            raise AssertionError(f"{case.name}: a different solution from '2-point' "
                                 f"(parameters {gap:.3g} apart, cost {cost_gap:.3g} relative)")


# --- timing ----------------------------------------------------------------------------------

def run_groups(groups: dict[str, list[Case]], rounds: int) -> None:
    """`rounds` rounds; each times every case once, each group's order rotated by one per round."""
    def time_case(case: Case) -> None:
        with Interference() as meter:
            start = time.perf_counter()
            case.run()
            case.times.append(time.perf_counter() - start)
        case.others_cpu.append(meter.share)

    def show() -> str:
        return " | ".join(" ".join(f"{c.times[-1]:.3f}" for c in cases) for cases in groups.values())

    run_rounds(groups, rounds, time_case, label="black box (s, cases in listed order)", show=show)


def ratios(cases: list[Case], slower: str, faster: str) -> dict:
    """How many times faster `faster` is than `slower`: ratio of medians, median of per-round ratios."""
    a, b = (next(c for c in cases if c.name == name) for name in (slower, faster))
    per_round = [x / y for x, y in zip(a.times, b.times)]
    return {"slower": slower, "faster": faster,
            "ratio_of_medians": statistics.median(a.times) / statistics.median(b.times),
            "median_of_round_ratios": statistics.median(per_round)}


def summarise(groups: dict[str, list[Case]]) -> dict:
    jac, fit = groups["jacobian"], groups["least-squares"]
    goal = ratios(jac, "SciPy approx_derivative, pool.map", "ours, 2 workers")
    goal.update(goal=f"ours >= {GOAL_VS_SCIPY}x faster than SciPy at 2 workers",
                met=goal["ratio_of_medians"] >= GOAL_VS_SCIPY)
    return {
        "jacobian": {"goal": goal,
                     "ours 2 workers vs ours serial": ratios(jac, "ours, serial",
                                                             "ours, 2 workers"),
                     "SciPy pool vs SciPy serial": ratios(jac, "SciPy approx_derivative, serial",
                                                          "SciPy approx_derivative, pool.map")},
        "least-squares": {c.name: ratios(fit, "SciPy jac='2-point'", c.name) for c in fit[1:]},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--rounds", type=int, default=15, help="timed calls of every case")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, one round: checks that every case runs (seconds)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds, sizes = (1, SIZES["quick"]) if args.quick else (args.rounds, SIZES["full"])
    load_before = os.getloadavg()
    close_later: list = []
    context = multiprocessing.get_context("spawn")
    try:
        with context.Pool(POOL_SIZE, initializer=limit_blas_threads) as pool:
            pool.map(abs, range(POOL_SIZE * 4))   # start the workers before any timing
            rod = HeatRod(**sizes["jacobian"])
            groups = {"jacobian": jacobian_cases(rod, pool, close_later),
                      "least-squares": fit_cases(HeatRod(**sizes["fit"]), close_later)}
            check_jacobians(groups["jacobian"], rod)   # also the untimed first call of each
            check_fits(groups["least-squares"])
            run_groups(groups, rounds)
    finally:
        for jacobian in close_later:
            jacobian.close()
    data = {"blackbox": 1, "quick": args.quick, "rounds": rounds, "sizes": sizes,
            "machine": describe_machine(), "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "results": {name: [c.summary() for c in cases] for name, cases in groups.items()},
            "ratios": summarise(groups)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    print_table(data)
    print(f"wrote {args.out}")
    return 0


def print_table(data: dict) -> None:
    for group, rows in data["results"].items():
        print(f"\n{group}")
        for row in rows:
            extra = (f", nfev {row['nfev']}, njev {row['njev']}, f calls {row['f_calls']}"
                     if "nfev" in row else "")
            print(f"  {row['case']}: median {row['median_s'] * 1e3:.1f} ms{extra}")
    goal = data["ratios"]["jacobian"]["goal"]
    print(f"\ngoal ({goal['goal']}): {goal['ratio_of_medians']:.2f}x "
          f"(per-round median {goal['median_of_round_ratios']:.2f}x), "
          f"{'met' if goal['met'] else 'not met'}")
    print(f"load average before {data['load_average_before']}, "
          f"after {data['load_average_after']}")


if __name__ == "__main__":
    sys.exit(main())
