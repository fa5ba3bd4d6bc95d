"""Sparse Jacobians: how many evaluations of `f` the column groups cost, and the wall time.

- ``evaluations``: the calls of `f` one sparse Jacobian makes, counted by a wrapper around
  `f` in this process, ours (``engine.Jacobian(f, sparsity=P)``, forward and central) against
  SciPy's ``approx_derivative(sparsity=P)`` ("2-point", "3-point", its default grouping), on
  a tridiagonal pattern of n = 10,000 and the 5-point stencil on a 100 x 100 grid; with the
  number of groups each side found and the time `engine.group_columns` took.
- ``wall``: the stencil's Jacobian with a residual of about 2 ms (`HeatedPlate`), timed in
  alternation, round by round: ours serial and on 2 workers (a resident `engine.Jacobian`,
  ``dispatch="parallel"``) against SciPy serial and with ``workers=pool.map`` of a
  ``multiprocessing`` pool of 2 kept for the whole run; central differences, h = 1e-6 on
  both sides. Checked before timing: ours on 2 workers equal to ours serial exactly; SciPy
  within `SCIPY_RTOL` of ours, entry by entry, on the same pattern.

    python benchmarks/sparse.py --rounds 11 --out benchmarks/results/local/sparse.json
    python benchmarks/sparse.py --quick --out /tmp/sparse.json   # small grid, one round
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
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.optimize._numdiff import approx_derivative, group_columns as scipy_group_columns

import engine
from measuring import Interference, describe_machine
from workloads import POOL_SIZE, limit_blas_threads

STEP = 1e-6            # both sides' absolute step in the timed comparison
SCIPY_RTOL = 1e-6      # SciPy divides by the stored step (x+h) - (x-h), ours by 2h: see `check_wall`
SIZES = {"full": dict(n=10_000, k=100, inner=20), "quick": dict(n=300, k=12, inner=4)}


def tridiagonal(n: int) -> sp.csr_array:
    ones = np.ones(n)
    return sp.csr_array(sp.diags_array([ones[1:], ones, ones[1:]], offsets=[-1, 0, 1]))


def stencil(k: int) -> sp.csr_array:
    """The 5-point Laplacian's pattern on a k x k grid; unknown (a, b) is column a*k + b."""
    chain = tridiagonal(k)
    return sp.csr_array((sp.kron(sp.eye_array(k), chain) + sp.kron(chain, sp.eye_array(k))) != 0,
                        dtype=float)


class HeatedPlate:
    """The heat balance of a k x k plate whose conductivity depends on the temperature.

    Residual of cell (a, b): ``c(u_ab) * (4 u_ab - u_(a-1)b - u_(a+1)b - u_a(b-1) - u_a(b+1))
    - q``, zero beyond the edges; the conductivity ``c(u) = 1 + w`` with ``w`` solving
    ``w + 0.3 sin(w) = u`` by `inner` Newton steps per cell (the costly part: ~2 ms per call
    for the 100 x 100 plate at ``inner=20`` here). Its Jacobian has the 5-point pattern.
    """

    def __init__(self, k: int, inner: int):
        self.k, self.inner = k, inner
        self.x0 = 0.5 + 0.1 * np.sin(np.arange(k * k) * 0.37)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        grid = u.reshape(self.k, self.k)
        flux = 4 * grid
        flux[1:] -= grid[:-1]
        flux[:-1] -= grid[1:]
        flux[:, 1:] -= grid[:, :-1]
        flux[:, :-1] -= grid[:, 1:]
        w = grid.copy()
        for _ in range(self.inner):
            w -= (w + 0.3 * np.sin(w) - grid) / (1 + 0.3 * np.cos(w))
        return ((1 + w) * flux - 0.01).reshape(-1)


class Counted:
    """`f`, counting its calls."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x):
        self.calls += 1
        return self.f(x)


def linear(pattern: sp.csr_array):
    """A residual with the pattern's structure and a negligible cost: ``r = P (x + x**2)``."""
    return lambda x: pattern @ (x + x * x)


# --- evaluations ------------------------------------------------------------------------------

def evaluations(sizes: dict) -> list[dict]:
    rows = []
    for name, pattern in (("tridiagonal n=%d" % sizes["n"], tridiagonal(sizes["n"])),
                          ("5-point stencil %dx%d" % (sizes["k"], sizes["k"]), stencil(sizes["k"]))):
        started = time.perf_counter()
        groups = engine.group_columns(pattern)
        seconds = time.perf_counter() - started
        scipy_groups = int(scipy_group_columns(pattern).max() + 1)
        x0 = np.linspace(0.1, 0.9, pattern.shape[1])
        row = {"pattern": name, "n": pattern.shape[1], "nnz": int(pattern.nnz),
               "groups_ours": int(groups.max() + 1), "group_columns_seconds": seconds,
               "groups_scipy": scipy_groups}
        for ours, theirs in (("forward", "2-point"), ("central", "3-point")):
            f = Counted(linear(pattern))
            # the count is f's own state: in-process, the first call's test calls are put back
            with engine.Jacobian(f, sparsity=(pattern, groups), scheme=ours, workers=1,
                                 side_effects="ignore") as jac:
                jac(x0.copy())
            g = Counted(linear(pattern))
            approx_derivative(g, x0, method=theirs, sparsity=pattern)
            row[f"calls_ours_{ours}"], row[f"calls_scipy_{theirs}"] = f.calls, g.calls
        rows.append(row)
    return rows


# --- wall time ---------------------------------------------------------------------------------

class Case:
    def __init__(self, name: str, workers: int, run):
        self.name, self.workers, self.run = name, workers, run
        self.times: list[float] = []
        self.others_cpu: list = []
        self.info: dict = {}

    def summary(self) -> dict:
        return {"case": self.name, "workers": self.workers,
                "median_s": statistics.median(self.times), "min_s": min(self.times),
                "max_s": max(self.times), "times_s": self.times, "others_cpu": self.others_cpu,
                **self.info}


def wall_cases(plate: HeatedPlate, pool, close_later: list) -> list[Case]:
    pattern = stencil(plate.k)
    groups = engine.group_columns(pattern)
    serial = engine.Jacobian(plate, sparsity=(pattern, groups), h=STEP, workers=1)
    parallel = engine.Jacobian(plate, sparsity=(pattern, groups), h=STEP, workers=POOL_SIZE,
                               dispatch="parallel")
    close_later += [serial, parallel]
    scipy = lambda workers: approx_derivative(plate, plate.x0, method="3-point", abs_step=STEP,
                                              sparsity=pattern, workers=workers)
    return [Case("ours, serial", 1, lambda: serial(plate.x0.copy())),
            Case("ours, 2 workers", POOL_SIZE, lambda: parallel(plate.x0.copy())),
            Case("SciPy approx_derivative, serial", 1, lambda: scipy(None)),
            Case("SciPy approx_derivative, pool.map", POOL_SIZE, lambda: scipy(pool.map))]


def check_wall(cases: list[Case]) -> None:
    """Ours on 2 workers equal to ours serial (same pattern, same bits); SciPy within SCIPY_RTOL.

    SciPy evaluates f at the same points but divides by the step actually stored,
    ``(x + h) - (x - h)``, which differs from 2h by up to one spacing of |x| + h, relative
    ~1e-10 at h = 1e-6 and |x| < 1, well inside SCIPY_RTOL; its rows are mixed over other groups.
    """
    results = {case.name: case.run() for case in cases}
    reference = results["ours, serial"]
    for case in cases:
        got = results[case.name]
        if case.name.startswith("ours"):
            ok = (got.nnz == reference.nnz and np.array_equal(got.indptr, reference.indptr)
                  and np.array_equal(got.indices, reference.indices)
                  and np.array_equal(got.data, reference.data))
            case.info["check"] = "the same CSR arrays as ours, serial (np.array_equal)"
        else:
            dense, want = got.toarray(), reference.toarray()
            worst = float(np.max(np.abs(dense - want)) / np.max(np.abs(want)))
            ok = worst <= SCIPY_RTOL
            case.info["check"] = f"within {SCIPY_RTOL:g} of max |J| of ours, serial"
            case.info["max_difference_over_max_abs"] = worst
        case.info["checked"] = bool(ok)
        if not ok:
            raise AssertionError(f"{case.name}: Jacobian fails its check ({case.info['check']})")


def run_rounds(cases: list[Case], rounds: int) -> None:
    """Every round times every case once, the order rotated by one per round."""
    for number in range(rounds):
        shift = number % len(cases)
        for case in cases[shift:] + cases[:shift]:
            with Interference() as meter:
                started = time.perf_counter()
                case.run()
                case.times.append(time.perf_counter() - started)
            case.others_cpu.append(meter.share)
        print(f"  round {number + 1}/{rounds} (s): "
              + " ".join(f"{c.times[-1]:.3f}" for c in cases), flush=True)


def ratio(cases: list[Case], slower: str, faster: str) -> dict:
    a, b = (next(c for c in cases if c.name == name) for name in (slower, faster))
    return {"slower": slower, "faster": faster,
            "ratio_of_medians": statistics.median(a.times) / statistics.median(b.times),
            "median_of_round_ratios": statistics.median(x / y for x, y in zip(a.times, b.times))}


def residual_seconds(plate: HeatedPlate, repeats: int = 20) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        plate(plate.x0)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--rounds", type=int, default=11, help="timed calls of every case")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (seconds)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rounds, sizes = (1, SIZES["quick"]) if args.quick else (args.rounds, SIZES["full"])
    load_before = os.getloadavg()
    counts = evaluations(sizes)
    plate = HeatedPlate(sizes["k"], sizes["inner"])
    close_later: list = []
    try:
        with multiprocessing.get_context("spawn").Pool(POOL_SIZE, initializer=limit_blas_threads) as pool:
            pool.map(abs, range(POOL_SIZE * 4))   # start the workers before any timing
            cases = wall_cases(plate, pool, close_later)
            check_wall(cases)   # also the untimed first call of each
            run_rounds(cases, rounds)
    finally:
        for jacobian in close_later:
            jacobian.close()
    data = {"sparse": 1, "quick": args.quick, "rounds": rounds, "sizes": sizes,
            "residual_median_s": residual_seconds(plate), "machine": describe_machine(),
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "evaluations": counts, "wall": [c.summary() for c in cases],
            "ratios": {"ours 2 workers vs SciPy pool.map": ratio(cases, "SciPy approx_derivative, pool.map",
                                                                 "ours, 2 workers"),
                       "ours serial vs SciPy serial": ratio(cases, "SciPy approx_derivative, serial",
                                                            "ours, serial"),
                       "ours 2 workers vs ours serial": ratio(cases, "ours, serial", "ours, 2 workers")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    print_table(data)
    print(f"wrote {args.out}")
    return 0


def print_table(data: dict) -> None:
    print("\nevaluations of f per Jacobian (groups)")
    for row in data["evaluations"]:
        print(f"  {row['pattern']}: ours forward {row['calls_ours_forward']}, central "
              f"{row['calls_ours_central']} ({row['groups_ours']} groups, grouped in "
              f"{row['group_columns_seconds'] * 1e3:.0f} ms); SciPy 2-point "
              f"{row['calls_scipy_2-point']}, 3-point {row['calls_scipy_3-point']} "
              f"({row['groups_scipy']} groups)")
    print(f"\nwall time, stencil, residual {data['residual_median_s'] * 1e3:.2f} ms")
    for row in data["wall"]:
        print(f"  {row['case']}: median {row['median_s'] * 1e3:.1f} ms")
    for name, r in data["ratios"].items():
        print(f"  {name}: {r['ratio_of_medians']:.2f}x (per-round median {r['median_of_round_ratios']:.2f}x)")
    print(f"load average before {data['load_average_before']}, after {data['load_average_after']}")


if __name__ == "__main__":
    sys.exit(main())
