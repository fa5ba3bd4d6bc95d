"""The shared memory behind a process pool's values of `x`, in this process: layout, the view
another process maps, closing, the fallback file that leaves no name behind, a refused
reservation, and stale files of dead callers."""
import errno
import mmap
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from engine.run import _shared_memory
from engine.run._shared_memory import SharedMemoryError, SharedValues, remove_stale_shared_files

PREFIX = "numgrad-"


def arrays():
    return [np.arange(65.0), np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros(0),
            np.array(7.5, dtype=np.float32)]


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


def our_files() -> list[str]:
    return [str(path) for folder in ("/dev/shm", tempfile.gettempdir()) if os.path.isdir(folder)
            for path in Path(folder).glob(f"{PREFIX}{os.getpid()}-*")]


def test_views_have_the_arrays_layout_64_byte_aligned_and_hold_what_is_written():
    given = arrays()
    values = SharedValues.create(given)
    try:
        assert [(v.shape, v.dtype) for v in values.views] == [(a.shape, a.dtype) for a in given]
        # 520 bytes take 9 blocks of 64 (8 of 65 would do): a block size other than 64 shows
        assert [offset for offset, _, _ in values.layout] == [0, 576, 640, 640]
        assert all(not v.any() for v in values.views)
        values.write(given)
        for view, array in zip(values.views, given):
            assert np.array_equal(view, array)
    finally:
        values.close()


def test_another_mapping_of_the_file_sees_the_values_as_a_worker_would():
    given = arrays()
    values = SharedValues.create(given)
    try:
        values.write(given)
        size = os.fstat(values.fd).st_size
        assert size == 704   # 65 float64 and 6 int32 rounded up to 64 bytes each, then 4 bytes
        other = mmap.mmap(values.fd, size)
        offset, shape, dtype = values.layout[1]
        seen = np.ndarray(shape, dtype=np.dtype(dtype), buffer=other, offset=offset).copy()
        other.close()
        assert np.array_equal(seen, given[1])
    finally:
        values.close()


def test_no_array_gives_a_one_byte_file():
    values = SharedValues.create([])
    try:
        assert os.fstat(values.fd).st_size == 1 and values.views == []
    finally:
        values.close()


def test_close_closes_the_file_and_the_mapping_and_can_be_repeated():
    values = SharedValues.create(arrays())
    fd, mapping = values.fd, values._mapping
    values.close()
    assert not is_open(fd) and values.fd is None and values.views == []
    assert mapping.closed
    values.close()   # idempotent: the descriptor is not closed twice


def test_close_with_a_view_still_held_outside_closes_the_file_anyway():
    values = SharedValues.create(arrays())
    fd, kept = values.fd, values.views[0]
    values.close()
    assert not is_open(fd)
    # Not read: NumPy keeps no buffer export on the mapping, so close() unmapped it anyway and
    # reading `kept` now would touch unmapped memory (seen: a segfault).
    del kept


def test_the_fallback_file_has_no_name_left_and_holds_the_values(monkeypatch):
    monkeypatch.delattr(os, "memfd_create")
    given = arrays()
    values = SharedValues.create(given)
    try:
        assert our_files() == []   # unlinked at once: a killed caller leaves nothing
        assert os.fstat(values.fd).st_nlink == 0
        values.write(given)
        assert np.array_equal(values.views[0], given[0])
    finally:
        values.close()


def test_the_fallback_file_goes_to_the_temporary_folder_when_dev_shm_is_not_writable(monkeypatch):
    monkeypatch.delattr(os, "memfd_create")
    writable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: path != "/dev/shm" and writable(path, mode))
    folders, mkstemp = [], tempfile.mkstemp
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: folders.append(kw["dir"]) or mkstemp(**kw))
    SharedValues.create([np.zeros(3)]).close()
    assert folders == [None]   # the platform's temporary folder


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.ENOMEM], ids=["ENOSPC", "ENOMEM"])
def test_a_refused_reservation_is_a_clear_error_and_leaves_no_descriptor(monkeypatch, code):
    opened = []
    anonymous = _shared_memory._anonymous_file
    monkeypatch.setattr(_shared_memory, "_anonymous_file", lambda: opened.append(anonymous()) or opened[-1])

    def full(fd, offset, size):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(SharedMemoryError, match=r"cannot reserve 1\.0 MiB of shared memory .*"
                                                r"backend='threading'"):
        SharedValues.create([np.zeros(2**17)])
    assert len(opened) == 1 and not is_open(opened[0])


def test_another_reservation_error_is_raised_as_it_is(monkeypatch):
    def broken(fd, offset, size):
        raise OSError(errno.EBADF, "bad file descriptor")

    monkeypatch.setattr(os, "posix_fallocate", broken)
    with pytest.raises(OSError) as caught:
        SharedValues.create([np.zeros(3)])
    assert caught.type is OSError and caught.value.errno == errno.EBADF


def test_without_posix_fallocate_the_file_is_sized_by_ftruncate(monkeypatch):
    monkeypatch.delattr(os, "posix_fallocate")
    values = SharedValues.create([np.zeros(10)])
    try:
        assert os.fstat(values.fd).st_size == 128
    finally:
        values.close()


def test_stale_files_of_dead_callers_are_removed_and_a_live_callers_kept(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)
    folder = tempfile.gettempdir()
    stale = Path(folder) / f"{PREFIX}{dead}-abc.values"
    live = Path(folder) / f"{PREFIX}{os.getpid()}-abc.values"
    unrelated = Path(folder) / f"{PREFIX}notapid.values"
    for path in (stale, live, unrelated):
        path.write_bytes(b"x")
    try:
        removed = remove_stale_shared_files()
        assert str(stale) in removed and not stale.exists()
        assert live.exists() and unrelated.exists()
        assert str(live) not in removed
    finally:
        for path in (stale, live, unrelated):
            path.unlink(missing_ok=True)


def test_a_live_process_and_one_of_another_user_count_as_alive(monkeypatch):
    assert _shared_memory._alive(os.getpid())

    def not_ours(pid, signal):
        raise PermissionError(errno.EPERM, "operation not permitted")

    monkeypatch.setattr(os, "kill", not_ours)
    assert _shared_memory._alive(12345)
