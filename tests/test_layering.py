"""Imports run one way: data and model below the engine, the engine below nets, trainer and CLIs."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "engine"

LEVEL = {
    # data and the layered model
    "errors": 0, "functions": 0, "data": 0, "layers": 1, "model": 2, "_loss_by_class": 2,
    # the gradient engine: what is perturbed, how chunks are evaluated, where they run
    "space": 3, "schemes": 3, "payload": 3, "_threads": 3, "evaluators": 4, "batched": 4, "_worker": 5,
    "backends": 6, "_dask": 6, "serial": 7, "parallel": 7,
    # above the engine
    "nets": 8, "gradcheck": 9, "checkpoint": 9, "plots": 9, "training": 9, "train": 10,
    "__init__": 11,
}


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
    higher = {name for name in engine_imports(path) if LEVEL[name] > LEVEL[path.stem]}
    assert not higher, f"{path.stem} imports {higher}"
