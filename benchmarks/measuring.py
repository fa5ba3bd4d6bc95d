"""How the suites measure: the machine's description, other processes' CPU share, extra_info.

Saved with every result so that a figure says where, on which engine code, and how
undisturbed it was measured.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import engine
from workloads import available_cores


# --- the machine -----------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU model as lscpu names it (falling back to /proc/cpuinfo, then platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict:
    """numpy, SciPy and joblib versions, and the BLAS numpy calls (via threadpoolctl).

    SciPy is not a dependency of the engine's core install: where it is missing (a bare
    machine running ``device_scaling.py``) its version reads "not installed".
    """
    import joblib
    from threadpoolctl import threadpool_info

    try:
        import scipy
        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = "not installed"
    blas = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads, "
            f"{p.get('architecture')})" for p in threadpool_info() if p.get("user_api") == "blas"]
    return {"numpy": np.__version__, "scipy": scipy_version,
            "joblib": joblib.__version__, "blas": blas}


def engine_fingerprint() -> str:
    """A short hash of the engine's sources: which code a result was measured on."""
    digest = hashlib.sha256()
    for path in sorted(Path(engine.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def describe_machine() -> dict:
    return {"cpu_model": cpu_model(), "cores": available_cores(),
            "engine_sources": engine_fingerprint(), **library_versions()}


# --- bookkeeping ------------------------------------------------------------------------------

MIN_METERED_SECONDS = 0.5


class Interference:
    """The share of the machine's CPU time that other processes used during a block.

    Busy time of all cores (from /proc/stat, steal included) minus the CPU time of this
    process and its children (our workers), over wall time x cores. On a shared machine
    this says which measurements were disturbed. None for blocks under half a second (too
    few clock ticks), and where /proc/stat or psutil is missing.
    """

    share: float | None = None

    def __enter__(self):
        self._start = _snapshot()
        return self

    def __exit__(self, *exc_info):
        end = _snapshot()
        if self._start is not None and end is not None:
            busy, own, wall = (b - a for a, b in zip(self._start, end))
            if wall >= MIN_METERED_SECONDS:   # /proc/stat counts in 10 ms ticks
                self.share = max(0.0, busy - own) / (wall * available_cores())
        return False


def _snapshot():
    try:
        import psutil
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:9]]
        me = psutil.Process()
        own = sum(me.cpu_times()[:4])   # user, system, and reaped children's
        for child in me.children(recursive=True):
            try:
                own += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
    except (ImportError, OSError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")   # not idle/iowait
    return busy, own, time.perf_counter()


def run_rounds(cases: list | dict[str, list], rounds: int, time_case: Callable[[Any], None], *,
               label: str, show: Callable[[], str], rotate: bool = True,
               round_shares: list | None = None) -> None:
    """`rounds` rounds; each calls ``time_case(case)`` once for every case of every group.

    `cases` is one group (a list) or several (a dict of lists). With `rotate`, each
    round starts every group one case later than the round before, so that a drift of
    the machine over minutes cannot favour one case. `show` says the round's times,
    printed after each round under `label`; `round_shares` collects other processes'
    CPU share over each round (`Interference`).
    """
    groups = cases if isinstance(cases, dict) else {label: cases}
    for number in range(rounds):
        with Interference() as meter:
            for group in groups.values():
                shift = number % len(group) if rotate else 0
                for case in group[shift:] + group[:shift]:
                    time_case(case)
        if round_shares is not None:
            round_shares.append(meter.share)
        print(f"  {label} round {number + 1}/{rounds}: {show()}", flush=True)


def timed(benchmark, target: Callable, *args, rounds: int, warmup_rounds: int = 1, **kwargs):
    """``benchmark.pedantic(target, args, kwargs, ...)``, noting other processes' CPU share."""
    with Interference() as meter:
        result = benchmark.pedantic(target, args, kwargs, rounds=rounds,
                                    warmup_rounds=warmup_rounds)
    if meter.share is not None:
        benchmark.extra_info["others_cpu"] = round(meter.share, 3)
    return result


def record(benchmark, *, suite: str, case: str, role: str = "case", workers: int | None = None,
           backend: str = "serial", evaluator: str = "loop", entries: int,
           total_entries: int | None = None, batch: int | None = None,
           series: str | None = None, **more) -> None:
    """Write what `report.py` needs into ``benchmark.extra_info``.

    `entries` are the entries one timed call computes; `total_entries` those of the
    gradient it stands for (default: the same). The report multiplies the median by
    ``scale = total_entries / entries`` to estimate the full gradient, and compares every
    case of a group with its ``role="baseline"`` case on those estimates. Cases with a
    `series` label become one line each in speedup.png.
    """
    total = entries if total_entries is None else total_entries
    benchmark.extra_info.update(
        suite=suite, case=case, role=role, workers=workers, backend=backend,
        evaluator=evaluator, entries=int(entries), total_entries=int(total),
        scale=total / entries, batch=batch, series=series, **more)
