"""What the per-call state check costs: the same `Gradient` with ``check_state`` on and off.

Every call on the workers verifies itself (`engine.derivatives._check`): this process
computes ``f(x)`` while the workers work, and one extra task computes it on a worker.
Three cases, each timed with the check on and off, interleaved (the order alternates
from round to round), medians over rounds, ratios from the same run:

- ``overhead``: a trivial `f` closing over the seed net (0.64 MB), 8 entries, 2 workers:
  the check's cost where nothing else costs anything;
- ``one-image``: the seed net's batched gradient on one image at 2 workers
  (``dispatch="parallel"``): the check adds a forward pass here and one on a worker;
- ``black-box``: the ~1 ms, 400-parameter `OscillatorFit`, loop evaluator, 2 workers.

Every result is checked against the other setting's, exactly (``np.array_equal``).

    python benchmarks/check_cost.py --rounds 15 --out benchmarks/results/local/check_cost.json
    python benchmarks/check_cost.py --quick --out /tmp/check_cost.json   # each case once (CI)
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import numpy as np

import engine
from measuring import Interference, describe_machine, run_rounds
from workloads import OscillatorFit, net_problem, seed_net


def _cases(quick: bool) -> dict[str, dict]:
    net = seed_net()
    first = net.params["w1"][0, :8].copy()
    trivial = lambda w: float(w[0]) + 0.0 * float(net.params["b2"][0])  # noqa: E731  carries the net
    problem = net_problem(batch=1)
    fit = OscillatorFit(n=20, steps=40 if quick else 200)
    theta = fit.start.ravel().copy()
    return {
        "overhead": {"f": trivial, "x": lambda: first, "args": (), "calls": 5 if quick else 25},
        "one-image": {"f": net.model.loss, "x": lambda: net.params,
                      "args": (problem.x, problem.t), "calls": 1 if quick else 5},
        "black-box": {"f": fit, "x": lambda: theta, "args": (), "calls": 1,
                      "options": {"scheme": "forward"}},
    }


def measure(name: str, spec: dict, rounds: int) -> dict:
    options = spec.get("options", {})
    gradients = {check: engine.Gradient(spec["f"], workers=2, dispatch="parallel",
                                        check_state=check, **options) for check in (True, False)}
    cases = [{"key": f"check_state={check}", "g": g, "times": [], "others_cpu": []}
             for check, g in gradients.items()]
    results = {case["key"]: case["g"](spec["x"](), *spec["args"]) for case in cases}   # warm-up
    same = _equal(*results.values())

    def time_case(case: dict) -> None:
        nonlocal same
        with Interference() as meter:
            times = []
            for _ in range(spec["calls"]):
                start = time.perf_counter()
                got = case["g"](spec["x"](), *spec["args"])
                times.append(time.perf_counter() - start)
        case["times"].append(statistics.median(times))
        case["others_cpu"].append(meter.share)
        same = same and _equal(got, results[case["key"]])

    run_rounds(cases, rounds, time_case, label=name,
               show=lambda: ", ".join(f"{c['key']} {c['times'][-1] * 1e3:.2f} ms" for c in cases))
    for g in gradients.values():
        g.close()
    on, off = (statistics.median(case["times"]) for case in cases)
    per_round = [a / b for a, b in zip(cases[0]["times"], cases[1]["times"])]
    return {"case": name, "calls_per_round": spec["calls"], "identical_results": bool(same),
            "median_s": {"check on": on, "check off": off}, "ratio_of_medians": on / off,
            "median_of_round_ratios": statistics.median(per_round),
            "others_cpu_median": _median_known(c for case in cases for c in case["others_cpu"])}


def _median_known(shares) -> float | None:
    """The median of the metered shares (blocks under half a second are not metered: None)."""
    known = [share for share in shares if share is not None]
    return statistics.median(known) if known else None


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return all(np.array_equal(a[k], b[k]) for k in a)
    return bool(np.array_equal(a, b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of every case")
    parser.add_argument("--quick", action="store_true", help="one round of small cases (CI)")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    rows = [measure(name, spec, rounds) for name, spec in _cases(args.quick).items()]
    for row in rows:
        print(f"{row['case']}: on {row['median_s']['check on'] * 1e3:.2f} ms, off "
              f"{row['median_s']['check off'] * 1e3:.2f} ms, ratio {row['ratio_of_medians']:.3f} "
              f"(median of round ratios {row['median_of_round_ratios']:.3f}), identical "
              f"{row['identical_results']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": describe_machine(), "rounds": rounds, "results": rows,
                                    "when": datetime.datetime.now(datetime.timezone.utc).isoformat()},
                                   indent=1))
    return 0 if all(row["identical_results"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
