"""``python -m engine.cli.data``: write the teaching text's CSV files from the embedded split."""
import argparse
import sys

from engine.data._data import BOOK_TEST_SIZE, BOOK_TRAIN_SIZE, N_PIXELS, materialise_book_csvs

__all__ = ["main"]


def main(argv=None) -> int:
    """``python -m engine.cli.data``: write the text's CSV files from the embedded split."""
    parser = argparse.ArgumentParser(
        prog="python -m engine.cli.data",
        description="Write the first N train / test images of the embedded MNIST split in the "
                    f"teaching text's CSV format (label, then {N_PIXELS} pixels 0-255).")
    parser.add_argument("--out", default="data", help="folder to write into (default: data)")
    parser.add_argument("--train-size", type=int, default=BOOK_TRAIN_SIZE,
                        help=f"train images (default: {BOOK_TRAIN_SIZE})")
    parser.add_argument("--test-size", type=int, default=BOOK_TEST_SIZE,
                        help=f"test images (default: {BOOK_TEST_SIZE})")
    args = parser.parse_args(argv)
    try:
        paths = materialise_book_csvs(args.out, args.train_size, args.test_size)
    except (ValueError, OSError) as exc:
        print(f"python -m engine.cli.data: error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
