"""Resident gradients: `engine.Gradient` timed interleaved against the alternatives.

A `Gradient` ships `f` and the structure of `x` to its workers once and then only the new
values of `x` and the call's arguments. These groups measure what that buys, each against
what a user would otherwise run, with every case of a group timed once per round in an
order that rotates from round to round (so drift over minutes cannot favour one case),
medians over rounds, ratios from the same run:

- ``overhead``: per-call cost at 2 workers of a trivial `f` closing over the seed net
  (0.64 MB): `Gradient`, the one-shot `parallel_numerical_gradient`, serial
  `numerical_gradient`. Each round times `--calls` calls per case (their median).
- ``one-image``: the seed net's full gradient on one image, batched evaluator,
  ``Gradient(net.model.loss)`` at 1 worker, at 2 (``dispatch="parallel"`` and
  ``"auto"``, whose `plan` is recorded) and the one-shot call.
- ``small-batch`` / ``large-batch``: the same on 10 and 100 images, 1 vs 2 workers.
- ``loop-window``: the loop evaluator on a window of w1 (the book's closure): serial
  reference, `Gradient` and one-shot at 2 workers, and the book's loop split over 2 plain
  processes (the machine's ceiling).
- ``black-box``: ``scipy.optimize.minimize(method="L-BFGS-B")`` on the ~1 ms,
  400-parameter `OscillatorFit` from the same start: our `Gradient` (forward differences,
  SciPy's step) as ``jac=True``, SciPy's ``jac="2-point"`` with ``workers=pool.map``, and
  serial SciPy; wall time, iterations, evaluations, and the ideal (evaluations x time per
  evaluation / workers), beside what plain processes get: a gradient's evaluations of `f`
  in one process of SciPy's pool and split over all of them (the machine's ceiling).
  Every evaluation runs with one BLAS thread, in any process.

Every case checks its result on every round (exactly, with ``np.array_equal``, where the
engine claims identity). The JSON (``--out``) is also readable by ``report.py``.

    python benchmarks/resident.py --rounds 15 --box-rounds 3 --out benchmarks/results/local/resident.json
    python benchmarks/resident.py --quick --out /tmp/resident.json    # every case once, small (CI)
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from measuring import Interference, describe_machine, run_rounds
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits
from workloads import (
    H,
    OscillatorFit,
    hand_rolled_parallel,
    limit_blas_threads,
    net_problem,
    prepare_processes,
    relative_error,
)

import engine

GROUPS = ("overhead", "one-image", "small-batch", "large-batch", "loop-window", "black-box")
# The long groups that need both cores first, while the quiet the run was started in lasts.
RUN_ORDER = ("black-box", "loop-window", "large-batch", "small-batch", "one-image", "overhead")
BACKPROP_TOLERANCE = 1e-6         # numerical vs backprop, relative to max |g| per array
SCIPY_STEP = np.finfo(float).eps ** 0.5   # SciPy's 2-point relative step; |x| < 1 here
UNLIMITED_EVALUATIONS = 10 ** 9   # SciPy counts its difference quotients against `maxfun`
LBFGSB_FTOL = 2.2204460492503131e-09   # L-BFGS-B's default `ftol`
QUIET_SHARE = 0.05                # a round is quiet when others used at most this CPU share
TRIVIAL_EXPECTED = np.array([1.0] + [0.0] * 7)


# --- the cases --------------------------------------------------------------------------------

def _case(key, label, run, check, *, workers=1, backend="serial", evaluator="loop",
          role="case", entries=1, calls=1, **more) -> dict:
    return {"key": key, "case": label, "run": run, "check": check, "workers": workers,
            "backend": backend, "evaluator": evaluator, "role": role, "entries": entries,
            "total_entries": entries, "scale": 1.0, "calls": calls, "times": [],
            "others_cpu": [], "checked": True, **more}


def overhead_group(stack, settings) -> dict:
    net = net_problem(1).net
    x = net.params["b1"][:8]
    f = lambda w: float(net.params["b1"][0])
    workers, calls = settings.workers, settings.calls
    g = stack.enter_context(engine.Gradient(f, workers=workers, dispatch="parallel",
                                            evaluator="loop"))
    exact = lambda grad: bool(np.array_equal(grad, TRIVIAL_EXPECTED))
    common = dict(entries=x.size, calls=calls)
    return {"title": f"per-call overhead: trivial f closing over the seed net (0.64 MB), "
                     f"8 entries, {workers} workers",
            "cases": [
                _case("gradient", f"Gradient, {workers} workers", lambda: g(x), exact,
                      workers=workers, backend="loky", **common),
                _case("one-shot", f"one-shot parallel_numerical_gradient, {workers} workers",
                      lambda: engine.parallel_numerical_gradient(f, x, workers=workers,
                                                                 evaluator="loop"),
                      exact, workers=workers, backend="loky", **common),
                _case("serial", "serial numerical_gradient",
                      lambda: engine.numerical_gradient(f, x, H), exact, role="baseline",
                      **common)]}


def batched_group(stack, settings, batch: int, title: str, auto: bool) -> dict:
    """The seed net's full gradient on `batch` images, batched evaluator, 1 vs n workers."""
    problem = net_problem(batch)
    net, images, labels = problem.net, problem.x, problem.t
    backprop = net.gradient(images, labels)
    workers = settings.workers

    def gradient(**options):
        return stack.enter_context(engine.Gradient(net.model.loss, **options))

    one = gradient(workers=1)
    reference = one(net.params, images, labels)
    if not all(relative_error(reference[k], backprop[k]) <= BACKPROP_TOLERANCE for k in backprop):
        raise AssertionError(f"{title}: batched gradient at 1 worker disagrees with backprop")
    exact = lambda grad: all(np.array_equal(grad[k], reference[k]) for k in reference)
    size = sum(a.size for a in net.params.values())
    common = dict(evaluator="batched", entries=size, batch=batch)
    parallel = gradient(workers=workers, dispatch="parallel")
    cases = [
        _case("workers-1", "Gradient, 1 worker", lambda: one(net.params, images, labels),
              exact, role="baseline", **common),
        _case(f"workers-{workers}", f"Gradient, {workers} workers, dispatch='parallel'",
              lambda: parallel(net.params, images, labels), exact, workers=workers,
              backend="loky", **common)]
    if auto:
        chosen = gradient(workers=workers, dispatch="auto")
        chosen.calibrate(net.params, images, labels)
        cases.append(_case("auto", f"Gradient, {workers} workers, dispatch='auto'",
                           lambda: chosen(net.params, images, labels), exact, workers=workers,
                           backend="loky", plan=str(chosen.plan), **common))
        loss = net.loss_function(images, labels)   # the book's pattern: a new f per call
        cases.append(_case("one-shot", f"one-shot parallel_numerical_gradient, {workers} workers",
                           lambda: engine.parallel_numerical_gradient(loss, net.params,
                                                                      workers=workers),
                           exact, workers=workers, backend="loky", **common))
    return {"title": f"{title}: seed net, batched evaluator, full gradient ({size:,} entries)",
            "cases": cases}


def loop_window_group(stack, settings, pool) -> dict:
    rows, workers = settings.rows, settings.workers
    problem = net_problem(1, rows)
    reference = engine.numerical_gradient(problem.f, problem.window, H)
    exact = lambda grad: bool(np.array_equal(grad, reference))
    g = stack.enter_context(engine.Gradient(problem.f, workers=workers, dispatch="parallel",
                                            evaluator="loop"))
    prepare_processes(pool, 1, rows)
    common = dict(entries=problem.entries)
    return {"title": f"loop evaluator, seed net, one image, window of {rows} rows of w1 "
                     f"({problem.entries:,} entries)",
            "cases": [
                _case("serial", "serial numerical_gradient (reference)",
                      lambda: engine.numerical_gradient(problem.f, problem.window, H), exact,
                      role="baseline", **common),
                _case("gradient", f"Gradient, {workers} workers",
                      lambda: g(problem.window), exact, workers=workers, backend="loky",
                      **common),
                _case("one-shot", f"one-shot parallel_numerical_gradient, {workers} workers",
                      lambda: engine.parallel_numerical_gradient(
                          problem.f, problem.window, workers=workers, evaluator="loop"),
                      exact, workers=workers, backend="loky", **common),
                _case("ceiling", f"ceiling: the book's loop in {workers} plain processes",
                      lambda: hand_rolled_parallel(pool, 1, rows, workers), exact,
                      workers=workers, backend="multiprocessing.Pool", **common)]}


def black_box_group(stack, settings, pool) -> dict:
    fit = OscillatorFit(n=settings.box_size, steps=settings.box_steps)
    x0 = fit.start.ravel().copy()
    workers, size = settings.workers, fit.size
    g = stack.enter_context(engine.Gradient(fit, workers=workers, dispatch="parallel",
                                            evaluator="loop", scheme="forward", h=SCIPY_STEP))
    options = {"maxfun": UNLIMITED_EVALUATIONS}
    value0 = fit(x0)

    def solved(result) -> bool:
        return bool(result.success) and result.fun < 1e-3 * value0

    common = dict(entries=size, evaluations_per_gradient=size + 1)
    shape, count = (settings.box_size, settings.box_steps), size + 1
    same = lambda values: all(value == value0 for part in values for value in part)
    split = [(*shape, len(part)) for part in np.array_split(np.arange(count), workers)]
    return {"title": f"black box: L-BFGS-B on OscillatorFit ({size} parameters), same start",
            "fit": fit, "x0": x0,
            "cases": [
                _case("evaluation", "one evaluation of f (for the ideal)", lambda: fit(x0),
                      lambda value: value == value0, role="reference", calls=8 * settings.calls,
                      **common),
                _case("evaluations-1", f"a gradient's {count} evaluations, 1 plain process",
                      lambda: [pool.apply(evaluate_at_start, (*shape, count))], same,
                      role="reference", backend="multiprocessing.Pool", **common),
                _case("evaluations-split", f"the same split over {workers} plain processes "
                      "(the machine's ceiling)",
                      lambda: pool.starmap(evaluate_at_start, split, chunksize=1), same,
                      role="reference", workers=workers, backend="multiprocessing.Pool",
                      **common),
                _case("ours", f"ours: Gradient, {workers} workers, value_and_grad, jac=True",
                      lambda: minimize(g.value_and_grad, x0, jac=True, method="L-BFGS-B",
                                       options=options),
                      solved, workers=workers, backend="loky", **common),
                _case("scipy-pool", f"SciPy jac='2-point', workers=pool.map ({workers})",
                      lambda: minimize(fit, x0, jac="2-point", method="L-BFGS-B",
                                       options={**options, "workers": pool.map}),
                      solved, workers=workers, backend="multiprocessing.Pool",
                      evaluator="scipy", **common),
                _case("scipy-serial", "SciPy jac='2-point', serial",
                      lambda: minimize(fit, x0, jac="2-point", method="L-BFGS-B",
                                       options=options),
                      solved, role="baseline", evaluator="scipy", **common)]}


@functools.lru_cache(maxsize=2)
def _fit(n: int, steps: int) -> OscillatorFit:
    return OscillatorFit(n=n, steps=steps)


def evaluate_at_start(n: int, steps: int, count: int) -> list[float]:
    """`count` evaluations of ``OscillatorFit(n, steps)`` at its start, here (a pool process)."""
    fit = _fit(n, steps)
    x = fit.start.ravel().copy()
    return [fit(x) for _ in range(count)]


# --- timing -----------------------------------------------------------------------------------

def run_group(name: str, group: dict, rounds: int) -> None:
    """An untimed warm-up call of every case, then `rounds` rounds in rotating order."""
    cases = group["cases"]
    for case in cases:
        case["checked"] = bool(case["check"](case["run"]()))
    group["round_others_cpu"] = []
    run_rounds(cases, rounds, _time_case, label=name, round_shares=group["round_others_cpu"],
               show=lambda: ", ".join(f"{c['key']} {_ms(c['times'][-1])}" for c in cases))


def _time_case(case: dict) -> None:
    """One round of `case`: its calls timed, its result checked, the optimizer's counts kept."""
    with Interference() as meter:
        times, result = [], None
        for _ in range(case["calls"]):
            start = time.perf_counter()
            result = case["run"]()
            times.append(time.perf_counter() - start)
    case["times"].append(statistics.median(times))
    case["others_cpu"].append(meter.share)
    case["checked"] = case["checked"] and bool(case["check"](result))
    if hasattr(result, "nit"):   # an optimizer's result
        case.setdefault("nit", []).append(int(result.nit))
        case.setdefault("nfev", []).append(int(result.nfev))
        case["solution"] = result


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def median(group: dict, key: str) -> float:
    return statistics.median(_find(group, key)["times"])


def _find(group: dict, key: str) -> dict:
    return next(case for case in group["cases"] if case["key"] == key)


# --- summary: the goals -----------------------------------------------------------------------

def black_box_summary(group: dict, workers: int) -> dict:
    """Evaluations, the ideal, and whether the three solutions agree.

    The ideal of a run is its evaluations x the median time of one evaluation of `f`
    (timed alone, in this process) / the processes evaluating. The solutions agree when
    their minima differ by no more than L-BFGS-B's own stopping test on `f` allows
    (``ftol * max(|f|, 1)``, ftol = 2.2e-9).
    """
    evaluation = median(group, "evaluation")
    size = group["fit"].size
    out = {"seconds_per_evaluation": evaluation}
    for key in ("ours", "scipy-pool", "scipy-serial"):
        case = _find(group, key)
        nfev = statistics.median(case["nfev"])
        # ours: each call of value_and_grad is f(x) and `size` forward quotients
        evaluations = nfev * (size + 1) if key == "ours" else nfev
        parallel = workers if key != "scipy-serial" else 1
        ideal = evaluations * evaluation / parallel
        out[key] = {"seconds": median(group, key), "nit": statistics.median(case["nit"]),
                    "nfev": nfev, "evaluations": evaluations, "ideal_seconds": ideal,
                    "vs_ideal": median(group, key) / ideal}
    out["ceiling"] = ceiling(group, evaluation, size + 1, workers)
    serial = out["scipy-serial"]
    out["seconds_per_evaluation_in_serial_run"] = serial["seconds"] / serial["evaluations"]
    solutions = {key: _find(group, key)["solution"] for key in ("ours", "scipy-pool", "scipy-serial")}
    values = [float(s.fun) for s in solutions.values()]
    spread, allowed = max(values) - min(values), LBFGSB_FTOL * max(max(map(abs, values)), 1.0)
    ours, theirs = solutions["ours"].x, solutions["scipy-pool"].x
    out["agreement"] = {
        "fun": dict(zip(solutions, values)), "start_fun": float(group["fit"](group["x0"])),
        "fun_spread": spread, "allowed_spread": allowed, "agree": spread <= allowed,
        "max_abs_x_difference_ours_vs_scipy": float(np.max(np.abs(ours - theirs))),
        "max_abs_x": float(np.max(np.abs(theirs))),
    }
    return out


def quiet_rounds(group: dict) -> list[int] | None:
    """Rounds during which other processes used at most `QUIET_SHARE` of the CPU (metered
    over the whole round); None when the rounds are too short to meter (< 0.5 s)."""
    shares = group.get("round_others_cpu") or []
    if all(share is None for share in shares):
        return None
    return [r for r, share in enumerate(shares) if share is not None and share <= QUIET_SHARE]


def ratio(group: dict, top: str, bottom: str, scale: float = 1.0) -> dict:
    """``median(top) / median(bottom) / scale``, and the same per round over the quiet rounds."""
    value = median(group, top) / median(group, bottom) / scale
    quiet = quiet_rounds(group)
    if quiet is None:
        return {"all": value}
    pairs = zip(_find(group, top)["times"], _find(group, bottom)["times"])
    per_round = [a / b / scale for r, (a, b) in enumerate(pairs) if r in quiet]
    return {"all": value, "quiet": statistics.median(per_round) if per_round else None,
            "quiet_rounds": len(per_round)}


def _ceiling_note(summary: dict) -> str:
    ceiling = summary.get("ceiling")
    return f" (plain processes: {ceiling['vs_ideal']:.2f}x)" if ceiling else ""


def ceiling(group: dict, evaluation: float, count: int, workers: int) -> dict:
    """A gradient's `count` evaluations in plain processes, against the same ideal as ours.

    `vs_ideal`: the split's time / (count x `evaluation` / workers), as for the minimizations;
    `one_process_vs_lone`: how much slower one evaluation runs in a plain pool process
    than alone in this one.
    """
    one, split = median(group, "evaluations-1"), median(group, "evaluations-split")
    return {"one_process_seconds": one, "split_seconds": split, "speedup": one / split,
            "vs_ideal": split / (count * evaluation / workers),
            "one_process_vs_lone": one / (count * evaluation)}


def goals(groups: dict, workers: int) -> list[dict]:
    """Each goal of the resident gradient with the figure measured in this run (all rounds' medians).

    Where the group's cases are long enough to be metered, the figure over the quiet
    rounds alone is given too (`quiet`, None when no round was quiet).
    """
    out = []

    def goal(name, figure: dict, met, unit):
        quiet = figure.get("quiet")
        out.append({"goal": name, "figure": figure["all"], "met": bool(met(figure["all"])),
                    "text": unit.format(figure["all"]), "quiet": quiet,
                    "quiet_rounds": figure.get("quiet_rounds"),
                    "quiet_met": None if quiet is None else bool(met(quiet))})

    if "overhead" in groups:
        t = median(groups["overhead"], "gradient")
        goal("per-call overhead <= 0.5 ms", {"all": t}, lambda v: v <= 0.5e-3,
             f"Gradient {t * 1e3:.2f} ms per call")
    if "one-image" in groups:
        goal(f"one image: workers={workers} <= 0.75x workers=1",
             ratio(groups["one-image"], f"workers-{workers}", "workers-1"),
             lambda v: v <= 0.75, "{:.2f}x")
    for key in ("small-batch", "large-batch"):
        if key in groups:
            batch = groups[key]["cases"][0]["batch"]
            goal(f"batch of {batch}: {workers} workers >= 1.8x 1 worker",
                 ratio(groups[key], "workers-1", f"workers-{workers}"),
                 lambda v: v >= 1.8, "{:.2f}x")
    if "loop-window" in groups:
        goal(f"loop evaluator: {workers} workers >= 1.8x serial",
             ratio(groups["loop-window"], "serial", "gradient"), lambda v: v >= 1.8, "{:.2f}x")
    if "black-box" in groups:
        box = groups["black-box"]
        goal("black box: ours >= 1.2x faster than SciPy, same pool",
             ratio(box, "scipy-pool", "ours"), lambda v: v >= 1.2, "{:.2f}x")
        ideal = box["summary"]["ours"]["ideal_seconds"]
        figure = {"all": median(box, "ours") / ideal}
        quiet = quiet_rounds(box)
        if quiet is not None:
            per_round = [_find(box, "ours")["times"][r] / ideal for r in quiet]
            figure.update(quiet_rounds=len(per_round),
                          quiet=statistics.median(per_round) if per_round else None)
        goal("black box: ours within 10% of the ideal", figure, lambda v: v <= 1.1,
             "{:.2f}x the ideal" + _ceiling_note(box["summary"]))
    return out


# --- output -----------------------------------------------------------------------------------

def to_json(groups: dict, settings, machine: dict, loads: dict) -> dict:
    results = []
    for name, group in groups.items():
        for case in group["cases"]:
            kept = {k: v for k, v in case.items() if k not in ("run", "check", "solution")}
            results.append({"group": f"{name}: {group['title']}", "group_key": name,
                            "median": statistics.median(case["times"]), **kept})
    summary = {name: group["summary"] for name, group in groups.items() if "summary" in group}
    rounds_others = {name: group["round_others_cpu"] for name, group in groups.items()}
    return {"interleaved": 1, "resident": 1, "machine": machine,
            "when": datetime.datetime.now(datetime.UTC).isoformat(),
            "settings": vars(settings) | {"out": str(settings.out), "table": None}, "load_average": loads,
            "results": results, "round_others_cpu": rounds_others, "summary": summary,
            "goals": goals(groups, settings.workers)}


def _groups_of(data: dict) -> dict:
    """The groups of a saved run, as far as `goals` needs them."""
    groups: dict = {}
    for result in data["results"]:
        group = groups.setdefault(result["group_key"], {"cases": []})
        group["cases"].append(result)
    for name, summary in data["summary"].items():
        groups[name]["summary"] = summary
    for name, shares in data.get("round_others_cpu", {}).items():
        groups[name]["round_others_cpu"] = shares
    return groups


def _round_shares(data: dict, name: str) -> str:
    shares = [v for v in data.get("round_others_cpu", {}).get(name, []) if v is not None]
    if not shares:
        return ""
    quiet = sum(share <= QUIET_SHARE for share in shares)
    return (f"\nOthers' CPU share over each round: median {statistics.median(shares):.0%}, "
            f"max {max(shares):.0%}; {quiet} of {len(shares)} rounds quiet (<= {QUIET_SHARE:.0%}).")


def _ceiling_text(box: dict) -> str:
    ceiling = box.get("ceiling")
    if not ceiling:
        return ""
    return (f"; a gradient's evaluations split over plain processes: {ceiling['speedup']:.2f}x "
            f"one process, {ceiling['vs_ideal']:.2f}x the ideal (the machine's ceiling; one "
            f"plain process evaluates {ceiling.get('one_process_vs_lone', float('nan')):.2f}x "
            "slower than a lone call here)")


def markdown(data: dict) -> str:
    """The run as Markdown tables: every group, the black box's counts, the goals."""
    lines, groups = [], {}
    for result in data["results"]:
        groups.setdefault(result["group"], []).append(result)
    for title, results in groups.items():
        base = next((r for r in results if r["role"] == "baseline"), None)
        shares = _round_shares(data, results[0]["group_key"])
        lines += ["", f"**{title}**", *([shares] if shares else []), "",
                  "| case | median | min .. max | speed-up vs baseline | others' CPU | checked |",
                  "| --- | ---: | ---: | ---: | ---: | --- |"]
        for r in results:
            ratio = ("baseline" if r is base else "" if base is None or r["role"] == "reference"
                     else f"{base['median'] / r['median']:.2f}x")
            shares = [v for v in r["others_cpu"] if v is not None]
            others = f"{max(shares):.0%}" if shares else ""
            plan = f" (plan: {r['plan']})" if "plan" in r else ""
            lines.append(f"| {r['case']}{plan} | {_ms(r['median'])} | {_ms(min(r['times']))} .. "
                         f"{_ms(max(r['times']))} | {ratio} | {others} | {r['checked']} |")
    box = data["summary"].get("black-box")
    if box:
        lines += ["", (f"black box: one evaluation of f {box['seconds_per_evaluation'] * 1e3:.3f} "
                       f"ms alone ({box['seconds_per_evaluation_in_serial_run'] * 1e3:.3f} ms "
                       "per evaluation in the serial SciPy run)" + _ceiling_text(box)), "",
                  "| run | wall (median) | nit | nfev | evaluations of f | ideal | wall / ideal |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for key in ("ours", "scipy-pool", "scipy-serial"):
            b = box[key]
            lines.append(f"| {key} | {_ms(b['seconds'])} | {b['nit']:g} | {b['nfev']:g} | "
                         f"{b['evaluations']:,.0f} | {_ms(b['ideal_seconds'])} | {b['vs_ideal']:.2f}x |")
        agreement = box["agreement"]
        lines += ["", (f"minima: {', '.join(f'{k} {v:.6g}' for k, v in agreement['fun'].items())} "
                      f"(start {agreement['start_fun']:.4g}); spread {agreement['fun_spread']:.2g}, "
                      f"allowed {agreement['allowed_spread']:.2g}: agree {agreement['agree']}; "
                      f"max |x_ours - x_scipy| {agreement['max_abs_x_difference_ours_vs_scipy']:.2g} "
                      f"(max |x| {agreement['max_abs_x']:.2g})")]
    lines += ["", "| goal | all rounds | met | quiet rounds only | met |",
              "| --- | ---: | --- | ---: | --- |"]
    for g in data["goals"]:
        quiet = ("not metered (< 0.5 s)" if g["quiet_rounds"] is None else "no quiet round"
                 if g["quiet"] is None else f"{g['quiet']:.2f}x ({g['quiet_rounds']} rounds)")
        met = "" if g["quiet_met"] is None else "yes" if g["quiet_met"] else "no"
        lines.append(f"| {g['goal']} | {g['text']} | {'yes' if g['met'] else 'no'} | {quiet} | {met} |")
    loads = data["load_average"]
    lines += ["", "load average (1, 5, 15 min) at the start of each group and after: " + "; ".join(
        f"{name} {', '.join(f'{v:.2f}' for v in value)}" for name, value in loads.items())]
    return "\n".join(lines)


# --- the script -------------------------------------------------------------------------------

def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the JSON (required to measure)")
    parser.add_argument("--table", type=Path, metavar="JSON",
                        help="print the Markdown tables of a saved run, measure nothing")
    parser.add_argument("--rounds", type=int, default=15,
                        help="rounds of every group but the black box (default 15)")
    parser.add_argument("--box-rounds", type=int, default=3,
                        help="rounds of the black-box minimizations (default 3)")
    parser.add_argument("--calls", type=int, default=25,
                        help="calls per round of the overhead cases (default 25; f alone: 8x)")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers of every parallel case and of SciPy's pool (default 2)")
    parser.add_argument("--batches", type=int, nargs=2, default=(10, 100), metavar=("SMALL", "LARGE"))
    parser.add_argument("--rows", type=int, default=50,
                        help="rows of w1 (100 entries each) in the loop-window group (default 50)")
    parser.add_argument("--only", choices=GROUPS, nargs="+", default=list(GROUPS))
    parser.add_argument("--quick", action="store_true",
                        help="every case once, on small problems: checks, not figures (CI)")
    settings = parser.parse_args(argv)
    if settings.out is None and settings.table is None:
        parser.error("--out is required (or --table JSON to print a saved run)")
    settings.box_size, settings.box_steps = 20, 200   # the 400-parameter OscillatorFit
    if settings.quick:
        settings.rounds = settings.box_rounds = 1
        settings.calls, settings.batches, settings.rows = 3, (2, 3), 1
        settings.box_size, settings.box_steps = 4, 20
    for name in ("rounds", "box_rounds", "calls", "workers", "rows"):
        if getattr(settings, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return settings


def build(name: str, stack, settings, pool) -> dict:
    small, large = settings.batches
    if name == "overhead":
        return overhead_group(stack, settings)
    if name == "one-image":
        return batched_group(stack, settings, 1, "one image", auto=True)
    if name == "small-batch":
        return batched_group(stack, settings, small, f"batch of {small}", auto=False)
    if name == "large-batch":
        return batched_group(stack, settings, large, f"batch of {large}", auto=False)
    if name == "loop-window":
        return loop_window_group(stack, settings, pool)
    return black_box_group(stack, settings, pool)


def main(argv=None) -> int:
    settings = parse(argv)
    if settings.table is not None:
        data = json.loads(settings.table.read_text())
        groups, workers = _groups_of(data), data["settings"]["workers"]
        box = groups.get("black-box", {})
        if any(case["key"] == "evaluations-1" for case in box.get("cases", [])):
            summary = box["summary"]   # derived figures recomputed by the current rules
            count = round(summary["ours"]["evaluations"] / summary["ours"]["nfev"])
            summary["ceiling"] = ceiling(box, summary["seconds_per_evaluation"], count, workers)
        data["goals"] = goals(groups, workers)
        print(markdown(data))
        return 0
    loads = {"before": os.getloadavg()}
    context = multiprocessing.get_context("spawn")
    groups = {}
    with context.Pool(settings.workers, initializer=limit_blas_threads) as pool:
        for name in (g for g in RUN_ORDER if g in settings.only):
            with contextlib.ExitStack() as stack:
                if name == "black-box":   # every evaluation with one BLAS thread, as workers do
                    stack.enter_context(threadpool_limits(limits=1))
                group = groups[name] = build(name, stack, settings, pool)
                loads[name] = os.getloadavg()
                rounds = settings.box_rounds if name == "black-box" else settings.rounds
                run_group(name, group, rounds)
                if name == "black-box":
                    group["summary"] = black_box_summary(group, settings.workers)
    loads["after"] = os.getloadavg()
    groups = {name: groups[name] for name in GROUPS if name in groups}   # report order
    data = to_json(groups, settings, describe_machine(), loads)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(data, indent=1, default=float))
    print(markdown(data))
    print(f"\nwrote {settings.out}")
    agreed = all(summary["agreement"]["agree"] for summary in data["summary"].values())
    return 0 if agreed and all(result["checked"] for result in data["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
