"""Run folders without a training run: the lock, numbered folders, the `latest` link,
the temporary names of atomic writes, and claiming a folder (created, locked, a run in it
refused or replaced) as engine-train does."""
import dataclasses
import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

import numpy as np
import pytest

from engine.train import _checkpoint as checkpoint
from engine.train import _run_folder as run_folder
from engine.train._checkpoint import atomic_write
from engine.train._run_folder import (LOCK_NAME, ClaimedFolder, FolderBusyError, FolderError, claim_folder,
                                claim_new_folder, lock_folder, new_numbered_folder, point_link)


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


# --- the lock ----------------------------------------------------------------------------------

def test_the_lock_holds_the_owners_pid_and_a_second_taker_is_refused_naming_it(tmp_path):
    fd = lock_folder(tmp_path)
    os.close(fd)
    (tmp_path / LOCK_NAME).write_text("a much longer stale text\n")
    fd = lock_folder(tmp_path)
    try:
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        plain = tmp_path / "plain"
        plain.write_text("")   # the lock file gets the mode any new file gets
        assert stat.S_IMODE((tmp_path / LOCK_NAME).stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
        before = open_descriptors()
        with pytest.raises(FolderBusyError, match=rf"{tmp_path} is in use by another run "
                                                  rf"\(pid {os.getpid()}\)") as caught:
            lock_folder(tmp_path)   # flock: a second open file description conflicts
        assert caught.value.__suppress_context__ and isinstance(caught.value, RuntimeError)
        assert open_descriptors() == before   # the refused taker closed its descriptor
    finally:
        os.close(fd)
    os.close(lock_folder(tmp_path))   # free again once the owner closed it


def test_a_lock_file_without_a_pid_names_an_unknown_owner(tmp_path):
    holder = os.open(tmp_path / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(FolderBusyError, match=r"\(pid unknown\)"):
            lock_folder(tmp_path)
    finally:
        os.close(holder)


# --- numbered folders ------------------------------------------------------------------------

def test_the_first_numbered_folder_is_1_and_missing_parents_are_made(tmp_path):
    assert new_numbered_folder(tmp_path / "a" / "runs") == tmp_path / "a" / "runs" / "run-1"
    assert (tmp_path / "a" / "runs" / "run-1").is_dir()
    assert new_numbered_folder(tmp_path / "a" / "runs") == tmp_path / "a" / "runs" / "run-2"


def test_the_next_number_is_one_more_than_the_largest_of_that_prefix(tmp_path):
    for name in ["run-1", "run-3", "run-x", "run-7a", "xrun-9", "exp-12"]:
        (tmp_path / name).mkdir()
    assert new_numbered_folder(tmp_path) == tmp_path / "run-4"
    assert new_numbered_folder(tmp_path, prefix="exp-") == tmp_path / "exp-13"


def test_a_number_taken_meanwhile_is_skipped(tmp_path, monkeypatch):
    for name in ["run-1", "run-2", "run-3"]:
        (tmp_path / name).mkdir()
    monkeypatch.setattr(Path, "iterdir", lambda self: iter([]))   # as if made since the listing
    assert new_numbered_folder(tmp_path) == tmp_path / "run-4"


# --- the `latest` link -----------------------------------------------------------------------

def test_a_link_is_made_relative_then_replaced(tmp_path):
    for name in ["run-1", "run-2"]:
        (tmp_path / name).mkdir()
    link = tmp_path / "latest"
    assert point_link(link, tmp_path / "run-1") is True
    assert os.readlink(link) == "run-1"
    assert point_link(link, tmp_path / "run-2") is True
    assert os.readlink(link) == "run-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run-1", "run-2"]


def test_a_real_folder_in_the_links_place_is_left_alone(tmp_path):
    (tmp_path / "latest").mkdir()
    (tmp_path / "latest" / "keep").write_text("mine")
    assert point_link(tmp_path / "latest", tmp_path / "run-1") is False
    assert (tmp_path / "latest" / "keep").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_a_failed_replace_raises_and_leaves_no_temporary_link(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError("read-only folder")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError, match="read-only folder"):
        point_link(tmp_path / "latest", tmp_path / "run-1")
    assert list(tmp_path.iterdir()) == []


# --- temporary names -------------------------------------------------------------------------

def test_a_taken_temporary_name_is_never_reused_or_overwritten(tmp_path, monkeypatch):
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    orphan = tmp_path / ".out.bin.aaaa.tmp"
    orphan.write_bytes(b"someone else's")
    seen = []

    def write(file):
        seen.append(os.readlink(f"/proc/self/fd/{file.fileno()}"))
        file.write(b"new")

    atomic_write(tmp_path / "out.bin", write)
    assert orphan.read_bytes() == b"someone else's"
    assert seen == [str(tmp_path / ".out.bin.bbbb.tmp")]
    assert (tmp_path / "out.bin").read_bytes() == b"new"


def test_no_free_temporary_name_is_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(secrets, "token_hex", lambda n: "cccc")
    (tmp_path / ".out.bin.cccc.tmp").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"no free temporary name next to .*out\.bin"):
        atomic_write(tmp_path / "out.bin", lambda file: file.write(b"new"))
    assert not (tmp_path / "out.bin").exists()


def test_a_folder_that_cannot_be_opened_is_not_synced_and_not_an_error(tmp_path):
    before = open_descriptors()
    assert checkpoint._fsync_directory(tmp_path / "missing") is None
    checkpoint._fsync_directory(tmp_path)
    assert open_descriptors() == before


# --- claiming a run's folder -----------------------------------------------------------------

def write_checkpoint(folder, step, steps=10):
    checkpoint.save_checkpoint(folder, {"w": np.zeros(2)}, {"step": step, "config": {"steps": steps}})


def assert_locked_by_this_process(folder):
    with pytest.raises(FolderBusyError, match=rf"pid {os.getpid()}\)"):
        lock_folder(folder)


def assert_free(folder):
    os.close(lock_folder(folder))


def test_a_new_run_gets_the_next_numbered_folder_locked_and_linked_as_latest(tmp_path):
    runs = tmp_path / "runs"
    first = claim_new_folder(runs)
    try:
        assert first == ClaimedFolder(runs / "run-1", first.lock, latest=True, replaced=None)
        assert runs.joinpath("run-1").is_dir() and os.readlink(runs / "latest") == "run-1"
        assert (runs / "run-1" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert_locked_by_this_process(runs / "run-1")
        second = claim_new_folder(runs)
        assert (second.path, second.latest) == (runs / "run-2", True)
        assert os.readlink(runs / "latest") == "run-2"
        second.release()
        assert_free(runs / "run-2")
    finally:
        first.release()
    assert_free(runs / "run-1")


def test_a_claimed_folder_is_frozen(tmp_path):
    claimed = claim_folder(tmp_path / "out")
    claimed.release()
    with pytest.raises(dataclasses.FrozenInstanceError):
        claimed.lock = 0


def test_a_new_run_leaves_a_latest_that_is_not_a_link_alone(tmp_path):
    (tmp_path / "latest").write_text("mine")
    claimed = claim_new_folder(tmp_path)
    claimed.release()
    assert (claimed.path, claimed.latest) == (tmp_path / "run-1", False)
    assert (tmp_path / "latest").read_text() == "mine"


def test_a_runs_folder_that_is_a_file_is_a_folder_error_naming_out(tmp_path):
    (tmp_path / "runs").write_text("")
    with pytest.raises(FolderError, match=rf"^cannot create a run folder in {tmp_path / 'runs'} "
                                          r"\(.*File exists.*\); choose one with --out$"):
        claim_new_folder(tmp_path / "runs")


def test_a_missing_out_is_made_with_its_parents_and_locked(tmp_path):
    out = tmp_path / "a" / "b"
    claimed = claim_folder(out)
    try:
        assert claimed == ClaimedFolder(out, claimed.lock, latest=None, replaced=None)
        assert out.is_dir()
        assert_locked_by_this_process(out)
    finally:
        claimed.release()
    assert_free(out)


def test_an_empty_existing_out_is_claimed_and_other_files_are_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    claim_folder(tmp_path).release()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_temporaries_of_a_killed_writer_are_removed_others_kept(tmp_path):
    orphans = [tmp_path / ".params.npz.0a1b2c.tmp", tmp_path / f".{checkpoint.CHECKPOINT_NAME}.ff.tmp"]
    for orphan in orphans + [tmp_path / ".notes.txt.0a1b2c.tmp"]:
        orphan.write_bytes(b"half")
    claim_folder(tmp_path).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, ".notes.txt.0a1b2c.tmp"]


@pytest.mark.parametrize("setup, held", [
    (lambda out: write_checkpoint(out, 10), "a finished run"),
    (lambda out: write_checkpoint(out, 11), "a finished run"),
    (lambda out: (out / "params.npz").write_bytes(b"p"), "a finished run's params.npz"),
    (lambda out: [(out / n).write_bytes(b"x") for n in ("training.png", "metrics.json")],
     "a finished run's metrics.json, training.png"),
], ids=["finished", "past-the-end", "params-only", "metrics-and-plot"])
def test_a_fresh_run_refuses_a_folder_holding_a_finished_run(tmp_path, setup, held):
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    descriptors = open_descriptors()
    with pytest.raises(FolderError) as caught:
        claim_folder(tmp_path)
    assert str(caught.value) == (f"{tmp_path} holds {held}; choose another --out, or omit --out "
                                 "for a new runs/run-N, or pass --force to replace it")
    assert caught.value.__class__.__bases__ == (Exception,)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + [LOCK_NAME])
    assert open_descriptors() == descriptors   # the lock was let go
    assert_free(tmp_path)


def test_an_unfinished_run_is_refused_suggesting_resume(tmp_path):
    write_checkpoint(tmp_path, 3)
    with pytest.raises(FolderError) as caught:
        claim_folder(tmp_path, force=False)
    assert str(caught.value) == (f"{tmp_path} holds an unfinished run (step 3 of 10); continue it "
                                 f"with --resume {tmp_path}, choose another --out, or omit --out "
                                 "for a new runs/run-N, or pass --force to replace it")
    assert_free(tmp_path)


@pytest.mark.parametrize("state, reason", [
    (None, r"CheckpointError: .*checkpoint\.npz"),
    ({"step": 3}, "KeyError: 'config'"),
    ({"step": 3, "config": [10]}, "TypeError: list indices"),
], ids=["corrupt", "no-config", "config-a-list"])
def test_a_checkpoint_that_cannot_be_read_is_refused_saying_why(tmp_path, state, reason):
    if state is None:
        (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(b"not a zip")
    else:
        checkpoint.save_checkpoint(tmp_path, {"w": np.zeros(2)}, state)
    with pytest.raises(FolderError, match=rf"^{tmp_path} holds a checkpoint that cannot be read "
                                          rf"\({reason}.*\); choose another --out"):
        claim_folder(tmp_path)
    assert (tmp_path / checkpoint.CHECKPOINT_NAME).exists()


def test_force_deletes_the_outputs_of_the_run_it_replaces_and_nothing_else(tmp_path):
    write_checkpoint(tmp_path, 3)
    for name in ("params.npz", "metrics.json", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    claimed = claim_folder(tmp_path, force=True)
    try:
        assert claimed.replaced == "an unfinished run (step 3 of 10)"
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "notes.txt"]
        assert_locked_by_this_process(tmp_path)
    finally:
        claimed.release()


def test_force_on_a_folder_holding_only_a_checkpoint_or_nothing(tmp_path):
    write_checkpoint(tmp_path, 10)
    claimed = claim_folder(tmp_path, force=True)
    claimed.release()
    assert claimed.replaced == "a finished run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]
    claimed = claim_folder(tmp_path, force=True)
    claimed.release()
    assert claimed.replaced is None


def test_a_resumed_run_keeps_its_outputs_when_the_checkpoint_is_still_at_its_step(tmp_path):
    write_checkpoint(tmp_path, 3)
    (tmp_path / "metrics.json").write_text("{}")
    claimed = claim_folder(tmp_path, resumed_step=3)
    try:
        assert claimed == ClaimedFolder(tmp_path, claimed.lock, latest=None, replaced=None)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [LOCK_NAME, checkpoint.CHECKPOINT_NAME, "metrics.json"])
        assert_locked_by_this_process(tmp_path)
    finally:
        claimed.release()


def test_a_checkpoint_moved_on_before_the_lock_is_refused_and_the_lock_let_go(tmp_path):
    write_checkpoint(tmp_path, 4)
    with pytest.raises(FolderError, match=rf"^the checkpoint in {tmp_path} changed while this run "
                                          "started; run the command again$"):
        claim_folder(tmp_path, resumed_step=3)
    assert_free(tmp_path)


def test_a_resumed_checkpoint_now_unreadable_is_a_checkpoint_error_and_the_lock_let_go(tmp_path):
    (tmp_path / checkpoint.CHECKPOINT_NAME).write_bytes(b"not a zip")
    with pytest.raises(checkpoint.CheckpointError):
        claim_folder(tmp_path, resumed_step=3)
    assert_free(tmp_path)


def test_a_folder_locked_by_another_run_is_busy_not_a_folder_error(tmp_path):
    holder = lock_folder(tmp_path)
    try:
        with pytest.raises(FolderBusyError, match=f"{tmp_path} is in use by another run"):
            claim_folder(tmp_path)
    finally:
        os.close(holder)


@pytest.mark.parametrize("resumed_step, flag", [(None, "--out"), (3, "--resume")],
                         ids=["fresh", "resumed"])
def test_an_out_that_cannot_be_a_folder_is_refused_naming_the_flag(tmp_path, resumed_step, flag):
    (tmp_path / "file").write_text("")
    with pytest.raises(FolderError, match=rf"^{flag} {tmp_path / 'file'} exists and is not a folder$"):
        claim_folder(tmp_path / "file", resumed_step=resumed_step)
    with pytest.raises(FolderError, match=rf"^{flag} {tmp_path / 'file' / 'out'}: part of that path "
                                          "is a file, not a folder$"):
        claim_folder(tmp_path / "file" / "out", resumed_step=resumed_step)


def test_an_out_that_cannot_be_created_is_refused_saying_why(tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(FolderError, match=rf"^--out {tmp_path / 'out'}: cannot create the folder "
                                          r"\(Read-only file system\)$"):
        claim_folder(tmp_path / "out")


@pytest.mark.parametrize("error, message", [
    (PermissionError(errno.EACCES, "Permission denied"), " is not writable (Permission denied)"),
    (OSError(errno.ENOSPC, "No space left on device"), ": cannot write there (No space left on device)"),
], ids=["permission", "no-space"])
def test_a_folder_whose_lock_cannot_be_written_is_refused_saying_why(tmp_path, monkeypatch, error,
                                                                     message):
    def fail(directory):
        raise error

    monkeypatch.setattr(run_folder, "lock_folder", fail)
    with pytest.raises(FolderError) as caught:
        claim_folder(tmp_path)
    assert str(caught.value) == f"--out {tmp_path}{message}"
    with pytest.raises(FolderError) as caught:
        claim_new_folder(tmp_path / "runs")
    assert str(caught.value) == f"--out {tmp_path / 'runs' / 'run-1'}{message}"
