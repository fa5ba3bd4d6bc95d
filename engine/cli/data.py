"""``engine-data`` (also ``python -m engine.cli.data``): write the teaching text's CSV files
from the embedded split."""
import argparse
import sys

from engine.cli._flags import default_text, version
from engine.cli._setup import EXIT_BAD_INPUT
from engine.data._data import BOOK_TEST_SIZE, BOOK_TRAIN_SIZE, N_PIXELS, materialise_book_csvs

__all__ = ["main"]


def main(argv=None) -> int:
    """``engine-data``: write the text's CSV files from the embedded split; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="engine-data",
        description="Write the first N train / test images of the embedded MNIST split in the "
                    f"teaching text's CSV format (label, then {N_PIXELS} pixels 0-255), as "
                    "mnist_train_N.csv and mnist_test_N.csv.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--out", metavar="DIR", default="data",
                        help="folder to write into" + default_text("data"))
    parser.add_argument("--train-size", metavar="N", type=int, default=BOOK_TRAIN_SIZE,
                        help="train images" + default_text(BOOK_TRAIN_SIZE))
    parser.add_argument("--test-size", metavar="N", type=int, default=BOOK_TEST_SIZE,
                        help="test images" + default_text(BOOK_TEST_SIZE))
    args = parser.parse_args(argv)
    try:
        paths = materialise_book_csvs(args.out, args.train_size, args.test_size)
    except (ValueError, OSError) as exc:
        message = str(exc).replace("`train_size`", "--train-size").replace("`test_size`", "--test-size")
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
