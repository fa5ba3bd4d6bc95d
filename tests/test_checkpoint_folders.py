"""Run folders without a training run: the lock, numbered folders, the `latest` link,
and the temporary names of atomic writes."""
import fcntl
import os
import secrets
import stat
from pathlib import Path

import pytest

from engine import _checkpoint as checkpoint
from engine._checkpoint import atomic_write
from engine._run_folder import LOCK_NAME, FolderBusyError, lock_folder, new_numbered_folder, point_link


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
