"""tools/mutate.py makes the mutants it documents, one change each, and leaves prose alone."""
import ast
import runpy
from pathlib import Path

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutate.py"
generate = runpy.run_path(str(TOOL))["generate"]     # a script, not a package: load it by path

SOURCE = '''"""Module docstring."""
__all__ = ["f"]
LIMIT: int = 2


def f(a: int = 3, flag=True) -> int:
    """Docstring."""
    if a < LIMIT and not flag:
        raise ValueError(f"bad {a + 1}")
    log(min(a, 0))
    return -a * 2
'''


def test_the_documented_mutants_and_no_others():
    found = {(m.line, m.before, m.after) for m, _ in generate(SOURCE)}
    assert found == {
        (3, "2", "3"),
        (6, "3", "4"),
        (6, "True", "False"),
        (8, "a < LIMIT and (not flag)", "a < LIMIT or not flag"),
        (8, "a < LIMIT", "a <= LIMIT"),
        (8, "not flag", "flag"),
        (8, "if a < LIMIT and (not flag):", "if not (a < LIMIT and (not flag)):"),
        (9, "raise ValueError(f'bad {a + 1}')", "pass"),
        (10, "log(min(a, 0))", "pass"),
        (10, "min", "max"),
        (10, "0", "1"),
        (11, "return -a * 2", "return None"),
        (11, "-a * 2", "-a / 2"),
        (11, "-a", "a"),
        (11, "2", "3"),
    }


def test_each_mutant_is_one_change_to_valid_python():
    original = ast.dump(ast.parse(SOURCE))
    sources = [source for _, source in generate(SOURCE)]
    assert len(set(sources)) == len(sources)
    for source in sources:
        assert ast.dump(ast.parse(source)) != original
