"""`sparse.py --quick`: the evaluation counts and every timed case run, pass their checks, are saved.

The script asserts the numbers itself (ours on 2 workers the same CSR arrays as ours
serial, SciPy's within its tolerance); this keeps it from rotting. The group and call
counts are asserted here: they do not depend on the machine. Timings are not.
"""
import json

import sparse

CASES = {"ours, serial", "ours, 2 workers", "SciPy approx_derivative, serial",
         "SciPy approx_derivative, pool.map"}


def test_quick_run_counts_the_evaluations_and_checks_every_case(tmp_path):
    out = tmp_path / "sparse.json"
    assert sparse.main(["--quick", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] and data["rounds"] == 1
    tridiagonal, stencil = data["evaluations"]
    assert tridiagonal["groups_ours"] == 3 and stencil["groups_ours"] == 5
    for row in (tridiagonal, stencil):   # the groups' evaluations and f(x)
        assert row["calls_ours_forward"] == row["groups_ours"] + 1
        assert row["calls_ours_central"] == 2 * row["groups_ours"] + 1
        assert row["groups_scipy"] >= row["groups_ours"]
    assert {row["case"] for row in data["wall"]} == CASES
    for row in data["wall"]:
        assert row["checked"] is True, row["case"]
        assert len(row["times_s"]) == 1 and row["median_s"] > 0, row["case"]
