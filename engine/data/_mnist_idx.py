"""MNIST's own IDX files (``train-images-idx3-ubyte`` and the rest, plain or gzipped), as the
book's loader downloads them, read into `engine.Dataset`s."""
from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np

from ._data import N_CLASSES, DataError, Dataset, read_maybe_gzip

__all__ = ["read_idx_images", "read_idx_labels", "load_mnist_idx", "MNIST_IDX_FILES",
           "find_mnist_idx", "load_mnist_dir"]

_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 2051, 2049
# The four files of the MNIST distribution, as the book's loader downloads them.
MNIST_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx_images(path) -> np.ndarray:
    """Read an MNIST idx3-ubyte image file, plain or gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        E.g. ``train-images-idx3-ubyte.gz``; gzip is detected by its magic bytes.

    Returns
    -------
    ndarray, shape (n, rows * cols), float64
        One flattened image per row, scaled to [0, 1].

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    DataError
        If the magic number is not 2051 or the length disagrees with the header.
    """
    (n, rows, cols), body = _read_idx(path, _IDX_IMAGES_MAGIC, n_dims=3)
    return np.frombuffer(body, dtype=np.uint8).reshape(n, rows * cols) / 255.0


def read_idx_labels(path) -> np.ndarray:
    """Read an MNIST idx1-ubyte label file, plain or gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        E.g. ``train-labels-idx1-ubyte.gz``; gzip is detected by its magic bytes.

    Returns
    -------
    ndarray, shape (n,), int64
        Labels 0-9.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    DataError
        If the magic number is not 2049, the length disagrees with the header,
        or a label is outside 0-9.
    """
    _, body = _read_idx(path, _IDX_LABELS_MAGIC, n_dims=1)
    labels = np.frombuffer(body, dtype=np.uint8).astype(np.int64)
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise DataError(f"{path}: label {labels[bad[0]]} at index {bad[0]} is outside 0-9")
    return labels


def load_mnist_idx(images_path, labels_path) -> Dataset:
    """Load an MNIST pair of IDX files (images, labels) as a Dataset.

    Parameters
    ----------
    images_path, labels_path : str or os.PathLike
        The idx3-ubyte and idx1-ubyte files, plain or gzip-compressed.

    Returns
    -------
    Dataset
        images shape (n, rows * cols) float64 in [0, 1]; labels shape (n,) int64.

    Raises
    ------
    FileNotFoundError
        If either file does not exist.
    DataError
        If either file is malformed, or their counts differ.
    """
    images, labels = read_idx_images(images_path), read_idx_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                        f"{len(labels)} labels")
    return Dataset(images, labels)


def find_mnist_idx(directory) -> dict[str, Path]:
    """Locate the four MNIST IDX files in `directory`, each plain or with ``.gz``.

    Parameters
    ----------
    directory : str or os.PathLike
        A folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each may end in
        ``.gz``; a plain file is preferred when both exist).

    Returns
    -------
    dict of str to Path
        The keys of `MNIST_IDX_FILES` (``"train_images"``...), each the file found.

    Raises
    ------
    FileNotFoundError
        If `directory` is not a folder, or a file is missing; the message names the
        first missing file, both of its accepted names.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    found = {}
    for key, name in MNIST_IDX_FILES.items():
        candidates = [directory / name, directory / f"{name}.gz"]
        found[key] = next((path for path in candidates if path.is_file()), None)
        if found[key] is None:
            raise FileNotFoundError(f"{directory} has no {name} (nor {name}.gz), one of the "
                                    f"four MNIST files: {', '.join(MNIST_IDX_FILES.values())}")
    return found


def load_mnist_dir(directory) -> tuple[Dataset, Dataset]:
    """Load MNIST's train and test sets from the four IDX files in `directory`.

    Parameters
    ----------
    directory : str or os.PathLike
        See `find_mnist_idx`.

    Returns
    -------
    train, test : Dataset
        The full sets in file order (60,000 and 10,000 images for MNIST).

    Raises
    ------
    FileNotFoundError
        If a file is missing (named).
    DataError
        If a file is malformed, or a pair's counts differ (named).
    """
    files = find_mnist_idx(directory)
    return (load_mnist_idx(files["train_images"], files["train_labels"]),
            load_mnist_idx(files["test_images"], files["test_labels"]))


def _read_idx(path, magic: int, n_dims: int):
    """Check an IDX header against `magic` and the file length; return (dims, data)."""
    raw = read_maybe_gzip(path)
    header_len = 4 * (1 + n_dims)
    found = int.from_bytes(raw[:4], "big")
    if len(raw) >= 4 and found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic}")
    if len(raw) < header_len:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header_len} bytes)")
    dims = struct.unpack(f">{n_dims}I", raw[4:header_len])
    expected = math.prod(dims)
    body = raw[header_len:]
    if len(body) != expected:
        state = "truncated" if len(body) < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: header dims {tuple(dims)} need {expected} data "
                        f"bytes, file has {len(body)}")
    return dims, body
