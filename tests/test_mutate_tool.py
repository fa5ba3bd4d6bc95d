"""tools/mutate.py makes the mutants it documents, one change each, and leaves prose alone;
its registry of equivalent mutants matches the module as it is, or stops the tool."""
import ast
import runpy
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutate.py"
_tool = runpy.run_path(str(TOOL))      # a script, not a package: load it by path
generate, equivalents, toml_entry, score = (
    _tool[name] for name in ("generate", "equivalents", "toml_entry", "score"))

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


def test_the_listed_mutants_are_those_generated():
    listed = _tool["list_mutants"](SOURCE)
    assert [(m.id, m.line, m.before, m.after) for m in listed] == [
        (m.id, m.line, m.before, m.after) for m, _ in generate(SOURCE)]
    engine = (TOOL.parent.parent / "engine" / "run" / "_job.py").read_text()
    assert [(m.id, m.before, m.after) for m in _tool["list_mutants"](engine)] == [
        (m.id, m.before, m.after) for m, _ in generate(engine)]


def test_each_mutant_is_one_change_to_valid_python():
    original = ast.dump(ast.parse(SOURCE))
    sources = [source for _, source in generate(SOURCE)]
    assert len(set(sources)) == len(sources)
    for source in sources:
        assert ast.dump(ast.parse(source)) != original


MODULE = "pkg/mod.py"


def _mutants():
    return [m for m, _ in generate(SOURCE)]


def _register(folder, text):
    (folder / "pkg.mod.toml").write_text(text)


def _by_text(before, after):
    return next(m for m in _mutants() if (m.before, m.after) == (before, after))


def test_a_registry_table_printed_by_the_tool_registers_that_mutant(tmp_path):
    mutant = _by_text("-a", "a")
    _register(tmp_path, toml_entry(mutant).replace('why = ""', 'why = "a test"'))
    assert equivalents(MODULE, _mutants(), tmp_path) == {mutant.id: "a test"}


def test_no_registry_means_no_equivalent_mutant(tmp_path):
    assert equivalents(MODULE, _mutants(), tmp_path) == {}


def test_an_entry_whose_text_moved_to_another_id_names_the_new_id(tmp_path):
    mutant = _by_text("-a", "a")
    other = _by_text("2", "3")
    _register(tmp_path, toml_entry(mutant).replace(f"[{mutant.id}]", f"[{other.id}]")
              .replace('why = ""', 'why = "moved"'))
    with pytest.raises(ValueError, match=rf"#{other.id} is now `2` -> `3`.* now #{mutant.id}:"):
        equivalents(MODULE, _mutants(), tmp_path)


@pytest.mark.parametrize("entry, message", [
    ('[999]\nwas = "-a"\nbecomes = "a"\nwhy = "x"\n', "has no mutant #999"),
    ('[1]\nwas = "nothing"\nbecomes = "like it"\nwhy = "x"\n', "no mutant's any more"),
    ('[1]\nwas = "2"\nbecomes = "3"\nwhy = " "\n', "a `why`"),
], ids=["unknown-id", "text-of-no-mutant", "no-reason"])
def test_a_registry_entry_that_does_not_fit_the_module_is_refused(tmp_path, entry, message):
    _register(tmp_path, entry)
    with pytest.raises(ValueError, match=message):
        equivalents(MODULE, _mutants(), tmp_path)


def test_the_score_leaves_equivalent_mutants_out():
    mutants = _mutants()[:5]
    for mutant, status in zip(mutants, ["killed", "timeout", "survived", "equivalent",
                                        "equivalent"]):
        mutant.status = status
    assert score(mutants) == pytest.approx(200 / 3)
    for mutant in mutants:
        mutant.status = "equivalent"
    assert score(mutants) == 100.0


_table_tool = runpy.run_path(str(TOOL.with_name("mutation_table.py")))


def _result(tmp_path, mutants):
    import json
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"module": "engine/fd/_space.py", "tests": ["t.py"],
                                "keyword": None, "wall_seconds": 60, "mutants": mutants}))
    return path


def _first_killed():
    first = _tool["list_mutants"]((TOOL.parent.parent / "engine/fd/_space.py").read_text())[0]
    killed = {"id": first.id, "before": first.before, "after": first.after, "status": "killed"}
    return first, killed


def test_the_table_scores_a_result_and_lists_every_engine_module(tmp_path):
    first, killed = _first_killed()
    rows = _table_tool["rows_of_results"](_table_tool["combine"]([_result(tmp_path, [killed])]))
    row = rows["engine/fd/_space.py"]
    total = len(_table_tool["current_mutants"]("engine/fd/_space.py"))
    # one mutant run and killed; the others never run count as survivors, not as killed
    assert f"| 1 / {total} |" in row and "#2, #3" in row
    lines = _table_tool["table"]([], rows)
    assert sum("engine/fd/_space.py" in line for line in lines) == 1
    assert any(line.startswith("| `engine/_errors.py` |") and "not scored" in line
               for line in lines)


def test_the_table_refuses_a_result_of_the_module_before_it_changed(tmp_path):
    first, killed = _first_killed()
    killed["after"] = "something else"
    with pytest.raises(ValueError, match=rf"mutant #{first.id} .* the module changed"):
        _table_tool["combine"]([_result(tmp_path, [killed])])


def test_a_failed_tests_id_is_read_whole_even_with_spaces():
    collected = ["t.py::test_p[a b - c]", "t.py::test_p[a]", "t.py::test_q"]
    summaries = ["t.py::test_p[a b - c] - assert False", "t.py::test_q", "t.py::test_r - gone"]
    assert _tool["node_ids"](summaries, collected) == [
        "t.py::test_p[a b - c]", "t.py::test_q", "t.py::test_r"]
