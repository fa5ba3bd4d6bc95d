"""Mutation testing for one module: put small bugs into a copy of it, one at a time, and
see whether the given tests catch each.

    nice -n 15 python tools/mutate.py engine/fd/_space.py tests/test_space.py tests/test_serial.py

Each mutant is one single-point change to the module's syntax tree (see `_mutations`):
an arithmetic or comparison operator swapped, `and`/`or` swapped, a `not` or a minus sign
dropped, an `if`/`while` condition negated, a number moved by one, a boolean flipped,
`min`/`max` swapped, a call statement or a `raise` replaced by `pass`, a returned value
replaced by `None`. Docstrings, annotations, strings, f-strings and `__all__` are left alone.

The whole project is copied to a temporary folder first; each mutant is written into that
copy and the tests run there with the copy first on PYTHONPATH (workers the tests start
inherit it), so an interrupted run can never leave the working tree mutated. A mutant is
*killed* when the tests fail or run past the time limit, *survived* when they pass.

Some mutants change nothing a caller can see (`x.reshape(-1)` -> `x.reshape(-2)`). Each one
argued so is registered in ``tools/equivalent_mutants/<dotted module>.toml``, one table per
mutant id with the mutation's text and why:

    [63]
    was = "grad.reshape(-1)"
    becomes = "grad.reshape(-2)"
    why = "NumPy infers any negative size"

Registered mutants are not run (status "equivalent"). The score is killed / non-equivalent.
An entry whose text is not that mutant's any more (ids move when the module changes) stops
the tool before any work, naming the ids that now carry that text.

Exit status: 0, or 1 when the score is below ``--fail-under``, or 2 when the unmutated module
already fails its tests or the registry does not match it.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "equivalent_mutants"
_SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".benchmarks",
                 "runs", "build", "mutants"}

_BINARY_SWAPS = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult,
    ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}
_COMPARE_SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_NAME_SWAPS = {"min": "max", "max": "min"}


@dataclass
class Mutant:
    """One single-point change: where it is, what it was, what it became."""

    id: int
    line: int
    before: str
    after: str
    status: str = "not run"     # killed, timeout, survived, equivalent
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)   # with --record: the tests that failed

    def describe(self, module: str) -> str:
        return f"#{self.id} {module}:{self.line}: `{self.before}` -> `{self.after}`"


# --- generating mutants -------------------------------------------------------------------

def _mutations(node: ast.AST) -> list[tuple[ast.AST, str]]:
    """The replacements for `node` (new node, short label), none if it is not mutable."""
    out = []
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_SWAPS:
        out.append(_replace(node, op=_BINARY_SWAPS[type(node.op)]()))
    elif isinstance(node, ast.AugAssign) and type(node.op) in _BINARY_SWAPS:
        out.append(_replace(node, op=_BINARY_SWAPS[type(node.op)]()))
    elif isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE_SWAPS:
                ops = list(node.ops)
                ops[i] = _COMPARE_SWAPS[type(op)]()
                out.append(_replace(node, ops=ops))
    elif isinstance(node, ast.BoolOp):
        out.append(_replace(node, op=ast.Or() if isinstance(node.op, ast.And) else ast.And()))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
        out.append(node.operand)
    elif isinstance(node, ast.Constant) and type(node.value) is bool:
        out.append(ast.Constant(not node.value))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        out.append(ast.Constant(node.value + 1))
    elif isinstance(node, ast.Name) and node.id in _NAME_SWAPS and isinstance(node.ctx, ast.Load):
        out.append(ast.Name(_NAME_SWAPS[node.id], ast.Load()))
    elif isinstance(node, (ast.If, ast.While)) and not (
            isinstance(node.test, ast.UnaryOp) and isinstance(node.test.op, ast.Not)):
        # (a test that is a `not` is already mutated by dropping the `not`)
        out.append(_replace(node, test=ast.UnaryOp(ast.Not(), node.test)))
    elif isinstance(node, ast.Return) and not _is_none(node.value):
        out.append(ast.Return(ast.Constant(None)))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append(ast.Pass())
    elif isinstance(node, ast.Raise):
        out.append(ast.Pass())
    return [(new, _snippet(new)) for new in out]


def _replace(node: ast.AST, **fields) -> ast.AST:
    new = copy.copy(node)
    for name, value in fields.items():
        setattr(new, name, value)
    return new


def _is_none(node: ast.AST | None) -> bool:
    return node is None or isinstance(node, ast.Constant) and node.value is None


def _snippet(node: ast.AST, width: int = 70) -> str:
    if isinstance(node, (ast.If, ast.While)):
        text = f"{type(node).__name__.lower()} {ast.unparse(node.test)}:"
    else:
        text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= width else text[:width - 3] + "..."


def _left_alone(tree: ast.Module) -> set[int]:
    """ids of the nodes never mutated: docstrings, annotations, strings, `__all__`."""
    skip: set[int] = set()

    def skip_all(node):
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip_all(node)                                   # docstrings
        elif isinstance(node, ast.arg):
            skip_all(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip_all(node.returns)
        elif isinstance(node, ast.AnnAssign):
            skip_all(node.annotation)
        elif isinstance(node, ast.JoinedStr):
            skip_all(node)                                   # messages
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            skip_all(node)
    return skip


def list_mutants(source: str) -> list[Mutant]:
    """The mutants `generate` makes, without their sources: one parse, for listing."""
    tree = ast.parse(source)
    skip = _left_alone(tree)
    return [Mutant(index, node.lineno, _snippet(node), after)
            for index, (node, after) in enumerate(
                ((n, after) for n in ast.walk(tree) if id(n) not in skip
                 for _, after in _mutations(n)), start=1)]


def generate(source: str) -> list[tuple[Mutant, str]]:
    """Every mutant of `source`, each with the whole mutated module's source.

    Mutants are numbered in the order of a breadth-first walk of the tree, so a mutant's
    id stays the same while the module does.
    """
    tree = ast.parse(source)
    skip = _left_alone(tree)
    targets = [n for n in ast.walk(tree) if id(n) not in skip and _mutations(n)]
    mutants = []
    for index in range(len(targets)):
        # A fresh tree per target, so each mutant holds exactly one change.
        for choice in range(len(_mutations(targets[index]))):
            fresh = ast.parse(source)
            fresh_skip = _left_alone(fresh)
            node = [n for n in ast.walk(fresh) if id(n) not in fresh_skip and _mutations(n)][index]
            new, after = _mutations(node)[choice]
            _swap_in(fresh, node, ast.copy_location(new, node))
            mutant = Mutant(len(mutants) + 1, node.lineno, _snippet(node), after)
            mutants.append((mutant, ast.unparse(ast.fix_missing_locations(fresh)) + "\n"))
    return mutants


def _swap_in(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
                return
            if isinstance(value, list) and any(item is old for item in value):
                value[[i for i, item in enumerate(value) if item is old][0]] = new
                return
    raise LookupError("node not found in its own tree")


# --- equivalent mutants ---------------------------------------------------------------------

def registry_path(module: str, folder: Path = EQUIVALENTS) -> Path:
    """Where `module`'s equivalent mutants are registered: engine/fd/_space.py ->
    <folder>/engine.fd._space.toml."""
    return folder / (module.removesuffix(".py").replace("/", ".") + ".toml")


def equivalents(module: str, mutants: list[Mutant], folder: Path = EQUIVALENTS) -> dict[int, str]:
    """The registered equivalent mutants of `module`: id -> why (empty without a file).

    Raises ValueError naming the entry when an entry's id is not a mutant of the module as
    it is, or its `was` / `becomes` text is not that mutant's, or it gives no reason.
    """
    path = registry_path(module, folder)
    if not path.is_file():
        return {}
    by_id = {m.id: m for m in mutants}
    found = {}
    for key, entry in tomllib.loads(path.read_text()).items():
        where = f"{path.name} [{key}]"
        if not key.isdigit() or int(key) not in by_id:
            raise ValueError(f"{where}: {module} has no mutant #{key} "
                             f"(it has #1 to #{len(mutants)})")
        if not isinstance(entry, dict) or not str(entry.get("why", "")).strip():
            raise ValueError(f"{where}: give `was`, `becomes` and a `why`")
        mutant = by_id[int(key)]
        if (entry.get("was"), entry.get("becomes")) != (mutant.before, mutant.after):
            now = [f"#{m.id}" for m in mutants
                   if (m.before, m.after) == (entry.get("was"), entry.get("becomes"))]
            raise ValueError(
                f"{where}: mutant #{key} is now `{mutant.before}` -> `{mutant.after}`, not "
                f"`{entry.get('was')}` -> `{entry.get('becomes')}`; that text is "
                + (f"now {', '.join(now)}" if now else "no mutant's any more")
                + ": the module changed, update the registry")
        found[mutant.id] = entry["why"]
    return found


def toml_entry(mutant: Mutant) -> str:
    """`mutant` as a registry table, its `why` left to fill in."""
    quote = json.dumps     # a JSON string is a valid TOML basic string
    return (f"[{mutant.id}]   # line {mutant.line}\nwas = {quote(mutant.before)}\n"
            f"becomes = {quote(mutant.after)}\nwhy = \"\"\n")


# --- running the tests ---------------------------------------------------------------------

def _copy_project(destination: Path) -> None:
    shutil.copytree(ROOT, destination, ignore=lambda folder, names: [
        n for n in names if n in _SKIPPED_DIRS or n.endswith(".egg-info")])


def _run_tests(sandbox: Path, tests: list[str], keyword: str | None, timeout: float,
               record: bool = False) -> tuple[str, list[str]]:
    """('killed', 'timeout' or 'survived', the failed tests when `record`).

    Without `record` the run stops at the first failure (-x). The run's process group is
    ended on timeout.
    """
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    command += [] if record else ["-x"]
    if keyword:
        command += ["-k", keyword]
    env = dict(os.environ, PYTHONPATH=str(sandbox), PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, cwd=sandbox, env=env, start_new_session=True,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return "timeout", []
        log.seek(0)
        failed = [line.split(" ", 1)[1].rstrip("\n") for line in log
                  if line.startswith(("FAILED ", "ERROR "))]
    if code == 5:
        raise SystemExit(f"pytest collected no tests from {tests}")
    return ("survived" if code == 0 else "killed"), failed


def node_ids(summaries: list[str], collected: list[str]) -> list[str]:
    """The node ids of pytest's short-summary lines (``id - message``): the longest collected
    id each line starts with, so that a parametrized id holding spaces is read whole; else
    the line up to its first space."""
    out = []
    for line in summaries:
        found = [c for c in collected if line == c or line.startswith(c + " ")]
        out.append(max(found, key=len) if found else line.split(" ", 1)[0])
    return out


def _check_sandbox_imports(sandbox: Path, module: str) -> None:
    """Make sure the tests will import the copy, not an installed `engine`."""
    name = module.removesuffix(".py").replace("/", ".")
    env = dict(os.environ, PYTHONPATH=str(sandbox), PYTHONDONTWRITEBYTECODE="1")
    found = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__file__)"],
                           cwd=sandbox, env=env, capture_output=True, text=True, check=True)
    if not Path(found.stdout.strip()).resolve().is_relative_to(sandbox.resolve()):
        raise SystemExit(f"{name} is imported from {found.stdout.strip()}, not from the copy")


def _collect(sandbox: Path, tests: list[str], keyword: str | None) -> list[str]:
    """The node ids of the tests that a run would execute."""
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
               *tests] + (["-k", keyword] if keyword else [])
    env = dict(os.environ, PYTHONPATH=str(sandbox), PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(command, cwd=sandbox, env=env, capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "::" in line]


def run(module: str, tests: list[str], keyword: str | None, timeout: float | None,
        ids: set[int] | None, record: bool = False) -> tuple[list[Mutant], float, list[str]]:
    """Run every selected mutant of `module`.

    Returns the mutants, the clean run's seconds, and (with `record`) the node ids of
    the tests run, else an empty list.
    """
    original = (ROOT / module).read_text()
    every = generate(original)
    try:
        equivalent = equivalents(module, [m for m, _ in every])
    except ValueError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None
    for mutant, _ in every:
        if mutant.id in equivalent:
            mutant.status = "equivalent"
    mutants = [(m, src) for m, src in every if not ids or m.id in ids]
    with tempfile.TemporaryDirectory(prefix="mutate-") as folder:
        sandbox = Path(folder) / "project"
        _copy_project(sandbox)
        _check_sandbox_imports(sandbox, module)
        target = sandbox / module
        start = time.perf_counter()
        status, failed = _run_tests(sandbox, tests, keyword, timeout=3600)
        if status != "survived":
            print(f"the tests fail on the unmutated {module}: {failed}", file=sys.stderr)
            raise SystemExit(2)
        clean = time.perf_counter() - start
        collected = _collect(sandbox, tests, keyword) if record else []
        limit = timeout or max(30.0, 5 * clean)
        print(f"{module}: {len(mutants)} mutants; clean run {clean:.1f} s, limit {limit:.0f} s",
              flush=True)
        for mutant, source in mutants:
            if mutant.status == "equivalent":
                print(f"  {mutant.status:8} {mutant.describe(module)}", flush=True)
                continue
            target.write_text(source)
            start = time.perf_counter()
            mutant.status, failed = _run_tests(sandbox, tests, keyword, limit, record)
            mutant.failed = node_ids(failed, collected)
            mutant.seconds = round(time.perf_counter() - start, 2)
            print(f"  {mutant.status:8} {mutant.describe(module)}", flush=True)
        target.write_text(original)
    return [m for m, _ in mutants], clean, collected


def score(mutants: list[Mutant]) -> float:
    """Killed / non-equivalent, in percent (100 when every mutant is equivalent)."""
    killed = sum(m.status in ("killed", "timeout") for m in mutants)
    counted = sum(m.status != "equivalent" for m in mutants)
    return 100.0 * killed / counted if counted else 100.0


def report(module: str, mutants: list[Mutant], collected: list[str]) -> float:
    """Print the score, the survivors and (with `collected`) the tests that never failed.

    Returns the score (killed / non-equivalent) in percent.
    """
    killed = sum(m.status in ("killed", "timeout") for m in mutants)
    equivalent = sum(m.status == "equivalent" for m in mutants)
    print(f"\n{module}: {killed} / {len(mutants)} killed, {equivalent} equivalent; "
          f"{killed} / {len(mutants) - equivalent} non-equivalent killed "
          f"({score(mutants):.1f}%)")
    for m in mutants:
        if m.status == "survived":
            print(f"  survived {m.describe(module)}")
    failed = {name for m in mutants for name in m.failed}
    idle = [name for name in collected if name not in failed]
    if collected:
        print(f"{len(collected) - len(idle)} of {len(collected)} tests failed on some mutant; "
              f"these on none:" if idle else "every test failed on some mutant")
        for name in idle:
            print(f"  {name}")
    return score(mutants)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("module", help="the module to mutate, relative to the project root, "
                                       "e.g. engine/fd/_space.py")
    parser.add_argument("tests", nargs="+", help="test files or node ids that cover it")
    parser.add_argument("-k", dest="keyword", help="passed to pytest's -k")
    parser.add_argument("--timeout", type=float, help="seconds per mutant before it counts as "
                                                      "killed (default: 5x the clean run, >= 30)")
    parser.add_argument("--ids", help="run only these mutants, e.g. 3,17,20")
    parser.add_argument("--list", action="store_true",
                        help="list the mutants (those of --ids), run nothing")
    parser.add_argument("--toml", action="store_true",
                        help="with --list: print them as tables of the equivalent-mutant "
                             "registry, to paste and give a reason")
    parser.add_argument("--record", action="store_true",
                        help="run every test on every mutant (no -x), record which fail, and "
                             "list the tests that failed on no mutant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--fail-under", type=float, default=0.0,
                        help="exit 1 when the score (percent) is below this")
    args = parser.parse_args(argv)
    if not (ROOT / args.module).is_file():
        parser.error(f"no module {args.module} under {ROOT}")
    ids = {int(i) for i in args.ids.split(",")} if args.ids else None
    if args.list:
        for mutant in list_mutants((ROOT / args.module).read_text()):
            if not ids or mutant.id in ids:
                print(toml_entry(mutant) if args.toml else mutant.describe(args.module))
        return 0
    started = time.monotonic()
    mutants, clean, collected = run(args.module, args.tests, args.keyword, args.timeout, ids,
                                    args.record)
    percent = report(args.module, mutants, collected)
    if args.json:
        args.json.write_text(json.dumps({"module": args.module, "tests": args.tests,
                                         "keyword": args.keyword, "ids": args.ids,
                                         "clean_seconds": clean, "score": percent,
                                         "wall_seconds": time.monotonic() - started,
                                         "mutants": [asdict(m) for m in mutants]}, indent=1))
    return 1 if percent < args.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())
