"""Atomic writes: the order of operations that makes them durable, and the files' mode."""
import os
import stat

import numpy as np
import pytest

from engine.train._checkpoint import (CHECKPOINT_NAME, atomic_write, load_checkpoint, remove_temporaries,
                               save_checkpoint, save_npz_atomic)

PARAMS = {"w1": np.arange(6.0).reshape(2, 3), "b1": np.zeros(3)}
STATE = {"step": 3, "order": np.arange(5), "losses": [0.5, 0.25]}


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield os.umask
    os.umask(saved)


def record_fsync_and_replace(monkeypatch):
    """Record os.fsync (the inode, size and kind synced) and os.replace calls, in order."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", info.st_ino, info.st_size, stat.S_ISDIR(info.st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


WRITERS = {
    "checkpoint": lambda folder: save_checkpoint(folder, PARAMS, STATE),
    # a few bytes that stay in Python's buffer unless the writer flushes before fsync
    "bytes": lambda folder: atomic_write(folder / "metrics.json", lambda file: file.write(b"{}")),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_file_is_fsynced_complete_then_renamed_then_its_folder_fsynced(tmp_path, monkeypatch,
                                                                        writer):
    events = record_fsync_and_replace(monkeypatch)
    path = WRITERS[writer](tmp_path)
    final = os.stat(path)
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"], events
    (_, synced_inode, synced_size, synced_dir), (_, renamed_inode, src, dst), last = events
    # The temporary file itself (the inode the rename puts in place) was fsynced, holding
    # every byte: flushed out of Python's buffer before the fsync.
    assert (synced_inode, synced_size, synced_dir) == (final.st_ino, final.st_size, False)
    assert renamed_inode == final.st_ino and dst == str(path) and src != dst
    assert os.path.dirname(src) == str(tmp_path)
    # Then the folder, so the rename itself survives a power cut.
    assert last[1:] == (os.stat(tmp_path).st_ino, os.stat(tmp_path).st_size, True)


def test_a_checkpoint_reads_back(tmp_path):
    save_checkpoint(tmp_path, PARAMS, STATE)
    params, state = load_checkpoint(tmp_path)
    assert np.array_equal(params["w1"], PARAMS["w1"]) and state["step"] == 3
    assert np.array_equal(state["order"], STATE["order"]) and state["losses"] == [0.5, 0.25]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_a_new_file_gets_under_the_umask(tmp_path, umask, mask):
    umask(mask)
    written = [save_checkpoint(tmp_path, PARAMS, STATE),
               save_npz_atomic(tmp_path / "params.npz", PARAMS),
               atomic_write(tmp_path / "metrics.json", lambda file: file.write(b"{}"))]
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask == \
            stat.S_IMODE(plain.stat().st_mode), path.name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = save_npz_atomic(tmp_path / "params.npz", PARAMS)
    before = path.read_bytes()

    def fail(file):
        file.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.npz"]


def test_remove_temporaries_removes_only_the_named_files_orphans(tmp_path):
    names = [CHECKPOINT_NAME, "params.npz"]
    orphans = [tmp_path / f".{CHECKPOINT_NAME}.a1b2c3.tmp", tmp_path / ".params.npz.ffff.tmp"]
    kept = [tmp_path / CHECKPOINT_NAME, tmp_path / ".other.npz.a1.tmp", tmp_path / "notes.tmp"]
    for path in orphans + kept:
        path.write_bytes(b"x")
    assert sorted(remove_temporaries(tmp_path, names)) == sorted(orphans)
    assert sorted(p for p in tmp_path.iterdir()) == sorted(kept)
