"""Checkpoints: killed, interrupted and resumed runs end bit-identical; bad checkpoints are refused."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.train._checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

RUN = ["--hidden", "16", "--iters", "240", "--train-size", "50", "--batch-size", "2", "--shuffle",
       "--checkpoint-every", "7", "--evaluator", "batched", "--workers", "1", "--no-progress"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "engine.cli.train", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


HELD_TRAIN = Path(__file__).with_name("_held_train.py")
HOLD = 231   # RUN's last checkpoint before its end (7 * 33 of 240 steps): a held run waits there


def start_held(hold: int, *args):
    """engine-train with RUN's flags, waiting for a signal after step `hold`: it cannot end first."""
    return subprocess.Popen([sys.executable, str(HELD_TRAIN), str(hold), *RUN, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*args):
    process = start(*args)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    status, _, err = finish(*RUN, "--out", out)
    assert status == 0, err
    return dict(np.load(out / "params.npz"))


def assert_same_params(out: Path, expected: dict):
    with np.load(out / "params.npz", allow_pickle=False) as got:
        for name in expected:
            assert np.array_equal(got[name], expected[name]), name


def checkpointed_step(out: Path) -> int | None:
    """The step the checkpoint in `out` reports, or None while there is none."""
    try:
        return load_checkpoint(out)[1]["step"]
    except CheckpointError:
        return None


def wait_for_step(process, out: Path, step: int, deadline_s: float = 120) -> int:
    """Poll `out`'s checkpoint until it reports `step` or later; returns the step it reports.

    The deadline only turns a run that never gets there into a failure: no test waits for it.
    """
    deadline = time.monotonic() + deadline_s
    while (seen := checkpointed_step(out)) is None or seen < step:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"no checkpoint of step {step} after {deadline_s} s"
        time.sleep(0.01)
    return seen


def resumed_at(stdout: str) -> int:
    """The step a resumed run says it starts from (it says nothing when that is step 0)."""
    found = re.search(r"resuming at step (\d+)", stdout)
    return int(found.group(1)) if found else 0


# Killed once the checkpoint reports step K or later: anywhere from step K to HOLD, in a step or
# in a checkpoint's write, wherever the run is when the signal lands.
@pytest.mark.parametrize("step", [0, 70, 161, HOLD])
def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path, uninterrupted, step):
    out = tmp_path / "run"
    process = start_held(HOLD, "--out", out)
    try:
        seen = wait_for_step(process, out, step)
    finally:
        process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    status, stdout, err = finish("--resume", out, "--no-progress")
    assert status == 0, err
    assert seen <= resumed_at(stdout) <= HOLD
    assert_same_params(out, uninterrupted)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_write_a_checkpoint_and_say_how_to_resume(tmp_path, uninterrupted, sig, status):
    out = tmp_path / "run"
    process = start_held(HOLD, "--out", out)
    try:
        seen = wait_for_step(process, out, 70)
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status, err
    assert f"resume with: engine-train --resume {out}" in err
    stopped = int(re.search(r"interrupted at step (\d+) of 240", err).group(1))
    assert seen <= stopped <= HOLD and checkpointed_step(out) == stopped
    resumed, stdout, err = finish("--resume", out, "--no-progress")
    assert resumed == 0, err
    assert resumed_at(stdout) == stopped
    assert_same_params(out, uninterrupted)


def interrupted_run(tmp_path) -> Path:
    """A run killed (SIGKILL) once its checkpoint of step 7 is written."""
    out = tmp_path / "run"
    process = start_held(7, "--out", out)
    try:
        assert wait_for_step(process, out, 7) == 7
    finally:
        process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    return out


def test_truncated_checkpoint_is_refused_and_kept(tmp_path):
    out = interrupted_run(tmp_path)
    path = out / CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    before = path.read_bytes()
    status, _, err = finish("--resume", out, "--no-progress")
    assert status == 2 and "unreadable" in err and str(path) in err
    assert path.read_bytes() == before
    status, _, err = finish(*RUN, "--out", out)   # a fresh run must not overwrite it either
    assert status == 2 and "cannot be read" in err
    assert path.read_bytes() == before


def test_checkpoint_of_another_net_is_refused(tmp_path):
    out = interrupted_run(tmp_path)
    path = out / CHECKPOINT_NAME
    with np.load(path) as data:
        arrays = dict(data)
    arrays["param/w1"] = np.zeros((784, 3))
    np.savez(path, **arrays)
    status, _, err = finish("--resume", out, "--no-progress")
    assert status == 2 and "other shapes" in err


def test_a_checkpoint_holding_pickles_is_never_unpickled(tmp_path):
    out = interrupted_run(tmp_path)
    path = out / CHECKPOINT_NAME
    with np.load(path) as data:
        arrays = dict(data)
    arrays["state/order"] = np.array([object()], dtype=object)
    np.savez(path, **arrays)
    status, _, err = finish("--resume", out, "--no-progress")
    assert status == 2 and "allow_pickle=False" in err


def test_unfinished_run_is_not_overwritten_by_a_fresh_one(tmp_path):
    out = interrupted_run(tmp_path)
    before = (out / CHECKPOINT_NAME).read_bytes()
    status, _, err = finish(*RUN, "--out", out)
    assert status == 2 and f"--resume {out}" in err
    assert (out / CHECKPOINT_NAME).read_bytes() == before


def test_resume_refuses_flags_that_change_the_numbers(tmp_path):
    out = interrupted_run(tmp_path)
    status, _, err = finish("--resume", out, "--lr", "0.5", "--no-progress")
    assert status == 2 and "--lr 0.5 (checkpoint: 0.1)" in err


def test_resume_without_a_checkpoint(tmp_path):
    status, _, err = finish("--resume", tmp_path / "nothing-here")
    assert status == 2 and "no checkpoint" in err


SHORT = ["--hidden", "4", "--iters", "10", "--train-size", "8", "--test-size", "2", "--workers", "1",
         "--no-progress"]


def stopped_at_step_4(tmp_path, monkeypatch, *flags) -> Path:
    """A run of SHORT interrupted (Ctrl-C, in this process) after its 4th step."""
    import engine.cli.train as train_module

    after_step = train_module._after_step

    def interrupt_at_4(trainer, run, bar):
        after_step(trainer, run, bar)
        if trainer.state.step == 4:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "_after_step", interrupt_at_4)
        assert train_module.main([*SHORT, *flags, "--out", str(out)]) == 130
    return out


def checkpointed_steps(monkeypatch) -> list:
    """Record the step of every checkpoint engine-train writes from now on."""
    import engine.cli.train as train_module

    steps, save = [], train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda folder, params, state: steps.append(state["step"])
                        or save(folder, params, state))
    return steps


def test_checkpoint_every_is_kept_for_the_resume(tmp_path, monkeypatch):
    from engine.cli.train import main

    out = stopped_at_step_4(tmp_path, monkeypatch, "--checkpoint-every", "3")
    steps = checkpointed_steps(monkeypatch)
    assert main(["--resume", str(out), "--workers", "1", "--no-progress"]) == 0
    assert steps == [6, 9, 10]   # every 3rd step, then the end (not the default's 100)


def test_checkpoint_every_given_on_resume_replaces_the_saved_one(tmp_path, monkeypatch):
    from engine.cli.train import main

    out = stopped_at_step_4(tmp_path, monkeypatch, "--checkpoint-every", "3")
    steps = checkpointed_steps(monkeypatch)
    assert main(["--resume", str(out), "--checkpoint-every", "5", "--no-progress",
                 "--workers", "1"]) == 0
    assert steps == [5, 10, 10]


def test_resume_removes_orphan_temporary_files(tmp_path, monkeypatch):
    from engine.cli.train import main

    out = stopped_at_step_4(tmp_path, monkeypatch)
    orphan = out / f".{CHECKPOINT_NAME}.5e5e5e.tmp"
    orphan.write_bytes(b"a write killed half way")
    assert main(["--resume", str(out), "--workers", "1", "--no-progress"]) == 0
    assert not orphan.exists()


def test_resume_refuses_another_out_and_takes_its_own(tmp_path, monkeypatch, capsys):
    from engine.cli.train import main

    out = stopped_at_step_4(tmp_path, monkeypatch)
    elsewhere = tmp_path / "elsewhere"
    assert main(["--resume", str(out), "--out", str(elsewhere), "--no-progress"]) == 2
    assert f"--out {elsewhere} cannot move it" in capsys.readouterr().err
    assert not elsewhere.exists()
    assert main(["--resume", str(out), "--out", str(out), "--workers", "1", "--no-progress"]) == 0


def test_checkpoint_without_its_training_state_is_refused(tmp_path):
    out = interrupted_run(tmp_path)
    path = out / CHECKPOINT_NAME
    with np.load(path) as data:
        arrays = dict(data)
    document = json.loads(str(arrays["state.json"]))
    del document["rng_state"]
    arrays["state.json"] = np.array(json.dumps(document))
    np.savez(path, **arrays)
    status, _, err = finish("--resume", out, "--no-progress")
    assert status == 2 and "lacks its training state" in err and "rng_state" in err
