"""Faults caused for real: errors in workers, killed workers, Ctrl-C, leaked processes, lost state."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from engine import (StateNotShippedError, WorkerLostError, numerical_gradient,
                    parallel_numerical_gradient)

def net_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"w1": rng.standard_normal((5, 4)), "b1": rng.standard_normal(4)}


def closure_loss(params):
    def loss(_):
        return float(np.sum(np.tanh(params["w1"]) @ params["b1"]))
    return loss


class FailsAt:
    """A loss that raises ValueError when ``w1[2, 3]`` is perturbed upwards."""

    def __init__(self, params):
        self.params = params
        self.original = float(params["w1"][2, 3])

    def __call__(self, _):
        if self.params["w1"][2, 3] > self.original:
            raise ValueError("simulation diverged")
        return float(np.sum(self.params["w1"]))


@pytest.mark.parametrize("workers, backend", [(1, "loky"), (2, "loky"), (3, "threading")])
def test_an_error_in_f_keeps_its_type_and_says_where(workers, backend):
    params = net_params()
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError) as raised:
        parallel_numerical_gradient(FailsAt(params), params, workers=workers, backend=backend)
    assert raised.value.args == ("simulation diverged",)   # the user's exception, untouched
    assert any("x['w1'][2, 3] (x_i + 1*h)" in note for note in raised.value.__notes__)
    for name in params:
        assert params[name].tobytes() == before[name].tobytes()
    f = closure_loss(params)   # and the next call works normally
    got = parallel_numerical_gradient(f, params, workers=workers, backend=backend)
    expected = numerical_gradient(f, params)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


class KillsItsWorker:
    """Kills the worker process it runs in (never the test process), once or always."""

    def __init__(self, params, marker, always=False):
        self.params, self.marker, self.always = params, Path(marker), always
        self.parent = os.getpid()

    def __call__(self, _):
        if os.getpid() != self.parent and (self.always or not self.marker.exists()):
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return float(np.sum(np.sin(self.params["w1"])) + np.sum(self.params["b1"] ** 2))


def test_a_killed_worker_is_replaced_and_the_gradient_is_exact(tmp_path):
    params = net_params(1)
    f = KillsItsWorker(params, tmp_path / "killed-once")
    got = parallel_numerical_gradient(f, params, workers=2)
    assert (tmp_path / "killed-once").exists()
    expected = numerical_gradient(f, params)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_when_retries_run_out_the_error_names_what_was_lost(tmp_path):
    params = net_params(2)
    f = KillsItsWorker(params, tmp_path / "marker", always=True)
    with pytest.raises(WorkerLostError, match=r"chunk\(s\) \(\d+ entries\) were still lost after 1 retries"):
        parallel_numerical_gradient(f, params, workers=2, retries=1)
    g = parallel_numerical_gradient(closure_loss(params), params, workers=2)   # pool usable again
    assert g["w1"].shape == (5, 4)


def test_state_that_did_not_travel_is_detected():
    import _module_state   # an importable module: pickle sends its functions by reference

    params = _module_state.NET_PARAMS
    serial = numerical_gradient(_module_state.loss_of_module_net, params["w"])
    assert np.any(serial != 0)
    with pytest.raises(StateNotShippedError, match="module-level net"):
        parallel_numerical_gradient(_module_state.loss_of_module_net, params["w"], workers=2)
    # the same state reached through a closure travels with x, and is exact
    f = lambda _: float(np.sum(np.sin(params["w"])))  # noqa: E731
    assert np.array_equal(parallel_numerical_gradient(f, params["w"], workers=2), serial)


PROGRAM = textwrap.dedent('''
    import os, sys, time
    import numpy as np
    from engine import parallel_numerical_gradient
    pid_dir, mode = sys.argv[1], sys.argv[2]
    params = {"w": np.linspace(0.0, 1.0, 64)}
    caller = os.getpid()

    def loss(_):
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        if mode == "interrupt" and os.getpid() != caller:   # in a worker, f outlasts any wait:
            time.sleep(3600)                                # the run cannot end before the Ctrl-C
        return float(np.sum(params["w"] ** 2))

    before = params["w"].copy()
    try:
        parallel_numerical_gradient(loss, params, workers=2)
        if mode == "error":
            raise RuntimeError("the program fails after using the engine")
        if mode == "interrupt":
            print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("intact" if params["w"].tobytes() == before.tobytes() else "PERTURBED", flush=True)
        raise
''')


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def worker_pids(pid_dir: Path, program_pid: int) -> list[int]:
    return [int(p.name) for p in pid_dir.iterdir() if int(p.name) != program_pid]


@pytest.mark.parametrize("mode", ["normal", "error", "interrupt"])
def test_no_worker_process_outlives_the_program(tmp_path, mode):
    script = tmp_path / "uses_engine.py"
    script.write_text(PROGRAM)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    program = subprocess.Popen([sys.executable, str(script), str(pid_dir), mode],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if mode == "interrupt":
        deadline = time.monotonic() + 60
        while len(worker_pids(pid_dir, program.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(worker_pids(pid_dir, program.pid)) >= 2, "workers never started"
        program.send_signal(signal.SIGINT)
    out, err = program.communicate(timeout=120)
    expected_status = {"normal": 0, "error": 1, "interrupt": -signal.SIGINT}
    assert program.returncode in (expected_status[mode], 1 if mode == "interrupt" else None), err
    if mode == "interrupt":
        assert "KeyboardInterrupt" in err and "intact" in out
    pids = worker_pids(pid_dir, program.pid)
    assert pids, "the engine never ran in a worker"
    deadline = time.monotonic() + 60   # bounds a failure only
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)]
