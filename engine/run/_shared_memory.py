"""The values of `x`'s arrays in shared memory, written by the caller, mapped read-only by every worker.

On Linux the memory is an anonymous file (``memfd_create``): it has no name, so nothing
can be left behind in ``/dev/shm`` whatever happens to the caller, and it is not bound
by the size of ``/dev/shm`` (64 MB in a default Docker container). Its pages are
reserved before anything is written (``posix_fallocate``), so too little memory is a
clear `SharedMemoryError` up front, never a SIGBUS in the middle of a write.
Elsewhere a file in ``/dev/shm`` (or the temporary folder) plays the same part; it is
unlinked as soon as it is open, and files of callers that died in between are swept by
the next pool. Workers receive the open file descriptor over their socket.
"""
from __future__ import annotations

import errno
import glob
import mmap
import os
import re
import tempfile

import numpy as np

__all__ = ["SharedValues", "SharedMemoryError", "remove_stale_shared_files"]

_SHM_PREFIX = "numgrad-"


class SharedMemoryError(MemoryError):
    """Not enough shared memory for `x`'s values."""


class SharedValues:
    """Shared memory holding the current values of `x`'s arrays, mapped by every worker."""

    def __init__(self, fd: int, mapping: mmap.mmap, layout: list, views: list[np.ndarray]):
        self.fd, self._mapping, self.layout, self.views = fd, mapping, layout, views

    @classmethod
    def create(cls, arrays: list[np.ndarray]) -> SharedValues:
        """Reserve and map room for `arrays` (each 64-byte aligned).

        Raises
        ------
        SharedMemoryError
            If the system cannot reserve that much shared memory; nothing is left behind.
        """
        layout, size = [], 0
        for array in arrays:
            layout.append((size, array.shape, array.dtype.str))
            size += -(-array.nbytes // 64) * 64
        size = max(size, 1)
        fd = _anonymous_file()
        try:
            _reserve(fd, size)
            mapping = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        views = [np.ndarray(shape, dtype=np.dtype(dtype), buffer=mapping, offset=offset)
                 for offset, shape, dtype in layout]
        return cls(fd, mapping, layout, views)

    def write(self, arrays: list[np.ndarray]) -> None:
        for view, array in zip(self.views, arrays):
            view[...] = array

    def close(self) -> None:
        self.views = []
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            self._mapping.close()
        except BufferError:   # a view is still referenced somewhere; the OS frees it at exit
            pass


def _anonymous_file() -> int:
    """An open file with no name left in the file system."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("numgrad-values", os.MFD_CLOEXEC)
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix=f"{_SHM_PREFIX}{os.getpid()}-", suffix=".values", dir=folder)
    os.unlink(path)
    return fd


def _reserve(fd: int, size: int) -> None:
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:
            os.ftruncate(fd, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM):
            raise SharedMemoryError(
                f"cannot reserve {size / 2**20:.1f} MiB of shared memory for the values of `x` "
                f"({exc.strerror}): free memory, use fewer or smaller arrays, or "
                "backend='threading' (no shared memory)") from exc
        raise


def remove_stale_shared_files() -> list[str]:
    """Remove values files of callers that died between creating and unlinking them; their paths."""
    removed = []
    for folder in ("/dev/shm", tempfile.gettempdir()):
        for path in glob.glob(os.path.join(folder, f"{_SHM_PREFIX}*")):
            match = re.match(rf"{_SHM_PREFIX}(\d+)-", os.path.basename(path))
            if match and not _alive(int(match.group(1))):
                try:
                    os.unlink(path)
                    removed.append(path)
                except OSError:
                    pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        return True
    return True
