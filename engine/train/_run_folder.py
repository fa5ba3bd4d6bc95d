"""engine-train's run folders: where a run writes, and the promise that it replaces no other run.

Without ``--out`` a run gets a new numbered folder ``runs/run-N`` (`new_numbered_folder`)
and ``runs/latest`` points to it (`point_link`). An explicit folder that holds a run is
refused, unless the run is resumed there or ``--force`` replaces it. The process that
writes into a folder holds its lock (`lock_folder`) until it ends. `claim_new_folder` and
`claim_folder` do all of this before any output is written; since engine-train is their
one user, their errors (`FolderError`) name its flags.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, remove_temporaries,
                          temporary_sibling)

__all__ = ["OUTPUTS", "RUNS_FOLDER", "LATEST_LINK", "LOCK_NAME", "FolderError", "FolderBusyError",
           "ClaimedFolder", "claim_new_folder", "claim_folder", "lock_folder",
           "new_numbered_folder", "point_link"]

# What a run writes into its folder, in the order it first writes them.
OUTPUTS = (CHECKPOINT_NAME, "params.npz", "metrics.json", "training.png")
RUNS_FOLDER = Path("runs")          # without --out: runs/run-N, and runs/latest -> run-N
LATEST_LINK = RUNS_FOLDER / "latest"
LOCK_NAME = ".lock"


class FolderError(Exception):
    """An output folder the run cannot use: in the way, not writable, or holding another run."""


class FolderBusyError(RuntimeError):
    """Another process holds the lock on a run folder."""


@dataclass(frozen=True)
class ClaimedFolder:
    """A run folder this process created (where missing) and locked; `release` frees it."""

    path: Path
    lock: int                      # the lock file's descriptor
    latest: bool | None = None     # a numbered folder: whether the latest link now points to it
    replaced: str | None = None    # with force: the run deleted from the folder, in words

    def release(self) -> None:
        os.close(self.lock)


def claim_new_folder(runs: Path = RUNS_FOLDER) -> ClaimedFolder:
    """Create and lock ``runs/run-N`` (N one past the largest there) and point
    ``runs/latest`` to it, unless ``runs/latest`` is not a link (then it is left alone).

    Raises
    ------
    FolderError
        If the folder or the link cannot be created.
    """
    try:
        out = new_numbered_folder(runs)
        latest = point_link(runs / LATEST_LINK.name, out)
    except OSError as exc:
        raise FolderError(f"cannot create a run folder in {runs} ({exc}); "
                          "choose one with --out") from None
    return ClaimedFolder(out, _lock(out, "--out"), latest=latest)


def claim_folder(out: Path, *, force: bool = False,
                 resumed_step: int | None = None) -> ClaimedFolder:
    """Create `out` where missing and lock it, for a fresh run or for the resumed one.

    The temporary files of writes that a killed run left are removed. A fresh run
    (`resumed_step` None) refuses a folder that holds a run, unless `force`: then that
    run's outputs are deleted. A resumed run needs the checkpoint in `out` still at
    `resumed_step` (another process may have moved it on before the lock was taken).

    Raises
    ------
    FolderError
        If `out` is not a folder, cannot be created or written, or holds a run.
    FolderBusyError
        If another process holds the folder's lock.
    CheckpointError
        If the checkpoint being resumed became unreadable.
    """
    flag = "--out" if resumed_step is None else "--resume"
    _create(out, flag)
    lock = _lock(out, flag)
    try:
        remove_temporaries(out, OUTPUTS)
        replaced = None
        if resumed_step is None:
            replaced = _refuse_to_replace(out, force)
        elif load_checkpoint(out)[1]["step"] != resumed_step:
            raise FolderError(f"the checkpoint in {out} changed while this run started; "
                              "run the command again")
    except BaseException:
        os.close(lock)
        raise
    return ClaimedFolder(out, lock, replaced=replaced)


def _create(out: Path, flag: str) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FolderError(f"{flag} {out} exists and is not a folder") from None
    except NotADirectoryError:
        raise FolderError(f"{flag} {out}: part of that path is a file, not a folder") from None
    except OSError as exc:
        raise FolderError(f"{flag} {out}: cannot create the folder ({exc.strerror})") from None


def _lock(out: Path, flag: str) -> int:
    try:
        return lock_folder(out)
    except PermissionError as exc:
        raise FolderError(f"{flag} {out} is not writable ({exc.strerror})") from None
    except OSError as exc:
        raise FolderError(f"{flag} {out}: cannot write there ({exc.strerror})") from None


def _refuse_to_replace(out: Path, force: bool) -> str | None:
    """Refuse a fresh run into a folder holding a run, unless `force`: then clear it and
    return what it held, in words."""
    held = _held_run(out)
    if held is None:
        return None
    if not force:
        raise FolderError(f"{out} holds {held}; " + (
            f"continue it with --resume {out}, " if held.startswith("an unfinished") else "")
            + "choose another --out, or omit --out for a new "
            f"{RUNS_FOLDER}/run-N, or pass --force to replace it")
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)
    return held


def _held_run(out: Path) -> str | None:
    """What run `out` holds, in words, or None."""
    if (out / CHECKPOINT_NAME).exists():
        try:
            _, saved = load_checkpoint(out)
            step, steps = saved["step"], saved["config"]["steps"]
        except (CheckpointError, KeyError, TypeError) as exc:
            return f"a checkpoint that cannot be read ({type(exc).__name__}: {exc})"
        if step < steps:
            return f"an unfinished run (step {step} of {steps})"
        return "a finished run"
    outputs = [name for name in OUTPUTS[1:] if (out / name).exists()]
    return f"a finished run's {', '.join(outputs)}" if outputs else None


# -- the building blocks: a lock, numbered folders, a link to the newest --------------------------

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
    tmp = temporary_sibling(link)
    os.symlink(target.name, tmp)   # relative: the pair can be moved together
    try:
        os.replace(tmp, link)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    return True
