"""The resident workers' runtime, stated as behaviour seen from the workers' side: late replies,
one update per worker per call, a bounded close(), failed updates, the exact state check, reship().

Each case was seen failing on the one-line bug it is named after (see tests/README.md).
"""
import gc
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from engine import Gradient, StateNotShippedError, WorkerError, numerical_gradient
from engine.run._bundle import dumps_bundle
from engine.run._job import CENTER, Job
from engine.run._worker import serve

GUARD_SECONDS = 60     # bounds a failure only: no test waits for it


def squares(v):
    return float(np.sum(v ** 2))


def wait_for_file(path: str) -> None:
    """In a worker: wait until the test creates `path` (the guard turns a hang into an error)."""
    deadline = time.monotonic() + GUARD_SECONDS
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def logged_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class LogsUnpickling:
    """A value that appends a line to `log` each time it is unpickled (in a worker)."""

    def __init__(self, log, value=1.0):
        self.log, self.value = str(log), value

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.log, "a") as file:
            file.write(f"{os.getpid()}\n")


class LoggedSquares(LogsUnpickling):
    """`squares` as a callable whose every shipping to a worker is logged."""

    def __call__(self, v):
        return squares(v)


# -- a late reply of an abandoned call ------------------------------------------------------------

def fails_then_blocks(v, scale, release):
    """Entry 0 moved: an error at once; entry 1 moved: wait for `release` (the call has failed
    meanwhile), then answer, late. With ``release=None``: ``scale * squares``."""
    if release is not None and v[0] != 1.0:
        raise ValueError("entry 0 fails")
    if release is not None and v[1] != 2.0:
        wait_for_file(release)
    return scale * squares(v)


def test_a_late_reply_of_a_call_that_raised_is_never_taken_for_the_next_calls(tmp_path):
    x = np.array([1.0, 2.0, 3.0, 4.0])
    release = str(tmp_path / "release")
    # chunk_size=1: worker 0 gets entry 0 (fails), worker 1 entry 1 (answers after the failure)
    with Gradient(fails_then_blocks, workers=2, dispatch="parallel", chunk_size=1,
                  check_state=False) as g:
        with pytest.raises(ValueError, match="entry 0 fails"):
            g(x, 100.0, release)
        Path(release).touch()   # worker 1 now answers call 1, while call 2 runs
        for _ in range(2):
            got = g(x, 1.0, None)
            assert np.array_equal(got, numerical_gradient(squares, x.copy()))


# -- the update: once per worker per call ---------------------------------------------------------

def scaled(v, counted):
    return counted.value * squares(v)


@pytest.mark.parametrize("check_state", [True, False], ids=["checked", "unchecked"])
def test_each_calls_arguments_reach_each_worker_once_however_many_tasks(tmp_path, check_state):
    log = tmp_path / "unpickled.log"
    x = np.arange(1.0, 13.0)
    with Gradient(scaled, workers=2, dispatch="parallel", chunk_size=1,
                  check_state=check_state) as g:
        for call in range(1, 4):   # new arguments each call; 12 tasks of one entry each
            got = g(x, LogsUnpickling(log, float(call)))
            assert np.array_equal(got, numerical_gradient(lambda v, c=call: c * squares(v), x.copy()))
            assert logged_lines(log) == 2 * call, f"call {call}"
    assert len(set(log.read_text().split())) == 2   # two workers, one unpickling each per call


# -- close() with a worker stuck in f ------------------------------------------------------------

def stuck_after_failure(v, release):
    if v[0] != 1.0:
        raise ValueError("entry 0 fails")
    if v[1] != 2.0:
        Path(release).touch()   # the test's sign that this worker is in f for good
        time.sleep(3600)
    return squares(v)


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_close_returns_and_ends_a_worker_stuck_in_f(tmp_path):
    inside = str(tmp_path / "inside")
    g = Gradient(stuck_after_failure, workers=2, dispatch="parallel", chunk_size=1,
                 check_state=False)
    with pytest.raises(ValueError, match="entry 0 fails"):
        g(np.array([1.0, 2.0, 3.0]), inside)
    pids = [process.pid for process in g._link.pool._processes]
    wait_for_file(inside)
    closing = threading.Thread(target=g.close, daemon=True)
    closing.start()
    closing.join(GUARD_SECONDS)   # an unbounded close() would wait for the hour-long f
    assert not closing.is_alive(), "close() waits for a worker stuck in f"
    assert not [pid for pid in pids if alive(pid)]
    # and reaped: a worker killed but never waited for stays a zombie until the caller exits
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


# -- a failed update ------------------------------------------------------------------------------

class Scale:
    def __init__(self, value):
        self.value = value


class OnlyHere(Scale):
    """Unpickles in the process that made it, raises in any other."""

    def __init__(self, value):
        super().__init__(value)
        self.home = os.getpid()

    def __setstate__(self, state):
        if os.getpid() != state["home"]:
            raise RuntimeError("cannot be unpickled in a worker")
        self.__dict__.update(state)


@pytest.mark.parametrize("check_state", [True, False], ids=["checked", "unchecked"])
def test_arguments_a_worker_cannot_unpickle_raise_instead_of_reusing_the_last_ones(check_state):
    x = np.arange(1.0, 5.0)
    with Gradient(scaled, workers=2, dispatch="parallel", check_state=check_state) as g:
        assert np.array_equal(g(x, Scale(1.0)), numerical_gradient(squares, x.copy()))
        with pytest.raises(Exception, match="cannot be unpickled in a worker"):
            g(x, OnlyHere(5.0))
        assert np.array_equal(g(x, Scale(2.0)), numerical_gradient(lambda v: 2.0 * squares(v),
                                                                   x.copy()))


# -- the state check: exact ----------------------------------------------------------------------

class OneUlpOffElsewhere:
    """`squares`, one ulp higher in any process but the one that made it."""

    def __init__(self):
        self.home = os.getpid()

    def __call__(self, v):
        value = squares(v)
        return float(np.nextafter(value, np.inf)) if os.getpid() != self.home else value


def test_a_worker_whose_f_is_one_ulp_off_fails_the_state_check():
    with Gradient(OneUlpOffElsewhere(), workers=2, dispatch="parallel") as g:
        with pytest.raises(StateNotShippedError):
            g(np.arange(1.0, 5.0))


# -- reship() -------------------------------------------------------------------------------------

@pytest.mark.parametrize("check_state", [True, False], ids=["checked", "unchecked"])
def test_reship_ships_f_to_every_worker_again_on_the_next_call(tmp_path, check_state):
    log = tmp_path / "shipped.log"
    x = np.arange(1.0, 9.0)
    expected = numerical_gradient(squares, x.copy())
    with Gradient(LoggedSquares(log), workers=2, dispatch="parallel",
                  check_state=check_state) as g:
        for _ in range(2):
            assert np.array_equal(g(x), expected)
        assert logged_lines(log) == 2            # shipped once to each worker
        g.reship()
        assert logged_lines(log) == 2            # on the next call, not now
        assert np.array_equal(g(x), expected)
        assert logged_lines(log) == 4
        assert np.array_equal(g(x), expected)
        assert logged_lines(log) == 4


# -- a retry after a lost worker ------------------------------------------------------------------

class LogsEntriesAndDiesOnce:
    """`squares`; in a worker, logs which entry each evaluation moved, and the first time the
    last entry is moved, kills its own process."""

    def __init__(self, x, log, marker):
        self.x, self.log, self.marker, self.home = x.copy(), str(log), str(marker), os.getpid()

    def __call__(self, v):
        moved = np.flatnonzero(v != self.x)
        if os.getpid() != self.home:
            with open(self.log, "a") as file:
                file.write(" ".join(map(str, moved)) + "\n")
            if list(moved) == [self.x.size - 1] and not os.path.exists(self.marker):
                Path(self.marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return squares(v)


def test_a_retry_reruns_only_the_chunks_that_were_lost(tmp_path):
    x = np.arange(1.0, 5.0)
    log, marker = tmp_path / "evaluated.log", tmp_path / "killed"
    f = LogsEntriesAndDiesOnce(x, log, marker)
    # chunk_size=1, two workers: entry 3's chunk, the 4th, goes out when a 2nd chunk is back,
    # so when its worker dies two of the other three are finished, one may still be running
    with Gradient(f, workers=2, dispatch="parallel", chunk_size=1, check_state=False) as g:
        assert np.array_equal(g(x), numerical_gradient(squares, x.copy()))
    assert os.path.exists(marker)
    evaluated = [line for line in log.read_text().splitlines() if line]
    counts = {entry: evaluated.count(str(entry)) for entry in range(4)}
    others = sorted(counts[entry] for entry in range(3))
    assert others[:2] == [2, 2] and others[2] in (2, 4), counts   # finished ones never rerun
    assert counts[3] == 3, counts   # +h, the death, then +h and -h on a fresh worker


# -- Ctrl-C at a terminal reaches the workers too -------------------------------------------------

def test_workers_leave_ctrl_c_to_the_caller():
    # A terminal's Ctrl-C signals the whole process group; a worker that did not ignore it
    # would die of it between calls. What the workers do with SIGINT, read from the kernel:
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        g(np.arange(4.0))
        for process in g._link.pool._processes:
            status = Path(f"/proc/{process.pid}/status").read_text()
            ignored = int(status.split("SigIgn:")[1].split()[0], 16)
            assert ignored >> (signal.SIGINT - 1) & 1, f"worker {process.pid} does not ignore SIGINT"


# -- what a worker keeps and what it sends back ---------------------------------------------------

def test_a_worker_keeps_no_descriptor_of_the_values_it_was_sent():
    x = np.arange(1.0, 9.0)
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        for _ in range(3):   # each shipping sends a descriptor of the values, to be mapped, closed
            g(x)
            g.reship()
        g(x)
        for process in g._link.pool._processes:
            fds = Path(f"/proc/{process.pid}/fd")
            held = [os.readlink(fd) for fd in fds.iterdir() if fd.name.isdigit()]
            # one: the duplicate that CPython's mmap keeps of the current mapping's file
            assert sum("numgrad-values" in link for link in held) == 1, held


class ChangesTypeWhenPickled(Exception):
    def __reduce__(self):
        return (ValueError, (str(self),))


def raises_an_exception_that_changes_type(v):
    raise ChangesTypeWhenPickled("odd")


def test_an_error_that_would_change_type_on_the_way_arrives_as_a_worker_error_naming_it():
    with Gradient(raises_an_exception_that_changes_type, workers=2, dispatch="parallel",
                  check_state=False) as g:
        with pytest.raises(WorkerError, match="ChangesTypeWhenPickled") as caught:
            g(np.arange(3.0))
    assert not isinstance(caught.value, ValueError)


# -- one worker's loop, driven message by message ---------------------------------------------------

class Scripted:
    """A worker's channel, in this thread: `recv` hands out `script` in turn (a callable in it
    is called instead, to look at the worker between two messages); `send` keeps each reply's
    kind and what it carries (an error by its type: the error itself holds the worker's frames)."""

    def __init__(self, script):
        self.script, self.replies = list(script), []

    def recv(self):
        while callable(self.script[0]):
            self.script.pop(0)()
        return self.script.pop(0)

    def send(self, message):
        kind, *rest = message
        if kind == "error":
            rest[-1] = type(rest[-1]).__name__
        self.replies.append((kind, *rest))


_copies = weakref.WeakSet()   # the copies of CountedSquares that workers unpickled, still alive


class CountedSquares:
    """`squares`; every unpickled copy is counted in `_copies` while it lives."""

    def __init__(self):
        self.home = os.getpid()   # a state to unpickle: __setstate__ is called

    def __setstate__(self, state):
        self.__dict__.update(state)
        _copies.add(self)

    def __call__(self, v):
        return squares(v)


CENTRAL = Job("loop", "central", (None,))


def test_a_dropped_resident_whose_update_failed_leaves_no_copy_of_f_in_the_worker():
    x, alive = np.arange(1.0, 4.0), []

    def count():
        gc.collect()
        alive.append(len(_copies))

    channel = Scripted([
        ("ship", "a", dumps_bundle(CountedSquares(), x, [x]), None), count,
        ("task", 1, "a", 0, CENTRAL, CENTER, ("a", [np.ones(5)], None)),   # 5 values for 3
        ("drop", "a"), count,
        ("stop",)])
    serve(channel)
    assert channel.replies == [("shipped", "a", None), ("error", 1, 0, "ValueError")]
    assert alive == [1, 0]


def test_a_resident_shipped_again_after_a_failed_update_leaves_no_old_copy_of_f():
    x, alive = np.arange(1.0, 4.0), []

    def count():
        gc.collect()
        alive.append(len(_copies))

    bundle = dumps_bundle(CountedSquares(), x, [x])
    channel = Scripted([
        ("ship", "a", bundle, None),
        ("task", 1, "a", 0, CENTRAL, CENTER, ("a", [np.ones(5)], None)),   # 5 values for 3
        ("ship", "a", bundle, None), count,   # reship(): the old copy is gone before any task
        ("stop",)])
    serve(channel)
    assert channel.replies == [("shipped", "a", None), ("error", 1, 0, "ValueError"),
                               ("shipped", "a", None)]
    assert alive == [1]


def test_a_worker_without_shared_values_goes_on_after_a_drop():
    # A thread's residents have no shared memory to unmap when dropped.
    x = np.arange(1.0, 4.0)
    bundle = dumps_bundle(squares, x, [x])
    channel = Scripted([("ship", "a", bundle, None), ("drop", "a"), ("ship", "b", bundle, None),
                        ("task", 1, "b", 0, CENTRAL, CENTER, ("b", [x + 1], None)), ("stop",)])
    serve(channel)
    assert channel.replies[:2] == [("shipped", "a", None), ("shipped", "b", None)]
    kind, call, number, (value, _) = channel.replies[2]
    assert (kind, call, number, value) == ("done", 1, 0, squares(x + 1))
