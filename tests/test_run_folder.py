"""engine-train's output folder: one writer at a time, never a finished run lost, clear refusals."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from engine.train._checkpoint import CHECKPOINT_NAME
from engine.data._data import load_embedded_mnist, write_mnist_csv
from engine.train._run_folder import LOCK_NAME
from engine.cli.train import main

DATA = Path(tempfile.mkdtemp(prefix="engine-run-folder-"))   # small CSV files: no 5,000-image load
TINY = ["--train-csv", str(DATA / "train.csv"), "--test-csv", str(DATA / "test.csv"), "--hidden", "4",
        "--iters", "2", "--workers", "1", "--no-progress"]
LONG = ["--train-csv", str(DATA / "train.csv"), "--test-csv", str(DATA / "test.csv"), "--hidden", "16",
        "--iters", "100", "--batch-size", "2", "--evaluator", "batched", "--workers", "1",
        "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def small_csv_files():
    train, test = load_embedded_mnist()
    write_mnist_csv(DATA / "train.csv", train.head(50))
    write_mnist_csv(DATA / "test.csv", test.head(3))
    yield
    shutil.rmtree(DATA)


HELD_TRAIN = Path(__file__).with_name("_held_train.py")


def start_held(*args):
    """engine-train waiting after its first step until SIGUSR1 (or a fatal signal) arrives."""
    return subprocess.Popen([sys.executable, str(HELD_TRAIN), "1", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process, timeout=120):
    """Poll for `path`; the deadline only turns a run that never writes it into a failure."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)


def params_bytes(folder: Path) -> bytes:
    return (folder / "params.npz").read_bytes()


class TestLock:
    def test_a_second_run_into_a_busy_folder_exits_2_and_the_first_finishes(self, tmp_path,
                                                                             capsys):
        out = tmp_path / "run"
        first = start_held(*LONG, "--out", out)   # holds the lock until released
        try:
            wait_for(out / CHECKPOINT_NAME, first)   # written after the lock is taken
            second = subprocess.run([sys.executable, "-m", "engine.cli.train", *TINY, "--out", str(out)],
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"{out} is in use by another run (pid {first.pid})" in second.stderr
            assert main(["--resume", str(out)]) == 2   # and from this process
            assert "in use by another run" in capsys.readouterr().err
            first.send_signal(signal.SIGUSR1)
            _, err = first.communicate(timeout=300)
        finally:
            first.kill()
        assert first.returncode == 0, err
        with np.load(out / "params.npz") as params:
            assert params["w1"].shape == (784, 16)   # the first run's results, not the second's

    def test_a_killed_run_leaves_no_stale_lock(self, tmp_path):
        out = tmp_path / "run"
        process = start_held(*LONG, "--out", out)
        try:
            wait_for(out / CHECKPOINT_NAME, process)
        finally:
            process.kill()
        process.communicate(timeout=60)
        assert process.returncode == -signal.SIGKILL
        assert (out / LOCK_NAME).exists()
        assert main(["--resume", str(out), "--workers", "1", "--no-progress"]) == 0


class TestDefaultFolder:
    def test_plain_runs_get_new_numbered_folders_and_latest_follows(self, tmp_path, monkeypatch,
                                                                    capsys):
        monkeypatch.chdir(tmp_path)
        assert main(TINY) == 0
        first = params_bytes(tmp_path / "runs" / "run-1")
        assert main([*TINY, "--seed", "1"]) == 0
        assert "writing to runs/run-2 (runs/latest points to it)" in capsys.readouterr().out
        assert params_bytes(tmp_path / "runs" / "run-1") == first   # the first run is intact
        assert params_bytes(tmp_path / "runs" / "run-2") != first
        latest = tmp_path / "runs" / "latest"
        assert latest.is_symlink() and os.readlink(latest) == "run-2"
        assert main(["--resume", "runs/latest", "--workers", "1", "--no-progress"]) == 0

    def test_a_latest_folder_from_before_is_left_alone(self, tmp_path, monkeypatch, capsys):
        monkeypatch.chdir(tmp_path)
        old = tmp_path / "runs" / "latest"
        old.mkdir(parents=True)
        (old / "params.npz").write_bytes(b"an earlier run")
        assert main(TINY) == 0
        assert "runs/latest is not a link: left as it is" in capsys.readouterr().out
        assert (old / "params.npz").read_bytes() == b"an earlier run"
        assert (tmp_path / "runs" / "run-1" / "params.npz").exists()


class TestExplicitOut:
    def test_a_finished_run_is_refused_then_replaced_with_force(self, tmp_path, capsys):
        out = tmp_path / "run"
        assert main([*TINY, "--out", str(out)]) == 0
        before = params_bytes(out)
        assert main([*TINY, "--seed", "3", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{out} holds a finished run" in err and "--force" in err
        assert params_bytes(out) == before
        assert main([*TINY, "--seed", "3", "--out", str(out), "--force"]) == 0
        assert f"--force: replacing a finished run in {out}" in capsys.readouterr().err
        assert params_bytes(out) != before

    def test_outputs_without_a_checkpoint_count_as_a_finished_run(self, tmp_path, capsys):
        out = tmp_path / "run"
        out.mkdir()
        (out / "metrics.json").write_text("{}")
        assert main([*TINY, "--out", str(out)]) == 2
        assert "a finished run's metrics.json" in capsys.readouterr().err

    def test_force_needs_out(self, capsys):
        assert main([*TINY, "--force"]) == 2
        assert "--force replaces the run in --out" in capsys.readouterr().err

    @pytest.mark.parametrize("make, message", [
        (lambda p: p.write_text("x") and p, "exists and is not a folder"),
        (lambda p: p.write_text("x") and p / "below", "part of that path is a file"),
    ])
    def test_an_out_that_cannot_be_a_folder_exits_2_naming_it(self, tmp_path, capsys, make,
                                                              message):
        out = make(tmp_path / "file")
        assert main([*TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and message in err and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

    def test_an_out_that_is_not_writable_exits_2_naming_it(self, tmp_path, capsys):
        if os.geteuid() == 0:   # root writes anywhere: use a folder the kernel refuses
            if not Path("/sys/kernel").is_dir():
                pytest.skip("running as root without sysfs: no unwritable folder to use")
            out = Path("/sys/kernel/engine-train-test")
        else:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o500)
            out = locked / "run"
        assert main([*TINY, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and "Traceback" not in err
        assert not out.exists()

    def test_orphan_temporary_files_are_removed_on_the_next_start(self, tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        orphans = [out / f".{CHECKPOINT_NAME}.1f2e3d.tmp", out / ".params.npz.0a0b.tmp",
                   out / ".metrics.json.77.tmp"]
        for orphan in orphans:
            orphan.write_bytes(b"half a file")
        (out / "notes.txt").write_text("mine")
        assert main([*TINY, "--out", str(out)]) == 0
        assert not any(orphan.exists() for orphan in orphans)
        assert (out / "notes.txt").read_text() == "mine"
        assert not list(out.glob(".*.tmp"))


def test_a_runs_file_in_the_way_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    assert main(TINY) == 2
    err = capsys.readouterr().err
    assert "cannot create a run folder in runs" in err and "Traceback" not in err
