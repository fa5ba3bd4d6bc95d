"""A derivative's call path, piece by piece: the link to the workers (`engine.derivatives._link`),
the per-call check (`engine.derivatives._check`) and the one-shot calls (`engine.derivatives._parallel`).

Most cases drive a `WorkerLink` over a pool that only records what it is asked (`FakePool`),
or over the real thread pool: no worker processes, so each case runs in milliseconds. Each
was seen failing on the mutant it is named after (tests/README.md, "The derivative's call
path (round two)").
"""
import dataclasses
import threading
import time
import warnings

import numpy as np
import pytest
import tqdm.auto

from engine import StateNotShippedError, numerical_gradient
from engine._errors import PayloadError, WorkerDied, WorkerLostError
from engine.derivatives import _gradient, _link
from engine.derivatives._check import WorkerCall, _Disagreement, _identical, _not_shipped, probe_values
from engine.derivatives._gradient import Gradient, Jacobian
from engine.derivatives._link import WorkerLink, lost_message
from engine.derivatives._parallel import jacobian, parallel_numerical_gradient
from engine.fd._evaluators import LoopOptions, Report
from engine.fd._space import ParamSpace
from engine.run import _backends
from engine.run._backends import ThreadPool
from engine.run._execution import Execution
from engine.run._job import (CENTER, BatchedOptions, Job, Point, Raised, center, evaluate,
                             value_at)


def squares(v):
    return float(np.sum(np.asarray(v, dtype=np.float64) ** 2))


class DiffersWhenCopied:
    """`squares` here, `squares + 0.5` in any copy (the workers' copy of `f`)."""

    def __init__(self):
        self.copied = False

    def __setstate__(self, state):
        self.__dict__.update(state, copied=True)

    def __call__(self, v):
        return squares(v) + (0.5 if self.copied else 0.0)


JOB = Job("loop", "central", (1e-4,), LoopOptions())


def one_call(link, x, args=(), call=1, tasks=None):
    """One `WorkerLink.run` of a gradient of `squares` at `x`: ``(results, shipping seconds)``."""
    space = ParamSpace(x)
    tasks = {0: (0, x.size)} if tasks is None else tasks
    return link.run(squares, space, args, JOB, tasks, ("signature",), call)


class FakePool:
    """A resident pool that records what the link asks of it; `dies` runs end in `WorkerDied`."""

    resident = True

    def __init__(self, workers=2, dies=0, exit_code=None):
        self.workers, self.dies, self.exit_code = workers, dies, exit_code
        self.generation, self.lock, self.keys, self.calls = 1, threading.RLock(), set(), []

    def ensure_started(self):
        pass

    def holds(self, key):
        return key in self.keys

    def ship(self, key, bundle, arrays):
        self.keys.add(key)
        self.calls.append("ship")

    def update(self, key, arrays, args):
        self.calls.append("update")

    def run(self, key, job, tasks, while_waiting=None):
        self.calls.append(("run", sorted(tasks)))
        if while_waiting is not None:
            while_waiting()
        for number in sorted(tasks):   # a dying run finishes task 0 alone
            if self.dies and number != 0:
                break
            yield number, np.zeros(1)
        if self.dies:
            self.dies -= 1
            raise WorkerDied("worker 1 died", self.exit_code)

    def drop(self, key):
        self.calls.append("drop")

    def close(self):
        self.calls.append("close")


# -- what the link says when workers are lost ------------------------------------------------------

@pytest.mark.parametrize("exit_code, cause", [
    (-9, "SIGKILL usually means the system ran out of memory and killed the worker: try fewer "
         "workers."),
    (-11, "SIGSEGV: `f` crashed the worker"),
    (-15, "The worker was ended by signal 15."),
    (0, "Killed workers usually mean running out of memory: try fewer workers."),
    (1, "Killed workers usually mean running out of memory: try fewer workers."),
    (None, "Killed workers usually mean running out of memory: try fewer workers."),
])
def test_the_lost_message_names_the_likely_cause_from_the_exit_status(exit_code, cause):
    message = lost_message({0: (0, 4)}, 2, WorkerDied("worker 0 died", exit_code))
    assert message.startswith("worker processes died and 1 chunk(s) (4 entries) were still lost "
                              "after 2 retries on fresh workers (worker 0 died); no gradient is "
                              "returned. ")
    assert message.endswith(cause) or cause in message
    assert ("SIGKILL" in message) == (exit_code == -9)
    assert ("SIGSEGV" in message) == (exit_code == -11)
    assert ("ended by signal" in message) == (exit_code == -15)


# -- retries after a lost worker -----------------------------------------------------------------

@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_pool_that_keeps_dying_is_tried_retries_plus_one_times_then_the_loss_is_raised(retries):
    link = WorkerLink(Execution(retries=retries))
    link.pool = FakePool(dies=retries + 5, exit_code=-9)
    with pytest.raises(WorkerLostError, match=rf"after {retries} retries .*SIGKILL"):
        one_call(link, np.ones(4), tasks={0: (0, 2), 1: (2, 4)})
    runs = [call for call in link.pool.calls if call != "update" and call != "ship"]
    assert len(runs) == retries + 1
    # each attempt ships again (a fresh pool holds nothing) and sends only what is still lost
    assert link.pool.calls.count("ship") == retries + 1
    assert runs[1:] == [("run", [1])] * retries


def test_a_retry_after_one_loss_returns_every_task_once():
    link = WorkerLink(Execution(retries=1))
    link.pool = FakePool(dies=1)
    results, _ = one_call(link, np.ones(4), tasks={0: (0, 2), 1: (2, 4)})
    assert sorted(results) == [0, 1]
    assert [call for call in link.pool.calls if call[0] == "run"] == [("run", [0, 1]), ("run", [1])]


# -- the pool: kept while big enough, replaced (and closed) when too small -----------------------------

def test_the_pool_is_kept_while_big_enough_and_a_smaller_one_is_closed_when_replaced(monkeypatch):
    made = []

    def make(backend, workers, scheduler=None):
        made.append(FakePool(workers))
        return made[-1]

    monkeypatch.setattr(_link, "make_pool", make)
    link = WorkerLink(Execution(workers=4))
    assert link.workers_for(2) == 2
    assert link.workers_for(2) == 2 and link.workers_for(1) == 2 and len(made) == 1
    assert made[0].calls == []
    assert link.workers_for(3) == 3 and len(made) == 2
    assert made[0].calls == ["close"] and link.pool is made[1]


def test_a_link_made_without_shared_owns_its_pool_and_closes_it():
    link = WorkerLink(Execution())
    pool = link.pool = FakePool()
    pool.keys.add(link.key)
    link.release()
    assert pool.calls == ["close"]


# -- the seconds spent shipping ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["threading", "sequential"])
def test_shipping_seconds_are_part_of_the_calls_time_and_zero_when_nothing_ships(backend):
    link = WorkerLink(Execution(backend=backend, workers=2))
    link.workers_for(2)
    try:
        x = np.ones(4)
        started = time.perf_counter()
        _, shipping = one_call(link, x, call=1)
        wall = time.perf_counter() - started
        assert 0.0 < shipping <= wall
        started = time.perf_counter()
        _, shipping = one_call(link, x, call=2)
        wall = time.perf_counter() - started
        if backend == "threading":    # resident: f and x are shipped once
            assert shipping == 0.0
        else:                         # per call: the bundle travels with every call
            assert 0.0 < shipping <= wall
    finally:
        link.release()


# -- the progress bar ------------------------------------------------------------------------------

class RecordingBar:
    bars: list = []

    def __init__(self, total, unit, desc, leave):
        self.total, self.unit, self.desc, self.leave = total, unit, desc, leave
        self.n, self.closed = 0, False
        RecordingBar.bars.append(self)

    def update(self, n=1):
        self.n += n

    def close(self):
        self.closed = True


def test_the_progress_bar_counts_every_chunk_and_is_closed_and_cleared(monkeypatch):
    monkeypatch.setattr(tqdm.auto, "tqdm", RecordingBar)
    RecordingBar.bars = []
    link = WorkerLink(Execution(progress=True))
    link.pool = FakePool()
    one_call(link, np.ones(6), tasks={0: (0, 2), 1: (2, 4), 2: (4, 6)})
    [bar] = RecordingBar.bars
    assert (bar.total, bar.n, bar.closed) == (3, 3, True)
    assert (bar.unit, bar.desc, bar.leave) == ("chunk", "gradient", False)


# -- the arguments -------------------------------------------------------------------------------

def test_arguments_that_cannot_be_pickled_are_refused_naming_them():
    with Gradient(lambda v, lock: squares(v), workers=2, backend="threading",
                  dispatch="parallel") as g:
        with pytest.raises(PayloadError, match=r"the arguments after `x` cannot be pickled for the "
                                               r"workers \(TypeError: .*lock"):
            g(np.ones(3), threading.Lock())


def test_arguments_travel_again_when_any_byte_of_an_array_in_them_changes():
    link = WorkerLink(Execution())
    data = np.array([1.0, 2.0, 3.0])
    assert link._args_update((data, "label"), 1) is not None    # the first time: sent
    assert link._args_update((data, "label"), 1) is None        # the same bytes: not again
    for index in (0, 2):   # the lowest byte of the first value, then of the last one
        data[index] = np.nextafter(data[index], 10.0)
        assert link._args_update((data, "label"), 1) is not None
        assert link._args_update((data, "label"), 1) is None
    assert link._args_update((data, "other"), 1) is not None    # the pickle itself changed
    assert link._args_update((data, "other"), 2) is not None    # new workers hold nothing


# -- a disagreement on a fresh copy ----------------------------------------------------------------

class RecordingThreadPool(ThreadPool):
    """The real thread pool, counting shippings."""

    def __init__(self, workers):
        super().__init__(workers)
        self.shipped = 0

    def ship(self, key, bundle, arrays):
        self.shipped += 1
        super().ship(key, bundle, arrays)


# "forward": f(x) is compared before the probe's point, whose disagreement counts as fresh anyway
@pytest.mark.parametrize("backend", ["threading", "sequential"])
@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_a_copy_that_differs_fails_the_check_at_once_with_no_warning(backend, scheme, monkeypatch):
    made, real = [], _link.make_pool

    def make(kind, workers, scheduler=None):
        made.append(RecordingThreadPool(workers) if kind == "threading" else real(kind, workers))
        return made[-1]

    monkeypatch.setattr(_link, "make_pool", make)
    with Gradient(DiffersWhenCopied(), workers=2, backend=backend, dispatch="parallel",
                  scheme=scheme) as g:
        with warnings.catch_warnings():
            warnings.simplefilter("error")    # not "shipped again and the call repeated"
            with pytest.raises(StateNotShippedError, match="on a freshly shipped copy"):
                g(np.ones(4))
    if backend == "threading":
        assert made[0].shipped == 1


# -- the state check: the probe's point --------------------------------------------------------------

def test_the_probe_moves_each_entry_up_by_a_1024th_of_its_size_at_least_1():
    x = np.array([0.0, 3.0, -2048.0, 0.5])
    [probe] = probe_values(ParamSpace(x), None)
    assert probe.tolist() == [2.0 ** -10, 3.0 + 3.0 * 2.0 ** -10, -2046.0, 0.5 + 2.0 ** -10]
    small = np.array([1.0, -4.0], dtype=np.float32)
    [probe] = probe_values(ParamSpace(small), None)
    assert probe.dtype == np.float32
    assert probe.tolist() == [1.0 + 2.0 ** -10, -4.0 + 4.0 * 2.0 ** -10]


def test_the_probe_moves_down_at_the_upper_bound_and_stays_where_neither_side_fits():
    step = 2.0 ** -10
    x = {"up": np.array([0.0, 0.0]), "down": np.array([1.0, 1.0]), "stay": np.array([0.0])}
    lower = {"up": np.array([-1.0, -1.0]), "down": np.array([0.0, 1.0 - step]), "stay": -step / 2}
    upper = {"up": np.array([step, 1.0]), "down": np.array([1.0, 1.0]), "stay": step / 2}
    up, down, stay = probe_values(ParamSpace(x), (lower, upper))
    assert up.tolist() == [step, step]              # up to the upper bound itself is inside
    assert down.tolist() == [1.0 - step, 1.0 - step]   # down to the lower bound itself too
    assert stay.tolist() == [0.0]


# -- the state check: what counts as the same value ------------------------------------------------

@pytest.mark.parametrize("ours, theirs, same", [
    (1.0, 1.0, True),
    (1.0, np.nextafter(1.0, 2.0), False),
    (np.nan, np.nan, True),
    (np.array([1.0, 2.0]), np.array([1.0, 2.0]), True),
    (np.array([1.0, 2.0]), np.array([[1.0, 2.0]]), False),
    (Raised("ValueError", "bad"), Raised("ValueError", "bad"), True),
    (Raised("ValueError", "bad"), Raised("ValueError", "worse"), False),
    (Raised("ValueError", "bad"), 1.0, False),
    (1.0, Raised("ValueError", "bad"), False),
])
def test_values_are_the_same_only_to_the_bit_and_errors_only_when_identical(ours, theirs, same):
    assert _identical(ours, theirs) is same


def test_f_of_x_is_a_gradients_float_unless_the_job_says_vector():
    space = ParamSpace(np.arange(1.0, 4.0))
    by_job, _ = evaluate(Job("loop", "central", (1e-4,)), squares, space, CENTER, {})
    alone = center(squares, space, {})
    moved = value_at(squares, space, (np.array([2.0, 2.0, 3.0]),))
    assert [type(value) for value in (by_job, alone, moved)] == [float] * 3
    assert (by_job, alone, moved) == (14.0, 14.0, 17.0)
    doubled, _ = evaluate(Job("loop", "central", (1e-4,), vector=True), lambda v: 2 * v, space,
                          CENTER, {})
    assert doubled.dtype == np.float64 and np.array_equal(doubled, [2.0, 4.0, 6.0])


@pytest.mark.parametrize("value", [Job("loop", "central", (1e-4,)), BatchedOptions(2**20), Point(),
                                   Raised("ValueError", "bad")],
                         ids=["Job", "BatchedOptions", "Point", "Raised"])
def test_a_calls_job_and_what_its_tasks_carry_are_frozen_values(value):
    # The worker threads of one call share these very objects (a queue passes no copy).
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, dataclasses.fields(value)[0].name, None)
    assert hash(value) == hash(dataclasses.replace(value))


def test_the_error_shows_both_values_and_an_error_by_its_type_and_message():
    error = _not_shipped(_Disagreement("f(x)", 1.5, Raised("RuntimeError", "only there"), True))
    assert isinstance(error, StateNotShippedError)
    assert str(error).startswith("the workers computed an error (RuntimeError: only there) for "
                                 "f(x), but this process computes 1.5, on a freshly shipped copy")


# -- the state check on a call ------------------------------------------------------------------

@pytest.mark.parametrize("scheme, what", [("central", "f at the state probe's point"),
                                          ("forward", r"f\(x\)")])
def test_a_failed_check_names_the_value_compared_and_the_next_call_ships_again(scheme, what,
                                                                               monkeypatch):
    made = []
    monkeypatch.setattr(_link, "make_pool", lambda kind, workers, scheduler=None: made.append(
        RecordingThreadPool(workers)) or made[-1])
    with Gradient(DiffersWhenCopied(), workers=2, backend="threading", dispatch="parallel",
                  scheme=scheme) as g:
        for shipped in (1, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(StateNotShippedError, match=rf"the workers computed [-+.e0-9]+ "
                                                               rf"for {what}, but this process"):
                    g(np.ones(4))
            assert made[0].shipped == shipped


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_the_calls_shipping_seconds_are_part_of_its_time_and_zero_when_nothing_ships(scheme):
    link = WorkerLink(Execution(backend="threading", workers=2))
    link.workers_for(2)
    checked = WorkerCall(link, check=True)
    x = np.ones(4)
    space = ParamSpace(x)
    job = Job("loop", scheme, (1e-4,), LoopOptions())
    try:
        for call in (1, 2):
            started = time.perf_counter()
            *_, shipping = checked.run(squares, squares, space, (), job, [(0, 2), (2, 4)],
                                       ("signature",), call, needs_center=scheme == "forward",
                                       want_center=False)
            wall = time.perf_counter() - started
            assert (0.0 < shipping <= wall) if call == 1 else shipping == 0.0
    finally:
        link.release()


# -- the one-shot calls ----------------------------------------------------------------------------

def test_one_shot_calls_share_one_pool_kept_between_them(monkeypatch):
    monkeypatch.setattr(_backends, "_shared", {})
    x = np.arange(1.0, 5.0)
    try:
        for _ in range(2):
            got = parallel_numerical_gradient(squares, x, workers=2, backend="threading")
            assert np.array_equal(got, numerical_gradient(squares, x))
            assert list(_backends._shared) == [("threading", 2)]
            pool = _backends._shared[("threading", 2)]
            assert pool.usable            # started, and left running for the next call
            assert pool is _backends.shared_pool("threading", 2)
    finally:
        for pool in _backends._shared.values():
            pool.close()


def test_one_shot_dispatch_in_process_is_kept_and_auto_means_the_workers():
    x = np.ones(4)
    assert parallel_numerical_gradient(DiffersWhenCopied(), x, workers=2, backend="threading",
                                       dispatch="in-process").shape == (4,)
    with pytest.raises(StateNotShippedError):   # f ran on the workers, and was checked there
        parallel_numerical_gradient(DiffersWhenCopied(), x, workers=2, backend="threading")


def test_one_shot_options_reach_the_gradient_and_the_execution():
    x = np.array([0.5, 1.0, 2.0])
    got = parallel_numerical_gradient(squares, x, workers=2, backend="threading", h=1e-3,
                                      scheme="forward", chunk_size=1)
    assert np.array_equal(got, numerical_gradient(squares, x, h=1e-3, scheme="forward"))


def test_one_shot_jacobian_is_the_jacobians_in_process_result():
    f = lambda v: np.array([v[0] * v[1], np.sin(v[1]), v.sum()])  # noqa: E731
    x = np.array([0.5, 2.0])
    with Jacobian(f, workers=1) as J:
        expected = J(x)
    got = jacobian(f, x, workers=2, backend="threading")
    assert got.shape == (3, 2) and np.array_equal(got, expected)


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_work_alongside_runs_here_once_per_call_while_the_workers_work(scheme):
    link = WorkerLink(Execution(backend="threading", workers=2))
    link.workers_for(2)
    checked = WorkerCall(link, check=True)
    space = ParamSpace(np.ones(4))
    job = Job("loop", scheme, (1e-4,), LoopOptions())
    ran = []
    try:
        for call in (1, 2):
            checked.run(squares, squares, space, (), job, [(0, 2), (2, 4)], ("signature",), call,
                        needs_center=scheme == "forward", want_center=False,
                        alongside=lambda: ran.append(threading.current_thread()))
            assert ran == [threading.current_thread()] * call
    finally:
        link.release()


# -- the gradient's own bookkeeping around the call -----------------------------------------------------

def test_reship_ships_f_again_on_the_next_call_only(monkeypatch):
    made = []
    monkeypatch.setattr(_link, "make_pool", lambda kind, workers, scheduler=None: made.append(
        RecordingThreadPool(workers)) or made[-1])
    x = np.arange(1.0, 5.0)
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel") as g:
        for reship, shipped in ((False, 1), (False, 1), (True, 2), (False, 2)):
            if reship:
                g.reship()
            assert np.array_equal(g(x), numerical_gradient(squares, x))
            assert made[0].shipped == shipped


class FakeClock:
    """`time` for `engine.derivatives._gradient`: perf_counter() gives the readings in turn."""

    def __init__(self, *readings):
        self.readings = list(readings)

    def perf_counter(self):
        return self.readings.pop(0)


@pytest.mark.parametrize("dispatch, recorded, entry_seconds", [
    ("parallel", 10.0 - 4.0, (10.0 - 4.0) * 2 / 4),   # 4 s shipping; 2 workers shared 4 entries
    ("in-process", 10.0, 10.0 / 4),
])
def test_the_planner_gets_the_calls_seconds_less_shipping_and_chunking_the_seconds_per_entry(
        monkeypatch, dispatch, recorded, entry_seconds):
    g = Gradient(squares, workers=2, backend="threading", dispatch=dispatch)
    seen = []
    monkeypatch.setattr(g._planner, "record", lambda where, seconds: seen.append((where, seconds)))
    monkeypatch.setattr(g, "_on_workers", lambda *args: (None, np.zeros(4), Report(), 4.0))
    monkeypatch.setattr(g, "_in_process", lambda *args: (None, np.zeros(4), Report()))
    monkeypatch.setattr(_gradient, "time", FakeClock(100.0, 110.0))   # the call took 10 s
    with g:
        g(np.ones(4))
        assert g.plan.workers == 2
    assert seen == [(dispatch, recorded)]
    assert g._entry_seconds == entry_seconds


@pytest.mark.parametrize("size", [2, 5])   # a size of 0 or 1 is always evaluated in-process
def test_a_call_of_one_chunk_starts_one_worker(size):
    with Gradient(squares, workers=3, backend="threading", dispatch="parallel", chunk_size=5) as g:
        g(np.ones(size))
        assert g._link.pool.workers == 1 and g.plan.workers == 1


def test_timing_one_task_evaluates_the_last_entry_alone():
    moved = []
    x, x0 = np.arange(1.0, 6.0), np.arange(1.0, 6.0)

    def f(v):
        moved.append(np.flatnonzero(v != x0).tolist())
        return squares(v)

    g = Gradient(f, dispatch="auto")
    space = ParamSpace(x)
    job = Job("loop", "central", (1e-4,), LoopOptions())
    seconds = g._time_one_task(space, f, job, x.size)
    assert moved == [[4], [4]] and seconds >= 0.0
    assert x.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
