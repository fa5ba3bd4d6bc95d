"""The values of `x`'s arrays in shared memory: one RAM-backed file per resident gradient,
written by the caller, mapped read-only by every worker process, unlinked as soon as all have
mapped it; files of callers that died before unlinking theirs are swept by the next pool."""
from __future__ import annotations

import glob
import mmap
import os
import re
import tempfile

import numpy as np

__all__ = ["SharedValues", "remove_stale_shared_files"]

_SHM_PREFIX = "numgrad-"


class SharedValues:
    """A RAM-backed file holding the current values of `x`'s arrays, mapped by every worker."""

    def __init__(self, path: str, mapping: mmap.mmap, layout: list, views: list[np.ndarray]):
        self.path, self._mapping, self.layout, self.views = path, mapping, layout, views

    @classmethod
    def create(cls, arrays: list[np.ndarray]) -> SharedValues:
        layout, size = [], 0
        for array in arrays:
            layout.append((size, array.shape, array.dtype.str))
            size += -(-array.nbytes // 64) * 64   # each array 64-byte aligned
        folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        fd, path = tempfile.mkstemp(prefix=f"{_SHM_PREFIX}{os.getpid()}-", suffix=".values", dir=folder)
        try:
            os.ftruncate(fd, max(size, 1))
            mapping = mmap.mmap(fd, max(size, 1))
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        views = [np.ndarray(shape, dtype=np.dtype(dtype), buffer=mapping, offset=offset)
                 for offset, shape, dtype in layout]
        return cls(path, mapping, layout, views)

    @property
    def spec(self) -> tuple[str, list]:
        return self.path, self.layout

    def write(self, arrays: list[np.ndarray]) -> None:
        for view, array in zip(self.views, arrays):
            view[...] = array

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        self.unlink()
        self.views = []
        try:
            self._mapping.close()
        except BufferError:   # a view is still referenced somewhere; the OS frees it at exit
            pass


def remove_stale_shared_files() -> list[str]:
    """Remove values files left by callers that died before unlinking them; return their paths."""
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
