"""Write the mutation scores of `tools/mutate.py --json` results into tests/README.md.

    python tools/mutation_table.py results/planning.json results/planning-ids.json ...

Results of one module are combined in the order given: a later run (``--ids`` after tests
were added) replaces the status of the mutants it ran. The table between the README's
``<!-- mutation-scores:begin -->`` and ``<!-- mutation-scores:end -->`` markers keeps one row
per engine module: the modules of the results given get new rows, the others keep theirs,
and a module with no row yet is listed as not scored.

Every row's equivalent mutants are those registered in ``tools/equivalent_mutants/`` (see
`tools/mutate.py`); its score is killed / non-equivalent and its survivors column lists the
non-equivalent survivors only. A result whose mutants are not the module's as it is now (the
module changed since the run) is refused, and so is a registry entry that does not match.
"""
from __future__ import annotations

import argparse
import json
import re
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "tests" / "README.md"
BEGIN, END = "<!-- mutation-scores:begin -->", "<!-- mutation-scores:end -->"
HEADER = ["| module | tests given | killed / total | equivalent | killed / non-equivalent "
          "| survivors not equivalent | wall time |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
_mutate = runpy.run_path(str(Path(__file__).with_name("mutate.py")))   # a script, not a package


def current_mutants(module: str) -> list:
    return _mutate["list_mutants"]((ROOT / module).read_text())


def combine(paths: list[Path]) -> dict[str, dict]:
    """Per module: its mutants' latest status by id, the commands' tests and the wall times.

    Raises ValueError when a result's mutant is not the current module's mutant of that id.
    """
    modules: dict[str, dict] = {}
    for path in paths:
        result = json.loads(path.read_text())
        name = result["module"]
        if name not in modules:
            modules[name] = {"status": {}, "runs": [],
                             "now": {m.id: m for m in current_mutants(name)}}
        module = modules[name]
        for mutant in result["mutants"]:
            now = module["now"].get(mutant["id"])
            if now is None or (now.before, now.after) != (mutant["before"], mutant["after"]):
                raise ValueError(f"{path}: mutant #{mutant['id']} of {name} was "
                                 f"`{mutant['before']}` -> `{mutant['after']}`, not the module's "
                                 "mutant of that id now: the module changed since this run")
            module["status"][mutant["id"]] = mutant["status"]
        module["runs"].append(result)
    return modules


def row(name: str, tests: str, killed: int, total: int, survivors: list[int],
        minutes: str) -> str:
    """A table row; the registered equivalent mutants are left out of the score."""
    registered = set(_mutate["equivalents"](name, current_mutants(name)))
    gaps = [i for i in survivors if i not in registered]
    counted = total - len(registered)
    return (f"| `{name}` | {tests} | {killed} / {total} | {len(registered)} | "
            f"{killed} / {counted} ({100 * killed / max(1, counted):.1f}%) | "
            f"{', '.join(f'#{i}' for i in gaps) or 'none'} | {minutes} |")


def rows_of_results(modules: dict[str, dict]) -> dict[str, str]:
    out = {}
    for name, module in modules.items():
        status = dict.fromkeys(module["now"], "not run") | module["status"]
        killed = sum(s in ("killed", "timeout") for s in status.values())
        given = dict.fromkeys(t for run in module["runs"] for t in run["tests"])   # in order, once
        keywords = dict.fromkeys(run["keyword"] for run in module["runs"] if run.get("keyword"))
        tests = "`" + " ".join(given) + "".join(f' -k "{k}"' for k in keywords) + "`"
        minutes = " + ".join(f'{run["wall_seconds"] / 60:.1f}' for run in module["runs"]
                             if "wall_seconds" in run)
        # a mutant never run and not registered counts as a survivor: not shown to be killed
        open_ = sorted(i for i, s in status.items() if s in ("survived", "not run"))
        out[name] = row(name, tests, killed, len(status), open_, f"{minutes} min")
    return out


def kept_row(line: str) -> tuple[str, str]:
    """(module, row) of a row already in the table, its equivalents recounted."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    name = cells[0].strip("`")
    if "not scored" in line:
        return name, line
    killed, total = (int(n) for n in cells[2].split("/"))
    survivors = [int(n) for n in re.findall(r"#(\d+)", cells[-2])]
    return name, row(name, cells[1], killed, total, survivors, cells[-1])


def engine_modules() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "engine").rglob("*.py")
                  if p.name != "__init__.py")


def table(old_lines: list[str], new_rows: dict[str, str]) -> list[str]:
    rows = dict(kept_row(line) for line in old_lines if line.startswith("| `"))
    rows.update(new_rows)
    for name in engine_modules():
        rows.setdefault(name, f"| `{name}` | | not scored | | | | |")
    return HEADER + [rows[name] for name in sorted(rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path,
                        help="--json files of tools/mutate.py (none: recount the table)")
    args = parser.parse_args(argv)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"{README} has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    old, tail = rest.split(END, 1)
    try:
        lines = table(old.strip().splitlines(), rows_of_results(combine(args.results)))
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    README.write_text(f"{head}{BEGIN}\n" + "\n".join(lines) + f"\n{END}{tail}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
