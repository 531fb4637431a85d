#!/usr/bin/env python
"""`make data`: put train.csv and test.csv in data/, from Kaggle with credentials, else built from MNIST's own files.

    python tools/get_data.py [--data-dir DIR] [--mnist]

With Kaggle credentials it runs `kaggle competitions download -c digit-recognizer` and unzips the CSVs. Without them
(or with --mnist) it fetches MNIST's four IDX files with pooch, which checks each file's MD5 and tries the mirrors in
turn, then shuffles the 70,000 images with a fixed seed into Kaggle's layout, plus test_labels.csv for scoring
locally (tools/score.py). Files already there are not fetched again; nothing half-written is ever left under a final
name. Every failure ends in one line.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pooch

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))

from mnist_helpers import KAGGLE_COMMAND, N_PIXELS, PIXEL_COLUMNS, TRAIN_COLUMNS, atomic_write, holds_data

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
        return ("Kaggle rejected the credentials (401): renew the API token in ~/.kaggle/kaggle.json "
                "(Kaggle > Settings).")
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
            raise RuntimeError(f"Kaggle's download {archives[0].name} is not a valid zip; "
                               "run `make data` again.") from None
        written = []
        for name in DATA_FILES:
            if (Path(scratch) / name).is_file() and not (data_dir / name).exists():
                os.replace(Path(scratch) / name, data_dir / name)  # whole files only, never a partial one
                written.append(data_dir / name)
    return written


def fetch_mnist_file(name: str, md5: str, folder: str | os.PathLike, mirrors: Sequence[str] | None = None,
                     show_progress: bool = True) -> Path:
    """One MNIST file in folder: kept if there with the right MD5, else fetched by pooch from each mirror in turn."""
    failures = []
    for mirror in mnist_mirrors() if mirrors is None else mirrors:
        try:  # pooch downloads to a temporary name, checks the MD5, then renames: a bad file is never kept
            return Path(pooch.retrieve(mirror.rstrip("/") + "/" + name, known_hash=f"md5:{md5}", fname=name,
                                       path=folder, progressbar=show_progress))
        except (OSError, ValueError) as error:  # refused, 404, timeout, cut off (requests' errors are OSErrors), MD5
            failures.append(f"{mirror}: {_reason(error)}")
    raise RuntimeError(f"could not download {name} from any mirror ({'; '.join(failures)}); check the network, "
                       f"or get the competition's CSVs with `{KAGGLE_COMMAND}`.")


def _reason(error: Exception) -> str:
    """Why a download failed, in a few words: requests nests the cause several exceptions deep in its message."""
    text = " ".join(str(error).split()) or type(error).__name__
    cause = re.search(r"Failed to resolve '[^']+'|Connection refused|timed out|Connection reset by peer", text)
    return cause.group(0).lower() if cause else text


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
    """Shuffle MNIST's images (seeded) into train.csv, test.csv, sample_submission.csv and test_labels.csv.

    train_rows=None keeps the competition's share: 42,000 of 70,000 images (60%) in train.csv, the rest in test.csv.
    """
    raw_dir, data_dir = Path(raw_dir), Path(data_dir)
    images = np.concatenate([read_idx(raw_dir / f"{part}-images-idx3-ubyte.gz") for part in ("train", "t10k")])
    labels = np.concatenate([read_idx(raw_dir / f"{part}-labels-idx1-ubyte.gz") for part in ("train", "t10k")])
    train_rows = round(len(labels) * KAGGLE_TRAIN_ROWS / MNIST_IMAGES) if train_rows is None else train_rows
    if len(images) != len(labels) or not 0 < train_rows < len(labels):
        raise ValueError(f"{raw_dir}: {len(images)} images and {len(labels)} labels cannot make {train_rows} "
                         "train rows.")
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
                  mirrors: Sequence[str] | None = None, files: dict[str, str] | None = None,
                  train_rows: int | None = None, show_progress: bool = True, kaggle: str | None = None) -> Path:
    """Put train.csv and test.csv in data_dir: from Kaggle with credentials, else built from MNIST's files."""
    data_dir = Path(data_dir)
    if holds_data(data_dir):
        print(f"{data_dir}: train.csv and test.csv are already there; nothing to download.")
        return data_dir
    if kaggle_credentials_found() if use_kaggle is None else use_kaggle:
        download_from_kaggle(data_dir, kaggle=kaggle or _kaggle_cli())
        print(f"{data_dir}: the competition's files from Kaggle.")
        return data_dir
    raw_dir = data_dir / "mnist"  # kept, so that a second run downloads nothing
    pooch.get_logger().setLevel("WARNING")  # its own "Downloading file ..." notes: the progress bar says enough
    for name, md5 in (MNIST_FILES if files is None else files).items():
        fetch_mnist_file(name, md5, raw_dir, mirrors, show_progress)
    mnist_to_kaggle_layout(raw_dir, data_dir, train_rows)
    with open(data_dir / "train.csv") as train, open(data_dir / "test_labels.csv") as labels:
        rows = [sum(1 for _ in file) - 1 for file in (train, labels)]  # less the headers
    print(f"{data_dir}: built from MNIST's own files (no Kaggle credentials used). This is MNIST in Kaggle's layout "
          f"(train.csv {rows[0]:,} rows, test.csv {rows[1]:,} rows), not Kaggle's own row order; test_labels.csv "
          "scores a submission locally: python tools/score.py output/submission.csv data/test_labels.csv")
    return data_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Fetch the data; 0 on success, 1 with a one-line error."""
    parser = argparse.ArgumentParser(prog="python tools/get_data.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(PROJECT_DIR / "data"), help="where the CSVs go (default: data/)")
    parser.add_argument("--mnist", action="store_true",
                        help="build them from MNIST's files even with Kaggle credentials")
    args = parser.parse_args(argv)
    try:
        download_data(args.data_dir, use_kaggle=False if args.mnist else None)
    except (ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
