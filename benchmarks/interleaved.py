"""Side-by-side figures that drift cannot bias: the cases of a comparison timed in alternation.

pytest-benchmark times one case after another, so on a shared machine whose speed drifts
over minutes (this one: +-30%) a ratio between cases timed a minute apart carries that
drift. Here every round times each case of a comparison once, in turn, and the medians
over rounds are compared. Same workloads and checks as the suites (`workloads.py`):

- ``black-box``: suite 3a, the ~1 ms ODE fit (400 parameters): our serial reference, ours
  at 2 loky workers, SciPy's ``approx_derivative`` serial and with ``workers=pool.map``.
- ``seed-net``: suite 1/3b, the seed net on one image, loop evaluator: our serial reference
  and ours at 2 workers on a 5,000-entry window of w1, the book's loop split over 2 plain
  processes (the machine's ceiling), and SciPy at 2 workers on the full parameter vector
  (first 100 entries), all scaled to 79,510 entries.
- ``batches``: suites 2/4, the seed net on 1, 10 and 100 digits: backprop (the floor, one
  BLAS thread, as the engine's evaluations have; 50 gradients a round) against the batched
  evaluator's full gradient at 1 and 2 workers.

    python benchmarks/interleaved.py --rounds 9 --out benchmarks/results/local/interleaved.json
    python benchmarks/interleaved.py --only batches --rounds 9 \
        --out benchmarks/results/local/batches_interleaved.json
    python benchmarks/report.py benchmarks/results/local/interleaved.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import engine
from measuring import Interference, describe_machine, run_rounds
from threadpoolctl import threadpool_limits
from workloads import (BATCH_GROUPS, BATCHES, H, POOL_SIZE, TOTAL_ENTRIES, FlatNetLoss,
                       OscillatorFit, batched_gradient, book_numerical_gradient,
                       hand_rolled_parallel, limit_blas_threads, net_problem, prepare_processes,
                       relative_error, scipy_gradient, scipy_leading_entries)

SCIPY_TOLERANCE = 1e-9


def black_box_cases(pool) -> tuple[str, list[dict]]:
    fit = OscillatorFit()
    reference = engine.numerical_gradient(fit, fit.start.copy(), H)
    exact = lambda g: bool(np.array_equal(g, reference))
    close = lambda g: relative_error(np.reshape(g, reference.shape), reference) <= SCIPY_TOLERANCE
    common = dict(entries=fit.size, total_entries=fit.size)
    return "3a black box: ODE fit, 400 parameters, ~1 ms per call", [
        _case("ours, serial reference", "serial", 1, "loop", "baseline",
              lambda: engine.numerical_gradient(fit, fit.start.copy(), H), exact, **common),
        _case("ours, parallel", "loky", POOL_SIZE, "loop", "case",
              lambda: engine.parallel_numerical_gradient(fit, fit.start.copy(), workers=POOL_SIZE,
                                                         evaluator="loop", h=H), exact, **common),
        _case("SciPy approx_derivative, serial", "serial", 1, "scipy", "case",
              lambda: scipy_gradient(fit, fit.start.ravel()), close, **common),
        _case("SciPy approx_derivative, pool.map", "multiprocessing.Pool", POOL_SIZE, "scipy",
              "case", lambda: scipy_gradient(fit, fit.start.ravel(), pool.map), close, **common),
    ]


def seed_net_cases(pool, rows: int) -> tuple[str, list[dict]]:
    problem = net_problem(1, rows)
    reference = engine.numerical_gradient(problem.f, problem.window, H)
    exact = lambda g: bool(np.array_equal(g, reference))
    full = net_problem(1)
    fun = FlatNetLoss(full.net, full.x, full.t)
    theta = fun.flatten()
    b1 = engine.numerical_gradient(full.f, full.net.params["b1"], H)
    window = dict(entries=problem.entries, total_entries=TOTAL_ENTRIES)
    prepare_processes(pool, 1, rows)
    return "seed net, loop evaluator, 1 image, scaled to 79,510 entries", [
        _case("ours, serial reference", "serial", 1, "loop", "baseline",
              lambda: engine.numerical_gradient(problem.f, problem.window, H), exact, **window),
        _case("the book's loop (plain numpy)", "book", 1, "loop", "case",
              lambda: book_numerical_gradient(problem.f, problem.window, H), exact, **window),
        _case("ours, parallel", "loky", POOL_SIZE, "loop", "case",
              lambda: engine.parallel_numerical_gradient(problem.f, problem.window,
                                                         workers=POOL_SIZE, evaluator="loop",
                                                         h=H),
              exact, series="loop evaluator, loky", **window),
        _case("ceiling: book's loop in 2 plain processes", "multiprocessing.Pool", POOL_SIZE,
              "loop", "case", lambda: hand_rolled_parallel(pool, 1, rows, POOL_SIZE), exact,
              series="ceiling: book's loop in plain processes", **window),
        _case("SciPy pool.map, full vector (first 100 entries)", "multiprocessing.Pool",
              POOL_SIZE, "scipy", "case",
              lambda: scipy_leading_entries(fun, theta, 100, pool.map),
              lambda g: relative_error(g, b1) <= SCIPY_TOLERANCE,
              entries=100, total_entries=TOTAL_ENTRIES),
    ]


def batch_cases(batch: int) -> tuple[str, list[dict]]:
    problem = net_problem(batch)
    f = problem.net.loss_function(problem.x, problem.t)
    reference = batched_gradient(batch)
    exact = lambda g: all(np.array_equal(g[k], reference[k]) for k in reference)
    close = lambda g: all(relative_error(reference[k], g[k]) < 1e-6 for k in reference)
    repeats = 50

    def backprop():
        # One BLAS thread, as the engine's evaluations: with two, OpenBLAS's idle threads
        # keep spinning after each product and, on a busy 2-core machine, slow whatever
        # runs next (backprop with two threads measured 4-25x slower than with one here).
        with threadpool_limits(limits=1):
            for _ in range(repeats):
                grads = problem.net.gradient(problem.x, problem.t)
        return grads

    def batched(workers):
        return lambda: engine.parallel_numerical_gradient(f, problem.net.params, workers=workers,
                                                          evaluator="batched", h=H)
    full = dict(entries=TOTAL_ENTRIES, total_entries=TOTAL_ENTRIES)
    return BATCH_GROUPS[batch] + " (interleaved)", [
        _case("backprop (the floor), one BLAS thread", "in-process", 1, "backprop", "baseline",
              backprop, close, entries=repeats * TOTAL_ENTRIES, total_entries=TOTAL_ENTRIES),
        _case("batched", "loky", 1, "batched", "case", batched(1), exact, **full),
        _case("batched", "loky", POOL_SIZE, "batched", "case", batched(POOL_SIZE), exact,
              series=f"batched evaluator, loky, batch {batch}", **full),
    ]


def _case(case, backend, workers, evaluator, role, run, check, *, entries, total_entries,
          series=None) -> dict:
    return {"case": case, "backend": backend, "workers": workers, "evaluator": evaluator,
            "role": role, "entries": entries, "total_entries": total_entries,
            "scale": total_entries / entries, "series": series, "run": run, "check": check,
            "times": [], "others_cpu": [], "checked": True}


def run_group(group: str, cases: list[dict], rounds: int) -> None:
    """One untimed warm-up call per case, then `rounds` rounds of every case in turn."""
    for case in cases:
        case["checked"] = case["check"](case["run"]())

    def time_case(case: dict) -> None:
        with Interference() as meter:
            start = time.perf_counter()
            case["run"]()
            case["times"].append(time.perf_counter() - start)
        case["others_cpu"].append(meter.share)

    run_rounds(cases, rounds, time_case, label=f"{group[:24]}...", rotate=False,
               show=lambda: ", ".join(f"{c['case']} {c['times'][-1]:.3f} s" for c in cases))


def to_json(groups: list[tuple[str, list[dict]]], machine: dict) -> dict:
    results = []
    for group, cases in groups:
        for case in cases:
            kept = {k: v for k, v in case.items() if k not in ("run", "check")}
            results.append({"group": group, **kept})
    return {"interleaved": 1, "machine": machine, "results": results,
            "when": datetime.datetime.now(datetime.timezone.utc).isoformat()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--rounds", type=int, default=9, help="timed calls of every case")
    parser.add_argument("--rows", type=int, default=50,
                        help="rows of w1 (100 entries each) for the seed-net comparison")
    parser.add_argument("--only", choices=["black-box", "seed-net", "batches"], default=None)
    args = parser.parse_args(argv)
    context = multiprocessing.get_context("spawn")
    with context.Pool(POOL_SIZE, initializer=limit_blas_threads) as pool:
        groups = []
        if args.only in (None, "black-box"):
            groups.append(black_box_cases(pool))
        if args.only in (None, "seed-net"):
            groups.append(seed_net_cases(pool, args.rows))
        if args.only in (None, "batches"):
            groups += [batch_cases(batch) for batch in reversed(BATCHES)]
        for group, cases in groups:
            run_group(group, cases, args.rounds)
    data = to_json(groups, describe_machine())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1))
    for group, cases in groups:
        base = statistics.median(cases[0]["times"]) * cases[0]["scale"]
        print(f"\n{group}")
        for case in cases:
            full = statistics.median(case["times"]) * case["scale"]
            print(f"  {case['case']}, {case['workers']} worker(s): median "
                  f"{statistics.median(case['times']):.4f} s, full {full:.4f} s, "
                  f"{base / full:.3g}x vs baseline ({full / base:.3g}x its time), "
                  f"checked {case['checked']}")
    print(f"\nwrote {args.out}")
    return 0 if all(c["checked"] for _, cases in groups for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
