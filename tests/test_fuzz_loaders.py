"""Property-based fuzzing of load_train_csv / load_test_csv: any bytes give valid arrays or one clear ValueError.

Never another exception type, never a traceback-sized message, never a hang (a timer fails the example).
"""

from __future__ import annotations

import gzip
import math
import re
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mnist_helpers import N_CLASSES, PIXEL_COLUMNS, TRAIN_COLUMNS, load_test_csv, load_train_csv

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SECONDS_PER_EXAMPLE = 10


@contextmanager
def no_hang(seconds: int = SECONDS_PER_EXAMPLE):
    """Fail, rather than wait forever, if the body takes longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"the loader took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def valid_csv(rows: int, train: bool, seed: int) -> str:
    """A small, valid CSV in the competition's layout."""
    rng = np.random.default_rng(seed)
    columns = TRAIN_COLUMNS if train else PIXEL_COLUMNS
    values = rng.integers(0, 256, (rows, len(columns)))
    if train:
        values[:, 0] %= N_CLASSES
    return "\n".join([",".join(columns), *(",".join(map(str, row)) for row in values)]) + "\n"


# Pieces that break CSVs in the ways people and tools do.
NASTY = st.sampled_from(["", ",", ",,", "\n", "\r\n", '"', '""', "'", " ", "\t", "-1", "256", "1e3", "0.5", "nan",
                         "NaN", "inf", "0x10", "  7", "7  ", "\x00", "\ufeff", "é", "label", "pixel0", "9" * 40,
                         "1,2,3", "#", "\\", ";"])


@st.composite
def mutated_csv(draw, train: bool) -> bytes:
    """A valid CSV with a few random edits: text replaced, inserted or deleted, or the file cut short."""
    text = valid_csv(draw(st.integers(1, 3)), train, draw(st.integers(0, 10**6)))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = min(len(text), start + draw(st.integers(0, 12)))
        piece = draw(st.one_of(NASTY, st.text(max_size=6)))
        text = text[:start] + piece + text[end:]
    data = text.encode("utf-8", errors="surrogatepass")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 9)) == 0:
        data += draw(st.binary(min_size=1, max_size=8))  # bytes that may not be UTF-8 at all
    return data


DIGITS = re.compile(r"[0-9]+")


def independent_verdict(data: bytes, columns: list[str]) -> tuple[str, object]:
    """Judge a file without pandas or the loader: ("valid", array), ("invalid", first bad row or None), or ("unclear",).

    Deliberately strict and simple (split on newlines and commas, `int()` on pure digits, `float()` to tell a number
    from a non-number): a file it calls valid must load to exactly its array; one it calls invalid must be refused,
    naming the row when it names one. What it cannot settle (quotes, whitespace-only lines, "7.0") is "unclear".
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid", None  # not text: refused, at whatever line
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    if any(c in text for c in '"\r\x00'):  # quoting, old Mac line ends, NUL: rules this oracle does not copy
        return ("unclear",)
    lines = text.split("\n")
    header = lines[0].split(",")
    if header != columns:
        return ("unclear",) if [h.strip() for h in header] == columns else ("invalid", None)
    rows, high = [], [N_CLASSES - 1 if name == "label" else 255 for name in columns]
    for line in lines[1:]:
        if line == "":
            continue  # a blank line, skipped as pandas does
        if line.strip() == "":
            return ("unclear",)
        cells = line.split(",")
        if len(cells) != len(columns):
            return "invalid", len(rows) + 1
        values = []
        for cell, top in zip(cells, high):
            if DIGITS.fullmatch(cell):
                if int(cell) > top:
                    return "invalid", len(rows) + 1
                values.append(int(cell))
                continue
            if cell.strip() == "" or not cell.isascii():
                return "invalid", len(rows) + 1  # empty, or not ASCII text
            try:
                number = float(cell)
            except ValueError:
                return "invalid", len(rows) + 1  # not a number at all
            if not (math.isfinite(number) and number.is_integer() and 0 <= number <= top):
                return "invalid", len(rows) + 1  # nan, inf, 1.5, -3 or 1e9
            return ("unclear",)  # an integral number written otherwise (" 7", "7.0", "1e2", "+7", "-0")
        rows.append(values)
    if not rows:
        return "invalid", None  # a header and no data rows
    return "valid", np.array(rows, dtype=np.int64)


def check_load(loader, data: bytes, name: str, gzipped: bool = False) -> None:
    """Load data through loader: it must return what the independent reading finds, or refuse in one line."""
    columns = TRAIN_COLUMNS if name == "train.csv" else PIXEL_COLUMNS
    verdict = independent_verdict(data, columns)
    event(f"independent reading: {verdict[0]}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / (name + (".gz" if gzipped else ""))
        path.write_bytes(gzip.compress(data) if gzipped else data)
        try:
            with no_hang():
                result = loader(path)
        except ValueError as error:
            message = str(error)
            assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 600, message
            assert error.__cause__ is None or error.__suppress_context__, "a chained traceback would show"
            assert verdict[0] != "valid", f"a valid file was refused: {message}"
            if verdict[0] == "invalid" and verdict[1] is not None:
                assert f": row {verdict[1]} " in message, (verdict, message)
            event("rejected")
            return
    event("accepted")
    assert verdict[0] != "invalid", f"an invalid file was accepted (row {verdict[1]})"
    X = result[0] if isinstance(result, tuple) else result
    assert X.dtype == np.uint8 and X.ndim == 2 and X.shape[1] == 784 and len(X) >= 1
    if isinstance(result, tuple):
        assert result[1].dtype == np.int64 and result[1].min() >= 0 and result[1].max() < N_CLASSES
    if verdict[0] == "valid":
        expected = verdict[1]
        got = np.column_stack([result[1], result[0]]) if isinstance(result, tuple) else result
        np.testing.assert_array_equal(got, expected)


@FUZZ
@given(rows=st.integers(1, 4), seed=st.integers(0, 10**6), train=st.booleans(), data=st.data(),
       bad=st.one_of(st.integers(256, 10**30).map(str), st.integers(-10**6, -1).map(str), st.just(""),
                     st.sampled_from(["\uff11", "x", "1.5", "1,2"])))
def test_a_file_with_one_bad_cell_is_refused_naming_its_row(rows, seed, train, data, bad):
    # Rows are counted as data rows: a blank line (skipped, as pandas skips it) does not count.
    columns = TRAIN_COLUMNS if train else PIXEL_COLUMNS
    lines = valid_csv(rows, train, seed).splitlines()
    row, column = data.draw(st.integers(1, rows)), data.draw(st.integers(0, len(columns) - 1))
    if train and column == 0 and bad not in ("", "x", "1.5", "1,2", "\uff11"):
        bad = str(int(bad) - 246) if int(bad) > 0 else bad  # labels: 10 and up is already out of range
    cells = lines[row].split(",")
    cells[column] = bad
    lines[row] = ",".join(cells)
    if data.draw(st.booleans()):
        lines.insert(1, "")  # a blank line after the header
    file = ("\n".join(lines) + "\n").encode()
    verdict = independent_verdict(file, columns)
    assert verdict == ("invalid", row)
    check_load(load_train_csv if train else load_test_csv, file, "train.csv" if train else "test.csv")


@FUZZ
@given(rows=st.integers(1, 5), seed=st.integers(0, 10**6), train=st.booleans(), crlf=st.booleans(),
       bom=st.booleans(), blank_lines=st.booleans(), gzipped=st.booleans())
def test_valid_files_are_accepted_with_exactly_their_values(rows, seed, train, crlf, bom, blank_lines, gzipped):
    text = valid_csv(rows, train, seed)
    if blank_lines:
        text = text.replace("\n", "\n\n", 2)  # after the header and after the first row
    if crlf:
        text = text.replace("\n", "\r\n")
    data = ("\ufeff" if bom else "").encode() + text.encode()
    assert independent_verdict(data, TRAIN_COLUMNS if train else PIXEL_COLUMNS)[0] == "valid"
    check_load(load_train_csv if train else load_test_csv, data, "train.csv" if train else "test.csv", gzipped)


@FUZZ
@given(data=mutated_csv(train=True))
def test_train_loader_on_mutated_csvs(data):
    check_load(load_train_csv, data, "train.csv")


@FUZZ
@given(data=mutated_csv(train=False))
def test_test_loader_on_mutated_csvs(data):
    check_load(load_test_csv, data, "test.csv")


@FUZZ
@given(data=st.binary(max_size=3000), gzipped=st.booleans())
def test_loaders_on_arbitrary_bytes(data, gzipped):
    check_load(load_train_csv, data, "train.csv", gzipped)
    check_load(load_test_csv, data, "test.csv", gzipped)


@FUZZ
@given(data=mutated_csv(train=True))
def test_train_loader_on_mutated_gzipped_csvs(data):
    check_load(load_train_csv, data, "train.csv", gzipped=True)
