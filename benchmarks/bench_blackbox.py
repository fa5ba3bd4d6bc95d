"""`blackbox.py --quick`: every case of the black-box comparison runs, passes its checks, is saved.

The script itself asserts the numbers (ours on 2 workers equal to ours serial, SciPy's
Jacobian within its tolerance, every least_squares fit at the 2-point fit's solution);
this keeps it from rotting. Its timings mean nothing at these sizes and are not asserted.
"""
import json

import blackbox

JACOBIAN_CASES = {"ours, serial", "ours, 2 workers", "SciPy approx_derivative, serial",
                  "SciPy approx_derivative, pool.map"}
FIT_CASES = {"SciPy jac='2-point'", "ours, central h=1e-4, 1 worker",
             "ours, central h=1e-4, 2 workers", "ours, forward h='auto', 2 workers"}


def test_quick_run_has_every_case_checked(tmp_path):
    out = tmp_path / "blackbox.json"
    assert blackbox.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] and data["rounds"] == 1
    rows = data["results"]
    assert {row["case"] for row in rows["jacobian"]} == JACOBIAN_CASES
    assert {row["case"] for row in rows["least-squares"]} == FIT_CASES
    for row in rows["jacobian"] + rows["least-squares"]:
        assert row["checked"] is True, row["case"]
        assert len(row["times_s"]) == 1 and row["median_s"] > 0, row["case"]
    for row in rows["least-squares"]:
        assert row["njev"] >= 1 and row["max_parameter_gap"] <= blackbox.FIT_PARAMETER_ATOL
    assert 0 < data["ratios"]["jacobian"]["goal"]["ratio_of_medians"]
    assert len(data["load_average_before"]) == 3 and data["machine"]["cores"] >= 1
