"""Turn saved benchmark results into markdown tables and a speedup plot.

Reads pytest-benchmark JSON files (``--benchmark-json``) written by the suites in this folder,
and the JSON written by ``device_scaling.py`` and ``interleaved.py`` (cases timed in
alternating rounds). Each file is one run: every ratio compares cases of the same group
*within one file*, so they were measured side by side.

For each case the table gives the median time of one call, its IQR and min..max, the
estimated time of the full gradient (median x ``scale`` from the case's ``extra_info``: the
suites time a window of entries where the full gradient would take minutes), and the
ratio "vs baseline" = baseline's estimate / this case's estimate (above 1: faster than the
group's ``role="baseline"`` case, usually the serial reference).

speedup.png plots, for every case with a ``series`` label, the speedup against the number of
workers: against the group's baseline when it uses the same evaluator (the loop evaluator
against the serial loop reference), otherwise against the series' own 1-worker case. Given
several runs of a suite, it plots the median over runs with bars from the lowest to the
highest. The "others' CPU" column is the share of the machine's CPU that other processes
used while the case ran (recorded by the suites); from 10% on it is flagged with "!".

Usage::

    python benchmarks/report.py benchmarks/results/*.json --out benchmarks/
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Case", "Run", "load_run", "render_markdown", "plot_speedup", "main"]

DISTURBED = 0.10   # other processes' CPU share from which a case is flagged


@dataclass
class Case:
    """One benchmarked case: its group, labels and timing statistics (seconds)."""

    group: str
    name: str
    info: dict
    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: int

    @property
    def scale(self) -> float:
        return float(self.info.get("scale") or 1.0)

    @property
    def full(self) -> float:
        """Estimated time of the gradient the case stands for."""
        return self.median * self.scale


@dataclass
class Run:
    """One results file: where it ran, and its cases in file order."""

    source: str
    machine: str
    when: str
    cases: list[Case] = field(default_factory=list)

    def groups(self) -> dict[str, list[Case]]:
        grouped: dict[str, list[Case]] = {}
        for case in self.cases:
            grouped.setdefault(case.group, []).append(case)
        return dict(sorted(grouped.items()))


# --- reading --------------------------------------------------------------------------------

def load_run(path: Path) -> Run:
    """Read a pytest-benchmark JSON file or a device_scaling.py JSON file."""
    data = json.loads(Path(path).read_text())
    if "device_scaling" in data or "interleaved" in data:
        return _interleaved_run(path, data)
    if "benchmarks" not in data:
        raise ValueError(f"{path}: not pytest-benchmark, device_scaling.py or interleaved.py "
                         "JSON")
    run = Run(str(path), _describe_machine(data.get("machine_info", {})),
              _describe_when(data))
    for bench in data["benchmarks"]:
        stats = bench["stats"]
        run.cases.append(Case(bench.get("group") or "(no group)", bench["name"],
                              bench.get("extra_info") or {}, stats["median"], stats["q1"],
                              stats["q3"], stats["min"], stats["max"], stats["rounds"]))
    return run


def _describe_when(data: dict) -> str:
    commit = data.get("commit_info") or {}
    sources = (data.get("machine_info") or {}).get("numgrad", {}).get("engine_sources")
    parts = [data.get("datetime", "")]
    if commit.get("id"):
        parts.append(f"commit {commit['id'][:10]}{' (dirty)' if commit.get('dirty') else ''}")
    if sources:
        parts.append(f"engine sources {sources}")
    return ", ".join(p for p in parts if p)


def _describe_machine(info: dict) -> str:
    ours = info.get("numgrad", {})
    cpu = ours.get("cpu_model") or info.get("cpu", {}).get("brand_raw", "unknown CPU")
    cores = ours.get("cores") or info.get("cpu", {}).get("count", "?")
    parts = [f"{cpu}, {cores} cores", f"Python {info.get('python_version', '?')}"]
    if "numpy" in ours:
        parts.append(f"numpy {ours['numpy']}, BLAS: {'; '.join(ours.get('blas', [])) or '?'}")
    return " | ".join(parts)


def _interleaved_run(path: Path, data: dict) -> Run:
    """device_scaling.py and interleaved.py output: cases timed in alternating rounds."""
    machine = data.get("machine", {})
    description = (f"{machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores | "
                   f"numpy {machine.get('numpy', '?')}, BLAS: {'; '.join(machine.get('blas', []))}")
    sources = machine.get("engine_sources")
    run = Run(str(path), description,
              data.get("when", "") + (f", engine sources {sources}" if sources else ""))
    group = data.get("group", "device: seed net, loop evaluator, 1 image")
    for result in data.get("results", []):
        if not result.get("times"):
            continue
        times = sorted(result["times"])
        info = {k: v for k, v in result.items() if k != "times"}
        shares = [v for v in result.get("others_cpu", []) if v is not None]
        info["others_cpu"] = max(shares) if shares else None   # the worst repeat
        run.cases.append(Case(result.get("group", group), result["case"], info,
                              _quantile(times, 0.5),
                              _quantile(times, 0.25), _quantile(times, 0.75),
                              times[0], times[-1], len(times)))
    return run


def _quantile(values: list[float], q: float) -> float:
    position = q * (len(values) - 1)
    low = int(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


# --- tables ---------------------------------------------------------------------------------

def render_markdown(runs: list[Run]) -> str:
    """Markdown: for each run, its machine and one table per group; then, for groups
    measured in several runs, each case's ratio vs baseline in every run."""
    lines = []
    for run in runs:
        lines += [f"### {Path(run.source).name}", "", f"Machine: {run.machine}  ",
                  f"Run: {run.when}", ""]
        for group, cases in run.groups().items():
            lines += _group_table(group, cases)
    return "\n".join(lines + _across_runs(runs))


def _across_runs(runs: list[Run]) -> list[str]:
    """One table per group found in two or more runs: ratio vs baseline, run by run."""
    by_group: dict[str, list[tuple[str, list[Case]]]] = {}
    for run in runs:
        for group, cases in run.groups().items():
            by_group.setdefault(group, []).append((Path(run.source).stem, cases))
    lines = []
    for group, measured in sorted(by_group.items()):
        if len(measured) < 2:
            continue
        names = [name for name, _ in measured]
        lines += [f"**{group}: vs baseline in each run**", "",
                  "| case | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for key in _case_keys(measured):
            cells = [_ratio(_baseline(cases), _find(cases, key)) if _find(cases, key) else ""
                     for _, cases in measured]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    return (["### Ratios across runs", ""] + lines) if lines else []


def _case_key(case: Case) -> str:
    workers = case.info.get("workers")
    return f"{case.info.get('case', case.name)}" + (f" (workers={workers})" if workers else "")


def _case_keys(measured) -> list[str]:
    keys: list[str] = []
    for _, cases in measured:
        keys += [k for k in map(_case_key, cases) if k not in keys]
    return keys


def _find(cases: list[Case], key: str) -> Case | None:
    return next((c for c in cases if _case_key(c) == key), None)


def _group_table(group: str, cases: list[Case]) -> list[str]:
    baseline = _baseline(cases)
    lines = [f"**{group}**", "",
             "| case | workers | backend | evaluator | entries timed | median | IQR | min .. max "
             "| rounds | others' CPU | full gradient (est.) | vs baseline | efficiency |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        info = case.info
        lines.append(
            f"| {info.get('case', case.name)} | {info.get('workers') or ''} | "
            f"{info.get('backend', '')} | {info.get('evaluator', '')} | "
            f"{_entries(info)} | {_time(case.median)} | {_time(case.q3 - case.q1)} | "
            f"{_time(case.low)} .. {_time(case.high)} | {case.rounds} | {_others(case)} | "
            f"{_full(case)} | "
            f"{_ratio(baseline, case)} | {_efficiency(baseline, case)} |")
    return lines + [""]


def _baseline(cases: list[Case]) -> Case | None:
    return next((c for c in cases if c.info.get("role") == "baseline"), None)


def _entries(info: dict) -> str:
    entries, total = info.get("entries"), info.get("total_entries")
    if entries is None:
        return ""
    return f"{entries:,}" if entries == total else f"{entries:,} of {total:,}"


def _others(case: Case) -> str:
    """Other processes' share of the CPU while the case ran; '!' from 10% on."""
    share = case.info.get("others_cpu")
    if share is None or case.median * case.rounds < 0.5:   # too few clock ticks to tell
        return ""
    return f"{100 * share:.0f}%" + (" !" if share >= DISTURBED else "")


def _full(case: Case) -> str:
    return _time(case.full) + (f" (x{case.scale:,.1f})" if case.scale != 1 else "")


def _ratio(baseline: Case | None, case: Case) -> str:
    if baseline is None:
        return ""
    if case is baseline:
        return "baseline"
    ratio = baseline.full / case.full
    return f"{ratio:,.2f}x" if ratio < 100 else f"{ratio:,.0f}x"


def _efficiency(baseline: Case | None, case: Case) -> str:
    """Speedup per worker, for plotted cases on several workers with the baseline's evaluator."""
    workers = case.info.get("workers") or 0
    if (baseline is None or case is baseline or workers < 2 or not case.info.get("series")
            or case.info.get("evaluator") != baseline.info.get("evaluator")):
        return ""
    return f"{100 * baseline.full / case.full / workers:.0f}%"


def _time(seconds: float) -> str:
    for unit, factor in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= factor or unit == "us":
            value = seconds / factor
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:,.0f} {unit}"
    raise AssertionError("unreachable")


# --- plot -----------------------------------------------------------------------------------

def speedup_series(runs: list[Run]) -> dict[str, dict[int, list[float]]]:
    """``label -> {workers: [speedup in each run]}`` for every case with a ``series`` label."""
    series: dict[str, dict[int, list[float]]] = {}
    machine = lambda run: run.machine.split(" |")[0]   # CPU model and cores
    many = len({machine(run) for run in runs}) > 1
    for run in runs:
        for cases in run.groups().values():
            for label, points in _group_series(cases).items():
                key = f"{label} ({machine(run)})" if many else label
                for workers, speedup in points:
                    series.setdefault(key, {}).setdefault(workers, []).append(speedup)
    return series


def _group_series(cases: list[Case]) -> dict[str, list[tuple[int, float]]]:
    baseline = _baseline(cases)
    found: dict[str, list[tuple[int, float]]] = {}
    for case in cases:
        label = case.info.get("series")
        if not label or not case.info.get("workers"):
            continue
        reference = _reference(cases, baseline, case)
        if reference is not None:
            found.setdefault(label, []).append((case.info["workers"], reference.full / case.full))
    return found


def _reference(cases: list[Case], baseline: Case | None, case: Case) -> Case | None:
    if baseline is not None and baseline.info.get("evaluator") == case.info.get("evaluator"):
        return baseline
    return next((c for c in cases if c.info.get("series") == case.info.get("series")
                 and c.info.get("workers") == 1), None)


def plot_speedup(runs: list[Run], path: Path) -> Path | None:
    """Speedup vs workers, one line per series, with the ideal line; None if nothing to plot."""
    series = speedup_series(runs)
    if not series:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most = max(w for points in series.values() for w in points)
    figure, axes = plt.subplots(figsize=(7, 4.8))
    axes.plot([1, most], [1, most], "k--", linewidth=1, label="ideal (speedup = workers)")
    for number, (label, points) in enumerate(series.items()):
        workers = sorted(points)
        nudge = (number - (len(series) - 1) / 2) * 0.012 * most   # keep error bars apart
        middle = [statistics.median(points[w]) for w in workers]
        spread = [[m - min(points[w]) for w, m in zip(workers, middle)],
                  [max(points[w]) - m for w, m in zip(workers, middle)]]
        runs_note = f", median of {max(map(len, points.values()))} runs" \
            if max(map(len, points.values())) > 1 else ""
        axes.errorbar([w + nudge for w in workers], middle, yerr=spread, marker="o",
                      capsize=4, label=label + runs_note)
    axes.set_xlabel("workers")
    axes.set_ylabel("speedup (vs serial loop reference, or the\nsame evaluator at 1 worker)")
    axes.set_title("Numerical gradient of the 784-100-10 net: speedup vs workers")
    axes.set_xticks(sorted({w for points in series.values() for w in points}))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# --- command line ---------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Markdown tables and speedup.png from saved benchmark JSON "
                    "(pytest-benchmark --benchmark-json files, or device_scaling.py output).")
    parser.add_argument("results", nargs="+", type=Path, help="JSON files, one per run")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.md and speedup.png (default: print only)")
    parser.add_argument("--plot-name", default="speedup.png", help="file name of the plot")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.results]
    except (OSError, ValueError, KeyError) as exc:
        print(f"report.py: cannot read results: {exc}", file=sys.stderr)
        return 2
    markdown = render_markdown(runs)
    print(markdown)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.md").write_text(markdown + "\n")
        plot = plot_speedup(runs, args.out / args.plot_name)
        print(f"\nwrote {args.out / 'report.md'}" + (f" and {plot}" if plot else ""),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
