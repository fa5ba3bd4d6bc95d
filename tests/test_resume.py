"""Checkpoints: killed, interrupted and resumed runs end bit-identical; bad checkpoints are refused."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.train._checkpoint import CHECKPOINT_NAME

RUN = ["--hidden", "16", "--iters", "240", "--train-size", "50", "--batch-size", "2", "--shuffle",
       "--checkpoint-every", "7", "--evaluator", "batched", "--workers", "1", "--no-progress"]


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "engine.cli.train", *map(str, args)],
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


def wait_for_checkpoint(process, out: Path, timeout=120):
    deadline = time.monotonic() + timeout
    while not (out / CHECKPOINT_NAME).exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("delay", [0.0, 0.4, 1.0])
def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path, uninterrupted, delay):
    out = tmp_path / "run"
    process = start(*RUN, "--out", out)
    wait_for_checkpoint(process, out)
    time.sleep(delay + random.uniform(0, 0.2))
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    status, stdout, err = finish("--resume", out, "--no-progress")
    assert status == 0, err
    assert "resuming at step" in stdout or "steps of" in stdout
    assert_same_params(out, uninterrupted)


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_write_a_checkpoint_and_say_how_to_resume(tmp_path, uninterrupted, sig, status):
    out = tmp_path / "run"
    process = start(*RUN, "--out", out)
    wait_for_checkpoint(process, out)
    time.sleep(0.5)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert f"resume with: engine-train --resume {out}" in err
    assert "interrupted at step" in err
    resumed, _, err = finish("--resume", out, "--no-progress")
    assert resumed == 0, err
    assert_same_params(out, uninterrupted)


def interrupted_run(tmp_path) -> Path:
    out = tmp_path / "run"
    process = start(*RUN, "--out", out)
    wait_for_checkpoint(process, out)
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
