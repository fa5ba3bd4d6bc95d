"""Write the mutation scores of `tools/mutate.py --json` results into tests/README.md.

    python tools/mutation_table.py results/planning.json results/planning-ids.json ...

Results of one module are combined in the order given: a later run (``--ids`` after tests
were added) replaces the status of the mutants it ran. The table replaces the lines between
the README's ``<!-- mutation-scores:begin -->`` and ``<!-- mutation-scores:end -->`` markers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "tests" / "README.md"
BEGIN, END = "<!-- mutation-scores:begin -->", "<!-- mutation-scores:end -->"


def combine(paths: list[Path]) -> dict[str, dict]:
    """Per module: its mutants' latest status by id, the commands' tests and the wall times."""
    modules: dict[str, dict] = {}
    for path in paths:
        result = json.loads(path.read_text())
        module = modules.setdefault(result["module"], {"status": {}, "runs": []})
        for mutant in result["mutants"]:
            module["status"][mutant["id"]] = mutant["status"]
        module["runs"].append(result)
    return modules


def rows(modules: dict[str, dict]) -> list[str]:
    lines = ["| module | tests given | killed / total | score | survivors | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, module in modules.items():
        status = module["status"]
        killed = sum(s in ("killed", "timeout") for s in status.values())
        survivors = sorted(i for i, s in status.items() if s == "survived")
        given = dict.fromkeys(t for run in module["runs"] for t in run["tests"])   # in order, once
        keywords = dict.fromkeys(run["keyword"] for run in module["runs"] if run.get("keyword"))
        tests = " ".join(given) + "".join(f' -k "{k}"' for k in keywords)
        minutes = " + ".join(f'{run["wall_seconds"] / 60:.1f}' for run in module["runs"]
                             if "wall_seconds" in run)
        lines.append(f"| `{name}` | `{tests}` | {killed} / {len(status)} | "
                     f"{100 * killed / max(1, len(status)):.1f}% | "
                     f"{', '.join(f'#{i}' for i in survivors) or 'none'} | {minutes} min |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="--json files of tools/mutate.py")
    args = parser.parse_args(argv)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"{README} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    table = "\n".join(rows(combine(args.results)))
    README.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
