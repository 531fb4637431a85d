"""Property-based fuzzing of load_train_csv / load_test_csv: any bytes give valid arrays or one clear ValueError.

Never another exception type, never a traceback-sized message, never a hang (a timer fails the example).
"""

from __future__ import annotations

import gzip
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


def check_load(loader, data: bytes, name: str, gzipped: bool = False) -> None:
    """Load data through loader; it must accept valid digits or raise the project's one-line ValueError."""
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
            event("rejected")
            return
    event("accepted")
    X = result[0] if isinstance(result, tuple) else result
    assert X.dtype == np.uint8 and X.ndim == 2 and X.shape[1] == 784 and len(X) >= 1
    if isinstance(result, tuple):
        assert result[1].dtype == np.int64 and result[1].min() >= 0 and result[1].max() < N_CLASSES


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
