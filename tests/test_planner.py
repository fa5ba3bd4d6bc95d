"""The rule of dispatch="auto", pinned with injected timings: medians of 5 interleaved calls, a
margin before the workers are kept, and a new measurement when the calls' time drifts."""
import numpy as np
import pytest

from engine import Gradient
from engine.run._execution import Execution
from engine.run._planning import DRIFT_FACTOR, DRIFT_WINDOW, MARGIN, SAMPLES, Planner

SIGNATURE = ("structure", None, "batched")


def planner(workers=2, dispatch="auto"):
    return Planner(Execution.from_options(None, workers=workers, dispatch=dispatch), workers)


def measure(p, inside, outside):
    """Feed the calls the planner asks for, each taking the next injected duration of its kind."""
    inside, outside, asked = list(inside), list(outside), []
    while p.plan.where == "measuring":
        where = p.where(SIGNATURE, 100)
        asked.append(where)
        p.record(where, (inside if where == "in-process" else outside).pop(0))
    return asked


def test_the_rules_constants():
    assert (SAMPLES, MARGIN, DRIFT_WINDOW, DRIFT_FACTOR) == (5, 0.10, 5, 2.0)


def test_five_calls_each_way_interleaved_in_process_first():
    p = planner()
    assert measure(p, [0.01] * 5, [0.02] * 5) == ["in-process", "parallel"] * 5


def test_the_medians_decide_not_one_lucky_call():
    p = planner()
    measure(p, [0.010, 0.011, 0.030, 0.030, 0.030], [0.020] * 5)   # the fastest calls: in-process
    assert p.plan.where == "parallel"
    assert (p.plan.in_process_seconds, p.plan.parallel_seconds) == (0.030, 0.020)
    q = planner()
    measure(q, [0.020, 0.021, 0.022, 0.020, 0.021], [0.010, 0.500, 0.600, 0.010, 0.7])   # load
    assert q.plan.where == "in-process" and q.plan.parallel_seconds == 0.5


@pytest.mark.parametrize("parallel_median, where", [
    (0.0190, "in-process"),     # 5% faster: not enough
    (0.0181, "in-process"),     # 9.5% faster
    (0.0180, "parallel"),       # exactly 10% faster
    (0.0100, "parallel"),
])
def test_the_workers_must_be_ten_percent_faster(parallel_median, where):
    p = planner()
    measure(p, [0.020] * 5, [parallel_median] * 5)
    assert p.plan.where == where
    if where == "in-process":
        assert p.plan.reason.endswith("; the workers must be 10% faster")


def noisy_runs(workers_ratio, runs=400, seed=27):
    """Decisions of `runs` planners on injected timings: in-process 10 ms, the workers
    `workers_ratio` times that, each call scaled by load noise (lognormal, sigma 0.25) and one
    call in six slowed 5x. Returns the medians rule's choices and, on the same timings, those
    of the rule it replaced (the fastest of two calls each way, no margin)."""
    rng = np.random.default_rng(seed)
    choices, old_rule = [], []
    for _ in range(runs):
        noise = rng.lognormal(0.0, 0.25, 2 * SAMPLES) * np.where(rng.random(2 * SAMPLES) < 1 / 6,
                                                                 5.0, 1.0)
        inside, outside = 0.010 * noise[:SAMPLES], 0.010 * workers_ratio * noise[SAMPLES:]
        p = planner()
        measure(p, inside, outside)
        choices.append(p.plan.where)
        old_rule.append("parallel" if min(outside[:2]) < min(inside[:2]) else "in-process")
    return choices, old_rule


def test_under_load_a_clear_difference_is_found_in_most_runs():
    choices, _ = noisy_runs(0.7)                   # the workers 30% faster
    assert choices.count("parallel") >= 0.8 * len(choices)


def test_under_load_a_near_tie_stays_in_process_where_the_old_rule_tossed_a_coin():
    choices, old_rule = noisy_runs(0.95)           # the workers 5% faster: inside the margin
    assert choices.count("in-process") >= 0.55 * len(choices)
    assert choices.count("in-process") >= old_rule.count("in-process") + 0.1 * len(choices)


def decided_in_process(seconds=0.010):
    p = planner()
    measure(p, [seconds] * 5, [2 * seconds] * 5)
    assert p.plan.where == "in-process"
    return p


@pytest.mark.parametrize("later", [0.0199, 0.0051, 0.010])
def test_calls_within_a_factor_of_two_keep_the_plan(later):
    p = decided_in_process()
    for _ in range(3 * DRIFT_WINDOW):
        assert p.where(SIGNATURE, 100) == "in-process"
        p.record("in-process", later)
    assert p.plan.where == "in-process" and p.remeasured == 0


@pytest.mark.parametrize("later", [0.025, 0.004])
def test_a_drift_past_a_factor_of_two_measures_both_ways_again(later):
    p = decided_in_process()
    for _ in range(DRIFT_WINDOW - 1):
        p.record("in-process", later)
    assert p.plan.where == "in-process"              # the window is not full yet
    p.record("in-process", later)
    assert p.plan.where == "measuring" and p.remeasured == 1
    assert p.plan.reason == (f"timed both ways again: calls in-process took {later * 1e3:.3g} ms, "
                             "10 ms when decided")
    assert measure(p, [0.030] * 5, [0.012] * 5) == ["in-process", "parallel"] * 5
    assert p.plan.where == "parallel"                 # the machine changed: the workers now


def test_one_slow_call_in_the_window_is_not_a_drift():
    p = decided_in_process()
    for seconds in (0.010, 0.011, 0.500, 0.010, 0.009, 0.010):
        p.record("in-process", seconds)
    assert p.plan.where == "in-process" and p.remeasured == 0


def test_a_drift_on_the_workers_is_watched_too():
    p = planner()
    measure(p, [0.020] * 5, [0.010] * 5)
    for _ in range(DRIFT_WINDOW):
        p.record("parallel", 0.030)
    assert p.plan.where == "measuring" and "calls parallel took 30 ms" in p.plan.reason


@pytest.mark.parametrize("workers, dispatch", [(1, "auto"), (2, "parallel"), (2, "in-process")])
def test_a_plan_the_options_fix_is_never_measured_again(workers, dispatch):
    p = planner(workers, dispatch)
    before = p.plan
    for _ in range(3 * DRIFT_WINDOW):
        p.record(p.where(SIGNATURE, 100), 10.0)
    assert p.plan == before


def test_an_estimated_plan_is_not_watched():
    p = planner()
    assert p.where(("structure", None, "loop"), 10, black_box=True) == "estimate"
    assert p.estimate(0.2, 10) == "parallel"
    for _ in range(3 * DRIFT_WINDOW):
        p.record("parallel", 100.0)
    assert p.plan.where == "parallel" and p.plan.reason == "estimated 2 s per call in-process"


def test_a_gradient_calibrates_on_five_calls_each_way():
    f = lambda w: float(np.sum(w ** 2))
    # The first evaluation in a process builds threadpoolctl's controller (~30 ms), which the
    # one-task estimate would multiply by the 50 tasks: one call in-process first.
    with Gradient(f, workers=1) as warm:
        warm(np.ones(2))
    with Gradient(f, workers=2, backend="threading", evaluator="loop") as g:
        plan = g.calibrate(np.ones(50))
        assert plan.where in ("in-process", "parallel") and "medians of 5 calls each" in plan.reason
        samples = g._planner.samples
        assert len(samples["in-process"]) == len(samples["parallel"]) == 5
        assert plan.in_process_seconds == float(np.median(samples["in-process"]))
