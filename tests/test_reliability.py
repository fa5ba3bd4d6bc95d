"""Faults a hostile tester would try, each caused for real: forks, kills, odd errors, odd input."""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine import (Gradient, WorkerError, WorkerLostError, numerical_gradient,
                    parallel_numerical_gradient)
from engine.run._shared_memory import remove_stale_shared_files


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_until(condition, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def sum_of_squares(w):
    return float(np.sum(w ** 2))


# -- 1. fork after use; daemonic workers ----------------------------------------------------------

FORK_PROGRAM = textwrap.dedent('''
    import os, sys
    import numpy as np
    from engine import Gradient, parallel_numerical_gradient

    def f(w):
        return float(np.sum(w ** 3))

    x = np.linspace(0.0, 1.0, 20)
    expected = 3 * x ** 2
    g = Gradient(f, workers=2, dispatch="parallel")
    first = g(x), parallel_numerical_gradient(f, x, workers=2)   # the parent's pools are busy
    parents = {p.pid for p in g._link.pool._processes}
    pid = os.fork()
    results = [g(x) for _ in range(5)] + [parallel_numerical_gradient(f, x, workers=2)]
    ok = all(np.allclose(r, expected, atol=1e-6) for r in results)
    if pid == 0:   # the child, its calls at the same time as the parent's
        fresh = not parents & {p.pid for p in g._link.pool._processes}
        os._exit(0 if ok and fresh else 1)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), "parent", ok)
''')


def test_a_forked_child_gets_fresh_workers_and_the_parent_keeps_its_own(tmp_path):
    script = tmp_path / "forks.py"
    script.write_text(FORK_PROGRAM)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["child", "0", "parent", "True"]


def _gradient_in_a_daemonic_worker(_):
    try:
        parallel_numerical_gradient(sum_of_squares, np.ones(4), workers=2)
    except RuntimeError as error:
        return str(error)
    return "no error"


def test_a_daemonic_worker_gets_a_clear_error():
    with multiprocessing.get_context("fork").Pool(1) as pool:
        message = pool.apply(_gradient_in_a_daemonic_worker, (None,))
    assert "daemonic" in message and "workers=1" in message and "threading" in message


# -- 2, 3. Ctrl-C and kill -9 of the caller -----------------------------------------------------

SLOW_PROGRAM = textwrap.dedent('''
    import os, signal, sys, time
    import numpy as np
    from engine import Gradient
    pid_dir, seconds = sys.argv[1], float(sys.argv[2])
    interrupted = []

    def on_ctrl_c(signum, frame):   # Python's own handler, timed
        interrupted.append(time.monotonic())
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)

    def loss(w):
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        time.sleep(seconds)
        return float(np.sum(w ** 2))

    x = np.linspace(0.0, 1.0, 400)
    before = x.copy()
    g = Gradient(loss, workers=2, dispatch="parallel", check_state=False)
    try:
        g(x)
    except KeyboardInterrupt:
        print("intact" if x.tobytes() == before.tobytes() else "PERTURBED", flush=True)
        print("stopped after", time.monotonic() - interrupted[0], flush=True)
        # killed and reaped by now, not left to close() or the exit
        print("workers left", sum(os.path.exists(f"/proc/{pid}") for pid in os.listdir(pid_dir)
                                  if int(pid) != os.getpid()), flush=True)
        raise
''')


def start_slow_program(tmp_path, seconds_per_f):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_PROGRAM)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    program = subprocess.Popen([sys.executable, str(script), str(pid_dir), str(seconds_per_f)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = lambda: [int(p.name) for p in pid_dir.iterdir() if int(p.name) != program.pid]  # noqa: E731
    assert wait_until(lambda: len(workers()) >= 2, 60), "the workers never started"
    return program, workers()


def test_ctrl_c_exits_without_waiting_for_f_and_leaves_no_worker(tmp_path):
    # Each f takes an hour: a program that waits for its workers cannot exit before the
    # deadlines, which only bound a failure (no speed of the machine is assumed).
    program, workers = start_slow_program(tmp_path, 3600)
    program.send_signal(signal.SIGINT)
    try:
        out, err = program.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        program.kill()
        pytest.fail("the program waited for its workers' f after Ctrl-C")
    # Killed at once, not stopped: a stop waits 5 s (close()'s join, a sleep, whatever the load)
    # for a worker stuck in f before killing it. Timed inside the program, from its Ctrl-C to
    # the caller's except clause: neither the start nor the exit of the interpreter counts.
    stopped_after = float(re.search(r"stopped after (\S+)", out).group(1))
    assert stopped_after < 5.0, "Ctrl-C stopped the workers instead of killing them"
    assert "KeyboardInterrupt" in err and "intact" in out and "workers left 0" in out
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 60), "workers outlived it"


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def test_kill_9_of_the_caller_ends_its_workers_and_leaves_no_shared_file(tmp_path):
    program, workers = start_slow_program(tmp_path, 3600)   # killed while f runs in each worker
    helpers = children(program.pid)   # the workers and the resource trackers
    assert set(workers) <= set(helpers)
    program.kill()
    program.wait(timeout=10)
    # 60 s only bounds a failure: a worker that missed its caller's death would sit in f for an hour.
    assert wait_until(lambda: not any(alive(pid) for pid in helpers), 60), "orphaned processes"
    assert not list(Path("/dev/shm").glob(f"numgrad-{program.pid}-*"))


def test_shared_files_of_dead_callers_are_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = Path("/dev/shm") / f"numgrad-{dead}-left.values"
    stale.write_bytes(b"\0" * 64)
    mine = Path("/dev/shm") / f"numgrad-{os.getpid()}-mine.values"
    mine.write_bytes(b"\0" * 64)
    try:
        removed = remove_stale_shared_files()
        assert str(stale) in removed and not stale.exists() and mine.exists()
    finally:
        mine.unlink()
        stale.unlink(missing_ok=True)


# -- 4. bounds on workers ----------------------------------------------------------------------

def test_absurd_worker_counts_are_refused_before_any_work():
    calls = []
    with pytest.raises(ValueError, match=r"`workers`=1000000 is more than 4 per core"):
        parallel_numerical_gradient(lambda w: calls.append(1) or 0.0, np.ones(3), workers=10**6)
    assert not calls


def test_never_more_worker_processes_than_chunks():
    with Gradient(sum_of_squares, workers=8, dispatch="parallel") as g:
        assert np.allclose(g(np.ones(3)), 2.0)
        assert len(g._link.pool._processes) == 3 and g.plan.workers == 3


# -- 5, 6. errors that keep the user's error ----------------------------------------------------

class NeedsTwoArguments(Exception):
    def __init__(self, solver, code):
        super().__init__(f"{solver} failed with code {code}")


class HoldsALock(Exception):
    def __init__(self):
        super().__init__("solver state is locked")
        self.lock = threading.Lock()


class Raises:
    def __init__(self, error, log):
        self.error, self.log = error, str(log)

    def __call__(self, w):
        with open(self.log, "a") as file:
            file.write(f"{w.tobytes().hex()}\n")
        raise self.error()


@pytest.mark.parametrize("error, type_name, message", [
    (lambda: NeedsTwoArguments("newton", 7), "NeedsTwoArguments", "newton failed with code 7"),
    (HoldsALock, "HoldsALock", "solver state is locked"),
])
def test_an_error_that_cannot_travel_keeps_its_name_message_place_and_traceback(
        tmp_path, error, type_name, message):
    f = Raises(error, tmp_path / "calls")
    with pytest.raises(WorkerError) as raised:
        parallel_numerical_gradient(f, np.ones(40), workers=2, check_state=False)
    got = raised.value
    assert got.type_name.endswith(type_name) and message in got.message
    assert "raised by `f` while evaluating x[" in got.message
    assert "Traceback" in got.traceback and "__call__" in got.traceback
    calls = (tmp_path / "calls").read_text().split()
    assert len(calls) <= 2, "a chunk that failed by raising was re-run"


def test_the_users_exception_args_are_untouched():
    def f(w):
        raise KeyError("missing")

    for workers in (1, 2):
        with pytest.raises(KeyError) as raised:
            parallel_numerical_gradient(f, np.ones(3), workers=workers)
        assert raised.value.args == ("missing",) and str(raised.value) == "'missing'"


# -- 7. bad options before any work ----------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("options, error, match", [
    ({"backend": "nonsense"}, ValueError, "`backend` must be one of"),
    ({"backend": None}, ValueError, "`backend` must be one of"),
    ({"h": np.array([1e-4])}, TypeError, "`h` must be a positive finite number"),
    ({"h": 10 ** 400}, ValueError, "`h` must be a positive finite number.*too large"),
])
def test_bad_options_are_named_before_f_runs(workers, options, error, match):
    calls = []
    with pytest.raises(error, match=match):
        parallel_numerical_gradient(lambda w: calls.append(1) or 0.0, np.ones(3),
                                    workers=workers, **options)
    assert not calls


# -- 8-11. silent wrong numbers and the caller's arrays ------------------------------------------

def test_a_strided_view_of_a_fortran_ordered_base_is_exact():
    base = np.asfortranarray(np.random.default_rng(3).standard_normal((12, 10)))
    view = base[::2, 1:]
    weights = np.arange(base.size, dtype=float).reshape(base.shape)
    f = lambda _: float(np.sum(np.sin(base) * weights))  # noqa: E731  reads the base
    expected = numerical_gradient(f, view)
    assert np.count_nonzero(expected) == view.size
    for workers in (2, 3):
        assert np.array_equal(parallel_numerical_gradient(f, view, workers=workers), expected)


def mutates(w):
    w[0] = 123.0          # a careless f that writes into its input
    return float(np.sum(w))


@pytest.mark.parametrize("run", [
    lambda x: numerical_gradient(mutates, x),
    lambda x: parallel_numerical_gradient(mutates, x, workers=1),
    lambda x: parallel_numerical_gradient(mutates, x, workers=2),
], ids=["serial", "one worker", "two workers"])
def test_an_f_that_writes_into_x_never_changes_the_callers_array(run):
    x = np.linspace(1.0, 2.0, 6)
    before = x.copy()
    run(x)
    assert x.tobytes() == before.tobytes()


def test_masked_arrays_are_refused_with_a_message():
    masked = np.ma.masked_array(np.ones(4), mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="MaskedArray.*np.ma.getdata"):
        parallel_numerical_gradient(lambda w: float(w.sum()), masked, workers=2)
    assert masked.data.tolist() == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("value", [True, np.bool_(False)])
def test_a_bool_loss_is_refused(value):
    with pytest.raises(TypeError, match="real scalar loss, got bool"):
        numerical_gradient(lambda w: value, np.ones(2))


def test_workers_lost_for_good_still_name_what_was_lost(tmp_path):
    marker = tmp_path / "parent"
    marker.write_text(str(os.getpid()))

    def dies(w):
        if os.getpid() != int(marker.read_text()):
            os.kill(os.getpid(), signal.SIGKILL)
        return float(np.sum(w))

    with pytest.raises(WorkerLostError, match=r"still lost after 1 retries"):
        parallel_numerical_gradient(dies, np.ones(8), workers=2, retries=1)
