"""Small MNIST distributions written by the tests: the four IDX files, plain or gzipped."""
import gzip
import struct

import numpy as np

from engine.data._mnist_idx import MNIST_IDX_FILES


def idx_images(pixels) -> bytes:
    """IDX3 bytes of uint8 `pixels`, shape (n, rows, cols)."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    return struct.pack(">IIII", 2051, *pixels.shape) + pixels.tobytes()


def idx_labels(labels) -> bytes:
    """IDX1 bytes of `labels` 0-9."""
    return struct.pack(">II", 2049, len(labels)) + bytes(int(v) for v in labels)


def write_mnist_dir(folder, n_train=30, n_test=10, gzipped=(), seed=0):
    """Write the four files into `folder`, gzipping those whose keys are in `gzipped`.

    Returns ``{"train": (pixels, labels), "test": (pixels, labels)}``, pixels uint8
    (n, 28, 28), labels int.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in [("train", n_train), ("test", n_test)]:
        pixels = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n)
        for kind, raw in [("images", idx_images(pixels)), ("labels", idx_labels(labels))]:
            key = f"{split}_{kind}"
            name = MNIST_IDX_FILES[key] + (".gz" if key in gzipped else "")
            (folder / name).write_bytes(gzip.compress(raw) if key in gzipped else raw)
        written[split] = (pixels, labels)
    return written
