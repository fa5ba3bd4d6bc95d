"""No silent wrong gradient: threads sharing one Gradient, state that did not travel or changed,
arguments of script-defined types, a forked child's exit, and too little shared memory.

Each fault is caused for real: threads racing on one object, an importable module's state,
a closure over a batch that changes between calls, a script run as ``__main__``, a real
``os.fork()``, a 1 MiB tmpfs mounted over /dev/shm in a private mount namespace.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

from engine import (Gradient, StateNotShippedError, numerical_gradient,
                    parallel_numerical_gradient)


def squares(v):
    return float((v ** 2).sum())


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_one_gradient_shared_by_two_threads_gives_each_its_own_gradient(backend):
    x_of = {1.0: np.full(50, 1.0), 5.0: np.full(50, 5.0)}
    expected = {v: numerical_gradient(squares, x.copy()) for v, x in x_of.items()}
    wrong, errors = [], []
    with Gradient(squares, workers=2, backend=backend, dispatch="parallel") as g:
        def calls(v):
            try:
                for _ in range(40):
                    got = g(x_of[v].copy())
                    if not np.array_equal(got, expected[v]):
                        wrong.append(v)
            except BaseException as exc:   # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=calls, args=(v,)) for v in x_of]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors and not wrong


def test_module_state_with_a_zero_derivative_entry_is_caught_not_zeros():
    import _module_state   # importable: pickle sends `loss_ignoring_last` by reference

    w = _module_state.UNUSED_LAST
    before = w.copy()
    assert numerical_gradient(_module_state.loss_ignoring_last, w)[-1] == 0.0   # the trap
    with pytest.raises(StateNotShippedError, match="did not travel"):
        parallel_numerical_gradient(_module_state.loss_ignoring_last, w, workers=2)
    assert np.array_equal(w, before)


def test_a_closure_over_a_batch_that_changes_between_calls_is_right_every_call(rng):
    w = rng.standard_normal(6)
    batch = rng.standard_normal(6)
    f = lambda v: float(np.sum(np.tanh(v * batch)))  # noqa: E731  the book's pattern
    with Gradient(f, workers=2, dispatch="parallel") as g:
        assert np.array_equal(g(w), numerical_gradient(f, w.copy()))
        with pytest.warns(UserWarning, match="shipped again") as caught:
            for _ in range(4):
                batch = rng.standard_normal(6)   # the closure now reads a new batch
                assert np.array_equal(g(w), numerical_gradient(f, w.copy()))
        assert len([w for w in caught if "shipped again" in str(w.message)]) == 1   # said once


def test_args_that_change_between_calls_need_no_reship(rng):
    w = rng.standard_normal(6)
    f = lambda v, batch: float(np.sum(np.tanh(v * batch)))  # noqa: E731
    with Gradient(f, workers=2, dispatch="parallel") as g:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # no "shipped again" warning
            for _ in range(3):
                batch = rng.standard_normal(6)
                serial = numerical_gradient(lambda v, b=batch: f(v, b), w.copy())
                assert np.array_equal(g(w, batch), serial)


def run_script(path, text: str) -> str:
    """Run `text` as the script `path` in a fresh interpreter (its own ``__main__``); its output."""
    path.write_text(textwrap.dedent(text))
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


SCRIPT_WITH_OWN_CLASS = """
    import dataclasses
    import numpy as np
    import engine

    @dataclasses.dataclass
    class Settings:          # defined in the script: __main__.Settings
        scale: float

    def loss(w, settings, transform):
        return float(settings.scale * np.sum(transform(w) ** 2))

    if __name__ == "__main__":
        w = np.arange(1.0, 5.0)
        expected = engine.numerical_gradient(lambda v: loss(v, Settings(3.0), lambda u: u + 1), w.copy())
        for dispatch in ("parallel", "auto"):
            with engine.Gradient(loss, workers=2, dispatch=dispatch) as g:
                for _ in range(4):   # "auto" measures in-process first, then on the workers
                    got = g(w, Settings(3.0), lambda u: u + 1)
                    assert np.array_equal(got, expected), (dispatch, got, expected)
        print("ok")
"""


def test_a_script_defined_class_and_a_lambda_in_args_travel(tmp_path):
    assert run_script(tmp_path / "script.py", SCRIPT_WITH_OWN_CLASS) == "ok"


FORK_SCRIPT = """
    import os, sys, warnings
    import numpy as np
    import engine

    def squares(v):
        return float((v ** 2).sum())

    x = np.arange(1.0, 9.0)
    with engine.Gradient(squares, workers=2, dispatch="parallel", retries=0) as g:
        expected = g(x)
        before = sorted(p.pid for p in g._link.pool._processes)
        warnings.simplefilter("ignore", DeprecationWarning)   # fork() in a process with threads
        child = os.fork()
        if child == 0:
            sys.exit(0)   # a normal exit: multiprocessing's and the engine's exit handlers run
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert np.array_equal(g(x), expected)   # retries=0: a lost worker would raise
        assert sorted(p.pid for p in g._link.pool._processes) == before
    print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX only")
def test_a_forked_childs_normal_exit_leaves_the_parents_workers_alone(tmp_path):
    assert run_script(tmp_path / "fork.py", FORK_SCRIPT) == "ok"


SMALL_SHM_SCRIPT = """
    import os, sys
    import numpy as np
    import engine
    from engine.run._shared_memory import SharedMemoryError, SharedValues

    x = np.zeros(200_000)          # 1.6 MB of values, with 1 MiB of /dev/shm
    with engine.Gradient(lambda v: float(v[0]), workers=2, dispatch="parallel") as g:
        got = g(x)
    assert got[0] == 1.0 and not got[1:].any(), got[:3]
    print("gradient ok")
    del os.memfd_create            # the fallback: a file in /dev/shm, reserved before writing
    try:
        SharedValues.create([x])
    except SharedMemoryError as exc:
        print("refused:", exc)
"""


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mounting a small tmpfs over /dev/shm needs Linux, root and unshare")
def test_too_little_dev_shm_is_no_crash(tmp_path):
    script = tmp_path / "small_shm.py"
    script.write_text(textwrap.dedent(SMALL_SHM_SCRIPT))
    command = (f"mount -t tmpfs -o size=1m tmpfs /dev/shm && {sys.executable} {script}")
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and "mount" in done.stderr and "gradient ok" not in done.stdout:
        pytest.skip(f"could not mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert "gradient ok" in done.stdout
    assert "refused: cannot reserve 1.5 MiB of shared memory" in done.stdout


def test_the_pool_grows_when_a_later_call_has_more_chunks():
    with Gradient(squares, workers=2, backend="threading", dispatch="parallel", chunk_size=100) as g:
        small, large = np.ones(50), np.linspace(0.0, 1.0, 500)
        assert np.array_equal(g(small), numerical_gradient(squares, small.copy()))
        assert g.plan.workers == 1 and str(g.plan).startswith("1 worker ")
        assert np.array_equal(g(large), numerical_gradient(squares, large.copy()))
        assert g.plan.workers == 2 and g._link.pool.workers == 2


def crashes_when_moved(v):
    if v[1] != 0.0:   # any perturbation of x[1]: a crash in compiled code, for real
        import ctypes
        ctypes.string_at(0)
    return float(v[0])


def test_a_segfault_in_a_worker_is_named_as_such():
    from engine import WorkerLostError

    with Gradient(crashes_when_moved, workers=2, dispatch="parallel", retries=0,
                  check_state=False) as g:   # the check would run f here, at a moved point
        with pytest.raises(WorkerLostError, match="SIGSEGV: `f` crashed the worker"):
            g(np.zeros(4))


def _call_inherited(_):
    return INHERITED(np.ones(3))


INHERITED = None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs the fork start method")
def test_an_inherited_gradient_in_a_daemonic_pool_worker_says_why():
    import multiprocessing

    global INHERITED
    with Gradient(squares, workers=2, dispatch="parallel") as g:
        g(np.ones(3))
        INHERITED = g
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads
                with multiprocessing.get_context("fork").Pool(1) as pool:
                    with pytest.raises(RuntimeError, match="daemonic worker"):
                        pool.map(_call_inherited, [0])
        finally:
            INHERITED = None
        assert np.array_equal(g(np.ones(3)), numerical_gradient(squares, np.ones(3)))


def test_a_nets_gradients_differ_for_large_bounds_that_differ_in_the_middle():
    from engine import ThreeLayerNet

    net = ThreeLayerNet(input_size=784, hidden_size=2, output_size=3, seed=0)
    x, t = np.random.default_rng(0).random((1, 784)), np.array([1])
    lower = {name: np.full(a.shape, -np.inf) for name, a in net.params.items()}
    upper = {name: np.full(a.shape, np.inf) for name, a in net.params.items()}
    pinned = {name: a.copy() for name, a in lower.items()}
    pinned["w1"][400, 1] = net.params["w1"][400, 1]   # at its bound: a one-sided difference there
    assert repr(pinned["w1"]) == repr(lower["w1"])     # what NumPy's repr shows cannot tell them apart
    free = net.numerical_gradient(x, t, bounds=(lower, upper), workers=1)
    at_bound = net.numerical_gradient(x, t, bounds=(pinned, upper), workers=1)
    with Gradient(net.model.loss, bounds=(pinned, upper), workers=1) as g:
        expected = g(net.params, x, t)
    assert all(np.array_equal(at_bound[k], expected[k]) for k in expected)
    assert at_bound["w1"][400, 1] != free["w1"][400, 1]


def test_warnings_point_at_the_users_line_through_the_one_shot_call_and_a_net():
    from engine import NumericalFallbackWarning, SimpleNet

    with pytest.warns(NumericalFallbackWarning) as caught:
        parallel_numerical_gradient(lambda v: squares(v) if v[0] <= 1.0 else np.nan, np.ones(2),
                                    workers=1, on_failure="nan")
    net = SimpleNet(seed=0)
    with pytest.warns(UserWarning) as through_net:
        net.numerical_gradient(np.ones((1, 2)), np.array([0]), workers=1, evaluator="loop",
                               h=3e-16)   # stored steps off by percents: StepSizeWarning
    assert caught[0].filename == __file__
    assert through_net and all(w.filename == __file__ for w in through_net)


def test_a_nan_in_x_is_named_when_f_is_not_finite():
    x = np.array([1.0, 2.0, np.nan, 4.0])
    with pytest.raises(FloatingPointError) as raised:
        parallel_numerical_gradient(squares, x, workers=2)
    assert "`x` itself is not finite: x[2] is nan" in "\n".join(raised.value.__notes__)


def test_a_complex_x_is_refused_as_complex():
    with pytest.raises(TypeError, match="complex dtype complex128, but needs a real floating dtype"
                                        ".*real and imaginary parts"):
        numerical_gradient(squares, np.ones(3, dtype=complex))


class CountsUnpickling:
    """An argument that appends a line to `path` each time a worker unpickles it."""

    def __init__(self, path, scale):
        self.path, self.scale = str(path), scale

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.path, "a") as log:
            log.write("unpickled\n")


def scaled(v, counted):
    return counted.scale * squares(v)


def unpickled(path):
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_args_travel_once_per_change_and_an_array_changed_in_place_travels_again(tmp_path):
    path = tmp_path / "unpickled.log"
    x = np.arange(1.0, 9.0)
    data = np.zeros(3)
    f = lambda v, counted, d: scaled(v, counted) + float(d.sum()) * v[0]  # noqa: E731
    # check_state=False: the transport alone (the check would catch stale args and reship)
    with Gradient(f, workers=2, dispatch="parallel", check_state=False) as g:
        counted = CountsUnpickling(path, 2.0)
        first = g(x, counted, data)
        for _ in range(3):
            assert np.array_equal(g(x, counted, data), first)
        assert unpickled(path) == 2                # once per worker, for four calls
        data[1] = 5.0                              # changed in place: the same object
        changed = g(x, counted, data)
        assert unpickled(path) == 4
        assert np.array_equal(changed, numerical_gradient(lambda v: f(v, counted, data), x.copy()))
        assert not np.array_equal(changed, first)
