"""Imports run one way: data and model below the engine, the engine below nets, trainer and CLIs."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "engine"
MODULES = sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("cli/*.py"))

LEVEL = {
    # data and the layered model
    "_errors": 0, "_functions": 0, "_data": 0, "_mnist_idx": 1, "_layers": 1, "_model": 2,
    "_loss_by_class": 2,
    # the gradient engine: what is perturbed, how chunks are evaluated, where they run
    "_space": 3, "_schemes": 3, "_payload": 3, "_threads": 3, "_execution": 3, "_shared_memory": 3,
    "_evaluators": 4, "_batched": 4, "_planning": 4, "_worker": 5, "_backends": 6, "_dask": 6,
    "_serial": 7, "_gradient": 7, "_parallel": 8,
    # above the engine
    "_nets": 9, "_gradcheck": 10, "_checkpoint": 10, "_plots": 10, "_training": 10,
    "_run_folder": 11, "__init__": 11,
    # the command lines
    "cli": 12,
}

# Imports within one level, each on purpose (a lazy import of an optional part).
SAME_LEVEL = {("_evaluators", "_batched"), ("_backends", "_dask")}


def module_name(path: Path) -> str:
    return "cli" if path.parent.name == "cli" else path.stem


def engine_imports(path: Path) -> set[str]:
    """The engine modules `path` imports, by their `LEVEL` names (every command is "cli")."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and path.parent.name == "cli":
                raise AssertionError(f"cli/{path.name}: a relative import reads as engine.cli's "
                                     f"own module; import engine._... by name: {ast.unparse(node)}")
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("engine."):
                names.add(node.module.split(".")[1])
            elif node.level or node.module == "engine":
                raise AssertionError(f"{path.name}: import from the package, not a module: "
                                     f"{ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("engine."))
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: f"{p.parent.name}.{p.stem}")
def test_no_module_imports_a_higher_one(path):
    name = module_name(path)
    assert name in LEVEL, f"add {name} to LEVEL in {__file__}"
    imports = engine_imports(path)
    unknown = imports - set(LEVEL)
    assert not unknown, f"add {unknown} to LEVEL in {__file__}"
    higher = {other for other in imports if LEVEL[other] > LEVEL[name]}
    assert not higher, f"{name} imports {higher}"
    same = {other for other in imports if LEVEL[other] == LEVEL[name]} - {name}
    assert same <= {b for a, b in SAME_LEVEL if a == name}, f"{name} imports {same}"


def test_the_import_graph_has_no_cycle():
    graph = {}
    for path in MODULES:
        graph.setdefault(module_name(path), set()).update(engine_imports(path) - {module_name(path)})
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
