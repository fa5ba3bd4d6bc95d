"""The pools of `engine.run._backends`, seen from the workers' side: what a worker still maps
after a gradient on the shared pool is closed, how the workers end on close().

Each case was seen failing on the one-line bug it is named after (see tests/README.md).
"""
import gc
import os
import signal
import subprocess
import textwrap
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import (Gradient, PayloadError, WorkerLostError, numerical_gradient,
                    parallel_numerical_gradient)
from engine._errors import RemoteTraceback, WorkerDied
from engine.run import _backends
from engine.run._backends import JoblibPool, ProcessPool, ThreadPool, make_pool
from engine.run._bundle import dumps_bundle
from engine.run._dask import DaskPool


def squares(v):
    return float(np.sum(v ** 2))


@pytest.mark.parametrize("backend, kind", [("loky", ProcessPool), ("threading", ThreadPool),
                                           ("dask", DaskPool), ("sequential", JoblibPool)])
def test_each_backend_gets_its_own_kind_of_pool(backend, kind):
    pool = make_pool(backend, 2)   # no worker starts before the first call
    try:
        assert type(pool) is kind and pool.workers == 2
        assert getattr(pool, "backend", backend) == backend
    finally:
        pool.close()


def test_a_per_call_pool_is_always_usable_and_keeps_no_residents():
    # The contract of engine.run._pool: the resident operations are not a per-call pool's,
    # and run_once is not a resident pool's; asked for, they say so instead of doing nothing.
    pool, x = JoblibPool("sequential", 2), np.arange(3.0)
    pool.ensure_started()
    pool.drop("a")
    assert pool.usable and not pool.resident
    for operation in (lambda: pool.holds("a"), lambda: pool.ship("a", b"", [x]),
                      lambda: pool.update("a", [x], None), lambda: pool.run("a", None, {})):
        with pytest.raises(NotImplementedError):
            operation()
    with pytest.raises(NotImplementedError):
        ThreadPool(2).run_once(None, b"", {})


def test_a_process_pool_cannot_be_made_in_a_daemonic_process(monkeypatch):
    monkeypatch.setattr(_backends, "in_daemonic_process", lambda: True)
    with pytest.raises(RuntimeError, match="this process is a daemonic worker"):
        ProcessPool(2)


def test_a_one_shot_call_on_another_joblib_backend_is_exact():
    x = np.arange(1.0, 6.0)
    got = parallel_numerical_gradient(squares, x, workers=2, backend="sequential")
    assert np.array_equal(got, numerical_gradient(squares, x.copy()))


def raises_here(v):
    raise ValueError("raised by f")


def raises_from_a_cause(v):
    raise ValueError("raised by f") from KeyError("f's own cause")


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_an_error_from_a_worker_has_the_workers_traceback_as_its_cause(backend):
    with pytest.raises(ValueError, match="raised by f") as caught:
        parallel_numerical_gradient(raises_here, np.ones(4), workers=2, backend=backend,
                                    check_state=False)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback), cause
    assert "in raises_here" in cause.text and "ValueError: raised by f" in cause.text


def test_an_error_that_has_a_cause_keeps_it():
    # A thread's error arrives as the very object f raised, with its own __cause__.
    with pytest.raises(ValueError, match="raised by f") as caught:
        parallel_numerical_gradient(raises_from_a_cause, np.ones(4), workers=2,
                                    backend="threading", check_state=False)
    assert isinstance(caught.value.__cause__, KeyError), caught.value.__cause__


def values_mappings(pid: int | str = "self") -> int:
    """How many mappings of the engine's shared values process `pid` holds (its /proc maps)."""
    return Path(f"/proc/{pid}/maps").read_text().count("numgrad-values")


def values_descriptors() -> int:
    """How many open descriptors of the engine's shared values this process holds."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            held.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:   # the descriptor listdir itself had open
            pass
    return sum("numgrad-values" in link for link in held)


class LogsMappings:
    """`squares`; in a worker, logs how many shared-values mappings and descriptors it holds."""

    def __init__(self, log):
        self.log, self.home = str(log), os.getpid()

    def __call__(self, v):
        if os.getpid() != self.home:
            with open(self.log, "a") as file:
                file.write(f"{os.getpid()} {values_mappings()} {values_descriptors()}\n")
        return squares(v)


def test_one_shot_calls_leave_no_values_mapped_in_the_shared_workers_nor_here(tmp_path):
    # Each one-shot call ships (f, x) to the shared pool's workers as a new resident and drops
    # it when it returns. A worker handles its messages in order, so in call k it has handled
    # the drops of calls 1..k-1: it maps the current call's values alone.
    log = tmp_path / "mappings.log"
    x = np.arange(1.0, 9.0)
    expected = numerical_gradient(squares, x.copy())
    gc.collect()
    here, here_fds = values_mappings(), values_descriptors()
    for _ in range(4):
        got = parallel_numerical_gradient(LogsMappings(log), x, workers=2, chunk_size=1)
        assert np.array_equal(got, expected)
    seen = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _, _ in seen}) == 2, seen            # both workers evaluated
    assert {(maps, fds) for _, maps, fds in seen} == {("1", "1")}, seen
    assert values_mappings() <= here and values_descriptors() <= here_fds   # and the caller's


def test_worker_processes_start_with_one_blas_thread_and_glibcs_long_run_malloc_thresholds():
    # What a long-lived process's glibc reaches by itself: mmap above 32 MiB, trim at 64 MiB.
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        g(np.arange(1.0, 5.0))
        pids = [process.pid for process in g._link.pool._processes]
        for pid in pids:
            raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
            assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20), env
            assert env["MALLOC_TRIM_THRESHOLD_"] == str(64 * 2**20), env
            assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == "1", env


def test_close_lets_every_worker_process_exit_by_itself():
    # close() asks the workers to stop and waits for them; a worker that does not stop by
    # itself is killed after a while, which would show as a negative exit code (a signal).
    g = Gradient(squares, workers=2, dispatch="parallel")
    x = np.arange(1.0, 9.0)
    assert np.array_equal(g(x), numerical_gradient(squares, x.copy()))
    processes = list(g._link.pool._processes)
    g.close()
    assert [process.exitcode for process in processes] == [0, 0]


def test_a_dropped_resident_is_no_longer_held_and_a_second_drop_is_harmless():
    pool = make_pool("threading", 2)
    x = np.arange(1.0, 4.0)
    try:
        pool.ensure_started()
        pool.ship("a", dumps_bundle(squares, x, [x]), [x])
        assert pool.holds("a") and not pool.holds("b")
        pool.drop("a")
        assert not pool.holds("a")
        pool.drop("a")
        assert pool.usable
    finally:
        pool.close()


def test_starting_worker_processes_removes_the_values_files_of_dead_callers(tmp_path, monkeypatch):
    # Off Linux the values live in a named file, unlinked at once; a caller that died in
    # between leaves it behind, and the next pool to start sweeps it. In a temporary folder
    # of this test's own: every pool on the machine sweeps /dev/shm.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"numgrad-{dead}-left.values"
    stale.write_bytes(b"\0" * 64)
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        x = np.arange(1.0, 5.0)
        assert np.array_equal(g(x), numerical_gradient(squares, x.copy()))
    assert not stale.exists()


class LogsMovedEntries:
    """`squares`, logging which entry of `x` each evaluation moved."""

    def __init__(self, x, log):
        self.x, self.log = x.copy(), str(log)

    def __call__(self, v):
        with open(self.log, "a") as file:
            file.write(" ".join(map(str, np.flatnonzero(v != self.x))) + "\n")
        return squares(v)


def test_chunks_go_out_in_index_order(tmp_path):
    # Two workers start on the first two chunks; no other chunk goes out before one of them is
    # back, so whichever worker evaluates first, it moves entry 0 or 1.
    log, x = tmp_path / "moved.log", np.arange(1.0, 9.0)
    with Gradient(LogsMovedEntries(x, log), workers=2, backend="threading", dispatch="parallel",
                  chunk_size=1, check_state=False) as g:
        assert np.array_equal(g(x), numerical_gradient(squares, x.copy()))
    moved = log.read_text().splitlines()
    assert sorted(moved) == sorted(str(i) for i in range(8) for _ in range(2))
    assert moved[0] in ("0", "1"), moved


class NotInAWorker:
    """`squares` that unpickles in the caller's thread only: in a worker it raises."""

    def __init__(self):
        self.home = os.getpid()

    def __setstate__(self, state):
        if os.getpid() != state["home"] or threading.current_thread().name.startswith("numgrad-"):
            raise RuntimeError("cannot be unpickled in a worker")
        self.__dict__.update(state)

    def __call__(self, v):
        return squares(v)


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_an_f_a_worker_cannot_unpickle_raises_a_payload_error_and_the_next_call_works(backend):
    x = np.arange(1.0, 5.0)
    gc.collect()
    here = values_descriptors()
    with pytest.raises(PayloadError, match="a worker could not unpickle `f` and `x` "
                                           r"\(RuntimeError: cannot be unpickled in a worker\)"):
        parallel_numerical_gradient(NotInAWorker(), x, workers=2, backend=backend)
    assert values_descriptors() <= here   # the values shipped for nothing are released
    got = parallel_numerical_gradient(squares, x, workers=2, backend=backend)
    assert np.array_equal(got, numerical_gradient(squares, x.copy()))


class NotInASecondWorker:
    """`squares` that unpickles in the first worker to try, and raises in the next."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        try:
            os.close(os.open(state["marker"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            raise RuntimeError("the second worker fails") from None
        self.__dict__.update(state)

    def __call__(self, v):
        return squares(v)


def test_a_shipping_that_fails_leaves_no_resident_held():
    pool, x = make_pool("threading", 2), np.arange(1.0, 4.0)
    try:
        pool.ensure_started()
        with pytest.raises(PayloadError):
            pool.ship("a", dumps_bundle(NotInAWorker(), x, [x]), [x])
        assert not pool.holds("a") and pool.usable
    finally:
        pool.close()


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_one_worker_of_two_that_cannot_unpickle_f_is_enough_for_a_payload_error(tmp_path, backend):
    with pytest.raises(PayloadError, match="the second worker fails"):
        parallel_numerical_gradient(NotInASecondWorker(tmp_path / "unpickled"), np.arange(1.0, 5.0),
                                    workers=2, backend=backend, check_state=False)


def test_a_worker_that_could_not_unpickle_f_keeps_no_descriptor_of_its_values(tmp_path):
    log, x = tmp_path / "mappings.log", np.arange(1.0, 9.0)
    with pytest.raises(PayloadError):
        parallel_numerical_gradient(NotInAWorker(), x, workers=2, chunk_size=1)
    got = parallel_numerical_gradient(LogsMappings(log), x, workers=2, chunk_size=1)
    assert np.array_equal(got, numerical_gradient(squares, x.copy()))
    seen = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _, _ in seen}) == 2, seen
    # one mapping and CPython's one duplicate of its descriptor: this call's values alone
    assert {(maps, fds) for _, maps, fds in seen} == {("1", "1")}, seen


@pytest.mark.parametrize("stop", ["close", "kill"])
def test_a_stopped_pool_is_not_usable_and_starts_afresh(stop):
    pool = make_pool("threading", 2)
    x = np.arange(1.0, 4.0)
    try:
        pool.ensure_started()
        assert pool.usable and pool.generation == 1
        getattr(pool, stop)()
        assert not pool.usable
        pool.ensure_started()
        assert pool.usable and pool.generation == 2
        pool.ship("a", dumps_bundle(squares, x, [x]), [x])
        assert pool.holds("a")
    finally:
        pool.close()


# -- what the caller holds ------------------------------------------------------------------------

def test_the_caller_holds_one_descriptor_per_gradient_however_often_it_ships():
    gc.collect()
    here = values_descriptors()
    x = np.arange(1.0, 9.0)
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        g(x)
        held = values_descriptors()   # the shipped values' (CPython's mmap keeps a duplicate)
        assert held > here
        for _ in range(3):
            g.reship()
            assert np.array_equal(g(x), numerical_gradient(squares, x.copy()))
            assert values_descriptors() == held
    assert values_descriptors() == here


# -- workers lost -----------------------------------------------------------------------------------

def test_a_worker_killed_between_calls_is_replaced_on_the_next_call():
    gc.collect()
    here = values_descriptors()
    x = np.arange(1.0, 9.0)
    expected = numerical_gradient(squares, x.copy())
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        assert np.array_equal(g(x), expected)
        held = values_descriptors()
        victim, other = g._link.pool._processes
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(60)   # bounds a failure only
        assert victim.exitcode == -signal.SIGKILL
        assert np.array_equal(g(x), expected)              # the next message to it fails first
        # the restart killed the other, idle worker at once: asked to stop, it would exit by itself
        assert other.exitcode == -signal.SIGKILL
        g.reship()
        os.kill(g._link.pool._processes[1].pid, signal.SIGKILL)
        g._link.pool._processes[1].join(60)
        assert np.array_equal(g(x), expected)              # shipping to it fails first
        assert values_descriptors() == held
    assert values_descriptors() == here


def kill_and_reap(process) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.join(60)   # bounds a failure only
    assert process.exitcode == -signal.SIGKILL


def test_a_drop_that_finds_a_worker_dead_leaves_the_pool_to_be_restarted():
    pool, x = ProcessPool(1), np.arange(1.0, 4.0)
    try:
        pool.ensure_started()
        pool.ship("a", dumps_bundle(squares, x, [x]), [x])
        kill_and_reap(pool._processes[0])
        pool.drop("a")   # a drop awaits no reply: no error
        assert not pool.holds("a") and not pool.usable
    finally:
        pool.close()


def test_a_worker_that_dies_before_its_values_descriptor_leaves_the_pool_to_be_restarted(
        monkeypatch):
    pool, x = ProcessPool(1), np.arange(1.0, 4.0)
    real = _backends.send_handle

    def dies_first(connection, fd, pid):   # the worker dies between the message and the descriptor
        kill_and_reap(pool._processes[0])
        real(connection, fd, pid)

    try:
        pool.ensure_started()
        monkeypatch.setattr(_backends, "send_handle", dies_first)
        with pytest.raises(WorkerDied):
            pool.ship("a", dumps_bundle(squares, x, [x]), [x])
        assert not pool.usable   # the next call starts fresh workers
    finally:
        pool.close()


def test_a_per_call_pool_reports_a_lost_worker_as_lost(monkeypatch):
    # A backend registered with joblib runs as a per-call pool. joblib's loky, under any name,
    # reports a dead worker as BrokenProcessPool (TerminatedWorkerError): the pool raises
    # WorkerDied, which the caller retries on fresh workers, and not as an error of f.
    import joblib
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    class LosesAWorker:
        def __init__(self, **settings):
            pass

        def __call__(self, calls):
            raise TerminatedWorkerError("a worker process died")

    monkeypatch.setattr(joblib, "Parallel", LosesAWorker)
    pool = JoblibPool("loky-by-another-name", 2)
    with pytest.raises(WorkerDied, match="a worker process died"):
        list(pool.run_once(None, b"", {0: (0, 1)}))


class KillsItsWorker:
    def __init__(self):
        self.home = os.getpid()

    def __call__(self, v):
        if os.getpid() != self.home:
            os.kill(os.getpid(), signal.SIGKILL)
        return squares(v)


def sockets() -> int:
    """How many sockets this process holds open (a worker process's channel is one)."""
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))


class KillsOneWorkerOnceArmed:
    """`squares`; once `armed` exists, the first evaluation in a worker kills its own process."""

    def __init__(self, armed, died):
        self.armed, self.died, self.home = str(armed), str(died), os.getpid()

    def __call__(self, v):
        if os.getpid() != self.home and os.path.exists(self.armed):
            try:
                os.close(os.open(self.died, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return squares(v)
            os.kill(os.getpid(), signal.SIGKILL)
        return squares(v)


def test_a_lost_worker_stops_the_others_at_once(tmp_path):
    gc.collect()
    here = sockets()
    f = KillsOneWorkerOnceArmed(tmp_path / "armed", tmp_path / "died")
    g = Gradient(f, workers=2, dispatch="parallel", retries=0, check_state=False)
    try:
        g(np.arange(1.0, 9.0))
        workers = list(g._link.pool._processes)
        (tmp_path / "armed").touch()
        with pytest.raises(WorkerLostError) as caught:
            g(np.arange(1.0, 9.0))
        assert not g._link.pool._processes, "the pool keeps processes after losing one"
        # the other was killed, not asked to stop (it would have exited by itself, status 0)
        assert [worker.exitcode for worker in workers] == [-signal.SIGKILL] * 2
        # and closes its channels to them, even while the error (whose frames hold one) is kept
        assert sockets() == here, caught.value
    finally:
        g.close()


def test_a_one_shot_call_that_loses_its_workers_for_good_says_so():
    # and drops its resident from the shared pool, broken by then, without a second error
    with pytest.raises(WorkerLostError):
        parallel_numerical_gradient(KillsItsWorker(), np.arange(1.0, 9.0), workers=2, retries=0,
                                    check_state=False)
    x = np.arange(1.0, 5.0)
    assert np.array_equal(parallel_numerical_gradient(squares, x, workers=2),
                          numerical_gradient(squares, x.copy()))


# -- nesting and exit -------------------------------------------------------------------------------

def starts_workers_inside(v):
    try:
        parallel_numerical_gradient(squares, v.copy(), workers=2)
    except RuntimeError as error:
        raise ValueError(f"refused: {error}") from None
    return squares(v)


def test_f_in_a_worker_process_cannot_start_worker_processes_of_its_own():
    with pytest.raises(ValueError, match="refused: this process is a daemonic worker"):
        parallel_numerical_gradient(starts_workers_inside, np.arange(1.0, 5.0), workers=2,
                                    check_state=False)


def test_a_program_that_leaves_worker_threads_running_still_exits():
    program = textwrap.dedent("""
        import numpy as np
        from engine import Gradient, parallel_numerical_gradient
        f = lambda v: float(np.sum(v ** 2))
        parallel_numerical_gradient(f, np.ones(8), workers=2, backend="threading")
        g = Gradient(f, workers=2, backend="threading", dispatch="parallel")
        g(np.ones(8))   # never closed
        print("done")
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH")]))}
    # 60 s bounds a failure only: a non-daemonic worker thread would hold the exit for good
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.split() == ["done"], done.stderr
