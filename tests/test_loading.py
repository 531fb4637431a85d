"""load_train_csv / load_test_csv: good files load, every bad one gets a one-line error naming the file."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import make_digits, write_test_csv, write_train_csv
from mnist_helpers import load_test_csv, load_train_csv


def test_train_csv_loads_as_uint8_pixels_and_int64_labels(data_dir):
    X, y = load_train_csv(data_dir / "train.csv")
    X_expected, y_expected = make_digits(60)
    assert X.shape == (60, 784) and X.dtype == np.uint8 and X.flags.c_contiguous
    assert y.shape == (60,) and y.dtype == np.int64
    np.testing.assert_array_equal(X, X_expected)
    np.testing.assert_array_equal(y, y_expected)


def test_test_csv_loads_as_uint8_pixels(data_dir):
    X = load_test_csv(data_dir / "test.csv")
    assert X.shape == (20, 784) and X.dtype == np.uint8
    np.testing.assert_array_equal(X, make_digits(20, seed=1)[0])


def test_gzipped_csvs_load(tmp_path):
    X, y = make_digits(15)
    write_train_csv(tmp_path / "train.csv.gz", X, y)
    write_test_csv(tmp_path / "test.csv.gz", X)
    with gzip.open(tmp_path / "train.csv.gz") as file:
        assert file.read(5) == b"label"  # really compressed, really our layout
    np.testing.assert_array_equal(load_train_csv(tmp_path / "train.csv.gz")[1], y)
    np.testing.assert_array_equal(load_test_csv(tmp_path / "test.csv.gz"), X)


def test_utf8_bom_crlf_and_trailing_blank_line_are_fine(data_dir):
    path = data_dir / "train.csv"
    text = path.read_text()
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode() + b"\r\n")
    X, y = load_train_csv(path)
    assert X.shape == (60, 784)
    np.testing.assert_array_equal(y, make_digits(60)[1])


def test_max_rows_reads_only_the_first_rows(data_dir):
    X, y = load_train_csv(data_dir / "train.csv", max_rows=25)
    assert X.shape == (25, 784) and list(y[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert load_test_csv(data_dir / "test.csv", max_rows=7).shape == (7, 784)


def test_missing_file_says_where_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_train_csv(tmp_path / "train.csv")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'train.csv'}: no such file. To fix it, get them with `make data`")
    assert "kaggle competitions download" in message and "point DATA_DIR at the folder that holds them" in message
    assert "\n" not in message


# --- Each malformed file: (how to damage a good train.csv, loader, words the error must contain) ---------


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _set_cell(path: Path, row: int, column: int, value: str) -> None:
    lines = _lines(path)
    fields = lines[row].split(",")
    fields[column] = value
    lines[row] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def _drop_column(path: Path, column: int) -> None:
    rows = [line.split(",") for line in _lines(path)]
    path.write_text("\n".join(",".join(r[:column] + r[column + 1:]) for r in rows) + "\n")


def _swap_columns(path: Path, a: int, b: int) -> None:
    rows = [line.split(",") for line in _lines(path)]
    for r in rows:
        r[a], r[b] = r[b], r[a]
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")


def _zip_it(path: Path) -> None:
    text = path.read_text()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train.csv", text)


BAD_TRAIN_FILES = {
    "empty file": (lambda p: p.write_text(""), ["empty"]),
    "header only": (lambda p: p.write_text(_lines(p)[0] + "\n"), ["no data rows"]),
    "test.csv given as train": (lambda p: _drop_column(p, 0), ["no 'label' column", "looks like test.csv"]),
    "missing pixel column": (lambda p: _drop_column(p, 6), ["'pixel5' is missing"]),
    "shuffled columns": (lambda p: _swap_columns(p, 3, 4), ["column 4 is 'pixel3'", "expected 'pixel2'"]),
    "duplicated column": (lambda p: p.write_text(_lines(p)[0].replace("pixel7,", "pixel6,") + "\n"),
                          ["column 'pixel6' appears twice"]),
    "empty cell": (lambda p: _set_cell(p, 3, 11, ""), ["row 3 (line 4)", "column 'pixel10'", "the cell is empty"]),
    "non-numeric cell": (lambda p: _set_cell(p, 5, 1, "abc"), ["row 5", "column 'pixel0'", "'abc' is not a number"]),
    "pixel 256": (lambda p: _set_cell(p, 60, 784, "256"), ["row 60", "column 'pixel783'", "out of range 0-255"]),
    "pixel -1": (lambda p: _set_cell(p, 2, 100, "-1"), ["row 2", "column 'pixel99'", "'-1' is out of range 0-255"]),
    "pixel 0.5": (lambda p: _set_cell(p, 4, 1, "0.5"), ["row 4", "column 'pixel0'", "'0.5' is not an integer"]),
    "fullwidth digit": (lambda p: _set_cell(p, 4, 2, "\uff11"), ["row 4", "column 'pixel1'", "is not a number"]),
    "label 10": (lambda p: _set_cell(p, 7, 0, "10"), ["row 7 (line 8)", "column 'label'", "'10' is out of range 0-9"]),
    "label 300": (lambda p: _set_cell(p, 8, 0, "300"), ["row 8", "column 'label'", "out of range 0-9"]),
    # What an unchecked cast to uint8 (pandas 2.2) turns into 0 or 255, and what a cast to int16 or int32 would:
    "label 256": (lambda p: _set_cell(p, 12, 0, "256"), ["row 12", "column 'label'", "'256' is out of range 0-9"]),
    "pixel 65536": (lambda p: _set_cell(p, 3, 5, "65536"), ["row 3", "column 'pixel4'", "'65536' is out of range"]),
    "pixel 2**32": (lambda p: _set_cell(p, 3, 6, "4294967296"),
                    ["row 3", "column 'pixel5'", "'4294967296' is out of range"]),
    "pixel 2**64": (lambda p: _set_cell(p, 3, 7, "18446744073709551616"),
                    ["row 3", "column 'pixel6'", "is out of range"]),
    "row with an extra field": (lambda p: _set_cell(p, 9, 784, "1,2"), ["row 9", "786 fields, expected 785"]),
    "every row with an extra field": (lambda p: p.write_text("\n".join(
        [_lines(p)[0]] + [line + ",0" for line in _lines(p)[1:]]) + "\n"), ["row 1", "786 fields, expected 785"]),
    "row with a missing field": (lambda p: p.write_text("\n".join(
        line.rsplit(",", 1)[0] if i == 10 else line for i, line in enumerate(_lines(p))) + "\n"),
        ["row 10", "784 fields, expected 785"]),
    "binary file": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 50), ["not a readable CSV"]),
    "text that is not CSV": (lambda p: p.write_text("Hello,\nthis is a note, not data\n"),
                             ["not a train.csv header", "right file"]),
    "zip archive": (_zip_it, ["zip archive", "unzip"]),
}


@pytest.mark.parametrize("case", BAD_TRAIN_FILES)
def test_bad_train_csv_gets_a_one_line_error(data_dir, case):
    damage, words = BAD_TRAIN_FILES[case]
    path = data_dir / "train.csv"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(ValueError) as error:
        load_train_csv(path)
    message = str(error.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message
    assert "\n" not in message, message
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)
    assert path.read_bytes() == before  # reading never changes the file


def test_train_csv_given_as_test_is_named(data_dir):
    path = data_dir / "train.csv"
    with pytest.raises(ValueError) as error:
        load_test_csv(path)
    assert str(error.value) == f"{path}: has a 'label' column, so it looks like train.csv; pass test.csv here."


def test_bad_test_csv_cell_names_row_and_column(data_dir):
    path = data_dir / "test.csv"
    _set_cell(path, 20, 0, "x")
    with pytest.raises(ValueError, match=r"test.csv: row 20 \(line 21\), column 'pixel0': 'x' is not a number"):
        load_test_csv(path)


def test_a_bad_row_past_max_rows_is_not_read(data_dir):
    path = data_dir / "train.csv"
    _set_cell(path, 50, 3, "oops")
    assert load_train_csv(path, max_rows=40)[0].shape == (40, 784)
    with pytest.raises(ValueError, match="row 50"):
        load_train_csv(path)


def test_loaded_arrays_are_writable(data_dir):
    X, y = load_train_csv(data_dir / "train.csv")
    assert X.flags.writeable and y.flags.writeable and load_test_csv(data_dir / "test.csv").flags.writeable
