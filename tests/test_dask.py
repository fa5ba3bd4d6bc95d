"""backend="dask" on real `dask scheduler` and `dask worker` processes: serial's numbers exactly."""
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

import engine.run._dask  # noqa: E402
from engine import WorkerLostError, numerical_gradient, parallel_numerical_gradient  # noqa: E402
from engine.data._data import load_embedded_mnist  # noqa: E402
from engine.book._nets import ThreeLayerNet  # noqa: E402

pytestmark = pytest.mark.timeout(120)

STARTUP_TIMEOUT = 60   # seconds for a scheduler and its workers to come up on a busy machine
SHUTDOWN_TIMEOUT = 15


@contextlib.contextmanager
def dask_cluster(folder: Path, nthreads: list[int]):
    """A scheduler and a `dask worker` per item of `nthreads`, on 127.0.0.1; yields the address."""
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "cluster.log", "w")
    processes = []

    def spawn(*args):
        # A session of its own, so that a worker's nanny and child can be killed together.
        process = subprocess.Popen(["dask", *args], stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        processes.append(process)
        return process

    try:
        scheduler_file = folder / "scheduler.json"
        scheduler = spawn("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                          "--dashboard-address", "127.0.0.1:0",   # its HTTP server: off 8787 too
                          "--scheduler-file", str(scheduler_file), "--idle-timeout", "600")
        address = _read_address(scheduler_file, scheduler)
        for threads in nthreads:
            spawn("worker", address, "--nthreads", str(threads), "--host", "127.0.0.1",
                  "--no-dashboard", "--memory-limit", "0", "--death-timeout", "60",
                  "--local-directory", str(folder))
        if nthreads:
            with distributed.Client(address, set_as_default=False) as client:
                client.wait_for_workers(len(nthreads), timeout=STARTUP_TIMEOUT)
        yield address
    finally:
        _stop(processes[1:])   # workers first: a worker outliving its scheduler waits to reconnect
        _stop(processes[:1])
        log.close()


def _read_address(scheduler_file: Path, scheduler: subprocess.Popen) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            raise RuntimeError(f"`dask scheduler` exited with {scheduler.returncode}")
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            return json.loads(scheduler_file.read_text())["address"]
        time.sleep(0.05)
    raise TimeoutError(f"`dask scheduler` wrote no {scheduler_file} in {STARTUP_TIMEOUT} s")


def _stop(processes: list) -> None:
    """Terminate, then kill the whole session of any process that outstays its welcome."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(SHUTDOWN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two workers of two threads each: chunks run on both, and race on the threads of each."""
    with dask_cluster(tmp_path_factory.mktemp("dask"), nthreads=[2, 2]) as address:
        yield address


@pytest.fixture(scope="module")
def book():
    """The teaching text's net (small hidden layer), one real image, and the serial gradient."""
    train, _ = load_embedded_mnist()
    net = ThreeLayerNet(input_size=784, hidden_size=5, seed=0)
    image, label = train.images[:1], train.labels[:1]
    f = lambda w: net.loss(image, label)  # noqa: E731  the book's closure: ignores w
    return net, image, label, f, numerical_gradient(f, net.params)


def self_killing_loss(net, image, label, marker: Path, at_call: int):
    """The book's loss, except that once, in a dask worker, it SIGKILLs its own process.

    It does so at the `at_call`-th evaluation of its copy (each worker thread has one);
    never in the pytest process. It closes over everything it uses: a helper function of
    this module would travel by reference, and the workers cannot import this module.
    """
    calls = [0]

    def f(w):
        calls[0] += 1
        with contextlib.suppress(ValueError, FileExistsError):
            distributed.get_worker()   # ValueError outside a dask worker
            if calls[0] >= at_call:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))   # FileExistsError: done once
                os.kill(os.getpid(), signal.SIGKILL)
        return net.loss(image, label)

    return f


@contextlib.contextmanager
def allowed_failures(address: str, count: int):
    """Set the scheduler's allowed-failures (worker deaths per task before KilledWorker)."""
    def set_count(dask_scheduler, count):
        previous, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, count
        return previous

    with distributed.Client(address, set_as_default=False) as client:
        previous = client.run_on_scheduler(set_count, count=count)
        try:
            yield
        finally:
            client.run_on_scheduler(set_count, count=previous)


def wait_until_restarted(address: str) -> None:
    """A killed worker's nanny starts a new one: wait for it, for the tests that follow."""
    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=STARTUP_TIMEOUT)


def no_active_client() -> bool:
    try:
        distributed.default_client()
    except ValueError:
        return True
    return False


def assert_exactly_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype
        assert np.array_equal(got[key], expected[key]), key


def compute_tasks(task_stream) -> list[dict]:
    return [record for record in task_stream.data if str(record["key"]).startswith("numgrad-chunk")]


def most_at_once(records: list[dict]) -> int:
    """The largest number of tasks computing at the same moment."""
    spans = [s for r in records for s in r["startstops"] if s["action"] == "compute"]
    events = sorted((span[edge], +1 if edge == "start" else -1)
                    for span in spans for edge in ("start", "stop"))
    running = peak = 0
    for _, step in events:   # at equal times stops (-1) sort first: touching is not overlapping
        running += step
        peak = max(peak, running)
    return peak


class TestBookNetOnCluster:
    def test_closure_pattern_loop_evaluator_exact(self, cluster, book):
        net, image, label, f, expected = book
        before = {key: value.copy() for key, value in net.params.items()}
        got = parallel_numerical_gradient(f, net.params, workers=2, backend="dask",
                                          scheduler=cluster, evaluator="loop")
        assert_exactly_equal(got, expected)
        assert_exactly_equal(net.params, before)

    def test_batched_evaluator_exact(self, cluster, book):
        net, image, label, _, _ = book
        expected = net.numerical_gradient(image, label, workers=1)
        got = net.numerical_gradient(image, label, backend="dask", scheduler=cluster, workers=2)
        assert_exactly_equal(got, expected)

    def test_threads_racing_on_one_worker_exact(self, cluster, book):
        net, image, label, f, expected = book
        with distributed.Client(cluster, set_as_default=False) as client, \
                distributed.get_task_stream(client) as stream:
            got = parallel_numerical_gradient(f, net.params, workers=4, backend="dask",
                                              scheduler=cluster, evaluator="loop")
        assert_exactly_equal(got, expected)
        threads_per_worker = {}
        for record in compute_tasks(stream):
            threads_per_worker.setdefault(record["worker"], set()).add(record["thread"])
        assert max(len(threads) for threads in threads_per_worker.values()) == 2


class TestClientChoice:
    def test_active_client_is_used_and_left_open(self, cluster, book):
        net, _, _, f, expected = book
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            got = parallel_numerical_gradient(f, net.params, workers=2, backend="dask",
                                              evaluator="loop")
            assert client.submit(sum, [1, 2]).result() == 3
        assert_exactly_equal(got, expected)
        assert compute_tasks(stream), "the active client's cluster ran no chunk"

    def test_workers_caps_chunks_in_flight(self, cluster, book):
        net, _, _, f, expected = book
        workers = 3
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            got = parallel_numerical_gradient(f, net.params, workers=workers, backend="dask",
                                              evaluator="loop")
        assert_exactly_equal(got, expected)
        records = compute_tasks(stream)
        # chunks_per_worker=4, and the state check's two points: f(x) and the probe's
        assert len(records) == 4 * workers + 2
        assert most_at_once(records) <= workers   # the cluster has 4 threads

    @pytest.mark.timeout(60)
    def test_local_cluster_started_and_closed(self, rng):
        w = rng.standard_normal((3, 4))
        f = lambda v: float(np.sin(w).sum() + (w ** 3).sum())  # noqa: E731
        assert no_active_client()
        got = parallel_numerical_gradient(f, w, workers=2, backend="dask")
        assert np.array_equal(got, numerical_gradient(f, w))
        assert no_active_client()   # the call's own client is closed, and was never the default


class TestFailures:
    def test_error_in_f_keeps_its_type(self, cluster, rng):
        w = rng.standard_normal(8)

        def f(v):
            # Only names from importable modules or the closure: f travels by value (see the docs).
            with contextlib.suppress(ValueError):   # ValueError: not in a dask worker
                distributed.get_worker()
                raise LookupError("raised by f in a dask worker")
            return float(w.sum())

        with pytest.raises(LookupError, match="raised by f in a dask worker"):
            parallel_numerical_gradient(f, w, workers=2, backend="dask", scheduler=cluster)

    @pytest.mark.timeout(90)
    def test_worker_killed_mid_call_exact_or_clear_error(self, cluster, book, tmp_path):
        net, image, label, _, expected = book
        f = self_killing_loss(net, image, label, tmp_path / "killed", at_call=1)
        try:
            got = parallel_numerical_gradient(f, net.params, workers=2, backend="dask",
                                              scheduler=cluster, evaluator="loop")
        except WorkerLostError as error:   # acceptable: a clear error, never a wrong gradient
            assert "died" in str(error)
        else:
            assert_exactly_equal(got, expected)
        assert (tmp_path / "killed").exists(), "no worker was killed: the test proved nothing"
        wait_until_restarted(cluster)

    @pytest.mark.timeout(90)
    def test_killed_worker_error_makes_the_engine_retry(self, cluster, book, tmp_path, monkeypatch):
        net, image, label, _, expected = book
        attempts = []
        run_once = engine.run._dask.DaskPool.run_once
        monkeypatch.setattr(engine.run._dask.DaskPool, "run_once",
                            lambda self, *args: attempts.append(args) or run_once(self, *args))
        f = self_killing_loss(net, image, label, tmp_path / "killed", at_call=500)
        with allowed_failures(cluster, 0):   # the first death of a chunk's worker: KilledWorker
            got = parallel_numerical_gradient(f, net.params, workers=2, backend="dask",
                                              scheduler=cluster, evaluator="loop")
        assert_exactly_equal(got, expected)
        assert (tmp_path / "killed").exists(), "no worker was killed: the test proved nothing"
        assert len(attempts) == 2, "the lost chunks were not re-run"
        assert len(attempts[1][2]) < len(attempts[0][2]), "finished chunks were re-run too"
        wait_until_restarted(cluster)

    @pytest.mark.timeout(30)
    def test_scheduler_without_workers_is_a_clear_error(self, tmp_path, rng):
        w = rng.standard_normal(4)
        with dask_cluster(tmp_path, nthreads=[]) as address, \
                dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
                pytest.raises(TimeoutError, match="no running workers.*dask worker"):
            parallel_numerical_gradient(lambda v: float(w.sum()), w, workers=2, backend="dask",
                                        scheduler=address)

    @pytest.mark.timeout(30)
    def test_no_scheduler_listening_is_a_clear_error(self, rng):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]   # closed again below: nothing listens there
        w = rng.standard_normal(4)
        started = time.monotonic()
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}), \
                pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*dask scheduler"):
            parallel_numerical_gradient(lambda v: float(w.sum()), w, workers=2, backend="dask",
                                        scheduler=f"tcp://127.0.0.1:{port}")
        assert time.monotonic() - started < 15

    def test_missing_dask_names_the_extra(self, monkeypatch, rng):
        monkeypatch.setitem(sys.modules, "distributed", None)   # import distributed -> ImportError
        monkeypatch.delitem(sys.modules, "engine.run._dask", raising=False)
        with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[dask\]'"):
            importlib.import_module("engine.run._dask")
        w = rng.standard_normal(4)
        with pytest.raises(ImportError, match=r"\[dask\]"):
            parallel_numerical_gradient(lambda v: float(w.sum()), w, workers=2, backend="dask")


class TestTrainerOnCluster:
    def test_trainer_flags_give_the_same_params_as_loky(self, cluster, tmp_path):
        from engine.cli.train import main

        common = ["--hidden", "5", "--iters", "3", "--train-size", "6", "--no-progress",
                  "--workers", "2"]
        assert main([*common, "--out", str(tmp_path / "loky")]) == 0
        assert main([*common, "--backend", "dask", "--scheduler", cluster,
                     "--out", str(tmp_path / "dask")]) == 0
        with np.load(tmp_path / "loky" / "params.npz") as a, np.load(tmp_path / "dask" / "params.npz") as b:
            for name in a.files:
                assert np.array_equal(a[name], b[name]), name
        assert no_active_client()
