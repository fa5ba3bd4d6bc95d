"""The planner's rule of dispatch="auto" with injected seconds (no clock): interleaved samples,
medians with a 10% margin for the workers, and the drift watch after the decision."""
import pytest

from engine.run._execution import Execution
from engine.run._planning import DRIFT_FACTOR, DRIFT_WINDOW, MARGIN, SAMPLES, Plan, Planner

SIGNATURE = ("sig", None, "batched")


def planner(workers=2, dispatch="auto"):
    return Planner(Execution.from_options(None, workers=workers, dispatch=dispatch), workers)


def measured(inside: float, outside: float) -> Planner:
    """A planner fed SAMPLES calls each way, interleaved as it asks for them."""
    p = planner()
    for _ in range(2 * SAMPLES):
        where = p.where(SIGNATURE, 10)
        p.record(where, inside if where == "in-process" else outside)
    return p


def test_the_documented_constants():
    assert (SAMPLES, MARGIN, DRIFT_WINDOW, DRIFT_FACTOR) == (5, 0.10, 5, 2.0)


def test_calls_alternate_in_process_first_until_both_have_their_samples():
    p = planner()
    assert p.plan == Plan("measuring", 2, "the first calls are timed both ways")
    asked = []
    for _ in range(2 * SAMPLES):
        where = p.where(SIGNATURE, 10)
        asked.append(where)
        p.record(where, 0.01)
    assert asked == ["in-process", "parallel"] * SAMPLES
    assert p.plan.where == "in-process"   # equal medians: the workers are not 10% faster


@pytest.mark.parametrize("outside, where", [
    (0.0899, "parallel"),     # more than 10% faster
    ((1.0 - 0.10) * 0.1, "parallel"),   # exactly 10% faster
    (0.0901, "in-process"),   # faster, but by less than 10%
    (0.2, "in-process"),
], ids=["clearly-faster", "exactly-10-percent", "within-the-margin", "slower"])
def test_the_workers_are_kept_only_when_their_median_is_10_percent_faster(outside, where):
    p = measured(0.1, outside)
    assert p.plan.where == where
    assert (p.plan.in_process_seconds, p.plan.parallel_seconds) == (0.1, outside)
    assert "medians of 5 calls each" in p.plan.reason


def test_the_median_decides_not_the_best_call():
    p = planner()
    inside, outside = iter([0.1, 0.1, 0.001, 0.1, 0.1]), iter([0.05] * SAMPLES)
    for _ in range(2 * SAMPLES):
        where = p.where(SIGNATURE, 10)
        p.record(where, next(inside) if where == "in-process" else next(outside))
    assert p.plan.where == "parallel" and p.plan.in_process_seconds == 0.1


def record_decided(p: Planner, seconds: list[float]) -> None:
    for s in seconds:
        p.record(p.plan.where, s)


@pytest.mark.parametrize("inside, outside", [(0.1, 0.5), (0.5, 0.1)], ids=["in-process", "parallel"])
def test_drift_within_a_factor_of_two_either_way_keeps_the_plan(inside, outside):
    p = measured(inside, outside)
    decided, plan = min(inside, outside), p.plan
    record_decided(p, [decided * DRIFT_FACTOR] * DRIFT_WINDOW)          # exactly 2x: kept
    record_decided(p, [decided / DRIFT_FACTOR] * DRIFT_WINDOW)          # exactly 1/2: kept
    assert p.plan == plan and p.remeasured == 0


@pytest.mark.parametrize("factor", [2.001, 1 / 2.001], ids=["slower", "faster"])
@pytest.mark.parametrize("inside, outside", [(0.1, 0.5), (0.5, 0.1)], ids=["in-process", "parallel"])
def test_drift_beyond_a_factor_of_two_measures_both_ways_again(inside, outside, factor):
    p = measured(inside, outside)
    decided, where = min(inside, outside), p.plan.where
    record_decided(p, [decided * factor] * (DRIFT_WINDOW - 1))
    assert p.plan.where == where                      # a window of 5 calls, not fewer
    p.record(where, decided * factor)
    assert p.plan.where == "measuring" and p.remeasured == 1
    assert p.plan.reason.startswith(f"timed both ways again: calls {where} took")
    assert p.samples == {"in-process": [], "parallel": []}


def test_a_new_plan_after_drift_is_logged(caplog):
    p = measured(0.1, 0.5)
    with caplog.at_level("INFO", logger="engine"):
        record_decided(p, [1.0] * DRIFT_WINDOW)
    assert [r.getMessage() for r in caplog.records] == [f"numerical gradient plan: {p.plan}"]


def test_the_drift_window_is_the_median_of_the_last_five_calls():
    p = measured(0.1, 0.5)   # in-process, at 0.1 s
    record_decided(p, [0.1] * 3 + [0.3] * 2)   # median 0.1
    assert p.plan.where == "in-process"
    record_decided(p, [0.3])                   # the last five: 0.1, 0.1, 0.3, 0.3, 0.3
    assert p.plan.where == "measuring"


def test_only_the_decided_sides_calls_are_watched():
    p = measured(0.1, 0.5)
    record_decided(p, [0.1] * (DRIFT_WINDOW - 1))
    p.record("parallel", 10.0)        # a call of the other kind: not in the window
    assert p.recent == [0.1] * (DRIFT_WINDOW - 1) and p.plan.where == "in-process"


@pytest.mark.parametrize("dispatch", ["parallel", "in-process"])
def test_a_forced_plan_is_never_watched(dispatch):
    p = planner(dispatch=dispatch)
    for _ in range(3 * DRIFT_WINDOW):
        p.record(p.plan.where, 100.0)
    assert p.plan.where == dispatch and p.recent == [] and p.remeasured == 0


def test_a_decision_starts_an_empty_window():
    p = measured(0.1, 0.5)
    assert p.recent == []
    record_decided(p, [1.0] * DRIFT_WINDOW)
    assert p.plan.where == "measuring"
    assert measured(0.1, 0.5).recent == []


def test_use_workers_changes_the_count_in_the_plan_only_when_it_differs():
    p = measured(0.5, 0.1)
    plan = p.plan
    p.use_workers(2)
    assert p.plan is plan
    p.use_workers(3)
    assert p.workers == 3 and p.plan == Plan("parallel", 3, plan.reason, 0.5, 0.1)
    assert str(Plan("parallel", 1, "r")) == "1 worker (r)"
    assert str(Plan("parallel", 2, "r")) == "2 workers (r)"
