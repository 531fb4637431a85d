"""Small, tested utilities for the digit-recognizer notebook (Kaggle's MNIST-as-CSV).

The notebook tells the story and holds the model and the training loop; this module
holds the pieces it reuses: finding and validating the data, building tensors and
loaders, choosing the device, seeding, predicting in batches, writing the submission
and a few plots. Each function takes what it needs as arguments: no notebook globals.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

N_PIXELS = 28 * 28  # 784 pixels per image, stored row-major
N_CLASSES = 10
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
SUBMISSION_COLUMNS = ["ImageId", "Label"]
CSV_CHUNK_ROWS = 5_000  # rows parsed at a time: ~31 MB as int64, 4 MB once uint8 (measured: README, "Speed")

PROJECT_DIR = Path(__file__).resolve().parent
# Kaggle's file tree: input/ (data, attached datasets), usr/lib/ (utility scripts), working/ (outputs).
# $KAGGLE_ROOT moves it, so that tests can build a fake one in a temp dir.
KAGGLE_ROOT = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
SEARCH_MAX_DEPTH = 4          # folders below /kaggle/input that the data search descends
SEARCH_MAX_FOLDERS = 10_000   # and how many folders it looks at, at most: a big attached dataset stays cheap
DOWNLOAD_COMMAND = (
    "kaggle competitions download -c digit-recognizer -p data && "
    "unzip -o data/digit-recognizer.zip -d data"
)


# --- Finding the data ------------------------------------------------------------


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The fixed places searched for the CSVs, in order (see README, "Getting the data")."""
    explicit = data_dir if data_dir is not None else os.environ.get("DATA_DIR") or None
    if explicit is not None:
        return [Path(explicit).expanduser()]
    kaggle_input = KAGGLE_ROOT / "input"
    return [kaggle_input / "digit-recognizer", kaggle_input / "competitions" / "digit-recognizer",
            Path.cwd().parent / "input" / "digit-recognizer", PROJECT_DIR / "data"]


def csv_path(data_dir: str | os.PathLike, name: str) -> Path:
    """The path of `name` (e.g. "train.csv") in data_dir, preferring a .csv.gz copy if only it exists."""
    plain = Path(data_dir) / name
    gzipped = plain.with_name(plain.name + ".gz")
    return gzipped if gzipped.exists() and not plain.exists() else plain


def _holds_data(folder: Path) -> bool:
    """True when folder has both train.csv and test.csv (plain or gzipped)."""
    return all(csv_path(folder, name).is_file() for name in ("train.csv", "test.csv"))


def search_data_dir(root: str | os.PathLike, max_depth: int = SEARCH_MAX_DEPTH,
                    max_folders: int = SEARCH_MAX_FOLDERS) -> Path | None:
    """The first folder under root (breadth first, sorted, bounded) that holds train.csv and test.csv, or None."""
    level, looked_at = [Path(root)], 0
    for _ in range(max_depth + 1):
        below = []
        for folder in level:
            looked_at += 1
            if looked_at > max_folders:
                return None
            if _holds_data(folder):
                return folder
            with contextlib.suppress(OSError), os.scandir(folder) as entries:  # unreadable or vanished: skip it
                below += sorted(Path(entry.path) for entry in entries if entry.is_dir())
        level = below
    return None


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding train.csv and test.csv: data_dir, $DATA_DIR, Kaggle's, ../input, ./data, /kaggle/input/**."""
    searched = data_dir_candidates(data_dir)
    for folder in searched:
        if _holds_data(folder):
            return folder
    explicit = data_dir is not None or os.environ.get("DATA_DIR")
    found = None if explicit else search_data_dir(KAGGLE_ROOT / "input")  # a dataset attached under any name
    if found is not None:
        return found
    places = ", ".join(str(p) for p in searched)
    places += "" if explicit else f", every folder under {KAGGLE_ROOT / 'input'}"
    raise FileNotFoundError(
        f"train.csv and test.csv not found; searched: {places}. "
        f"Get them with `{DOWNLOAD_COMMAND}` (or on Kaggle: Add Input > digit-recognizer), "
        "or point DATA_DIR at the folder that holds them."
    )


def on_kaggle() -> bool:
    """True inside a Kaggle notebook: Kaggle sets $KAGGLE_KERNEL_RUN_TYPE, and has a /kaggle/working folder."""
    return bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (KAGGLE_ROOT / "working").is_dir()


def output_dir_for(output_dir: str | os.PathLike | None = None) -> Path:
    """output_dir if given; else /kaggle/working on Kaggle (where Submit finds submission.csv), else ./output."""
    if output_dir is not None:
        return Path(output_dir)
    return KAGGLE_ROOT / "working" if on_kaggle() else Path("output")


# --- Getting the data: Kaggle, or MNIST's own files ---------------------------------------

KAGGLE_RULES_URL = "https://www.kaggle.com/competitions/digit-recognizer/rules"
MNIST_FILES = {  # the four gzipped IDX files and their published MD5 checksums (the ones torchvision checks)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://yann.lecun.com/exdb/mnist/",
)
MNIST_IMAGES = 70_000       # MNIST's 60,000 training and 10,000 test images together
KAGGLE_TRAIN_ROWS = 42_000  # the competition's cut of them: 42,000 in train.csv, 28,000 in test.csv
DATA_FILES = ("train.csv", "test.csv", "sample_submission.csv")


def mnist_mirrors() -> tuple[str, ...]:
    """The MNIST mirrors to try, in order: $MNIST_MIRRORS (base URLs, space- or comma-separated) if set, else ours."""
    chosen = os.environ.get("MNIST_MIRRORS", "").replace(",", " ").split()
    return tuple(url if url.endswith("/") else url + "/" for url in chosen) or MNIST_MIRRORS


def kaggle_credentials_found() -> bool:
    """True when the Kaggle CLI would find credentials: KAGGLE_USERNAME/KAGGLE_KEY, or a kaggle.json."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY") or os.environ.get("KAGGLE_API_TOKEN"):
        return True
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    return (folder / "kaggle.json").is_file() or (folder / "access_token").is_file()


def _kaggle_failure(output: str) -> str:
    """One line that says why `kaggle competitions download` failed, and what to do."""
    text = " ".join(output.split())
    if "403" in text or "Forbidden" in text or "rules" in text.lower():
        return (f"Kaggle refused the download (403): accept the competition's rules at {KAGGLE_RULES_URL} "
                "while signed in, then run `make data` again.")
    if "401" in text or "Unauthorized" in text:
        return "Kaggle rejected the credentials (401): renew the API token in ~/.kaggle/kaggle.json (Kaggle > Settings)."
    last = output.strip().splitlines()[-1] if output.strip() else "no output"
    return f"`kaggle competitions download` failed: {last}"


def download_from_kaggle(data_dir: str | os.PathLike, kaggle: str = "kaggle") -> list[Path]:
    """Download the competition's zip with the Kaggle CLI and unzip its CSVs into data_dir."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".kaggle-download-") as scratch:
        command = [kaggle, "competitions", "download", "-c", "digit-recognizer", "-p", scratch]
        try:
            done = subprocess.run(command, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeError(f"the Kaggle CLI ({kaggle}) is not installed; `make venv` installs it.") from None
        archives = sorted(Path(scratch).glob("*.zip"))
        if done.returncode != 0 or not archives:
            raise RuntimeError(_kaggle_failure(done.stdout + done.stderr))
        try:
            with zipfile.ZipFile(archives[0]) as archive:
                archive.extractall(scratch, members=[n for n in archive.namelist() if n in DATA_FILES])
        except zipfile.BadZipFile:
            raise RuntimeError(f"Kaggle's download {archives[0].name} is not a valid zip; run `make data` again.") from None
        written = []
        for name in DATA_FILES:
            if (Path(scratch) / name).is_file() and not (data_dir / name).exists():
                os.replace(Path(scratch) / name, data_dir / name)  # whole files only, never a partial one
                written.append(data_dir / name)
    return written


def _md5(path: Path) -> str:
    """The MD5 hex digest of a file, read in 1 MB blocks."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, path: str | os.PathLike, md5: str, show_progress: bool = True, timeout: float = 60) -> Path:
    """Download url to path with a progress bar; keep it only if its MD5 matches (else ValueError, nothing left)."""
    path, digest = Path(path), hashlib.md5()

    def fetch(file: IO) -> None:
        """Stream the body into file, hashing it on the way."""
        with urllib.request.urlopen(url, timeout=timeout) as response:
            size = int(response.headers.get("Content-Length") or 0) or None
            with progress(None, path.name, show_progress, total=size, unit="B", unit_scale=True, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 16), b""):
                    file.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != md5:  # raising here makes atomic_write delete the temp file
            raise ValueError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, expected {md5}); "
                             "the download is corrupt or the mirror changed the file, so nothing was kept.")

    return atomic_write(path, fetch, binary=True)


def fetch_mnist_file(name: str, md5: str, folder: str | os.PathLike, mirrors: Sequence[str] | None = None,
                     show_progress: bool = True) -> Path:
    """One MNIST file in folder: kept if already there with the right MD5, else tried from each mirror in turn."""
    path = Path(folder) / name
    if path.is_file() and _md5(path) == md5:
        return path
    failures = []
    for mirror in mnist_mirrors() if mirrors is None else mirrors:
        try:
            return download_file(mirror.rstrip("/") + "/" + name, path, md5, show_progress)
        except (OSError, http.client.HTTPException, ValueError) as error:  # refused, 404, timeout, cut off, bad checksum
            failures.append(f"{mirror}: {getattr(error, 'reason', None) or error}")
    raise RuntimeError(f"could not download {name} from any mirror ({'; '.join(failures)}); check the network, "
                       f"or get the competition's CSVs with `{DOWNLOAD_COMMAND}`.")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped IDX file (MNIST's format) as a uint8 array: (N, 28, 28) images or (N,) labels."""
    with gzip.open(path, "rb") as file:
        data = file.read()
    dims = data[3] if len(data) >= 4 and data[:3] == b"\x00\x00\x08" else 0  # magic: 0, 0, 0x08 (uint8), ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if dims not in (1, 3) or len(data) != 4 + 4 * dims + int(np.prod(shape)):
        raise ValueError(f"{path}: is not a uint8 IDX file of labels or images; delete it and run `make data` again.")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def mnist_to_kaggle_layout(raw_dir: str | os.PathLike, data_dir: str | os.PathLike,
                           train_rows: int | None = None, seed: int = 0) -> list[Path]:
    """Shuffle MNIST's 70,000 images (seeded) into train.csv, test.csv, sample_submission.csv and test_labels.csv.

    train_rows=None keeps the competition's share: 42,000 of 70,000 images (60%) in train.csv, the rest in test.csv.
    """
    raw_dir, data_dir = Path(raw_dir), Path(data_dir)
    images = np.concatenate([read_idx(raw_dir / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")])
    labels = np.concatenate([read_idx(raw_dir / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")])
    train_rows = round(len(labels) * KAGGLE_TRAIN_ROWS / MNIST_IMAGES) if train_rows is None else train_rows
    if len(images) != len(labels) or not 0 < train_rows < len(labels):
        raise ValueError(f"{raw_dir}: {len(images)} images and {len(labels)} labels cannot make {train_rows} train rows.")
    order = np.random.default_rng(seed).permutation(len(labels))
    pixels, labels = images[order].reshape(len(order), N_PIXELS), labels[order].astype(np.int64)
    test_ids = np.arange(1, len(labels) - train_rows + 1)
    frames = {
        "train.csv": pd.DataFrame(np.column_stack([labels[:train_rows], pixels[:train_rows]]), columns=TRAIN_COLUMNS),
        "test.csv": pd.DataFrame(pixels[train_rows:], columns=PIXEL_COLUMNS),
        "sample_submission.csv": pd.DataFrame({"ImageId": test_ids, "Label": 0}),
        "test_labels.csv": pd.DataFrame({"ImageId": test_ids, "Label": labels[train_rows:]}),
    }
    return [atomic_write(data_dir / name, lambda file, f=frame: f.to_csv(file, index=False))
            for name, frame in frames.items()]


def _kaggle_cli() -> str:
    """The Kaggle CLI: the one installed beside this Python (the venv's), else the first on PATH."""
    beside = Path(sys.executable).parent / ("kaggle.exe" if os.name == "nt" else "kaggle")
    return str(beside) if beside.is_file() else shutil.which("kaggle") or "kaggle"


def download_data(data_dir: str | os.PathLike = PROJECT_DIR / "data", use_kaggle: bool | None = None,
                  mirrors: Sequence[str] | None = None, files: dict[str, str] = MNIST_FILES,
                  train_rows: int | None = None, show_progress: bool = True, kaggle: str | None = None) -> Path:
    """Put train.csv and test.csv in data_dir: from Kaggle with credentials, else built from MNIST's files."""
    data_dir = Path(data_dir)
    if all((data_dir / name).is_file() for name in ("train.csv", "test.csv")):
        print(f"{data_dir}: train.csv and test.csv are already there; nothing to download.")
        return data_dir
    if kaggle_credentials_found() if use_kaggle is None else use_kaggle:
        download_from_kaggle(data_dir, kaggle=kaggle or _kaggle_cli())
        print(f"{data_dir}: the competition's files from Kaggle.")
        return data_dir
    raw_dir = data_dir / "mnist"  # kept, so that a second run downloads nothing
    for name, md5 in files.items():
        fetch_mnist_file(name, md5, raw_dir, mirrors, show_progress)
    mnist_to_kaggle_layout(raw_dir, data_dir, train_rows)
    with open(data_dir / "train.csv") as train, open(data_dir / "test_labels.csv") as labels:
        rows = [sum(1 for _ in file) - 1 for file in (train, labels)]  # less the headers
    print(f"{data_dir}: built from MNIST's own files (no Kaggle credentials used). This is MNIST in Kaggle's layout "
          f"(train.csv {rows[0]:,} rows, test.csv {rows[1]:,} rows), not "
          "Kaggle's own row order; test_labels.csv scores a submission locally: "
          "python mnist_helpers.py score output/submission.csv data/test_labels.csv")
    return data_dir


# --- Loading and validating the CSVs -----------------------------------------------


def _open_text(path: Path) -> TextIO:
    """Open a .csv or .csv.gz as text; utf-8-sig drops a byte-order mark."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_header(path: Path) -> list[str]:
    """Return the stripped column names of a CSV, or raise a one-line ValueError."""
    with open(path, "rb") as raw:
        magic = raw.read(4)
    if magic.startswith(b"PK\x03\x04"):
        raise ValueError(f"{path}: is a zip archive, not a CSV; unzip it first (unzip {path.name}).")
    try:
        with _open_text(path) as text:
            header = next(csv.reader(text), None)
    except (UnicodeDecodeError, OSError, EOFError, csv.Error) as error:
        raise ValueError(f"{path}: is not a readable CSV text file ({type(error).__name__}); re-download it.") from None
    if header is None:
        raise ValueError(f"{path}: the file is empty; re-download it.")
    return [name.strip() for name in header]


def _check_header(path: Path, header: list[str], expected: list[str]) -> None:
    """Raise a one-line ValueError unless header equals expected, naming what differs."""
    if header == expected:
        return
    what = "train.csv" if expected[0] == "label" else "test.csv"
    if not set(header) & set(TRAIN_COLUMNS):
        raise ValueError(f"{path}: the first line is not a {what} header ({expected[0]}, ... {expected[-1]}); "
                         "is this the right file?")
    if expected[0] == "label" and "label" not in header and header[:1] == ["pixel0"]:
        raise ValueError(f"{path}: has no 'label' column, so it looks like test.csv; pass train.csv here.")
    if expected[0] != "label" and "label" in header:
        raise ValueError(f"{path}: has a 'label' column, so it looks like train.csv; pass test.csv here.")
    twice = [name for i, name in enumerate(header) if name in header[:i]]
    if twice:
        raise ValueError(f"{path}: column '{twice[0]}' appears twice; re-download {what}.")
    missing = [name for name in expected if name not in header]
    if missing:
        raise ValueError(f"{path}: column '{missing[0]}' is missing ({len(header)} columns, expected "
                         f"{len(expected)}: {expected[0]}, ... {expected[-1]}); re-download {what}.")
    extra = [name for name in header if name not in expected]
    if extra:
        raise ValueError(f"{path}: unexpected column '{extra[0]}'; {what} has exactly "
                         f"{expected[0]}, ... {expected[-1]}; remove it or re-download {what}.")
    position = next(i for i, (got, want) in enumerate(zip(header, expected)) if got != want)
    raise ValueError(f"{path}: column {position + 1} is '{header[position]}', expected '{expected[position]}'; "
                     f"columns must be in the order {expected[0]}, ... {expected[-1]}.")


def _cell_problem(cell: str, high: int) -> str | None:
    """Describe what is wrong with one CSV cell that must be an integer 0..high, or None."""
    text = cell.strip()
    if not text:
        return "the cell is empty"
    if not text.isascii():  # float() reads other scripts' digits ("１"); CSV readers do not
        return f"'{cell}' is not a number"
    try:
        value = float(text)
    except ValueError:
        return f"'{cell}' is not a number"
    if not value.is_integer():
        return f"'{cell}' is not an integer"
    if not 0 <= value <= high:
        return f"'{cell}' is out of range 0-{high}"
    return None


def _find_bad_cell(path: Path, columns: list[str], max_rows: int | None) -> str | None:
    """Scan a CSV row by row and describe its first malformed row or cell, or None if all are fine."""
    with _open_text(path) as text:
        reader = csv.reader(text)
        try:
            next(reader, None)  # the header, already checked
            return _first_bad_row(path, reader, columns, max_rows)
        except UnicodeDecodeError as error:
            return f"{path}: line {reader.line_num + 1}: bytes that are not UTF-8 text ({error.reason}); re-download the file."
        except (csv.Error, OSError, EOFError) as error:  # e.g. an unclosed quote, a truncated .gz
            return f"{path}: line {reader.line_num}: {str(error) or type(error).__name__}; fix that line or re-download the file."


def _first_bad_row(path: Path, reader: Iterator[list[str]], columns: list[str], max_rows: int | None) -> str | None:
    """Describe the first row of a csv.reader with the wrong field count or a bad cell, or None."""
    row_number = 0
    for fields in reader:
        if not fields:
            continue  # blank lines are skipped, as pandas does
        row_number += 1
        if max_rows is not None and row_number > max_rows:
            return None
        where = f"{path}: row {row_number} (line {reader.line_num})"
        if len(fields) != len(columns):
            return f"{where} has {len(fields)} fields, expected {len(columns)}; fix or remove that row."
        for name, cell in zip(columns, fields):
            problem = _cell_problem(cell, 9 if name == "label" else 255)
            if problem:
                kind = "labels must be integers 0-9" if name == "label" else "pixels must be integers 0-255"
                return f"{where}, column '{name}': {problem}; {kind}, so fix that cell or re-download the file."
    return None


def _read_uint8_csv(path: str | os.PathLike, columns: list[str], max_rows: int | None) -> np.ndarray:
    """Read and fully validate a digits CSV into a (N, len(columns)) uint8 array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Expected in the data directory; get the data with "
                                f"`{DOWNLOAD_COMMAND}` or point DATA_DIR at the folder that holds it.")
    _check_header(path, _read_header(path), columns)
    highs = np.array([N_CLASSES - 1 if name == "label" else 255 for name in columns])  # (columns,) largest allowed
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # it means fields were dropped
            warnings.simplefilter("error", RuntimeWarning)  # a non-integer cell cast to int64: named below instead
            # In chunks of rows, so that peak memory stays near the data's own 1 byte per cell. Each chunk is parsed
            # as int64 and range-checked before it becomes uint8: pandas 2.2 wraps 256 to 0 when asked for uint8.
            with pd.read_csv(path, dtype=np.int64, encoding="utf-8-sig", index_col=False, nrows=max_rows,
                             skipinitialspace=True, chunksize=CSV_CHUNK_ROWS) as reader:
                parts = []
                for chunk in reader:
                    values = chunk.to_numpy()  # (rows, columns) int64
                    in_range = values.min(initial=0) >= 0 and (values.max(0, initial=0) <= highs).all()
                    if values.shape[1] != len(columns) or not in_range:
                        raise ValueError("a cell is out of range")  # the scan below says which
                    parts.append(values.astype(np.uint8))
    except (ValueError, OverflowError, RuntimeWarning, pd.errors.ParserWarning, pd.errors.ParserError, OSError,
            EOFError):
        problem = _find_bad_cell(path, columns, max_rows)  # pandas says only that something is wrong; this says where
        raise ValueError(problem or f"{path}: could not be parsed as CSV; re-download it.") from None
    if sum(len(part) for part in parts) == 0:
        raise ValueError(f"{path}: has a header but no data rows; re-download it.")
    return np.concatenate(parts)  # a new, writable (N, columns) array


def load_train_csv(path: str | os.PathLike, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load train.csv(.gz) as X (N, 784) uint8 pixels and y (N,) int64 labels, validating every cell."""
    values = _read_uint8_csv(path, TRAIN_COLUMNS, max_rows)
    return np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64)


def load_test_csv(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Load test.csv(.gz) as X (N, 784) uint8 pixels, validating every cell."""
    return _read_uint8_csv(path, PIXEL_COLUMNS, max_rows)


# --- Tensors, split and loaders ------------------------------------------------------


_PIXEL_VALUES = torch.arange(256, dtype=torch.float32) / 255  # (256,): pixel value -> float32 in [0, 1]


def to_image_tensor(X: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn (N, 784) uint8 pixels into a float32 (N, 1, 28, 28) tensor in [0, 1] on device."""
    pixels = torch.tensor(np.ascontiguousarray(X), dtype=torch.uint8).to(device)  # uint8: 4x fewer bytes to move
    # A table of the 256 values, divided on the CPU: CUDA's x / 255 multiplies by 1/255 instead, which is one
    # rounding off for some pixels, so a GPU run would not see the CPU's inputs bit for bit.
    return torch.index_select(_PIXEL_VALUES.to(device), 0, pixels.view(-1).int()).view(-1, 1, 28, 28)


def split_train_valid(X: np.ndarray, y: np.ndarray, valid_size: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded split into X_train, X_valid, y_train, y_valid (same class mix in both)."""
    return train_test_split(X, y, test_size=valid_size, random_state=seed, stratify=y)


class DeviceBatches:
    """A DataLoader stand-in that keeps the whole tensors on the device and slices (shuffled) batches there."""

    def __init__(self, X: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device | str,
                 shuffle: bool = False, generator: torch.Generator | None = None):
        images = to_image_tensor(X, device)                                       # (N, 1, 28, 28) float32
        labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)       # (N,) int64
        self.dataset = TensorDataset(images, labels)  # len(loader.dataset) works as for a DataLoader
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = generator if generator is not None else torch.Generator()

    def __len__(self) -> int:
        """The number of batches per epoch."""
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches; a new seeded order each epoch when shuffling."""
        images, labels = self.dataset.tensors
        order = torch.randperm(len(images), generator=self.generator).to(images.device) if self.shuffle else None
        for rows in _batches(len(images), self.batch_size):
            index = rows if order is None else order[rows]  # (B,) positions, gathered on the device
            yield images[index], labels[index]


def make_loaders(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None,
                 batch_size: int, seed: int, fast: FastPath | None = None) -> tuple:
    """Training and validation batches (valid is None without X_valid); only training shuffles, seeded; fast: on device."""
    generator = torch.Generator().manual_seed(seed)
    if fast is not None and fast.data_on_device:
        train = DeviceBatches(X_train, y_train, batch_size, fast.device, shuffle=True, generator=generator)
        valid = None if X_valid is None else DeviceBatches(X_valid, y_valid, fast.eval_batch_size or batch_size,
                                                           fast.device)
        return train, valid
    as_dataset = lambda X, y: TensorDataset(to_image_tensor(X), torch.from_numpy(np.asarray(y, dtype=np.int64)))  # noqa: E731
    train_loader = DataLoader(as_dataset(X_train, y_train), batch_size=batch_size, shuffle=True, generator=generator)
    valid_loader = None if X_valid is None else DataLoader(as_dataset(X_valid, y_valid), batch_size=batch_size)
    return train_loader, valid_loader


# --- Device and seeding --------------------------------------------------------------


def cuda_code_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """True when code built for arch ("sm_86", "sm_90a", "compute_120") runs on a GPU of that compute capability."""
    match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
    if match is None:
        return False
    kind, major, minor, suffix = match.groups()
    built = (int(major), int(minor))
    if kind == "compute":  # PTX: the driver compiles it for this GPU, if the GPU is at least that new
        return capability >= built
    if suffix == "a":      # arch-specific machine code (sm_90a): that exact GPU only
        return capability == built
    return capability[0] == built[0] and capability[1] >= built[1]  # machine code: same major, same or later minor


def unsupported_gpu_message(index: int = 0) -> str | None:
    """None when this PyTorch build has kernels for CUDA GPU `index`; else one line that says it has none."""
    arch_list = torch.cuda.get_arch_list()  # what this build was compiled for, e.g. ["sm_75", ..., "compute_120"]
    capability = torch.cuda.get_device_capability(index)
    if not arch_list or any(cuda_code_runs_on(arch, capability) for arch in arch_list):
        return None  # an empty list means a build that does not say: trust it
    machine_code = [arch for arch in arch_list if arch.startswith("sm_")] or arch_list
    return (f"{torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]}) is not supported by this "
            f"PyTorch build ({machine_code[0]} ... {machine_code[-1]}); on Kaggle choose GPU T4 x2; running on the CPU")


def get_device() -> torch.device:
    """The best device this PyTorch can use: the first CUDA GPU it has kernels for, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        problem = unsupported_gpu_message(0)
        if problem is None:
            return torch.device("cuda")
        warnings.warn(problem, stacklevel=2)  # e.g. a P100 (sm_60) under a cu128 build: no kernel would run
        return torch.device("cpu")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_facts(device: torch.device | str) -> dict:
    """The device's name and CUDA compute capability ("7.5"; None off CUDA), as a checkpoint records them."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"DEVICE_NAME": device.type, "CAPABILITY": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"DEVICE_NAME": torch.cuda.get_device_name(device), "CAPABILITY": f"{major}.{minor}"}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); deterministic=True also asks CUDA for repeatable kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:  # CPU runs repeat without this; on CUDA it costs speed (README, "Reproducibility")
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn where CUDA has no repeatable kernel
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def progress(iterable: Iterable | None = None, desc: str = "", enabled: bool | str = True, **kwargs) -> tqdm:
    """A tqdm progress bar (a widget in Jupyter, text in a terminal); enabled=False or "lines" shows nothing."""
    return tqdm(iterable, desc=desc, disable=not enabled or enabled == "lines", dynamic_ncols=True, **kwargs)


def format_duration(seconds: float) -> str:
    """A short human duration: "42 s", "3 min 05 s", "1 h 02 min"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochProgress:
    """Epochs first..last, shown as they finish: a tqdm bar (mode True), one printed line each ("lines") or nothing.

    report(row) after each epoch takes its history row (train_loss, valid_acc, seconds). The time left is the mean
    epoch time of this loop so far, times the epochs still to come here and the `later` epochs after this loop
    (which it assumes take as long).
    """

    def __init__(self, first: int, last: int, desc: str = "training", mode: bool | str = True, later: int = 0,
                 leave: bool = True):
        """Epochs first..last (first > 1 when resuming), shown as `desc`; mode is the notebook's PROGRESS."""
        if not (isinstance(mode, bool) or mode == "lines"):  # not 1 or 0: papermill keeps types, so say True
            raise ValueError(f"PROGRESS must be True, False or 'lines', got {mode!r}.")
        self.last, self.desc, self.mode, self.later = last, desc, mode, later
        self.bar = progress(range(first, last + 1), desc, mode, initial=first - 1, total=last, leave=leave)
        self.seconds: list[float] = []

    def __iter__(self) -> Iterator[int]:
        """Yield the epoch numbers first..last."""
        return iter(self.bar)

    def report(self, row: dict) -> str:
        """Show one finished epoch; returns its line ("" unless mode is "lines")."""
        self.seconds.append(row["seconds"])
        if self.mode is True:
            self.bar.set_postfix({key: f"{row[key]:.4f}" for key in ("train_loss", "valid_acc") if key in row})
        if self.mode != "lines":
            return ""
        left = (self.last - row["epoch"] + self.later) * float(np.mean(self.seconds))
        valid = f", valid acc {100 * row['valid_acc']:.2f}%" if "valid_acc" in row else ""
        line = (f"{self.desc}, epoch {row['epoch']:>{len(str(self.last))}}/{self.last}: train loss {row['train_loss']:.4f}"
                f"{valid}, {row['seconds']:.1f} s, about {format_duration(left)} left")
        print(line, flush=True)
        return line


# --- The fast path ---------------------------------------------------------------------


@dataclass(frozen=True)
class FastPath:
    """How to run on one device: mixed precision, memory format, where the data lives, batch sizes."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # None: plain fp32; torch.bfloat16 or torch.float16: autocast
    channels_last: bool = False          # NHWC activations, the layout oneDNN and cuDNN convolve fastest
    data_on_device: bool = False         # whole tensors on the device, batches sliced there (DeviceBatches)
    cudnn_benchmark: bool = False        # let cuDNN time its convolution algorithms once, then reuse the best
    eval_batch_size: int | None = None   # validation batch; None: the training batch
    predict_batch_size: int = 1000       # test images per forward pass

    @property
    def uses_grad_scaler(self) -> bool:
        """fp16 needs loss scaling so that small gradients do not flush to zero; bf16 and fp32 do not."""
        return self.amp_dtype == torch.float16

    @property
    def precision(self) -> str:
        """What the convolutions compute in: "bfloat16", "float16" or "float32"."""
        return str(self.amp_dtype or torch.float32).removeprefix("torch.")

    def autocast(self) -> AbstractContextManager:
        """A context that runs matmuls and convolutions in amp_dtype; for fp32 a plain no-op context."""
        if self.amp_dtype is None:  # not torch.autocast(..., enabled=False): older PyTorch refuses it on MPS
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that scales the loss for fp16 and passes everything through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.uses_grad_scaler)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device, in channels_last when enabled (and switch on cudnn.benchmark)."""
        if self.cudnn_benchmark and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True
        return model.to(self.device, memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        """torch.channels_last or torch.contiguous_format."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move one batch to the device in the model's memory format (a no-op when it is already there)."""
        return xb.to(self.device, memory_format=self.memory_format), yb.to(self.device)


def cpu_supports_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast beats fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cuda_autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """What the GPU's tensor cores compute: bf16 from compute capability 8.0 on, fp16 on 7.x, neither (None) below."""
    major, _ = torch.cuda.get_device_capability(device)
    # Not torch.cuda.is_bf16_supported(): it also says True on a T4 or P100, which only emulate bf16, slowly.
    return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None


def choose_fast_path(device: torch.device | str, enabled: bool = True, bf16: bool | None = None) -> FastPath:
    """The fastest correct settings for device; enabled=False gives the plain fp32 DataLoader pipeline.

    On CUDA the precision follows the GPU's compute capability. On the CPU, bf16 says whether it computes bf16
    natively; None asks the hardware.
    """
    device = torch.device(device)
    if not enabled:
        return FastPath(device)
    if device.type == "cuda":
        amp_dtype = cuda_autocast_dtype(device)  # channels_last pays only where tensor cores do the convolutions
        return FastPath(device, amp_dtype=amp_dtype, channels_last=amp_dtype is not None, data_on_device=True,
                        cudnn_benchmark=True, eval_batch_size=2000, predict_batch_size=4000)
    if device.type == "cpu":
        bf16 = cpu_supports_bf16() if bf16 is None else bf16
        return FastPath(device, amp_dtype=torch.bfloat16 if bf16 else None, channels_last=True,
                        data_on_device=True, eval_batch_size=1000, predict_batch_size=2000)
    return FastPath(device)  # Apple MPS and the rest: the plain fp32 path, which is known to be correct


# --- Going further: augmentation and schedules ---------------------------------------------


def random_affine(images: torch.Tensor, degrees: float = 10.0, zoom: float = 0.1, shift: float = 0.1,
                  strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate (±degrees), zoom (1±zoom) and shift (±shift of the size) each (B, 1, H, W) image at random; no flips."""
    # Four uniform draws in [-1, 1) per image (angle, zoom, dx, dy), on the CPU so that a CPU generator can seed them.
    u = (torch.rand(len(images), 4, generator=generator) * 2 - 1).to(images.device) * strength
    angle, scale = u[:, 0] * degrees * torch.pi / 180, 1 + u[:, 1] * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output -> input coordinates, so 1/scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * shift], 1),  # grid units: the image spans [-1, 1],
                         torch.stack([sin, cos, u[:, 3] * 2 * shift], 1)], 1)  # so 10% of it is 0.2
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def one_cycle_lrs(max_lr: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """The learning rate at every step of torch's OneCycleLR with these settings (for plotting the schedule)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


# --- Checkpoints and resume -------------------------------------------------------------


Generators = torch.Generator | Sequence[torch.Generator] | None  # a run's own generators: shuffling, augmentation


def _as_list(generators: Generators) -> list[torch.Generator]:
    """One generator, several, or None, as a list."""
    return [] if generators is None else [generators] if isinstance(generators, torch.Generator) else list(generators)


def _rng_states(generators: Generators) -> dict:
    """Every random state a resumed run needs, as tensors and plain values (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt_state), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),  # dropout masks on the CPU
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "generators": [generator.get_state() for generator in _as_list(generators)]}  # shuffling, augmentation


def _restore_rng_states(states: dict, generators: Generators) -> None:
    """Put back the random states saved by _rng_states."""
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    for generator, state in zip(_as_list(generators), _saved_generators(states)):
        generator.set_state(state)


def _saved_generators(states: dict) -> list[torch.Tensor]:
    """The generator states in a checkpoint's "rng" entry; checkpoints from before several generators had one."""
    if "generators" in states:
        return states["generators"]
    return [] if states.get("loader") is None else [states["loader"]]


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                    history: Sequence[dict], generator: Generators = None, scaler=None, scheduler=None,
                    config: dict | None = None) -> Path:
    """Save all that resuming after `epoch` needs (weights, optimizer, scheduler, history, RNG), atomically."""
    state = {"epoch": epoch, "history": [dict(row) for row in history], "config": dict(config or {}),
             "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None,
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "rng": _rng_states(generator)}
    return atomic_write(path, lambda file: torch.save(state, file), binary=True)


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    generator: Generators = None, scaler=None, scheduler=None,
                    config: dict | None = None) -> tuple[int, list[dict]]:
    """Restore a save_checkpoint file into these objects and return (epoch, history); one-line errors."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no checkpoint to resume from; run with RESUME=False.") from None
    except Exception as error:  # truncated, not a checkpoint, or holding objects weights_only refuses
        raise ValueError(f"{path}: is not a readable checkpoint ({type(error).__name__}); "
                         "delete it, or run with RESUME=False to start over.") from None
    recorded = state["config"]
    made_on = f" on {recorded['DEVICE_NAME']}" if recorded.get("DEVICE_NAME") else ""  # device_facts, if recorded
    for name, value in (config or {}).items():
        if recorded.get(name) != value:
            raise ValueError(f"{path}: was written with {name}={recorded.get(name)!r}{made_on} but this run has "
                             f"{name}={value!r}; resume with the same parameters and the same kind of device, "
                             "or RESUME=False to start over.")
    n_saved, n_given = len(_saved_generators(state["rng"])), len(_as_list(generator))
    if generator is not None and n_saved != n_given:  # restoring fewer or other generators would not repeat the run
        raise ValueError(f"{path}: holds {n_saved} random generator state(s) but this run restores {n_given}; it was "
                         "written by another version of the training code, so run with RESUME=False to start over.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for target, saved in ((scaler, state["scaler"]), (scheduler, state["scheduler"])):
        if target is not None and saved is not None:
            target.load_state_dict(saved)
    _restore_rng_states(state["rng"], generator)
    return state["epoch"], state["history"]


class TrainingCheckpoint:
    """One training run's checkpoint file: save() after every epoch, resume() to carry on where it stopped.

    It holds the model, optimizer, scheduler and scaler states, the history, and every random state (Python, NumPy,
    torch, and the run's own generators, e.g. shuffling and augmentation), so that a resumed run on the same kind of
    device ends with the weights of an uninterrupted one. config must match to resume; facts are only recorded.
    """

    def __init__(self, path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler=None, scheduler=None, generators: Generators = None, config: dict | None = None,
                 facts: dict | None = None):
        """What to save and restore, where; config must match to resume, facts are recorded (e.g. the device)."""
        self.path, self.model, self.optimizer = Path(path), model, optimizer
        self.scaler, self.scheduler, self.generators = scaler, scheduler, generators
        self.config, self.facts = dict(config or {}), dict(facts or {})

    def resume(self) -> tuple[list[dict], int]:
        """(history, epochs done) restored from the file, and a line saying so; ([], 0) when there is no file yet."""
        if not self.path.exists():
            print(f"RESUME: no checkpoint at {self.path} yet, so training starts at epoch 1")
            return [], 0
        done, history = load_checkpoint(self.path, self.model, self.optimizer, self.generators, self.scaler,
                                        self.scheduler, config=self.config)
        print(f"resumed from {self.path}: {done} of {self.config.get('EPOCHS', '?')} epochs already done")
        return history, done

    def save(self, epoch: int, history: Sequence[dict]) -> Path:
        """Write the state after `epoch` atomically (the previous file survives a failed write)."""
        return save_checkpoint(self.path, self.model, self.optimizer, epoch, history, self.generators, self.scaler,
                               self.scheduler, config={**self.config, **self.facts})


# --- Prediction and submission -------------------------------------------------------


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices that cover range(n) in steps of batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return (slice(start, start + batch_size) for start in range(0, n, batch_size))


def _halve_after_oom(batch_size: int) -> int:
    """The batch size to retry with after the device ran out of memory; gives up below 1."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the failed batch's blocks back before retrying
    if batch_size // 2 < 1:
        raise RuntimeError("prediction ran out of GPU memory even with a batch of 1 image; free GPU memory "
                           "(restart the kernel, close other notebooks) or predict on the CPU.")
    warnings.warn(f"out of memory at a batch of {batch_size} images; retrying with {batch_size // 2}.", stacklevel=3)
    return batch_size // 2


def predict_proba(model: torch.nn.Module, X: np.ndarray, fast: FastPath | torch.device | str,
                  batch_size: int | None = None, show_progress: bool = False,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Class probabilities (N, 10) for (N, 784) uint8 pixels, in batches; halves the batch after an out-of-memory.

    transform, if given, changes each (B, 1, 28, 28) batch first (test-time augmentation).
    """
    fast = fast if isinstance(fast, FastPath) else FastPath(torch.device(fast))
    batch_size = fast.predict_batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    model.eval()  # dropout off
    chunks, start = [], 0
    with torch.inference_mode(), fast.autocast(), progress(None, "predict", show_progress, total=len(X),
                                                           unit="img", leave=False) as bar:
        while start < len(X):
            try:
                xb = to_image_tensor(X[start:start + batch_size], fast.device)  # (B, 1, 28, 28)
                xb = (transform(xb) if transform else xb).to(memory_format=fast.memory_format)
                chunks.append(torch.softmax(model(xb).float(), dim=1).cpu())  # (B, 10) float32
            except torch.OutOfMemoryError:
                batch_size = _halve_after_oom(batch_size)
                continue
            start += len(xb)
            bar.update(len(xb))
    return torch.cat(chunks).numpy() if chunks else np.empty((0, N_CLASSES), dtype=np.float32)


def predict(model: torch.nn.Module, X: np.ndarray, fast: FastPath | torch.device | str,
            batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
    """Predicted labels (N,) int64 for (N, 784) uint8 pixels, computed in batches on fast's (or a plain) device."""
    return predict_proba(model, X, fast, batch_size, show_progress).argmax(axis=1).astype(np.int64)


def ensemble_proba(models: Sequence[torch.nn.Module], X: np.ndarray, fast: FastPath | torch.device | str,
                   tta: int = 0, tta_strength: float = 0.5, seed: int = 0) -> np.ndarray:
    """Mean softmax (N, 10) of several models, over the images and `tta` randomly augmented copies of them."""
    generator = torch.Generator().manual_seed(seed)
    augment = lambda xb: random_affine(xb, strength=tta_strength, generator=generator)  # noqa: E731
    runs = [predict_proba(model, X, fast) for model in models]
    runs += [predict_proba(model, X, fast, transform=augment) for model in models for _ in range(tta)]
    return np.mean(runs, axis=0)


def check_submission(submission: pd.DataFrame, expected_rows: int | None = None) -> None:
    """Raise a one-line ValueError unless the frame is ImageId 1..N and Label 0-9, as Kaggle expects."""
    if list(submission.columns) != SUBMISSION_COLUMNS:
        raise ValueError(f"submission columns are {list(submission.columns)}, expected {SUBMISSION_COLUMNS}.")
    if expected_rows is not None and len(submission) != expected_rows:
        raise ValueError(f"submission has {len(submission)} rows, expected {expected_rows} (one per test image).")
    if len(submission) == 0:
        raise ValueError("submission has no rows; predict the test images first.")
    for name in SUBMISSION_COLUMNS:
        if not pd.api.types.is_integer_dtype(submission[name]):
            raise ValueError(f"submission column '{name}' must hold integers, not {submission[name].dtype}.")
        missing = submission[name].isna().to_numpy()
        if missing.any():  # a nullable Int64 column: its missing values would be written as empty cells
            raise ValueError(f"submission row {int(np.argmax(missing)) + 1}: {name} is missing; every row needs one.")
    ids = submission["ImageId"].to_numpy()
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        row = int(np.argmax(ids != np.arange(1, len(ids) + 1))) + 1
        raise ValueError(f"submission row {row}: ImageId is {ids[row - 1]}, expected {row}; ids run 1..N in order.")
    labels = submission["Label"].to_numpy()
    bad = (labels < 0) | (labels >= N_CLASSES)
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise ValueError(f"submission row {row}: Label is {labels[row - 1]}, expected a digit 0-9.")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Write path through a temp file in the same folder, then rename: the old file survives any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": ""})) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0o022)  # mkstemp made the file 0600; give it the usual umask-based mode instead
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)  # atomic on POSIX and Windows
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def as_submission(labels: Sequence[int] | np.ndarray | pd.Series | pd.DataFrame) -> pd.DataFrame:
    """An ImageId,Label frame from 1-D digit labels (ImageId 1..N), or the ImageId,Label frame itself."""
    if isinstance(labels, pd.DataFrame):
        return labels
    expected = "write_submission takes the predicted digits as a 1-D array, Series or list, or an ImageId,Label frame"
    if not isinstance(labels, (np.ndarray, pd.Series, pd.api.extensions.ExtensionArray, list, tuple)):
        raise ValueError(f"{expected}; got {type(labels).__name__}.")
    column = labels if isinstance(labels, pd.Series) else np.asarray(labels)
    if column.ndim != 1:
        raise ValueError(f"{expected}; got shape {column.shape} (for probabilities, pass proba.argmax(axis=1)).")
    if not pd.api.types.is_integer_dtype(column.dtype) or pd.api.types.is_bool_dtype(column.dtype):
        raise ValueError(f"{expected}; got {column.dtype} values (labels are integers 0-9; for probabilities, "
                         "pass proba.argmax(axis=1)).")
    column = pd.Series(column).reset_index(drop=True)  # (N,), whatever index a Series had
    return pd.DataFrame({"ImageId": np.arange(1, len(column) + 1), "Label": column})


def write_submission(labels: Sequence[int] | np.ndarray | pd.Series | pd.DataFrame, path: str | os.PathLike,
                     expected_rows: int | None = None) -> Path:
    """Check the labels (1-D, or an ImageId,Label frame), then write them atomically: a good file is never lost."""
    submission = as_submission(labels)
    check_submission(submission, expected_rows)
    return atomic_write(path, lambda file: submission.to_csv(file, index=False))


def read_submission_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read an ImageId,Label CSV (a submission or test_labels.csv), or raise a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True)
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as error:  # EmptyDataError, bad bytes, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: is not a readable CSV ({reason}); it needs the header ImageId,Label.") from None


def score_submission(submission_path: str | os.PathLike, labels_path: str | os.PathLike) -> float:
    """Validate a submission as Kaggle does (header, one row per label, ids 1..N, digits) and print its accuracy."""
    labels, submission = read_submission_csv(labels_path), read_submission_csv(submission_path)
    for path, frame, rows in ((labels_path, labels, None), (submission_path, submission, len(labels))):
        try:
            check_submission(frame, expected_rows=rows)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
    correct = int((submission["Label"].to_numpy() == labels["Label"].to_numpy()).sum())
    accuracy = correct / len(labels)
    print(f"{submission_path}: accuracy {accuracy:.5f} ({correct} of {len(labels)} correct) against {labels_path}")
    return accuracy


# --- Plots -----------------------------------------------------------------------------


def plot_digits(X: np.ndarray, labels: Sequence[int] | None = None, ncols: int = 10):
    """A grid of (N, 784) digits, each titled with its label when labels are given."""
    import matplotlib.pyplot as plt

    nrows = max(1, -(-len(X) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.1, nrows * 1.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(X):
            ax.imshow(np.asarray(X[i]).reshape(28, 28), cmap="gray_r")
            if labels is not None:
                ax.set_title(str(labels[i]), fontsize=10)
    fig.tight_layout()
    return fig


def plot_label_counts(y: np.ndarray):
    """A bar chart of how many images each digit 0-9 has."""
    import matplotlib.pyplot as plt

    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=N_CLASSES)
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(N_CLASSES), counts, color="tab:blue")
    ax.set(xticks=range(N_CLASSES), xlabel="label", ylabel="images", title="Label counts")
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame | Sequence[dict]):
    """Learning curves: train/valid loss and valid accuracy per epoch, from the training history."""
    import matplotlib.pyplot as plt

    frame = pd.DataFrame(history)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
    loss_ax.plot(frame["epoch"], frame["train_loss"], "o-", label="train")
    loss_ax.plot(frame["epoch"], frame["valid_loss"], "o-", label="valid")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_ax.legend()
    acc_ax.plot(frame["epoch"], 100 * frame["train_acc"], "o-", label="train")
    acc_ax.plot(frame["epoch"], 100 * frame["valid_acc"], "o-", label="valid")
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    acc_ax.legend()
    fig.tight_layout()
    return fig


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> pd.Series:
    """The share of each digit's images predicted right, indexed 0-9."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return pd.Series([float((y_pred[y_true == k] == k).mean()) if (y_true == k).any() else float("nan")
                      for k in range(N_CLASSES)], index=pd.RangeIndex(N_CLASSES, name="digit"), name="accuracy")


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, title: str = "Confusion matrix"):
    """scikit-learn's confusion matrix of true (rows) against predicted (columns) digits, with counts."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(6, 5.5))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(N_CLASSES)), ax=ax, cmap="Blues",
                                            colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def worst_errors(y_true: np.ndarray, proba: np.ndarray, k: int = 12) -> np.ndarray:
    """Indices of the k most confident mistakes: largest P(predicted) - P(true) among the wrong predictions."""
    y_true = np.asarray(y_true)
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    margin = proba[wrong, predicted[wrong]] - proba[wrong, y_true[wrong]]
    return wrong[np.argsort(-margin, kind="stable")[:k]]


def plot_worst_errors(X: np.ndarray, y_true: np.ndarray, proba: np.ndarray, k: int = 12, ncols: int = 6):
    """A grid of the k most confident mistakes, each titled 'true t, predicted p (probability)'."""
    index = worst_errors(y_true, proba, k)
    titles = [f"true {y_true[i]}, pred {proba[i].argmax()}\n(p={proba[i].max():.2f})" for i in index]
    fig = plot_digits(X[index], titles, ncols=ncols)
    for ax in fig.axes:
        ax.title.set_fontsize(8)
    fig.tight_layout()
    return fig


def plot_learning_curves(histories: dict[str, pd.DataFrame]):
    """Validation accuracy per epoch of every recipe (or ensemble member) on one plot."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, history in histories.items():
        ax.plot(history["epoch"], 100 * history["valid_acc"], "o-", markersize=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Learning curves", ylim=(96.5, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def measured_points(measured: pd.DataFrame, device: str = "cpu") -> pd.DataFrame:
    """Per variant of an experiments table (benchmarks/experiments.tsv): its mean single model and largest ensemble."""
    rows = measured[measured["device"] == device]
    points = []
    for (idea, weights, tta), group in rows.groupby(["idea", "weights", "tta"], sort=False):
        variant = idea + ("" if weights == "raw" else f", {weights} weights") + ("" if tta == "none" else ", shift TTA")
        single, ensembles = group[group["models"] == 1], group[group["models"] > 1]
        points.append({"variant": variant, "models": 1, "valid_acc": single["valid_acc"].mean(),
                       "minutes": single["train_minutes"].mean()})
        if len(ensembles):
            largest = ensembles.sort_values("models").iloc[-1]
            points.append({"variant": variant, "models": int(largest["models"]), "valid_acc": largest["valid_acc"],
                           "minutes": largest["train_minutes"]})
    return pd.DataFrame(points, columns=["variant", "models", "valid_acc", "minutes"])


def plot_accuracy_vs_minutes(experiments: pd.DataFrame, measured: pd.DataFrame | None = None):
    """Validation accuracy against training minutes, all of it and the top: this run's models, and measured points."""
    import matplotlib.pyplot as plt

    run = experiments.assign(minutes=experiments["train_seconds"] / 60, acc=100 * experiments["valid_acc"])
    other = measured if measured is not None else pd.DataFrame(columns=["variant", "models", "valid_acc", "minutes"])
    other = other.assign(acc=100 * other["valid_acc"].astype(float))
    top = max(run["acc"].max(), other["acc"].max() if len(other) else 0)
    bottom = min(run["acc"].min(), other["acc"].min() if len(other) else 100)
    singles, ensembles = run[run["models"] == 1], run[run["models"] > 1]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, low in zip(axes, (bottom - 0.2, top - 0.3)):  # everything, then the top 0.3 points of it
        ax.plot(singles["minutes"], singles["acc"], "o", color="black", label="this run: each model")
        ax.plot(ensembles["minutes"], ensembles["acc"], "s-", color="black", label="this run: its first k models")
        for _, row in ensembles.iterrows():
            ax.annotate(str(row["models"]), (row["minutes"], row["acc"]), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=8)
        for n, (variant, points) in enumerate(other.groupby("variant", sort=False)):  # one model, then the ensemble
            ax.plot(points["minutes"], points["acc"], "x:", color=f"C{n % 10}", markersize=7,
                    label=f"{variant} (mean of {points['models'].max()} models, then together)")
        ax.set(xlabel="training minutes", ylabel="validation accuracy (%)", ylim=(low, top + 0.05))
        ax.grid(alpha=0.3)
    for _, row in run[run["recipe"] == "reference"].iterrows():
        axes[0].annotate("reference", (row["minutes"], row["acc"]), xytext=(6, -3), textcoords="offset points",
                         fontsize=8)
    axes[0].set_title("Accuracy against training time")
    axes[1].set_title("The top of it")
    axes[1].legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig


# --- The notebook's own code, outside the notebook ----------------------------------------


def notebook_code_cells(notebook: str | os.PathLike) -> list[tuple[list[str], str]]:
    """The notebook's code cells as (tags, source) pairs, read as plain JSON (no Jupyter packages needed)."""
    with open(notebook, encoding="utf-8") as file:
        cells = json.load(file)["cells"]
    return [(cell.get("metadata", {}).get("tags", []), "".join(cell["source"])) for cell in cells
            if cell["cell_type"] == "code"]


def run_notebook_cells(notebook: str | os.PathLike, *tags: str) -> dict:
    """Execute the notebook's code cells with these tags, in order, and return their namespace (tests, benchmarks)."""
    cells = notebook_code_cells(notebook)
    namespace: dict = {}
    for tag in tags:
        tagged = [source for cell_tags, source in cells if tag in cell_tags]
        if len(tagged) != 1:
            raise ValueError(f"{notebook}: expected one code cell tagged {tag!r}, found {len(tagged)}.")
        exec(compile(tagged[0], f"{Path(notebook).name}[{tag}]", "exec"), namespace)
    return namespace


# --- Command line: python mnist_helpers.py download | score ---------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python mnist_helpers.py download [--data-dir DIR] [--mnist]` or `score SUBMISSION LABELS`; 1 on error."""
    parser = argparse.ArgumentParser(prog="python mnist_helpers.py", description="Digit Recognizer data and scoring.")
    commands = parser.add_subparsers(dest="command")
    download = commands.add_parser("download", help="put train.csv and test.csv in data/: Kaggle, else MNIST's files")
    download.add_argument("--data-dir", default=str(PROJECT_DIR / "data"), help="where the CSVs go (default: data/)")
    download.add_argument("--mnist", action="store_true", help="build them from MNIST's files even with Kaggle credentials")
    score = commands.add_parser("score", help="validate a submission as Kaggle does and print its accuracy")
    score.add_argument("submission", help="the submission CSV (ImageId,Label)")
    score.add_argument("labels", help="the true labels in the same layout, e.g. data/test_labels.csv")
    args = parser.parse_args(argv)
    if args.command is None:  # Kaggle runs a utility script with no arguments when it saves a version
        parser.print_help()
        return 0
    try:
        if args.command == "download":
            download_data(args.data_dir, use_kaggle=False if args.mnist else None)
        else:
            score_submission(args.submission, args.labels)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
