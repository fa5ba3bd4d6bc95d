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
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT_WITH_OWN_CLASS))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


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
    script = tmp_path / "fork.py"
    script.write_text(textwrap.dedent(FORK_SCRIPT))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


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
