"""Checkpoints: the whole training state in one `.npz`, written atomically, read without pickle.

A checkpoint holds the parameters, the step and epoch, the position in the epoch's
sample order (and that order), the random generator's state, the per-step history and
the run's configuration. It is written to a temporary file in the same folder,
flushed to disk with fsync, then renamed over the old one, so a crash at any moment
leaves either the previous checkpoint or the new one, never half of one. It is read
with ``allow_pickle=False``: loading a checkpoint never runs code.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT_NAME", "CheckpointError", "save_npz_atomic", "save_checkpoint",
           "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.npz"
_PARAM_PREFIX = "param/"


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted or does not fit the run."""


def save_npz_atomic(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write `arrays` to `path` as an uncompressed `.npz`: temp file, fsync, rename.

    Returns
    -------
    Path
        `path`, which now holds the complete file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


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
