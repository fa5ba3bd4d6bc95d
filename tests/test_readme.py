"""Every ```python block of the README runs on its own, in a fresh interpreter.

A block runs with the working folder a new temporary one and nothing from the blocks above
it, as a reader who pastes one block into a new session would. A block preceded by the
comment ``<!-- readme-test: skip (why) -->`` is left out, with the reason shown; a block that
imports an optional package (SciPy) is skipped where that package is missing.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]*)\)\s*-->\s*$")
OPTIONAL = ("scipy",)   # the [dev] extra's peers that a block may import


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(first line number, code, reason to skip or None) of each ```python block of `text`."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, previous = i + 1, _previous_nonblank(lines, i)
            end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
            skip = SKIP.match(previous.strip()) if previous is not None else None
            blocks.append((start + 1, "\n".join(lines[start:end]) + "\n",
                           skip.group("why") if skip else None))
            i = end
        i += 1
    return blocks


def _previous_nonblank(lines: list[str], i: int) -> str | None:
    return next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), None)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_parser_sees_the_skip_marker():
    assert len(BLOCKS) >= 5
    text = "intro\n<!-- readme-test: skip (too long) -->\n\n```python\nprint(1)\n```\n```python\nx\n```\n"
    assert python_blocks(text) == [(5, "print(1)\n", "too long"), (8, "x\n", None)]


@pytest.mark.parametrize("line, code, skip", BLOCKS, ids=[f"line{line}" for line, _, _ in BLOCKS])
def test_readme_block_runs_alone(line, code, skip, tmp_path):
    if skip is not None:
        pytest.skip(f"README line {line}: {skip}")
    for package in OPTIONAL:
        if re.search(rf"^\s*(from|import) {package}\b", code, re.M) and \
                importlib.util.find_spec(package) is None:
            pytest.skip(f"README line {line} needs {package} (the [dev] extra)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                      os.environ.get("PYTHONPATH")]))}
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README line {line} failed:\n{done.stderr[-3000:]}"
