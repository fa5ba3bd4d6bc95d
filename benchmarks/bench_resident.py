"""CI for `resident.py`: its ``--quick`` mode runs every case once, on small problems, checked.

Timings are never asserted; what is asserted is that every case ran, that each checked its
result (exactness where the engine claims identity), and that the three minimizations of
the black box reached the same minimum.
"""
import json

import resident

EXPECTED = {
    "overhead": {"gradient", "one-shot", "serial"},
    "one-image": {"workers-1", "workers-2", "auto", "one-shot"},
    "small-batch": {"workers-1", "workers-2"},
    "large-batch": {"workers-1", "workers-2"},
    "loop-window": {"serial", "gradient", "one-shot", "ceiling"},
    "black-box": {"evaluation", "ours", "scipy-pool", "scipy-serial"},
}
GOALS = 7


def test_quick_run_has_every_case_checked(tmp_path):
    out = tmp_path / "resident.json"
    assert resident.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    found = {}
    for result in data["results"]:
        found.setdefault(result["group_key"], set()).add(result["key"])
        assert result["checked"] is True, result["case"]
        assert len(result["times"]) == 1 and result["median"] > 0, result["case"]
    assert found == EXPECTED
    assert len(data["goals"]) == GOALS
    auto = next(r for r in data["results"] if r["group_key"] == "one-image" and r["key"] == "auto")
    assert auto["plan"].split(" ")[0] in ("2", "in-process")   # decided, not still measuring
    box = data["summary"]["black-box"]
    assert box["agreement"]["agree"] is True
    assert box["ours"]["evaluations"] == box["ours"]["nfev"] * (4 * 4 + 1)
