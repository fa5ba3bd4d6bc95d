"""Imports run one way: data and model below the engine, the engine below nets, trainer and CLIs."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "engine"

LEVEL = {
    # data and the layered model
    "errors": 0, "functions": 0, "data": 0, "layers": 1, "model": 2, "_loss_by_class": 2,
    # the gradient engine: what is perturbed, how chunks are evaluated, where they run
    "space": 3, "schemes": 3, "payload": 3, "_threads": 3, "execution": 3,
    "evaluators": 4, "batched": 4, "_worker": 5, "backends": 6, "_dask": 6,
    "serial": 7, "gradient": 7, "parallel": 8,
    # above the engine
    "nets": 9, "gradcheck": 10, "checkpoint": 10, "plots": 10, "training": 10, "train": 11,
    "__init__": 12,
}

# Imports within one level, each on purpose (a lazy import of an optional part).
SAME_LEVEL = {("evaluators", "batched"), ("backends", "_dask")}


def engine_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("engine."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("engine."))
    return names


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_no_module_imports_a_higher_one(path):
    assert path.stem in LEVEL, f"add {path.stem} to LEVEL in {__file__}"
    imports = engine_imports(path)
    unknown = imports - set(LEVEL)
    assert not unknown, f"add {unknown} to LEVEL in {__file__}"
    higher = {name for name in imports if LEVEL[name] > LEVEL[path.stem]}
    assert not higher, f"{path.stem} imports {higher}"
    same = {name for name in imports if LEVEL[name] == LEVEL[path.stem]} - {path.stem}
    assert same <= {b for a, b in SAME_LEVEL if a == path.stem}, f"{path.stem} imports {same}"


def test_the_import_graph_has_no_cycle():
    graph = {path.stem: engine_imports(path) - {path.stem} for path in PACKAGE.glob("*.py")}
    done, active = set(), []

    def visit(node):
        assert node not in active, f"import cycle: {' -> '.join(active + [node])}"
        if node in done:
            return
        active.append(node)
        for name in graph.get(node, ()):
            visit(name)
        active.pop()
        done.add(node)

    for node in graph:
        visit(node)
