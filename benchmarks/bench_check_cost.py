"""CI for `check_cost.py`: its ``--quick`` mode times every case once, both ways, results identical."""
import json

import check_cost


def test_quick_run_checks_both_settings_give_the_same_bits(tmp_path):
    out = tmp_path / "check_cost.json"
    assert check_cost.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [row["case"] for row in data["results"]] == ["overhead", "one-image", "black-box"]
    for row in data["results"]:
        assert row["identical_results"] is True
        assert set(row["median_s"]) == {"check on", "check off"}
