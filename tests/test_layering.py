"""Imports run one way: the finite-difference core below the runtime, the engine below nets and trainer.

Each subpackage of `engine` holds one concern and has a level; a module may import its
own package and lower levels, never a higher level or another package of its own level.
Within a package, and across the whole tree, the imports form no cycle.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "engine"
MODULES = sorted(PACKAGE.rglob("*.py"))

LEVEL = {
    # shared exception types
    "_errors": 0,
    # what is perturbed and how a chunk is evaluated by the loop; the data; the layered model
    "fd": 1, "data": 1, "nn": 1,
    # the batched evaluator and the detection of a model's loss
    "batched": 2,
    # where chunks run: execution options, planner, worker loop, pools, shared memory, Dask
    "run": 3,
    # the derivative objects and one-shot calls users hold: gradients, Jacobians
    "derivatives": 4,
    # above the engine: the book's nets, then gradient check and training
    "book": 5,
    "train": 6,
    "__init__": 7,
    # the command lines
    "cli": 8,
}


def unit_of(path: Path) -> str:
    """The `LEVEL` name of a module: its subpackage, or its own name at the top."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def module_of(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def engine_imports(path: Path) -> set[str]:
    """The engine modules `path` imports, as dotted names (``engine.fd._space``)."""
    package = module_of(path).rsplit(".", 1)[0] if path.stem != "__init__" else module_of(path)[:-9]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level and unit_of(path) == "cli":
                raise AssertionError(f"cli/{path.name}: import engine's modules by name: "
                                     f"{ast.unparse(node)}")
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                if node.module:
                    names.add(".".join(base + node.module.split(".")))
                else:   # from . import _module
                    names.update(".".join(base + [alias.name]) for alias in node.names)
            elif node.module and node.module.startswith("engine."):
                names.add(node.module)
            elif node.module == "engine":
                raise AssertionError(f"{path.name}: import from the package, not a module: "
                                     f"{ast.unparse(node)}")
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("engine."))
    return names


def unit_of_name(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


@pytest.mark.parametrize("path", MODULES, ids=module_of)
def test_no_module_imports_a_higher_one(path):
    unit = unit_of(path)
    assert unit in LEVEL, f"add {unit} to LEVEL in {__file__}"
    imported = {unit_of_name(name) for name in engine_imports(path)}
    unknown = imported - set(LEVEL)
    assert not unknown, f"add {unknown} to LEVEL in {__file__}"
    higher = {other for other in imported if LEVEL[other] > LEVEL[unit]}
    assert not higher, f"{module_of(path)} imports {higher}"
    same = {other for other in imported if LEVEL[other] == LEVEL[unit]} - {unit}
    assert not same, f"{module_of(path)} imports {same}, a package of its own level"


def test_every_import_names_a_module_that_exists():
    known = {module_of(path) for path in MODULES}
    known |= {name[:-9] for name in known if name.endswith(".__init__")}
    for path in MODULES:
        missing = engine_imports(path) - known
        assert not missing, f"{module_of(path)} imports {missing}"


def test_the_import_graph_has_no_cycle():
    graph = {module_of(path): engine_imports(path) - {module_of(path)} for path in MODULES}
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


def test_each_package_init_is_small():
    for path in PACKAGE.rglob("__init__.py"):
        if path.parent != PACKAGE:
            assert len(path.read_text().splitlines()) <= 20, f"{path} holds code: keep it small"
