"""`engine.run._dask`'s decisions without a cluster: fakes stand in for Dask's client.

The real scheduler and workers are in `tests/test_dask.py` (each case there starts processes);
here the pool's own logic (which client it takes, what it submits and how many at once, how
a finished task is read, what a lost one raises, what it closes) runs in milliseconds.
"""
import contextlib
from concurrent.futures import CancelledError

import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

from engine._errors import WorkerDied  # noqa: E402
from engine.run import _dask  # noqa: E402


class FakeFuture:
    def __init__(self, key, status, result):
        self.key, self.status, self.result, self.released = key, status, result, False

    def release(self):
        self.released = True


class FakeDone:
    """`distributed.as_completed` with results: futures in the order added, also while iterating."""

    def __init__(self, loop=None, with_results=False, raise_errors=True):
        assert with_results and not raise_errors   # the pool reads each status itself
        self.queue = []

    def add(self, future):
        self.queue.append(future)

    def __iter__(self):
        while self.queue:
            future = self.queue.pop(0)
            yield future, future.result


class FakeClient:
    """Runs nothing: `outcome(number)` says how chunk `number` ends, as (status, result)."""

    loop = None

    def __init__(self, outcome=lambda number: ("finished", f"rows {number}")):
        self.outcome, self.submitted, self.cancelled, self.running_at_submit = outcome, [], [], []
        self.scattered = []

    def submit(self, function, job, data, call_id, task, pure, key):
        number = int(key.split("-")[2])
        self.submitted.append(number)
        return FakeFuture(key, *self.outcome(number))

    def cancel(self, futures):
        self.cancelled.extend(futures)

    def scatter(self, data, **options):
        self.scattered.append(options)
        return FakeData()


class FakeData:
    released = False

    def release(self):
        self.released = True


WORKER = type("WorkerState", (), {"address": "tcp://10.0.0.2:4000"})()   # the last worker a task had


@pytest.fixture
def fake_done(monkeypatch):
    monkeypatch.setattr(distributed, "as_completed", FakeDone)


def flight(client, count):
    return _dask._Flight(client, "job", "data", {number: (number, number + 1) for number in range(count)})


# --- one call's tasks ---------------------------------------------------------------------------

def test_at_most_cap_tasks_run_at_once_and_each_result_comes_once_in_turn(fake_done):
    client = FakeClient()
    one = flight(client, 5)
    seen = []
    for number, rows in one.stream(2):
        seen.append((number, rows, len(one.running)))
    # each finished task makes room for the next before its result is handed on
    assert seen == [(0, "rows 0", 2), (1, "rows 1", 2), (2, "rows 2", 2), (3, "rows 3", 1),
                    (4, "rows 4", 0)]
    assert client.submitted == [0, 1, 2, 3, 4]


def test_lost_chunks_are_drained_then_raised_together_naming_each(fake_done):
    lost = {0: ("cancelled", distributed.KilledWorker("task", WORKER, 3)), 2: ("cancelled", None)}
    client = FakeClient(lambda number: lost.get(number, ("finished", f"rows {number}")))
    one = flight(client, 6)
    got = []
    with pytest.raises(WorkerDied, match=r"^Dask workers died, taking chunks or the call's data with "
                                         r"them: chunk 0: KilledWorker: .*; chunk 2: CancelledError: "):
        for number, _ in one.stream(3):
            got.append(number)
    assert got == [1] and client.submitted == [0, 1, 2]   # nothing more goes out after a loss


def test_fs_own_error_is_raised_as_itself_with_its_traceback(fake_done):
    try:
        raise ArithmeticError("diverged")
    except ArithmeticError as error:
        raised, traceback = error, error.__traceback__
    client = FakeClient(lambda number: ("error", (ArithmeticError, raised, traceback)) if number == 1
                        else ("finished", "rows"))
    with pytest.raises(ArithmeticError, match="diverged") as caught:
        list(flight(client, 3).stream(2))
    assert caught.value is raised and caught.value.__traceback__ is not None


def test_a_finished_future_is_released_after_its_status_is_read(fake_done):
    client = FakeClient()
    futures = []
    original = client.submit
    client.submit = lambda *args, **kwargs: futures.append(original(*args, **kwargs)) or futures[-1]
    list(flight(client, 2).stream(2))
    assert [future.released for future in futures] == [True, True]


@pytest.mark.parametrize("status, result, expected", [
    ("finished", "rows", None), ("cancelled", None, CancelledError),
    ("cancelled", distributed.KilledWorker("task", WORKER, 3), distributed.KilledWorker)])
def test_a_finished_futures_failure_is_read_from_its_status(status, result, expected):
    failure = _dask._failure(FakeFuture("numgrad-chunk-3", status, result), result)
    assert failure is None if expected is None else isinstance(failure, expected)
    if status == "cancelled" and result is None:
        assert failure.args == ("numgrad-chunk-3",)


# --- the runner: its client, one call, its closing ----------------------------------------------

def runner_over(client, monkeypatch, scheduler=None):
    monkeypatch.setattr(_dask.DaskRunner, "_connect", lambda self: client)
    return _dask.DaskRunner(2, scheduler)


def test_a_run_scatters_the_bundle_once_with_a_fresh_key_and_releases_it(fake_done, monkeypatch):
    client = FakeClient()
    with runner_over(client, monkeypatch) as runner:
        assert runner.client is client
        assert list(runner.run("job", b"bundle", {0: (0, 1), 1: (1, 2)})) == [(0, "rows 0"), (1, "rows 1")]
    assert client.scattered == [{"hash": False, "broadcast": True}]


def test_an_error_cancels_what_still_runs_releases_the_data_and_goes_through(fake_done, monkeypatch):
    client = FakeClient(lambda number: ("error", (ValueError, ValueError("no"), None)) if number == 0
                        else ("finished", "rows"))
    data = FakeData()
    client.scatter = lambda bundle, **options: data
    with runner_over(client, monkeypatch) as runner:
        with pytest.raises(ValueError, match="no"):
            list(runner.run("job", b"bundle", {n: (n, n + 1) for n in range(4)}))
    assert [future.key.split("-")[2] for future in client.cancelled] == ["1"]
    assert data.released


def test_a_scatter_that_finds_no_workers_says_how_to_start_some(monkeypatch):
    client = FakeClient()
    client.scheduler = type("Scheduler", (), {"address": "tcp://10.0.0.1:8786"})()

    def no_workers(bundle, **options):
        raise TimeoutError("No valid workers found")

    client.scatter = no_workers
    runner = runner_over(client, monkeypatch)
    runner.client = client
    with pytest.raises(TimeoutError, match=r"at tcp://10.0.0.1:8786 has no running workers .*"
                                           r"`dask worker tcp://10.0.0.1:8786`"):
        list(runner.run("job", b"bundle", {0: (0, 1)}))


def test_an_error_inside_the_with_block_is_not_swallowed_and_what_was_started_is_closed(monkeypatch):
    closed = []
    runner = runner_over(FakeClient(), monkeypatch)
    runner._owned.callback(closed.append, "cluster")
    with pytest.raises(KeyError):
        with runner:
            raise KeyError("mine")
    assert closed == ["cluster"]


def test_a_client_that_fails_to_start_closes_what_was_started_first(monkeypatch):
    closed = []

    def connect(self):
        self._owned.callback(closed.append, "cluster")
        raise OSError("client failed")

    monkeypatch.setattr(_dask.DaskRunner, "_connect", connect)
    with pytest.raises(OSError, match="client failed"):
        _dask.DaskRunner(2).__enter__()
    assert closed == ["cluster"]


@pytest.mark.parametrize("active_at, scheduler, expected", [
    ("tcp://127.0.0.1:8786", None, "active"), ("tcp://127.0.0.1:8786", "127.0.0.1:8786", "active"),
    ("tcp://127.0.0.1:8786", "tcp://10.0.0.1:8786", "connected"), (None, "tcp://10.0.0.1:8786", "connected"),
    (None, None, "local")])
def test_the_client_is_the_active_one_to_the_same_scheduler_else_a_new_one(monkeypatch, active_at,
                                                                            scheduler, expected):
    active = None
    if active_at is not None:
        active = FakeClient()
        active.scheduler = type("Scheduler", (), {"address": active_at})()
    monkeypatch.setattr(_dask, "_active_client", lambda: active)
    opened = []

    @contextlib.contextmanager
    def connect_to(address):
        opened.append(address)
        yield "connected"

    monkeypatch.setattr(_dask, "_connect_to", connect_to)
    monkeypatch.setattr(_dask, "_local_client", lambda owned, workers: f"local of {workers}")
    runner = _dask.DaskRunner(3, scheduler)
    got = runner._connect()
    assert got == {"active": active, "connected": "connected", "local": "local of 3"}[expected]
    assert opened == ([scheduler] if expected == "connected" else [])


def test_the_active_client_is_the_default_one_or_none(monkeypatch):
    monkeypatch.setattr(distributed, "default_client", lambda: "the default")
    assert _dask._active_client() == "the default"

    def none():
        raise ValueError("No clients found")

    monkeypatch.setattr(distributed, "default_client", none)
    assert _dask._active_client() is None


# --- the clients it opens -------------------------------------------------------------------------

class Recorded:
    """A context manager that records how it was made."""

    made = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        Recorded.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


@pytest.fixture
def recorded(monkeypatch):
    Recorded.made = []
    monkeypatch.setattr(distributed, "LocalCluster", type("LocalCluster", (Recorded,), {}))
    monkeypatch.setattr(distributed, "Client", type("Client", (Recorded,), {}))
    return Recorded.made


@pytest.mark.parametrize("workers", [1, 10**6])
def test_a_local_cluster_has_one_thread_processes_at_most_one_per_core(recorded, workers):
    from joblib import cpu_count

    with contextlib.ExitStack() as owned:
        client = _dask._local_client(owned, workers)
    cluster, made = recorded
    assert client is made and made.args == (cluster,) and made.kwargs == {"set_as_default": False}
    assert (cluster.kwargs["n_workers"], cluster.kwargs["threads_per_worker"],
            cluster.kwargs["processes"]) == (min(workers, cpu_count()), 1, True)


def test_a_scheduler_is_reached_by_a_client_that_is_not_made_the_default(recorded):
    client = _dask._connect_to("tcp://10.0.0.1:8786")
    assert client.args == ("tcp://10.0.0.1:8786",) and client.kwargs == {"set_as_default": False}


def test_a_scheduler_that_cannot_be_reached_is_named_with_the_wait(monkeypatch):
    def refused(address, set_as_default):
        raise OSError("Timed out trying to connect")

    monkeypatch.setattr(distributed, "Client", refused)
    with dask.config.set({"distributed.comm.timeouts.connect": "7s"}):
        assert _dask._connect_timeout() == 7.0
        with pytest.raises(ConnectionError, match=r"`scheduler`='tcp://10.0.0.1:8786' .*\(7 s\)"):
            _dask._connect_to("tcp://10.0.0.1:8786")


@pytest.mark.parametrize("scheduler", [None, "tcp://10.0.0.1:8786"])
def test_open_client_is_the_default_while_its_block_runs(monkeypatch, scheduler):
    current = []

    class Client:
        @contextlib.contextmanager
        def as_current(self):
            current.append(self)
            yield

    local, remote = Client(), Client()

    @contextlib.contextmanager
    def connect_to(address):
        yield remote

    monkeypatch.setattr(_dask, "_connect_to", connect_to)
    monkeypatch.setattr(_dask, "_local_client", lambda owned, workers: local)
    made = local if scheduler is None else remote
    with _dask.open_client(scheduler, 2) as client:
        assert client is made and current == [made]


# --- the pool over a runner -----------------------------------------------------------------------

def test_the_pool_opens_one_runner_for_its_calls_and_close_closes_it(monkeypatch):
    events = []

    class Runner:
        def __init__(self, workers, scheduler):
            events.append(("open", workers, scheduler))

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            events.append("close")

        def run(self, job, bundle, tasks):
            yield from tasks.items()

    monkeypatch.setattr(_dask, "DaskRunner", Runner)
    pool = _dask.DaskPool(2, "tcp://10.0.0.1:8786")
    assert pool.workers == 2
    for _ in range(2):
        assert list(pool.run_once("job", b"bundle", {0: "task"})) == [(0, "task")]
    pool.close()
    pool.close()
    assert events == [("open", 2, "tcp://10.0.0.1:8786"), "close"]
