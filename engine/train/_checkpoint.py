"""Checkpoints and atomic files: the training state in one `.npz`, written so a crash never halves it.

A checkpoint holds the parameters, the step and epoch, the position in the epoch's
sample order (and that order), the random generator's state, the per-step history and
the run's configuration. It is written to a temporary file in the same folder,
flushed to disk with fsync, then renamed over the old one (`atomic_write`), so a
crash at any moment leaves either the previous checkpoint or the new one, never half
of one. It is read with ``allow_pickle=False``: loading a checkpoint never runs code.
The run folders that hold checkpoints (locks, numbered folders, the ``latest`` link)
are `engine._run_folder`'s.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "atomic_write", "temporary_sibling",
           "remove_temporaries", "save_npz_atomic", "write_json_atomic", "save_checkpoint",
           "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.npz"
_TEMPORARY_SUFFIX = ".tmp"
_PARAM_PREFIX = "param/"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not fit the run."""


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


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh name ``.{name}.{random}.tmp`` beside `path`: the form `remove_temporaries` removes."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TEMPORARY_SUFFIX}")


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


def write_json_atomic(path: str | os.PathLike, document: Any) -> Path:
    """Write `document` to `path` as indented JSON, with `atomic_write`.

    Returns
    -------
    Path
        `path`, which now holds the complete file.

    Raises
    ------
    TypeError
        If `document` holds something JSON cannot represent (nothing is written).
    """
    text = json.dumps(document, indent=1).encode()
    return atomic_write(path, lambda file: file.write(text))


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


def _create_temporary(path: Path) -> tuple[Path, BinaryIO]:
    # os.open with 0o666 lets the umask decide the mode (tempfile.mkstemp would give 0o600,
    # which the rename would then carry to the final file).
    for _ in range(100):
        tmp = temporary_sibling(path)
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
