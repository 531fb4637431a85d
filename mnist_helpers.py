"""Small, tested utilities for the digit-recognizer notebook (Kaggle's MNIST-as-CSV).

The notebook tells the story and holds the model and the training loop; this module
holds the pieces it reuses: finding and validating the data, building tensors and
loaders, choosing the device, seeding, predicting in batches, writing the submission
and a few plots. Each function takes what it needs as arguments: no notebook globals.
"""

from __future__ import annotations

import csv
import gzip
import os
import random
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

N_PIXELS = 28 * 28  # 784 pixels per image, stored row-major
N_CLASSES = 10
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
SUBMISSION_COLUMNS = ["ImageId", "Label"]
CSV_CHUNK_ROWS = 10_000  # rows parsed at a time: ~8 MB of uint8 per chunk (measured: README, "Speed")

PROJECT_DIR = Path(__file__).resolve().parent
KAGGLE_INPUT_DIR = Path("/kaggle/input/digit-recognizer")
DOWNLOAD_COMMAND = (
    "kaggle competitions download -c digit-recognizer -p data && "
    "unzip -o data/digit-recognizer.zip -d data"
)


# --- Finding the data ------------------------------------------------------------


def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The places searched for the CSVs, in order (see README, "Getting the data")."""
    explicit = data_dir if data_dir is not None else os.environ.get("DATA_DIR") or None
    if explicit is not None:
        return [Path(explicit).expanduser()]
    return [KAGGLE_INPUT_DIR, Path.cwd().parent / "input" / "digit-recognizer", PROJECT_DIR / "data"]


def csv_path(data_dir: str | os.PathLike, name: str) -> Path:
    """The path of `name` (e.g. "train.csv") in data_dir, preferring a .csv.gz copy if only it exists."""
    plain = Path(data_dir) / name
    gzipped = plain.with_name(plain.name + ".gz")
    return gzipped if gzipped.exists() and not plain.exists() else plain


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the first folder holding train.csv and test.csv: data_dir, $DATA_DIR, Kaggle, ../input, ./data."""
    searched = data_dir_candidates(data_dir)
    for folder in searched:
        if all(csv_path(folder, name).is_file() for name in ("train.csv", "test.csv")):
            return folder
    places = ", ".join(str(p) for p in searched)
    raise FileNotFoundError(
        f"train.csv and test.csv not found; searched: {places}. "
        f"Get them with `{DOWNLOAD_COMMAND}` (or on Kaggle: Add Input > digit-recognizer), "
        "or point DATA_DIR at the folder that holds them."
    )


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
        next(reader, None)  # the header, already checked
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # it means fields were dropped
            # In chunks of rows, each parsed straight to uint8: peak memory stays near the data's own 1 byte/cell.
            with pd.read_csv(path, dtype=np.uint8, encoding="utf-8-sig", index_col=False, nrows=max_rows,
                             skipinitialspace=True, chunksize=CSV_CHUNK_ROWS) as reader:
                parts = [chunk.to_numpy() for chunk in reader]  # each (rows, columns) uint8
    except (ValueError, OverflowError, pd.errors.ParserWarning, pd.errors.ParserError, OSError, EOFError):
        parts = None  # pandas says only that something is wrong; the scan below says where
    if parts is None or any(part.shape[1] != len(columns) for part in parts):
        problem = _find_bad_cell(path, columns, max_rows)
        raise ValueError(problem or f"{path}: could not be parsed as CSV; re-download it.")
    if sum(len(part) for part in parts) == 0:
        raise ValueError(f"{path}: has a header but no data rows; re-download it.")
    values = np.concatenate(parts)  # a new, writable (N, columns) array
    if columns[0] == "label" and values[:, 0].max() >= N_CLASSES:  # uint8 let labels 10-255 through
        raise ValueError(_find_bad_cell(path, columns, max_rows) or f"{path}: a label is out of range 0-9.")
    return values


def load_train_csv(path: str | os.PathLike, max_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load train.csv(.gz) as X (N, 784) uint8 pixels and y (N,) int64 labels, validating every cell."""
    values = _read_uint8_csv(path, TRAIN_COLUMNS, max_rows)
    return np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64)


def load_test_csv(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Load test.csv(.gz) as X (N, 784) uint8 pixels, validating every cell."""
    return _read_uint8_csv(path, PIXEL_COLUMNS, max_rows)


# --- Tensors, split and loaders ------------------------------------------------------


def to_image_tensor(X: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Turn (N, 784) uint8 pixels into a float32 (N, 1, 28, 28) tensor in [0, 1] on device."""
    pixels = torch.tensor(X, dtype=torch.uint8).to(device)  # copy as uint8: 4x fewer bytes to move than float32
    return pixels.float().div_(255).view(-1, 1, 28, 28)


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


def make_loaders(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray, y_valid: np.ndarray,
                 batch_size: int, seed: int,
                 fast: FastPath | None = None) -> tuple[DataLoader | DeviceBatches, DataLoader | DeviceBatches]:
    """Training and validation batches; only training shuffles (seeded). A fast path may keep them on its device."""
    generator = torch.Generator().manual_seed(seed)
    if fast is not None and fast.data_on_device:
        eval_batch_size = fast.eval_batch_size or batch_size
        return (DeviceBatches(X_train, y_train, batch_size, fast.device, shuffle=True, generator=generator),
                DeviceBatches(X_valid, y_valid, eval_batch_size, fast.device))
    train_set = TensorDataset(to_image_tensor(X_train), torch.from_numpy(np.asarray(y_train, dtype=np.int64)))
    valid_set = TensorDataset(to_image_tensor(X_valid), torch.from_numpy(np.asarray(y_valid, dtype=np.int64)))
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=generator)
    valid_loader = DataLoader(valid_set, batch_size=batch_size, shuffle=False)
    return train_loader, valid_loader


# --- Device and seeding --------------------------------------------------------------


def get_device() -> torch.device:
    """The best device available now: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


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

    def autocast(self) -> AbstractContextManager:
        """A context that runs matmuls and convolutions in amp_dtype; a no-op for fp32."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that scales the loss for fp16 and passes everything through otherwise."""
        return torch.amp.GradScaler(self.device.type, enabled=self.uses_grad_scaler)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move the model to the device, in channels_last when enabled (and switch on cudnn.benchmark)."""
        if self.cudnn_benchmark:
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


def choose_fast_path(device: torch.device | str, enabled: bool = True, bf16: bool | None = None) -> FastPath:
    """The fastest correct settings for device; enabled=False gives the plain fp32 DataLoader pipeline.

    bf16 says whether the device computes bf16 well; None asks the hardware (tests pass it explicitly).
    """
    device = torch.device(device)
    if not enabled:
        return FastPath(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if bf16 is None else bf16  # Ampere and newer
        return FastPath(device, amp_dtype=torch.bfloat16 if bf16 else torch.float16, channels_last=True,
                        data_on_device=True, cudnn_benchmark=True, eval_batch_size=2000, predict_batch_size=4000)
    if device.type == "cpu":
        bf16 = cpu_supports_bf16() if bf16 is None else bf16
        return FastPath(device, amp_dtype=torch.bfloat16 if bf16 else None, channels_last=True,
                        data_on_device=True, eval_batch_size=1000, predict_batch_size=2000)
    return FastPath(device)  # Apple MPS and the rest: the plain fp32 path, which is known to be correct


# --- Prediction and submission -------------------------------------------------------


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    """Slices that cover range(n) in steps of batch_size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    return (slice(start, start + batch_size) for start in range(0, n, batch_size))


def predict_proba(model: torch.nn.Module, X: np.ndarray, fast: FastPath | torch.device | str,
                  batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, 10) for (N, 784) uint8 pixels, batch by batch so memory stays small."""
    fast = fast if isinstance(fast, FastPath) else FastPath(torch.device(fast))
    batch_size = fast.predict_batch_size if batch_size is None else batch_size
    model.eval()  # dropout off
    chunks = []
    with torch.inference_mode(), fast.autocast():
        for rows in _batches(len(X), batch_size):
            xb = to_image_tensor(X[rows], fast.device).to(memory_format=fast.memory_format)  # (B, 1, 28, 28)
            chunks.append(torch.softmax(model(xb).float(), dim=1).cpu())  # (B, 10) float32
    return torch.cat(chunks).numpy() if chunks else np.empty((0, N_CLASSES), dtype=np.float32)


def predict(model: torch.nn.Module, X: np.ndarray, fast: FastPath | torch.device | str,
            batch_size: int | None = None) -> np.ndarray:
    """Predicted labels (N,) int64 for (N, 784) uint8 pixels, computed in batches on fast's (or a plain) device."""
    return predict_proba(model, X, fast, batch_size).argmax(axis=1).astype(np.int64)


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
    ids = submission["ImageId"].to_numpy()
    if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
        row = int(np.argmax(ids != np.arange(1, len(ids) + 1))) + 1
        raise ValueError(f"submission row {row}: ImageId is {ids[row - 1]}, expected {row}; ids run 1..N in order.")
    labels = submission["Label"].to_numpy()
    bad = (labels < 0) | (labels >= N_CLASSES)
    if bad.any():
        row = int(np.argmax(bad)) + 1
        raise ValueError(f"submission row {row}: Label is {labels[row - 1]}, expected a digit 0-9.")


def write_submission(submission: pd.DataFrame, path: str | os.PathLike, expected_rows: int | None = None) -> Path:
    """Check the submission, then write it atomically (temp file, then rename) so a good file is never lost."""
    check_submission(submission, expected_rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            submission.to_csv(file, index=False)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


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


# --- The notebook's own code, outside the notebook ----------------------------------------


def run_notebook_cells(notebook: str | os.PathLike, *tags: str) -> dict:
    """Execute the notebook's code cells with these tags, in order, and return their namespace (tests, benchmarks)."""
    import nbformat

    cells = nbformat.read(notebook, as_version=4).cells
    namespace: dict = {}
    for tag in tags:
        tagged = [c for c in cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
        if len(tagged) != 1:
            raise ValueError(f"{notebook}: expected one code cell tagged {tag!r}, found {len(tagged)}.")
        exec(compile(tagged[0].source, f"{Path(notebook).name}[{tag}]", "exec"), namespace)
    return namespace
