"""`engine.derivatives._gradient` in this process: choosing the evaluator, chunking, bounds, the planner,
warnings, and `Gradient` with workers=1 or on two threads (no worker processes)."""
import math
import threading
import time
import warnings

import numpy as np
import pytest

from engine import numerical_gradient
from engine._errors import (NotDeterministicError, NumericalFallbackWarning, StepSizeWarning)
from engine.run._execution import Execution
from engine.batched._detect import choose_evaluator
from engine.derivatives._failures import tell
from engine.derivatives._gradient import Gradient, Jacobian, _signature
from engine.derivatives._link import WorkerLink
from engine.derivatives._link import lost_message as _lost_message
from engine.fd._bounds import bounds_per_array as _bounds_per_array
from engine.run._planning import Plan, Planner, default_chunks_per_worker, plan_chunks
from engine.nn._model import ModelLoss, init_params, mlp
from engine.fd._calling import Report
from engine.fd._space import ParamSpace, split_range


def squares(v):
    return float(np.sum(np.asarray(v, dtype=np.float64) ** 2))


# --- choosing the evaluator ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    net, params = mlp([3, 2]), init_params([3, 2], seed=0)
    return net, params, np.ones((2, 3)), np.array([0, 1])


def test_auto_picks_batched_only_for_a_models_loss_over_its_params(model):
    net, params, inputs, labels = model
    loss = ModelLoss(net, params, inputs, labels)
    assert choose_evaluator("auto", squares, np.ones(3)) == "loop"
    assert choose_evaluator("auto", loss, params) == "batched"
    assert choose_evaluator("auto", loss, params, loop_only="bounds") == "loop"
    assert choose_evaluator("auto", net.loss, params) == "batched"
    assert choose_evaluator("auto", net.loss, [params["w1"]]) == "loop"
    with pytest.warns(UserWarning, match="pass x = f.params"):
        assert choose_evaluator("auto", loss, dict(params)) == "loop"


def test_named_evaluators_are_checked(model):
    net, params, inputs, labels = model
    assert choose_evaluator("loop", squares, np.ones(3)) == "loop"
    assert choose_evaluator("batched", net.loss, params) == "batched"
    with pytest.raises(ValueError, match=r"one of \('auto', 'loop', 'batched'\), got 'fast'"):
        choose_evaluator("fast", squares, np.ones(3))
    with pytest.raises(ValueError, match="does not support bounds"):
        choose_evaluator("batched", net.loss, params, loop_only="bounds")
    with pytest.raises(ValueError, match="needs `f` to be a layered model's loss"):
        choose_evaluator("batched", squares, params)


# --- chunks ----------------------------------------------------------------------------------

def test_chunks_of_a_given_size_cover_the_range_the_last_shorter():
    assert plan_chunks(10, 2, chunk_size=3) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert plan_chunks(10, 3) == split_range(10, 12)
    assert plan_chunks(10, 2, chunks_per_worker=2) == split_range(10, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        plan_chunks(10, 2, chunk_size=0)


@pytest.mark.parametrize("evaluator, seconds, size, workers, expected", [
    ("batched", 1.0, 100, 2, 1),
    ("loop", None, 100, 2, 4),
    ("loop", 1e-6, 100, 2, 1),          # 0.1 ms of work: one chunk per worker
    ("loop", 1e-3, 50, 2, 2),           # 50 ms / (2 * 10 ms) = 2.5
    ("loop", 1.0, 100, 2, 4),           # never more than 4
])
def testdefault_chunks_per_worker(evaluator, seconds, size, workers, expected):
    assert default_chunks_per_worker(evaluator, seconds, size, workers) == expected


# --- bounds ----------------------------------------------------------------------------------

def test_bounds_broadcast_per_array_and_may_touch_x():
    x = {"a": np.array([[0.0, 0.5], [0.5, 1.0]]), "b": np.array([2.0])}
    space = ParamSpace(x)
    assert _bounds_per_array(None, space) is None
    (la, ua), (lb, ub) = _bounds_per_array(({"a": 0.0, "b": -5.0}, {"a": [1.0, 1.0], "b": 2.0}),
                                           space)
    assert la.shape == ua.shape == (2, 2) and la.dtype == np.float64
    assert np.array_equal(ua, np.ones((2, 2))) and lb[0] == -5.0 and ub[0] == 2.0
    listed = ParamSpace([np.zeros(2), np.ones(3)])
    (l0, u0), (l1, u1) = _bounds_per_array(([-1.0, 0.0], [0.0, 1.0]), listed)
    assert u0.tolist() == [0.0, 0.0] and l1.tolist() == [0.0] * 3
    one = ParamSpace(np.array([0.25, 0.75]))
    ((lo, up),) = _bounds_per_array(([0.0, 0.5], [0.5, 1.0]), one)   # a list for an ndarray x
    assert lo.tolist() == [0.0, 0.5] and up.tolist() == [0.5, 1.0]


@pytest.mark.parametrize("x, bounds, match", [
    ({"a": np.zeros(2)}, ({"b": 0.0}, {"a": 1.0}), "`bounds` lower must name exactly the keys"),
    ({"a": np.zeros(2)}, ({"a": 0.0}, {"a": 1.0, "b": 2.0}), "`bounds` upper must name exactly"),
    ([np.zeros(2), np.zeros(1)], ([0.0], [1.0, 1.0]), "`bounds` lower must have one entry per"),
    (np.zeros((2, 3)), (np.zeros(2), 1.0), r"`bounds` for x do not broadcast to its shape \(2, 3\)"),
    ({"a": np.zeros(2), "b": np.array([0.5, 1.5, 2.0])}, (0.0, 1.0),
     r"x\['b'\]\[1\] lies outside `bounds` \(2 entries of x\['b'\] do\)"),
    (np.array([0.5, -0.1]), (0.0, 1.0), r"x\[1\] lies outside `bounds` \(1 entries of x do\)"),
])
def test_bounds_that_do_not_fit_x_are_refused_naming_what(x, bounds, match):
    with pytest.raises(ValueError, match=match):
        _bounds_per_array(bounds, ParamSpace(x))


# --- small parts -----------------------------------------------------------------------------

def test_the_signature_follows_the_structure_not_the_values():
    a = _signature(ParamSpace(np.zeros(3)), "loop")
    assert a == _signature(ParamSpace(np.ones(3)), "loop")
    assert a != _signature(ParamSpace(np.zeros(3)), "batched")
    assert a != _signature(ParamSpace(np.zeros(4)), "loop")
    assert a != _signature(ParamSpace(np.zeros(3, dtype=np.float32)), "loop")
    assert a != _signature(ParamSpace(np.zeros(6)[::2]), "loop")
    assert a != _signature(ParamSpace([np.zeros(3)]), "loop")


def test_restored_puts_the_arrays_back_and_lets_the_error_through():
    x = np.array([1.0, 2.0])
    with pytest.raises(KeyError):
        with ParamSpace(x).restored():
            x[:] = 7.0
            raise KeyError("from f")
    assert x.tolist() == [1.0, 2.0]


class FakePool:
    def __init__(self, resident):
        self.resident, self.calls = resident, []

    def drop(self, key):
        self.calls.append(("drop", key))

    def close(self):
        self.calls.append(("close",))


@pytest.mark.parametrize("shared, resident, expected", [
    (False, True, [("close",)]), (True, True, [("drop", "k")]), (True, False, [("close",)])])
def test_releasing_resources_drops_from_a_shared_pool_and_closes_an_own_one(shared, resident,
                                                                            expected):
    resources = WorkerLink(Execution(), shared=shared)
    resources.release()                      # nothing held yet: nothing to do
    pool = resources.pool = FakePool(resident)
    resources.release()
    resources.release()                      # once only
    expected = [(kind, resources.key) if kind == "drop" else (kind,) for kind, *_ in expected]
    assert pool.calls == expected and resources.pool is None


def test_the_lost_message_counts_chunks_and_entries():
    message = _lost_message({0: (0, 5), 3: (9, 12), -1: None}, 2, RuntimeError("pid 7 died"))
    assert message.startswith("worker processes died and 3 chunk(s) (8 entries) were still lost "
                              "after 2 retries on fresh workers (pid 7 died)")


def test_plans_print_where_and_why_and_cannot_be_changed():
    assert str(Plan("parallel", 3, "dispatch='parallel'")) == "3 workers (dispatch='parallel')"
    assert str(Plan("in-process", 3, "measured")) == "in-process (measured)"
    with pytest.raises(AttributeError):
        Plan("parallel", 3, "dispatch='parallel'").where = "in-process"


# --- the planner -----------------------------------------------------------------------------

def planner(workers, dispatch="auto"):
    return Planner(Execution.from_options(None, workers=workers, dispatch=dispatch), workers)


def test_the_first_plan_follows_the_options():
    assert planner(1).plan == Plan("in-process", 1, "workers=1")
    assert planner(2, "parallel").plan == Plan("parallel", 2, "dispatch='parallel'")
    assert planner(2, "in-process").plan == Plan("in-process", 2, "dispatch='in-process'")
    assert planner(2).plan.where == "measuring"


def test_a_loop_f_is_estimated_first_and_a_costly_one_goes_parallel_at_once():
    p = planner(2)
    assert p.where(("sig", None, "loop"), 1, black_box=True) == "in-process"   # one entry: never workers
    assert p.where(("sig", None, "loop"), 10, black_box=True) == "estimate"
    assert p.estimate(0.2, 10) == "parallel"                       # 2 s per call
    assert p.plan.where == "parallel" and p.plan.reason == "estimated 2 s per call in-process"
    q = planner(2)
    q.where(("sig", None, "loop"), 10, black_box=True)
    assert q.estimate(0.05, 10) == "in-process"                    # 0.5 s: measure instead
    assert q.plan.where == "measuring"


def test_measuring_alternates_five_calls_each_way_and_keeps_the_faster_median(caplog):
    caplog.set_level("INFO", logger="engine")
    p = planner(2)
    signature = ("sig", None, "batched")
    steps = []
    for seconds in (0.02, 0.01, 0.03, 0.015, 0.025, 0.012, 0.04, 0.011, 0.021, 0.013):
        where = p.where(signature, 10)
        steps.append(where)
        p.record(where, seconds)
    assert steps == ["in-process", "parallel"] * 5
    assert p.plan.where == "parallel" and p.plan.in_process_seconds == 0.025
    assert p.plan.parallel_seconds == 0.012
    reason = "measured 12 ms per call on 2 workers vs 25 ms in-process, medians of 5 calls each"
    assert p.plan.reason == reason
    assert caplog.messages == [f"numerical gradient plan: 2 workers ({reason})"]
    assert p.where(signature, 10) == "parallel"
    p.record("in-process", 0.0001)            # decided: no more samples
    assert p.samples["in-process"] == [0.02, 0.03, 0.025, 0.04, 0.021]


def test_slower_workers_keep_the_work_in_process_and_a_new_structure_is_measured_again():
    p = planner(3)
    signature = ("sig", None, "batched")
    for seconds in (0.2, 0.3, 0.2, 0.2, 0.2, 0.25, 0.1, 0.25, 0.3, 0.2):
        p.record(p.where(signature, 10), seconds)
    assert p.plan == Plan("in-process", 3, "measured 200 ms per call in-process vs 250 ms on "
                                           "3 workers, medians of 5 calls each; the workers must "
                                           "be 10% faster", 0.2, 0.25)
    p.where(("other", None, "batched"), 10)   # a new structure: measured again
    assert p.plan.where == "measuring" and p.samples == {"in-process": [], "parallel": []}


# --- Gradient in this process ----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"f": 3}, TypeError, "`f` must be callable, got int"),
    ({"h": -1.0}, ValueError, "h"),
    ({"on_failure": "ignore"}, ValueError, r"`on_failure` must be one of \('raise'"),
    ({"bounds": [0.0, 1.0]}, ValueError, r"`bounds` must be a pair \(lower, upper\)"),
    ({"bounds": (0.0, 1.0, 2.0)}, ValueError, "`bounds` must be a pair"),
    ({"evaluator": "fast"}, ValueError, "`evaluator` must be one of"),
    ({"check_state": 1}, ValueError, "`check_state` must be True or False, got 1"),
])
def test_bad_options_are_refused_at_construction(kwargs, error, match):
    kwargs = {"f": squares, **kwargs}
    with pytest.raises(error, match=match):
        Gradient(kwargs.pop("f"), workers=1, **kwargs)


def test_good_options_are_accepted():
    for options in ({"h": "auto"}, {"h": {"a": 1e-3}}, {"check_state": np.True_},
                    {"bounds": (0.0, 1.0)}, {"on_failure": "nan"}):
        with Gradient(squares, workers=1, **options) as g:
            assert g.workers == 1


class Counting:
    def __init__(self, f=squares):
        self.f, self.calls = f, 0

    def __call__(self, v, *args):
        self.calls += 1
        return self.f(v, *args)


@pytest.mark.parametrize("scheme, calls", [("central", 6), ("forward", 3), ("central4", 12)])
def test_value_and_grad_in_process_is_the_serial_gradient_and_f_of_x_is_evaluated_once(scheme,
                                                                                        calls):
    x = np.array([0.5, -1.5, 2.0])
    f = Counting()
    with Gradient(f, workers=1, scheme=scheme) as g:
        value, grad = g.value_and_grad(x)
        assert f.calls == calls + 1
        assert value == squares(x)
        assert np.array_equal(grad, numerical_gradient(squares, x, scheme=scheme))
        f.calls = 0
        assert np.array_equal(g(x), grad)
        assert f.calls == calls + (scheme == "forward")
        assert g.calibrate(x) == Plan("in-process", 1, "workers=1") and f.calls <= calls + 1
    assert g.plan.where == "in-process"


def test_args_are_passed_through_and_a_closed_gradient_refuses_calls():
    g = Gradient(lambda v, a, b: a * squares(v) + b, workers=1)
    assert np.array_equal(g(np.array([1.0, 2.0]), 3.0, 100.0),
                          numerical_gradient(lambda v: 3.0 * squares(v) + 100.0, np.array([1.0, 2.0])))
    assert repr(g) == "Gradient(<lambda>, scheme='central', workers=1, plan=in-process (workers=1))"
    g.close()
    with pytest.raises(ValueError, match="this Gradient is closed"):
        g(np.ones(2), 1.0, 2.0)


def test_failures_are_listed_sorted_and_warned_once_with_at_most_ten_named():
    x = np.linspace(1.0, 2.0, 12)

    def f(v):
        if np.any(v > x + 1e-9):
            raise ArithmeticError("up")
        return squares(v)

    with Gradient(f, workers=1, on_failure="one-sided") as g:
        with pytest.warns(NumericalFallbackWarning) as caught:
            got = g(x.copy())
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("12 evaluation(s) of `f` failed and were replaced "
                              "(on_failure='one-sided'): x[0] at x_i + 1*h: ArithmeticError: up; ")
    assert message.endswith("x[9] at x_i + 1*h: ArithmeticError: up (and 2 more)")
    assert [fail.entry for fail in g.failures] == [f"x[{i}]" for i in range(12)]
    assert {(fail.side, fail.error, fail.message) for fail in g.failures} == {
        ("x_i + 1*h", "ArithmeticError", "up")}
    assert np.allclose(got, 2 * x, rtol=1e-3)


def test_few_failures_are_all_named_and_a_clean_call_clears_the_list():
    x = np.array([1.0, 2.0])

    def f(v):
        if v[1] < 2.0:
            raise ArithmeticError("down")
        return squares(v)

    with Gradient(f, workers=1, on_failure="nan") as g:
        with pytest.warns(NumericalFallbackWarning, match=r"x\[1\] at x_i - 1\*h: "
                                                          r"ArithmeticError: down$"):
            got = g(x.copy())
        assert math.isnan(got[1]) and len(g.failures) == 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            g(np.array([1.0, 3.0]))
        assert g.failures == []


def test_a_step_stored_off_by_more_than_one_percent_warns_and_one_percent_does_not():
    with Gradient(squares, workers=1, h=1e-6) as g:
        with pytest.warns(StepSizeWarning, match="differs from `h` by up to"):
            g(np.array([1.0], dtype=np.float32))
    x = np.array([1.0], dtype=np.float32)
    off = abs(float(np.float32(1.0 + 0.0095)) - 1.0 - 0.0095) / 0.0095
    assert off < 0.01
    with Gradient(squares, workers=1, h=0.0095) as g, warnings.catch_warnings():
        warnings.simplefilter("error")
        g(x)


def test_a_stored_step_off_by_exactly_one_percent_is_not_warned():
    space = ParamSpace(np.ones(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tell(space, Report(step_deviation=0.01), "raise") == []
    with pytest.warns(StepSizeWarning, match="up to 1.0% of h"):
        tell(space, Report(step_deviation=0.0100001), "raise")


def test_a_jacobian_in_process_has_the_outputs_shape_first():
    x = np.array([0.5, 2.0])
    f = lambda v: np.array([v[0] * v[1], v[0] ** 2, 1.0])  # noqa: E731
    with Jacobian(f, workers=1) as J:
        value, got = J.value_and_grad(x)
    assert np.array_equal(value, f(x)) and got.shape == (3, 2)
    assert np.allclose(got, [[2.0, 0.5], [1.0, 0.0], [0.0, 0.0]], atol=1e-8)


def test_bounds_in_process_keep_f_inside():
    seen = []

    def f(v):
        seen.append(v.copy())
        return squares(v)

    with Gradient(f, workers=1, bounds=(0.0, 1.0)) as g:
        got = g(np.array([0.0, 1.0]))
    assert all(np.all((p >= 0.0) & (p <= 1.0)) for p in seen)
    assert np.allclose(got, [0.0, 2.0], atol=1e-3)


# --- Gradient on two threads -----------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_two_threads_give_the_serial_numbers_call_after_call(scheme):
    x = np.linspace(-1.0, 1.0, 7)
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel",
                  scheme=scheme, chunk_size=2) as g:
        assert g.plan == Plan("parallel", 2, "dispatch='parallel'")
        for shift in (0.0, 0.5):
            value, got = g.value_and_grad(x + shift)
            assert value == squares(x + shift)
            assert np.array_equal(got, numerical_gradient(squares, x + shift, scheme=scheme))
    on_dict = lambda p: squares(p["a"])  # noqa: E731
    with Gradient(on_dict, workers=2, backend="threading", dispatch="parallel") as g:
        assert np.array_equal(g({"a": x})["a"], numerical_gradient(on_dict, {"a": x})["a"])


def test_two_threads_report_failures_like_one():
    x = np.array([1.0, 2.0, 3.0, 4.0])

    def f(v):
        if v[2] > 3.0:
            raise ArithmeticError("up")
        return squares(v)

    with Gradient(f, workers=2, backend="threading", dispatch="parallel",
                  on_failure="one-sided", chunk_size=1) as g:
        with pytest.warns(NumericalFallbackWarning, match="1 evaluation"):
            got = g(x.copy())
        assert [fail.entry for fail in g.failures] == ["x[2]"]
    with Gradient(f, workers=1, on_failure="one-sided") as serial:
        with pytest.warns(NumericalFallbackWarning):
            assert np.array_equal(got, serial(x.copy()))


class LogsCalls:
    """f(x) = sum(x**2), appending one line per call to a file (threads get copies of `f`)."""

    def __init__(self, path):
        self.path = path

    def __call__(self, v):
        with open(self.path, "a") as log:
            log.write("call\n")
        return squares(v)

    def calls(self):
        count = len(self.path.read_text().splitlines()) if self.path.exists() else 0
        self.path.write_text("")
        return count


@pytest.mark.parametrize("options, calls", [
    ({"scheme": "central"}, 2 * 4),                         # f(x) is never needed
    ({"scheme": "forward"}, 4 + 1),                         # f(x) once, first, for every chunk
    ({"scheme": "central", "on_failure": "one-sided"}, 2 * 4 + 1),   # ready for a fallback
])
def test_on_threads_f_of_x_is_evaluated_once_first_where_the_chunks_need_it(tmp_path, options,
                                                                            calls):
    f = LogsCalls(tmp_path / "calls.log")
    x = np.array([0.5, 1.0, 1.5, 2.0])
    with Gradient(f, workers=2, backend="threading", dispatch="parallel", chunk_size=1,
                  check_state=False, **options) as g:
        got = g(x)
        assert f.calls() == calls
        assert np.array_equal(got, numerical_gradient(squares, x, scheme=options["scheme"]))


def test_a_jacobian_on_threads_equals_the_one_in_process():
    x = np.linspace(0.5, 2.0, 5)
    f = lambda v: np.array([np.sum(v ** 2), v[0] * v[-1]])  # noqa: E731
    with Jacobian(f, workers=2, backend="threading", dispatch="parallel", chunk_size=2) as J:
        got = J(x)
    with Jacobian(f, workers=1) as serial:
        assert got.shape == (2, 5) and np.array_equal(got, serial(x))


def test_a_model_loss_on_threads_is_batched_and_equals_the_one_in_process(model):
    net, params, inputs, labels = model
    params = {k: v.copy() for k, v in params.items()}
    with Gradient(net.loss, workers=2, backend="threading", dispatch="parallel") as g:
        got = g(params, inputs, labels)
    with Gradient(net.loss, workers=1) as serial:
        expected = serial(params, inputs, labels)
    assert all(np.array_equal(got[k], expected[k]) for k in params)


def test_a_models_loss_with_the_wrong_arguments_is_refused_before_any_worker_starts(model):
    net, params, inputs, labels = model
    g = Gradient(net.loss, workers=2, backend="threading", dispatch="parallel", check_state=False)
    with pytest.raises(TypeError, match=r"got 1 argument\(s\) after the params"):
        g(params, inputs)
    assert g._link.pool is None
    g.close()


@pytest.mark.parametrize("make, reason", [
    (lambda f: Gradient(f, evaluator="batched", workers=1, bounds=(-9.0, 9.0)), "bounds"),
    (lambda f: Gradient(f, evaluator="batched", workers=1, on_failure="nan"), "on_failure='nan'"),
    (lambda f: Jacobian(f, evaluator="batched", workers=1), "a Jacobian"),
])
def test_options_only_the_loop_evaluator_supports_are_named_when_batched_is_asked(model, make,
                                                                                  reason):
    net, params, inputs, labels = model
    with pytest.raises(ValueError, match=rf"evaluator='batched' does not support {reason}:"):
        make(net.loss)(params, inputs, labels)


def test_a_non_deterministic_f_on_threads_fails_the_state_check():
    rng = np.random.default_rng(0)
    noisy = lambda v: squares(v) + float(rng.random())  # noqa: E731
    with Gradient(noisy, workers=2, backend="threading", dispatch="parallel") as g:
        # the first call's two evaluations here differ: the reason, not the disagreement
        with pytest.raises(NotDeterministicError, match=r"not deterministic.*changed rng\)"):
            g(np.ones(4))
    with Gradient(noisy, workers=2, backend="threading", dispatch="parallel",
                  check_state=False) as g:
        assert g(np.ones(4)).shape == (4,)


def test_a_costly_f_is_sent_to_the_workers_from_the_first_call_and_a_cheap_one_measured():
    x = np.zeros(200)

    def costly_last_entry(v):   # 4 ms per evaluation of the last entry: about 1.6 s per call
        if v[-1] != 0.0:
            time.sleep(0.004)
        return squares(v)

    with Gradient(costly_last_entry, workers=2, backend="threading") as g:
        assert g.plan.where == "measuring"
        g(x)
        assert g.plan.where == "parallel" and g.plan.reason.startswith("estimated ")
    with Gradient(squares, workers=2, backend="threading") as g:
        started = time.perf_counter()
        plan = g.calibrate(np.ones(4))
        took = time.perf_counter() - started
        assert plan.where in ("in-process", "parallel") and g.plan == plan
        # durations of calls made inside calibrate(): positive, and no longer than all of it
        assert 0 < plan.in_process_seconds < took and 0 < plan.parallel_seconds < took


def test_chunks_follow_chunk_size_then_chunks_per_worker_then_the_default():
    space = ParamSpace(np.zeros(7))
    with Gradient(squares, workers=2, backend="threading", chunk_size=3) as g:
        assert g._chunks(space, "loop") == [(0, 3), (3, 6), (6, 7)]
    with Gradient(squares, workers=2, backend="threading", chunks_per_worker=2) as g:
        assert g._chunks(space, "loop") == split_range(7, 4)
    with Gradient(squares, workers=2, backend="threading") as g:
        assert g._chunks(space, "loop") == split_range(7, 8)
        assert g._chunks(space, "batched") == split_range(7, 2)


def test_an_empty_x_gives_an_empty_gradient():
    with Gradient(squares, workers=1) as g:
        assert g(np.empty(0)).shape == (0,)


def test_leaving_the_with_block_closes_the_gradient():
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel") as g:
        g(np.ones(3))
    with pytest.raises(ValueError, match="closed"):
        g(np.ones(3))


def test_progress_shows_a_bar_named_gradient(capsys):
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel",
                  progress=True) as g:
        g(np.ones(3))
    assert "gradient" in capsys.readouterr().err


def test_a_new_structure_is_shipped_again_to_the_threads():
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel") as g:
        for x in (np.ones(3), np.arange(5.0), np.ones(3)):
            assert np.array_equal(g(x), numerical_gradient(squares, x))


def test_a_per_call_backend_ships_the_bundle_with_every_call():
    with Gradient(squares, workers=2, backend="sequential", dispatch="parallel") as g:
        for x in (np.ones(3), np.arange(5.0)):
            assert np.array_equal(g(x), numerical_gradient(squares, x))


def test_closing_stops_the_threads():
    # The pool's own threads, not a count: other tests' threads may come and go meanwhile.
    before = set(threading.enumerate())
    g = Gradient(squares, workers=2, backend="threading", dispatch="parallel")
    g(np.ones(3))
    started = {t for t in set(threading.enumerate()) - before if t.name.startswith("numgrad-thread-")}
    assert len(started) == 2
    g.close()
    for thread in started:
        thread.join(timeout=60)   # bounds a failure only: a thread not stopped runs for good
    assert not any(t.is_alive() for t in started)


def test_an_estimate_of_exactly_one_second_is_measured_not_decided():
    p = planner(2)
    p.where(("sig", None, "loop"), 10, black_box=True)
    assert p.estimate(0.1, 10) == "in-process" and p.plan.where == "measuring"


def test_after_a_cheap_call_each_worker_gets_one_chunk():
    x = np.ones(100)   # about 1 ms in this process; one chunk each below 40 ms
    with Gradient(squares, workers=2, backend="threading", dispatch="in-process") as g:
        g(x)
        assert g._chunks(ParamSpace(x), "loop") == split_range(100, 2)


def test_a_shipped_f_is_probed_once_and_every_call_checks_f_of_x(tmp_path):
    f = LogsCalls(tmp_path / "calls.log")
    with Gradient(f, workers=2, backend="threading", dispatch="parallel", chunk_size=1) as g:
        g(np.ones(4))
        # the check: f(x) here and on a worker; after shipping, the probe's point in both too;
        # on the first call, f(x) twice more here (the test for side effects and determinism)
        assert f.calls() == 2 * 4 + 2 + 2 + 2
        g(np.full(4, 2.0))
        assert f.calls() == 2 * 4 + 2


def test_a_nan_entry_passes_the_state_check():
    def f(v):
        if v[-1] > 1.0:
            raise ArithmeticError("up")
        return squares(v)

    with Gradient(f, workers=2, backend="threading", dispatch="parallel",
                  on_failure="nan") as g:
        with pytest.warns(NumericalFallbackWarning):
            got = g(np.ones(3))
    assert np.isnan(got[-1]) and not np.isnan(got[:-1]).any()


@pytest.mark.parametrize("failed, ending", [(10, "x[9] at x_i + 1*h: ArithmeticError: up"),
                                            (11, "ArithmeticError: up (and 1 more)")])
def test_the_warning_names_ten_failures_then_counts_the_rest(failed, ending):
    x = np.linspace(1.0, 2.0, failed)

    def f(v):
        if np.any(v > x + 1e-9):
            raise ArithmeticError("up")
        return squares(v)

    with Gradient(f, workers=1, on_failure="nan") as g:
        with pytest.warns(NumericalFallbackWarning) as caught:
            g(x.copy())
    assert str(caught[0].message).endswith(ending)


def test_warnings_point_at_the_callers_line():
    with Gradient(lambda v: squares(v) if v[0] <= 1.0 else math.nan, workers=1,
                  on_failure="nan") as g:
        with pytest.warns(NumericalFallbackWarning) as caught:
            g(np.ones(2))
    with Gradient(squares, workers=1, h=1e-6) as g:
        with pytest.warns(StepSizeWarning) as stepped:
            g(np.ones(1, dtype=np.float32))
    assert caught[0].filename == stepped[0].filename == __file__


def test_the_model_loss_warning_points_at_the_callers_line(model):
    net, params, inputs, labels = model
    loss = ModelLoss(net, params, inputs, labels)
    with Gradient(loss, workers=1) as g:
        with pytest.warns(UserWarning, match="pass x = f.params") as caught:
            g({k: v.copy() for k, v in params.items()})
    assert caught[0].filename == __file__


def test_a_string_step_other_than_auto_is_refused_at_construction():
    with pytest.raises((TypeError, ValueError), match="h"):
        Gradient(squares, workers=1, h="fast")


def test_no_more_threads_than_chunks():
    with Gradient(squares, workers=3, backend="threading", dispatch="parallel",
                  chunk_size=1) as g:
        g(np.ones(2))
        assert g.plan.workers == 2


def test_two_entries_are_worth_estimating_and_measuring_interleaves_whatever_a_call_takes():
    p = planner(2)
    assert p.where(("sig", None, "loop"), 2, black_box=True) == "estimate"
    q = planner(2)
    signature = ("sig", None, "batched")
    q.where(signature, 10)
    q.record("in-process", 0.1)
    assert q.where(signature, 10) == "parallel"     # then the workers, in turn


def test_a_per_call_backend_measures_real_durations():
    with Gradient(squares, workers=2, backend="sequential") as g:
        started = time.perf_counter()
        plan = g.calibrate(np.ones(4))
        took = time.perf_counter() - started
    assert 0 < plan.in_process_seconds < took and 0 < plan.parallel_seconds < took
