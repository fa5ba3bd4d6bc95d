"""Checkpoints and run folders: the training state in one `.npz`, atomic files, folder locks.

A checkpoint holds the parameters, the step and epoch, the position in the epoch's
sample order (and that order), the random generator's state, the per-step history and
the run's configuration. It is written to a temporary file in the same folder,
flushed to disk with fsync, then renamed over the old one (`atomic_write`), so a
crash at any moment leaves either the previous checkpoint or the new one, never half
of one. It is read with ``allow_pickle=False``: loading a checkpoint never runs code.

A run folder is locked by the process that writes into it (`lock_folder`); fresh
numbered folders (`new_numbered_folder`) and a ``latest`` link to the newest
(`point_link`) let runs accumulate without overwriting one another.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["CHECKPOINT_NAME", "LOCK_NAME", "CheckpointError", "FolderBusyError", "atomic_write",
           "remove_temporaries", "save_npz_atomic", "save_checkpoint", "load_checkpoint",
           "lock_folder", "new_numbered_folder", "point_link"]

CHECKPOINT_NAME = "checkpoint.npz"
LOCK_NAME = ".lock"
_TEMPORARY_SUFFIX = ".tmp"
_PARAM_PREFIX = "param/"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not fit the run."""


class FolderBusyError(RuntimeError):
    """Another process holds the lock on a run folder."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace the file `path` atomically, with the mode a plain new file gets.

    ``write(file)`` fills a temporary file ``.{name}.{random}.tmp`` in the same folder,
    which is then flushed and fsynced, renamed over `path`, and the folder fsynced: a
    crash at any moment leaves either the old file or the complete new one (and at
    worst an orphan temporary file, see `remove_temporaries`). The file is created with
    mode 0o666 less the process's umask, like any file ``open(path, "w")`` creates.

    Parameters
    ----------
    path : path-like
        The file to write; its folder must exist.
    write : callable
        Called once with the temporary file, open for binary writing.

    Returns
    -------
    Path
        `path`, which now holds the complete file.

    Raises
    ------
    OSError
        If the folder is missing or not writable; the temporary file is removed.
    """
    path = Path(path)
    tmp, file = _create_temporary(path)
    try:
        with file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def remove_temporaries(directory: str | os.PathLike, names) -> list[Path]:
    """Delete the temporary files `atomic_write` left for `names` in `directory`.

    Only a killed writer leaves them; call this while no other process writes into
    `directory`. Returns the paths removed.
    """
    removed = []
    for name in names:
        for orphan in Path(directory).glob(f".{name}.*{_TEMPORARY_SUFFIX}"):
            orphan.unlink(missing_ok=True)
            removed.append(orphan)
    return removed


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` to `path` as an uncompressed `.npz`, with `atomic_write`.

    Returns
    -------
    Path
        `path`, which now holds the complete file.
    """
    return atomic_write(path, lambda file: np.savez(file, **arrays))


def save_checkpoint(directory: str | os.PathLike, params: dict[str, np.ndarray],
                    state: dict[str, Any]) -> Path:
    """Write ``directory/checkpoint.npz`` atomically.

    Parameters
    ----------
    params : dict of str to ndarray
        The net's parameters after the last completed step.
    state : dict
        Everything else: integers, lists, dicts and 1-D integer/float arrays; arrays
        are stored as such, the rest as one JSON document.
    """
    arrays = {_PARAM_PREFIX + name: value for name, value in params.items()}
    plain = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays["state/" + key] = value
        else:
            plain[key] = value
    arrays["state.json"] = np.array(json.dumps(plain))
    return save_npz_atomic(Path(directory) / CHECKPOINT_NAME, arrays)


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read ``directory/checkpoint.npz`` back as ``(params, state)``.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated, corrupted, holds pickled objects, or lacks
        the state document. The message names the file.
    """
    path = Path(directory) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            params = {k[len(_PARAM_PREFIX):]: data[k] for k in data.files if k.startswith(_PARAM_PREFIX)}
            state = json.loads(str(data["state.json"]))
            state.update({k[len("state/"):]: data[k] for k in data.files if k.startswith("state/")})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                              "it was left untouched") from exc
    if not params:
        raise CheckpointError(f"checkpoint {path} holds no parameters")
    return params, state


def lock_folder(directory: str | os.PathLike) -> int:
    """Take the exclusive lock of the run folder `directory`, without waiting.

    The lock is an ``flock`` on ``directory/.lock`` (created if missing, holding the
    owner's pid): the kernel drops it when the process ends, however it ends, so a
    killed run never leaves a stale lock. POSIX only.

    Returns
    -------
    int
        The lock file's descriptor; ``os.close`` it to release the lock.

    Raises
    ------
    FolderBusyError
        If another process holds the lock (the message names the folder and that pid).
    OSError
        If the lock file cannot be created (e.g. the folder is not writable).
    """
    import fcntl   # POSIX; imported here so that the rest of the module works everywhere

    path = Path(directory) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise FolderBusyError(f"{directory} is in use by another run (pid {owner}); wait for it "
                              "to end, or choose another folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def new_numbered_folder(parent: str | os.PathLike, prefix: str = "run-") -> Path:
    """Create and return ``parent/{prefix}N``, N one more than the largest there (from 1).

    Creation is exclusive: two processes calling this at once get different folders.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(prefix) + r"([0-9]+)")
    taken = [int(m.group(1)) for p in parent.iterdir() if (m := pattern.fullmatch(p.name))]
    number = max(taken, default=0) + 1
    while True:
        folder = parent / f"{prefix}{number}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
            continue
        return folder


def point_link(link: str | os.PathLike, target: str | os.PathLike) -> bool:
    """Make `link` a symbolic link to the sibling `target`, replacing an older link atomically.

    Returns False, touching nothing, if `link` exists and is not a symbolic link (a
    real folder or file: never replaced).
    """
    link, target = Path(link), Path(target)
    if link.exists() and not link.is_symlink():
        return False
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(6)}{_TEMPORARY_SUFFIX}")
    os.symlink(target.name, tmp)   # relative: the pair can be moved together
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _create_temporary(path: Path) -> tuple[Path, BinaryIO]:
    # os.open with 0o666 lets the umask decide the mode (tempfile.mkstemp would give 0o600,
    # which the rename would then carry to the final file).
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMPORARY_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
        except FileExistsError:
            continue
        return tmp, os.fdopen(fd, "wb")
    raise FileExistsError(f"no free temporary name next to {path}")


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
