"""The utilities that digit_recognizer.ipynb calls (`import mnist_helpers as mh`), each docstring naming its section.

Kaggle's utility script, and the first cell of kaggle/digit_recognizer.ipynb. Nothing here reads notebook globals;
tooling the notebook never calls (downloads, scoring from a terminal, the cell runner, the docs) lives in tools/.
"""

from __future__ import annotations

__all__ = [  # what the notebook calls, by section
    "get_device", "choose_runtime", "seed_everything", "output_dir_for",                                   # 1
    "find_data_dir", "load_train_csv", "load_test_csv", "plot_digits",                                 # 2, 3
    "split_train_valid", "to_image_tensor", "Tally", "EpochProgress", "TrainingCheckpoint",               # 4, 6
    "plot_history", "predict", "predict_proba", "write_submission", "score_submission",                  # 6, 7
    "plot_confusion_matrix", "plot_worst_errors", "per_class_accuracy",                                  # 8
    "random_affine", "one_cycle_lrs", "plot_folds", "make_loaders", "ensemble_proba",                    # 9
    "accuracy_with_error", "plot_learning_curves", "kfold_plan", "choose_workers", "run_on_workers",      # 9
    "out_of_fold",                                                                                       # 9
]

import contextlib
import csv
import dataclasses
import gzip
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TextIO

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset, default_collate
from tqdm.auto import tqdm

N_PIXELS = 28 * 28  # 784 pixels per image, stored row-major
N_CLASSES = 10
PIXEL_COLUMNS = [f"pixel{i}" for i in range(N_PIXELS)]
TRAIN_COLUMNS = ["label", *PIXEL_COLUMNS]
SUBMISSION_COLUMNS = ["ImageId", "Label"]
CSV_CHUNK_ROWS = 5_000  # rows parsed at a time: ~31 MB as int64, 4 MB once uint8 (docs/speed.md)

PROJECT_DIR = Path(__file__).resolve().parent
# Kaggle's file tree: input/ (data, attached datasets), usr/lib/ (utility scripts), working/ (outputs).
# $KAGGLE_ROOT moves it, so that tests can build a fake one in a temp dir.
KAGGLE_ROOT = Path(os.environ.get("KAGGLE_ROOT", "/kaggle"))
SEARCH_MAX_DEPTH = 4          # folders below /kaggle/input that the data search descends
SEARCH_MAX_FOLDERS = 10_000   # and how many folders it looks at, at most: a big attached dataset stays cheap
KAGGLE_COMMAND = ("kaggle competitions download -c digit-recognizer -p data && "  # by hand, as `make data` does
                  "unzip -o data/digit-recognizer.zip -d data")
DOWNLOAD_HELP = (f"get them with `make data` or `{KAGGLE_COMMAND}` (docs/data.md), on Kaggle with Add Input > "
                 "digit-recognizer, or point DATA_DIR at the folder that holds them")


# --- Device and seeding (section 1) ----------------------------------------------------------

def cuda_code_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Section 1, for get_device: True when code built for arch ("sm_86", "compute_120") runs on that capability."""
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
    """Section 1, for get_device: None when this build has kernels for CUDA GPU `index`, else one line saying not."""
    arch_list = torch.cuda.get_arch_list()  # what this build was compiled for, e.g. ["sm_75", ..., "compute_120"]
    capability = torch.cuda.get_device_capability(index)
    if not arch_list or any(cuda_code_runs_on(arch, capability) for arch in arch_list):
        return None  # an empty list means a build that does not say: trust it
    machine_code = [arch for arch in arch_list if arch.startswith("sm_")] or arch_list
    return (f"{torch.cuda.get_device_name(index)} (sm_{capability[0]}{capability[1]}) is not supported by this "
            f"PyTorch build ({machine_code[0]} ... {machine_code[-1]}); on Kaggle choose GPU T4 x2; running on the CPU")


def get_device() -> torch.device:
    """Section 1: the first CUDA GPU that this PyTorch has kernels for, else Apple's MPS, else the CPU."""
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
    """Sections 1 and 6, for Runtime and checkpoints: the device's name and CUDA compute capability ("7.5")."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"DEVICE_NAME": device.type, "CAPABILITY": None}
    major, minor = torch.cuda.get_device_capability(device)
    return {"DEVICE_NAME": torch.cuda.get_device_name(device), "CAPABILITY": f"{major}.{minor}"}


def seed_everything(seed: int, deterministic: bool = False, device: torch.device | str | None = None) -> None:
    """Sections 1 and 9: seed Python, NumPy and PyTorch (the CPU; every GPU, or with device only that one GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":  # a parallel worker: its own GPU, not the other workers'
        torch.default_generator.manual_seed(seed)
        torch.cuda.init()  # so that the generator below exists, rather than a lazy seeding of whichever GPU is current
        torch.cuda.default_generators[_cuda_index(device)].manual_seed(seed)
    else:
        torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:  # CPU runs repeat without this; on CUDA it costs speed (docs/reproducibility.md)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable matmuls
        torch.use_deterministic_algorithms(True, warn_only=True)  # warn where CUDA has no repeatable kernel
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _cuda_index(device: torch.device) -> int:
    """The GPU number of a CUDA device: 1 for cuda:1; the current GPU for plain cuda."""
    return device.index if device.index is not None else torch.cuda.current_device()


# --- The runtime: how to compute fastest on this device (section 1, appendix) -------------------

@dataclass(frozen=True)
class Runtime:
    """Sections 1-9: how to compute on one device: precision, memory format, where the batches live, batch sizes."""

    device: torch.device
    fast: bool = False                   # False: the plain fp32 DataLoader pipeline of the reference
    amp_dtype: torch.dtype | None = None  # None: plain fp32; torch.bfloat16 or torch.float16: autocast
    channels_last: bool = False          # NHWC activations, the layout oneDNN and cuDNN convolve fastest
    data_on_device: bool = False         # whole tensors on the device, batches sliced there (DeviceBatches)
    cudnn_benchmark: bool = False        # let cuDNN time its convolution algorithms once, then reuse the best
    fused: bool | None = None            # Adam's fused kernel: True on CUDA; None: torch's own choice
    eval_batch_size: int | None = None   # validation batch; None: the training batch
    predict_batch_size: int = 1000       # test images per forward pass

    @property
    def precision(self) -> str:
        """What the convolutions compute in: "bfloat16", "float16" or "float32"."""
        return str(self.amp_dtype or torch.float32).removeprefix("torch.")

    @property
    def memory_format(self) -> torch.memory_format:
        """torch.channels_last or torch.contiguous_format."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        """Section 1: two lines: the device (a GPU's name and compute capability), then what the fast path does."""
        facts = device_facts(self.device)
        gpu = f" ({facts['DEVICE_NAME']}, compute capability {facts['CAPABILITY']})" if facts["CAPABILITY"] else ""
        return (f"device: {self.device}{gpu}, torch {torch.__version__}\nfast path: {self.fast} (autocast "
                f"{self.precision}, channels_last {self.channels_last}, data on device {self.data_on_device})")

    def autocast(self) -> AbstractContextManager:
        """Section 6: run matmuls and convolutions in amp_dtype; for fp32 a plain no-op context."""
        if self.amp_dtype is None:  # not torch.autocast(..., enabled=False): older PyTorch refuses it on MPS
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Section 6: a GradScaler that scales the loss for fp16 (small gradients would flush to zero), else passes."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Section 5: the model on the device, in channels_last when enabled (and cudnn.benchmark switched on)."""
        if self.cudnn_benchmark and not torch.are_deterministic_algorithms_enabled():
            torch.backends.cudnn.benchmark = True  # a global switch, so set here, when a model is placed, not at build
        return model.to(self.device, memory_format=self.memory_format)

    def to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Section 6: one batch on the device, in the model's memory format (a no-op when it is already there)."""
        return xb.to(self.device, memory_format=self.memory_format), yb.to(self.device)

    def batches(self, loader: DataLoader) -> DataLoader | DeviceBatches:
        """Section 4: the loader itself, or on the fast path its batches sliced on the device (bigger to evaluate)."""
        plain_shuffle = type(loader.sampler) is RandomSampler and not loader.sampler.replacement and \
            loader.sampler.num_samples == len(loader.dataset) and loader.sampler.generator is loader.generator
        plain = isinstance(loader.dataset, TensorDataset) and loader.batch_size is not None and \
            loader.collate_fn is default_collate and (plain_shuffle or type(loader.sampler) is SequentialSampler)
        if not self.data_on_device or not plain:
            return loader  # its own dataset, sampler or collate_fn: served as the DataLoader serves it
        training = isinstance(loader.sampler, RandomSampler)
        return DeviceBatches(loader, self.device, None if training else self.eval_batch_size)


def cpu_supports_bf16() -> bool:
    """Section 1, for choose_runtime: True when the CPU computes bf16 natively (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cuda_autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """Section 1, for choose_runtime: bf16 from compute capability 8.0 on, fp16 on 7.x, None (fp32) below."""
    major, _ = torch.cuda.get_device_capability(device)
    # Not torch.cuda.is_bf16_supported(): it also says True on a T4 or P100, which only emulate bf16, slowly.
    return torch.bfloat16 if major >= 8 else torch.float16 if major == 7 else None


def choose_runtime(device: torch.device | str, fast: bool = True, bf16: bool | None = None) -> Runtime:
    """Section 1: the fastest correct settings for device, no global touched; fast=False: plain fp32; bf16: CPU's."""
    device = torch.device(device)
    if not fast:
        return Runtime(device)
    if device.type == "cuda":
        amp_dtype = cuda_autocast_dtype(device)  # channels_last pays only where tensor cores do the convolutions
        # fused Adam: one kernel steps every weight, and fp16's GradScaler hands it the inf check on the GPU; the
        # unfused step would wait for that check on the CPU (.item()) at every batch.
        return Runtime(device, True, amp_dtype, channels_last=amp_dtype is not None, data_on_device=True,
                       cudnn_benchmark=True, fused=True, eval_batch_size=2000, predict_batch_size=4000)
    if device.type == "cpu":
        bf16 = cpu_supports_bf16() if bf16 is None else bf16
        return Runtime(device, True, torch.bfloat16 if bf16 else None, channels_last=True, data_on_device=True,
                       eval_batch_size=1000, predict_batch_size=2000)
    return Runtime(device, True)  # Apple MPS and the rest: the plain fp32 path, which is known to be correct


# --- Finding the data (section 2) ------------------------------------------------------

def data_dir_candidates(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Section 2, for find_data_dir: the fixed places searched for the CSVs, in order (docs/data.md)."""
    explicit = data_dir if data_dir is not None else os.environ.get("DATA_DIR") or None
    if explicit is not None:
        return [Path(explicit).expanduser()]
    kaggle_input = KAGGLE_ROOT / "input"
    return [kaggle_input / "digit-recognizer", kaggle_input / "competitions" / "digit-recognizer",
            Path.cwd().parent / "input" / "digit-recognizer", PROJECT_DIR / "data"]


def csv_path(path: str | os.PathLike) -> Path:
    """Section 2, for the loaders: path (e.g. data/train.csv), or its .csv.gz copy when only that exists."""
    plain = Path(path)
    gzipped = plain.with_name(plain.name + ".gz")
    return gzipped if gzipped.exists() and not plain.exists() else plain


def holds_data(folder: Path) -> bool:
    """Section 2, for find_data_dir: True when folder has both train.csv and test.csv (plain or gzipped)."""
    return all(csv_path(folder / name).is_file() for name in ("train.csv", "test.csv"))


def search_data_dir(root: str | os.PathLike, max_depth: int = SEARCH_MAX_DEPTH,
                    max_folders: int = SEARCH_MAX_FOLDERS) -> Path | None:
    """Section 2, for find_data_dir: the first folder under root (breadth first, bounded) with both CSVs, or None."""
    level, looked_at = [Path(root)], 0
    for _ in range(max_depth + 1):
        below = []
        for folder in level:
            looked_at += 1
            if looked_at > max_folders:
                return None
            if holds_data(folder):
                return folder
            with contextlib.suppress(OSError), os.scandir(folder) as entries:  # unreadable or vanished: skip it
                below += sorted(Path(entry.path) for entry in entries if entry.is_dir())
        level = below
    return None


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Section 2: the folder with train.csv and test.csv: data_dir, $DATA_DIR, Kaggle's, ./data, /kaggle/input/**."""
    searched = data_dir_candidates(data_dir)
    for folder in searched:
        if holds_data(folder):
            return folder
    explicit = data_dir is not None or os.environ.get("DATA_DIR")
    found = None if explicit else search_data_dir(KAGGLE_ROOT / "input")  # a dataset attached under any name
    if found is not None:
        return found
    places = ", ".join(str(p) for p in searched) + ("" if explicit else f", every folder under {KAGGLE_ROOT / 'input'}")
    raise FileNotFoundError(f"train.csv and test.csv not found; searched: {places}. To fix it, {DOWNLOAD_HELP}.")


def output_dir_for(output_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """Section 1: output_dir (created); None: /kaggle/working on Kaggle, where Submit looks, else ./output."""
    on_kaggle = bool(os.environ.get("KAGGLE_KERNEL_RUN_TYPE")) or (KAGGLE_ROOT / "working").is_dir()  # Kaggle's signs
    folder = Path(output_dir) if output_dir is not None else KAGGLE_ROOT / "working" if on_kaggle else Path("output")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- Loading and validating the CSVs (section 2) ---------------------------------------

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
        reader, row_number = csv.reader(text), 0
        try:
            next(reader, None)  # the header, already checked
            for fields in reader:
                if not fields:
                    continue  # blank lines are skipped, as pandas does
                row_number += 1
                if max_rows is not None and row_number > max_rows:
                    break
                where = f"{path}: row {row_number} (line {reader.line_num})"
                if len(fields) != len(columns):
                    return f"{where} has {len(fields)} fields, expected {len(columns)}; fix or remove that row."
                for name, cell in zip(columns, fields):
                    problem = _cell_problem(cell, 9 if name == "label" else 255)
                    if problem:
                        kind = "labels must be integers 0-9" if name == "label" else "pixels must be integers 0-255"
                        return f"{where}, column '{name}': {problem}; {kind}, so fix that cell or re-download the file."
        except UnicodeDecodeError as error:
            return (f"{path}: line {reader.line_num + 1}: bytes that are not UTF-8 text ({error.reason}); "
                    "re-download the file.")
        except (csv.Error, OSError, EOFError) as error:  # e.g. an unclosed quote, a truncated .gz
            return (f"{path}: line {reader.line_num}: {str(error) or type(error).__name__}; fix that line or "
                    "re-download the file.")
    return None


def _read_uint8_csv(path: str | os.PathLike, columns: list[str], max_rows: int | None) -> np.ndarray:
    """Read and fully validate a digits CSV (or its .csv.gz) into a (N, len(columns)) uint8 array."""
    path = csv_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. To fix it, {DOWNLOAD_HELP}.")
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
    """Section 2: train.csv(.gz) as X (N, 784) uint8 pixels and y (N,) int64 labels, every cell checked."""
    values = _read_uint8_csv(path, TRAIN_COLUMNS, max_rows)
    return np.ascontiguousarray(values[:, 1:]), values[:, 0].astype(np.int64)


def load_test_csv(path: str | os.PathLike, max_rows: int | None = None) -> np.ndarray:
    """Section 2: test.csv(.gz) as X (N, 784) uint8 pixels, every cell checked."""
    return _read_uint8_csv(path, PIXEL_COLUMNS, max_rows)


# --- Tensors, split and loaders (section 4) -----------------------------------------------

_PIXEL_VALUES = torch.arange(256, dtype=torch.float32) / 255  # (256,): pixel value -> float32 in [0, 1]


def to_image_tensor(X: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sections 4 and 9: (N, 784) uint8 pixels as a float32 (N, 1, 28, 28) tensor in [0, 1] on device."""
    pixels = torch.tensor(np.ascontiguousarray(X), dtype=torch.uint8).to(device)  # uint8: 4x fewer bytes to move
    # A table of the 256 values, divided on the CPU: CUDA's x / 255 multiplies by 1/255 instead, which is one
    # rounding off for some pixels, so a GPU run would not see the CPU's inputs bit for bit.
    return torch.index_select(_PIXEL_VALUES.to(device), 0, pixels.view(-1).int()).view(-1, 1, 28, 28)


def split_train_valid(X: np.ndarray, y: np.ndarray, valid_size: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Section 4: a stratified, seeded split: X_train, X_valid, y_train, y_valid, with the same mix of digits."""
    return train_test_split(X, y, test_size=valid_size, random_state=seed, stratify=y)


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Section 9, for kfold_plan: each row's fold (N,), 0 .. folds - 1, seeded, each with the same mix of digits."""
    counts = np.bincount(y, minlength=N_CLASSES)
    fewest = int(np.argmin(np.where(counts > 0, counts, len(y) + 1)))  # the rarest digit present
    if folds < 2 or counts[fewest] < folds:
        raise ValueError(f"FOLDS={folds}: K-fold needs at least 2 folds and at least FOLDS images of each digit "
                         f"(digit {fewest} has {counts[fewest]}); set FOLDS between 2 and {counts[fewest]}, or raise "
                         "TRAIN_ROWS.")
    fold = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (_, held_out) in enumerate(splitter.split(np.zeros((len(y), 1)), y)):
        fold[held_out] = f
    return fold


class DeviceBatches:
    """Section 4, from runtime.batches: a DataLoader's own batches, sliced from its tensors kept on the device."""

    def __init__(self, loader: DataLoader, device: torch.device | str, batch_size: int | None = None):
        """loader: over a TensorDataset; batch_size: its own unless given (bigger batches for evaluation)."""
        self.dataset = TensorDataset(*(tensor.to(device) for tensor in loader.dataset.tensors))
        self.batch_size, self.drop_last = batch_size or loader.batch_size, loader.drop_last
        self.shuffle, self.generator = isinstance(loader.sampler, RandomSampler), loader.generator

    def __len__(self) -> int:
        """The number of batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (images, labels) batches: the DataLoader's own, as its sampler draws them from its generator."""
        images, labels = self.dataset.tensors
        # A DataLoader over the row numbers has the same sampler, so the same draws from the generator, and so the
        # same batches as the real loader; only a batch's row numbers are copied, and the images stay where they are.
        for rows in DataLoader(range(len(images)), self.batch_size, shuffle=self.shuffle, generator=self.generator,
                               drop_last=self.drop_last):
            rows = rows.to(images.device, non_blocking=True)  # (B,) row numbers
            yield images[rows], labels[rows]


def make_loaders(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None,
                 batch_size: int, seed: int, runtime: Runtime) -> tuple:
    """Section 9: section 4's loaders in one call (valid is None without X_valid); only training shuffles, seeded."""
    def dataset(X: np.ndarray, y: np.ndarray) -> TensorDataset:
        return TensorDataset(to_image_tensor(X), torch.from_numpy(np.asarray(y, dtype=np.int64)))

    train = DataLoader(dataset(X_train, y_train), batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    valid = None if X_valid is None else runtime.batches(DataLoader(dataset(X_valid, y_valid), batch_size))
    return runtime.batches(train), valid


# --- Prediction and submission (sections 7 and 9) -------------------------------------------

# The device's allocator failing under the libraries too: cuDNN's and cuBLAS's workspaces, a CUDA or MPS out-of-memory.
OUT_OF_MEMORY = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "out of memory")


def _is_out_of_memory(error: RuntimeError) -> bool:
    """True when error says the device ran out of memory (torch.OutOfMemoryError, or a library's own words)."""
    return isinstance(error, torch.OutOfMemoryError) or any(words in str(error) for words in OUT_OF_MEMORY)


def _halve_after_oom(batch_size: int) -> int:
    """The batch size to retry with after the device ran out of memory; gives up below 1."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # hand the failed batch's blocks back before retrying
    if batch_size // 2 < 1:
        raise RuntimeError("prediction ran out of GPU memory even with a batch of 1 image; free GPU memory "
                           "(restart the kernel, close other notebooks) or predict on the CPU.")
    warnings.warn(f"out of memory at a batch of {batch_size} images; retrying with {batch_size // 2}.", stacklevel=3)
    return batch_size // 2


def _predict_batch(model: torch.nn.Module, X: np.ndarray, runtime: Runtime,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
    """The softmax (B, 10) of (B, 784) pixels, on the CPU; its tensors on the device live only in this call."""
    xb = to_image_tensor(X, runtime.device)  # (B, 1, 28, 28)
    xb = (transform(xb) if transform else xb).to(memory_format=runtime.memory_format)
    return torch.softmax(model(xb).float(), dim=1).cpu()  # (B, 10) float32


def predict_proba(model: torch.nn.Module, X: np.ndarray, runtime: Runtime | torch.device | str,
                  batch_size: int | None = None, show_progress: bool | str = False,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Section 8: probabilities (N, 10) of (N, 784) pixels, in batches halved after out-of-memory; TTA: transform."""
    runtime = runtime if isinstance(runtime, Runtime) else Runtime(torch.device(runtime))
    batch_size = runtime.predict_batch_size if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    model.eval()  # dropout off
    chunks, start = [], 0
    with torch.inference_mode(), runtime.autocast(), _progress(None, "predict", show_progress, total=len(X),
                                                               unit="img", leave=False) as bar:
        while start < len(X):
            try:
                proba = _predict_batch(model, X[start:start + batch_size], runtime, transform)
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if not _is_out_of_memory(error):
                    raise
                proba = None
            if proba is None:  # halved out here: the error's traceback, and the failed batch with it, are gone
                batch_size = _halve_after_oom(batch_size)
                continue
            chunks.append(proba)
            start += len(proba)
            bar.update(len(proba))
    return torch.cat(chunks).numpy() if chunks else np.empty((0, N_CLASSES), dtype=np.float32)


def predict(model: torch.nn.Module, X: np.ndarray, runtime: Runtime | torch.device | str,
            batch_size: int | None = None, show_progress: bool | str = False) -> np.ndarray:
    """Section 7: predicted labels (N,) int64 of (N, 784) uint8 pixels, in batches of the runtime's size."""
    return predict_proba(model, X, runtime, batch_size, show_progress).argmax(axis=1).astype(np.int64)


def ensemble_proba(models: Sequence[torch.nn.Module], X: np.ndarray, runtime: Runtime | torch.device | str,
                   tta: int = 0, tta_strength: float = 0.5, seed: int = 0) -> np.ndarray:
    """Section 9: the mean softmax (N, 10) of several models, over the images and `tta` augmented copies of them."""
    generator = torch.Generator().manual_seed(seed)
    runs = [predict_proba(model, X, runtime) for model in models]
    runs += [predict_proba(model, X, runtime, transform=lambda xb: random_affine(xb, strength=tta_strength,
                                                                                generator=generator))
             for model in models for _ in range(tta)]
    return np.mean(runs, axis=0)


def check_submission(submission: pd.DataFrame, expected_rows: int | None = None) -> None:
    """Sections 7 and 9, for write_submission: a one-line ValueError unless ImageId is 1..N and Label 0-9."""
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
    """Sections 6, 7 and 9, for checkpoints and submissions: write path through a temp file, then rename it."""
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


def _as_submission(labels: Sequence[int] | np.ndarray | pd.Series | pd.DataFrame) -> pd.DataFrame:
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
    """Sections 7 and 9: check the labels (1-D, or an ImageId,Label frame), then write them atomically."""
    submission = _as_submission(labels)
    check_submission(submission, expected_rows)
    return atomic_write(path, lambda file: submission.to_csv(file, index=False))


def read_submission_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Section 7, for score_submission: read an ImageId,Label CSV, or raise a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file.")
    try:
        return pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True)
    except (ValueError, pd.errors.ParserError, OSError, EOFError) as error:  # EmptyDataError, bad bytes, ...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: is not a readable CSV ({reason}); it needs the header ImageId,Label.") from None


def score_submission(submission_path: str | os.PathLike, labels_path: str | os.PathLike) -> float:
    """Sections 7 and 9: validate a submission as Kaggle does, then print and return its accuracy against labels."""
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


# --- Plots and error analysis (sections 3, 6, 8 and 9) ------------------------------------------

def plot_digits(X: np.ndarray, labels: Sequence | None = None, ncols: int = 10):
    """Sections 3, 7 and 9: a grid of (N, 784) digits, each titled with its label when labels are given."""
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


def plot_history(history: pd.DataFrame | Sequence[dict]):
    """Section 6: learning curves: training and validation loss and accuracy per epoch."""
    frame = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, (name, scale, label) in zip(axes, (("loss", 1, "cross-entropy loss"), ("acc", 100, "accuracy (%)"))):
        for split in ("train", "valid"):
            ax.plot(frame["epoch"], scale * frame[f"{split}_{name}"], "o-", label=split)
        ax.set(xlabel="epoch", ylabel=label, title=label.split(" (")[0].capitalize())
        ax.legend()
    fig.tight_layout()
    return fig


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> pd.Series:
    """Sections 8 and 9: the share of each digit's images predicted right (NaN for a digit with none), from 0 to 9."""
    y_true = np.asarray(y_true, dtype=np.int64)
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(N_CLASSES))) if len(y_true) else np.zeros((10, 10))
    with np.errstate(invalid="ignore"):  # over every image of the digit, so a prediction outside 0-9 counts as wrong
        right = matrix.diagonal() / np.bincount(y_true, minlength=N_CLASSES)[:N_CLASSES]
    return pd.Series(right, index=pd.RangeIndex(N_CLASSES, name="digit"), name="accuracy")


def plot_confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, title: str = "Confusion matrix"):
    """Sections 8 and 9: scikit-learn's confusion matrix of true (rows) against predicted (columns) digits."""
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=list(range(N_CLASSES)), ax=ax, cmap="Blues",
                                            colorbar=False)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def worst_errors(y_true: np.ndarray, proba: np.ndarray, k: int = 12) -> np.ndarray:
    """Sections 8 and 9, for plot_worst_errors: the k most confident mistakes, by P(predicted) - P(true)."""
    y_true = np.asarray(y_true)
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    margin = proba[wrong, predicted[wrong]] - proba[wrong, y_true[wrong]]
    return wrong[np.argsort(-margin, kind="stable")[:k]]


def plot_worst_errors(X: np.ndarray, y_true: np.ndarray, proba: np.ndarray, k: int = 12, ncols: int = 6):
    """Sections 8 and 9: the k most confident mistakes, each titled 'true t, pred p (probability)'."""
    index = worst_errors(y_true, proba, k)
    titles = [f"true {y_true[i]}, pred {proba[i].argmax()}\n(p={proba[i].max():.2f})" for i in index]
    fig = plot_digits(X[index], titles, ncols=ncols)
    for ax in fig.axes:
        ax.title.set_fontsize(8)
    fig.tight_layout()
    return fig


def accuracy_with_error(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, int, float]:
    """Section 9: accuracy, mistakes and the accuracy's standard error, sqrt(p (1 - p) / n) for n images."""
    wrong = int((np.asarray(y_pred) != np.asarray(y_true)).sum())
    accuracy = 1 - wrong / len(y_true)
    return accuracy, wrong, float(np.sqrt(accuracy * (1 - accuracy) / len(y_true)))


def plot_folds(folds: int):
    """Section 9: which fold each K-fold model trains on and which one it is scored on, as a grid."""
    fig, ax = plt.subplots(figsize=(1.3 * folds + 1.5, 0.45 * folds + 1))
    ax.imshow(np.eye(folds), cmap="Oranges", vmin=-0.6, vmax=1.4, aspect="auto")
    for model, fold in np.ndindex(folds, folds):
        ax.text(fold, model, "scored" if model == fold else "train", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(folds), [f"fold {f + 1}" for f in range(folds)])
    ax.set_yticks(range(folds), [f"model {m + 1}" for m in range(folds)])
    ax.tick_params(length=0)
    ax.set_title(f"{folds}-fold: each model learns from {folds - 1} folds and is scored on the one it never saw",
                 fontsize=10)
    fig.tight_layout()
    return fig


def plot_learning_curves(histories: dict[str, pd.DataFrame]):
    """Section 9: the validation accuracy per epoch of every model of the run, on one plot."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, history in histories.items():
        ax.plot(history["epoch"], 100 * history["valid_acc"], "o-", markersize=3, label=name)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Learning curves", ylim=(96.5, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


# --- Going further: augmentation and schedules (section 9) -------------------------------------

def _to_device_async(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on device; to a GPU from page-locked memory, a copy the CPU does not wait for."""
    if device.type == "cuda":  # from ordinary memory, the copy would first wait for the GPU's queued work
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


def random_affine(images: torch.Tensor, degrees: float = 10.0, zoom: float = 0.1, shift: float = 0.1,
                  strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Section 9: rotate (±degrees), zoom (1±zoom) and shift (±shift) each (B, 1, H, W) image at random; no flips."""
    # Four uniform draws in [-1, 1) per image (angle, zoom, dx, dy), on the CPU so that a CPU generator can seed them.
    u = _to_device_async(torch.rand(len(images), 4, generator=generator) * 2 - 1, images.device) * strength
    angle, scale = u[:, 0] * degrees * torch.pi / 180, 1 + u[:, 1] * zoom
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output -> input coordinates, so 1/scale
    theta = torch.stack([torch.stack([cos, -sin, u[:, 2] * 2 * shift], 1),  # grid units: the image spans [-1, 1],
                         torch.stack([sin, cos, u[:, 3] * 2 * shift], 1)], 1)  # so 10% of it is 0.2
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def one_cycle_lrs(max_lr: float, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Section 9: the learning rate at every step of torch's OneCycleLR with these settings, to plot it."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=max_lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(epochs * steps_per_epoch):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


# --- K-fold models, several at once (section 9) -------------------------------------------------

@dataclass(frozen=True)
class KFoldModel:
    """Section 9, from kfold_plan: one model of the K-fold run, and the rows of its fold, which it never trains on."""

    round: int             # 1 .. ROUNDS: each round cuts new folds
    fold: int              # 1 .. FOLDS
    seed: int              # its own: weights, shuffling, dropout, augmentation
    name: str              # "fold 3", or "round 2, fold 3"
    checkpoint: str        # its file in OUTPUT_DIR, whoever trains it: "best-round2-fold3.pt"
    held_out: np.ndarray   # (N,) bool: the rows of its fold


def kfold_plan(y: np.ndarray, folds: int, rounds: int, seed: int) -> list[KFoldModel]:
    """Section 9: the rounds x folds models, round by round; a round's folds are stratified and seeded (seed + r)."""
    plan = []
    for r in range(rounds):
        fold_of = stratified_folds(y, folds, seed + r)  # (N,): 0 .. folds - 1
        for f in range(folds):
            k = r * folds + f + 1  # the model's number, so its seed is seed + k
            plan.append(KFoldModel(r + 1, f + 1, seed + k, f"round {r + 1}, fold {f + 1}" if rounds > 1 else
                                   f"fold {f + 1}", f"best-round{r + 1}-fold{f + 1}.pt", fold_of == f))
    return plan


def out_of_fold(plan: Sequence[KFoldModel], probas: Iterable[np.ndarray]) -> np.ndarray:
    """Section 9: (R, N, 10): for each round, each row's probabilities from the one model that never saw it."""
    rounds, rows = max(model.round for model in plan), len(plan[0].held_out)
    oof = np.full((rounds, rows, N_CLASSES), np.nan, dtype=np.float32)
    for model, proba in zip(plan, probas, strict=True):
        oof[model.round - 1, model.held_out] = proba
    return oof


@dataclass(frozen=True)
class Workers:
    """Section 9, from choose_workers: the processes that train models at once, one device each, and their threads."""

    devices: tuple[str, ...]  # ("cuda:0", "cuda:1"), or ("cpu", "cpu"); a single one: in this process, in turn
    threads: int              # CPU threads each worker computes with: its share of the cores
    measured: tuple[tuple[int, float], ...] = ()  # CPU "auto": (workers, images/s in total) for each count tried

    def describe(self) -> str:
        """One line: how many workers, on what, and the measurements that chose them."""
        if len(self.devices) == 1:
            what = f"1 worker: this process, on {self.devices[0]}, one model after another"
        else:
            what = f"{len(self.devices)} workers at once ({', '.join(self.devices)}), {_threads(self.threads)} each"
        tried = ", ".join(f"{n} x {_threads(self.cores // n)} {rate:,.0f} img/s" for n, rate in self.measured)
        return what + (f" (measured: {tried})" if tried else "")

    @property
    def cores(self) -> int:
        """The CPU threads of all workers together."""
        return self.threads * len(self.devices)


def _threads(count: int) -> str:
    """"1 CPU thread", "2 CPU threads"."""
    return f"{count} CPU thread{'s' if count > 1 else ''}"


def usable_gpus() -> list[str]:
    """Section 9, for choose_workers: the CUDA GPUs that this PyTorch has kernels for, as "cuda:0", "cuda:1", ..."""
    if not torch.cuda.is_available():
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count()) if unsupported_gpu_message(i) is None]


def choose_workers(workers: int | str, runtime: Runtime, models: int, make_model: Callable[[], torch.nn.Module],
                   batch_size: int, measure: Callable[..., float] | None = None) -> Workers:
    """Section 9: WORKERS as processes: "auto" is one per usable GPU, else the count that measures fastest here."""
    if not (workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 1)):
        raise ValueError(f"WORKERS must be 'auto' or a whole number, 1 or more, got {workers!r}.")
    cores = torch.get_num_threads()
    if runtime.device.type == "cuda":
        gpus = usable_gpus() or [str(runtime.device)]
        count = len(gpus) if workers == "auto" else workers
        return Workers(tuple(gpus[i % len(gpus)] for i in range(min(count, models))), max(1, cores // count))
    if workers != "auto" or runtime.device.type != "cpu":  # MPS, or a count given: as many as asked
        count = 1 if workers == "auto" else min(workers, models)
        return Workers((str(runtime.device),) * count, max(1, cores // count))
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= min(cores, models)]  # each with cores // n threads
    if len(counts) < 2:  # one core, or one model: nothing to choose between
        return Workers(("cpu",), cores)
    measured = tuple((n, (measure or _measure_workers)(n, cores // n, make_model, runtime, batch_size)) for n in counts)
    best = max(measured, key=lambda pair: pair[1])[0]
    return Workers(("cpu",) * best, cores // best, measured)


def _measure_workers(workers: int, threads: int, make_model: Callable[[], torch.nn.Module], runtime: Runtime,
                     batch_size: int, seconds: float = 3.0) -> float:
    """Images per second that `workers` processes of `threads` threads train in total, over the same few seconds."""
    from joblib import Parallel, delayed
    with Parallel(n_jobs=workers) as parallel:  # the same worker processes for the warm-up and the timed window
        parallel(delayed(_training_rate)(make_model, runtime, threads, batch_size, None, None) for _ in range(workers))
        start = time.time() + 1.0  # every worker started and warm, then all of them timed over one window
        counts = parallel(delayed(_training_rate)(make_model, runtime, threads, batch_size, start, start + seconds)
                          for _ in range(workers))
    return sum(counts) / seconds


def _training_rate(make_model: Callable[[], torch.nn.Module], runtime: Runtime, threads: int, batch_size: int,
                   start: float | None, end: float | None) -> int:
    """In a worker: train on random batches with `threads` threads; the images of the steps run from start to end."""
    found = torch.get_num_threads()  # joblib runs one worker's job in this process: put its threads back after
    torch.set_num_threads(threads)
    model = runtime.prepare_model(make_model())
    optimizer = torch.optim.Adam(model.parameters(), fused=runtime.fused)
    xb = torch.rand(batch_size, 1, 28, 28).to(runtime.device, memory_format=runtime.memory_format)
    yb = torch.randint(0, N_CLASSES, (batch_size,), device=runtime.device)
    images, stop = 0, end if end is not None else time.time() + 0.5  # the warm-up: half a second
    while time.time() < stop:
        began = time.time()
        with runtime.autocast():
            loss = F.cross_entropy(model(xb).float(), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if start is not None and began >= start and time.time() <= stop:
            images += batch_size
    torch.set_num_threads(found)
    return images


def _waves(jobs: int, workers: Workers) -> list[list[tuple[list[int], str, int]]]:
    """The jobs' order of play: waves of (job numbers, device, threads) shares, one share per worker process."""
    count = min(len(workers.devices), jobs)
    on_cpu = workers.devices[0] == "cpu"
    if not on_cpu or jobs % count == 0:  # even shares; or GPUs, where a model cannot use two
        threads = workers.cores // count if on_cpu else workers.threads
        return [[(list(range(w, jobs, count)), workers.devices[w], threads) for w in range(count)]]
    # On the CPU, by cores: the whole waves first, each worker with its share of the cores; then the last few models
    # at once, with all the cores between them, so that no core waits while the last model trains on one.
    whole = jobs - jobs % count
    return [[(list(range(w, whole, count)), "cpu", workers.threads) for w in range(count)],
            [([k], "cpu", workers.cores // (jobs - whole)) for k in range(whole, jobs)]]


class _Relay:
    """A worker's stdout, line by line onto a queue that the notebook's process prints from, as the lines come."""

    def __init__(self, queue):
        """queue: a multiprocessing manager's queue, shared with the notebook's process."""
        self.queue, self.pending = queue, ""

    def write(self, text: str) -> int:
        """Send each finished line."""
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            self.queue.put(line)
        return len(text)

    def flush(self) -> None:
        """Lines are sent as they end."""


def _each(function: Callable, jobs: Sequence | dict, numbers: list[int], runtime: Runtime,
          kwargs: dict) -> list[tuple[int, object]]:
    """(number, function(jobs[number], ...)) for each number in turn; a failure in one line naming the job."""
    results = []
    for position, number in enumerate(numbers):
        try:
            results.append((number, function(jobs[number], runtime=runtime, models_after=len(numbers) - position - 1,
                                             **kwargs)))
        except Exception as error:
            where = getattr(jobs[number], "name", jobs[number])
            raise RuntimeError(f"{where} failed on {runtime.device}: {type(error).__name__}: {error}") from None
    return results


def _run_share(function: Callable, jobs: list, numbers: list[int], device: str, threads: int, runtime: Runtime,
               queue, kwargs: dict) -> list[tuple[int, object]]:
    """In a worker: its jobs in turn, on its device with its threads, its printed lines sent to the queue."""
    if threading.current_thread() is threading.main_thread():  # a loky process; Dask runs tasks in a thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the notebook's to handle: it stops every worker
    torch.set_num_threads(threads)
    runtime = dataclasses.replace(runtime, device=torch.device(device))
    with contextlib.redirect_stdout(_Relay(queue)) if queue is not None else contextlib.nullcontext():
        return _each(function, dict(zip(numbers, jobs)), numbers, runtime, kwargs)


def _run_here(function: Callable, jobs: Sequence, numbers: list[int], device: str, threads: int, runtime: Runtime,
              kwargs: dict) -> list[tuple[int, object]]:
    """These jobs in turn, in this process, with `threads` threads for the while."""
    found = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _each(function, jobs, numbers, dataclasses.replace(runtime, device=torch.device(device)), kwargs)
    finally:
        torch.set_num_threads(found)


@contextlib.contextmanager
def _printing_relay(local: bool) -> Iterator[object]:
    """A queue that workers on this machine write their lines to, and a thread here that prints them; else None."""
    if not local:  # a cluster's workers cannot reach this machine's queue: their lines go to their own logs
        yield None
        return
    from multiprocessing.managers import SyncManager

    from joblib.externals.loky.backend.context import get_context
    # Started as loky starts its workers: a fresh process (no fork of a process that may hold CUDA), which unlike
    # multiprocessing's "spawn" does not run the caller's script again. It ignores SIGINT, as the workers do: Jupyter
    # interrupts the kernel's whole process group, and the queue must outlive that until the workers are stopped.
    manager = SyncManager(ctx=get_context("loky"))
    manager.start(signal.signal, (signal.SIGINT, signal.SIG_IGN))
    queue = manager.Queue()

    def printing() -> None:
        with contextlib.suppress(EOFError, OSError):  # the queue gone with its process: nothing more to print
            for line in iter(queue.get, None):
                print(line, flush=True)

    printer = threading.Thread(target=printing, daemon=True)
    printer.start()
    try:
        yield queue
    finally:
        with contextlib.suppress(EOFError, OSError):
            queue.put(None)
        printer.join(timeout=10)
        manager.shutdown()


def run_on_workers(function: Callable, jobs: Sequence, workers: Workers, runtime: Runtime, **kwargs) -> list:
    """Section 9: [function(job, runtime=, models_after=, **kwargs) for job in jobs], every worker at once (joblib)."""
    if len(workers.devices) == 1:  # in this process, one after another: the sequential path
        return [function(job, runtime=runtime, models_after=len(jobs) - k - 1, **kwargs) for k, job in enumerate(jobs)]
    waves = _waves(len(jobs), workers)
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    backend = type(get_active_backend()[0]).__name__
    results: list = [None] * len(jobs)
    finished = False
    try:
        with _printing_relay(backend in ("LokyBackend", "MultiprocessingBackend")) as queue:
            for wave in waves:
                if len(wave) == 1:  # the last model alone: here, with all the cores (joblib runs one job here too)
                    shares = [_run_here(function, jobs, *wave[0], runtime, kwargs)]
                else:
                    shares = Parallel(n_jobs=len(wave), return_as="generator_unordered")(
                        delayed(_run_share)(function, [jobs[k] for k in numbers], numbers, device, threads, runtime,
                                            queue, kwargs) for numbers, device, threads in wave)
                for share in shares:
                    for number, result in share:
                        results[number] = result
        finished = True
    except KeyboardInterrupt:
        print("interrupted: every worker stopped; each model's checkpoint keeps its last finished epoch, and "
              "RESUME=True carries on from them.", flush=True)
        raise
    finally:
        if backend == "LokyBackend":  # no worker outlives the call: none trains on after an error, none holds memory
            from joblib.externals.loky import get_reusable_executor
            get_reusable_executor().shutdown(wait=True, kill_workers=not finished)
    return results


# === Plumbing: progress, checkpoints (sections 6 and 9); what the notebook shows, not what it teaches ===

# --- Progress and timing (sections 6 and 9) --------------------------------------------------

def _progress(iterable: Iterable | None = None, desc: str = "", enabled: bool | str = True, **kwargs) -> tqdm:
    """A tqdm progress bar (a widget in Jupyter, text in a terminal); enabled=False or "lines" shows nothing."""
    return tqdm(iterable, desc=desc, disable=not enabled or enabled == "lines", dynamic_ncols=True, **kwargs)


class Tally:
    """Sections 6 and 9: a loop's summed loss and right answers, kept on the device, so the GPU never waits for them."""

    def __init__(self, device: torch.device | str):
        """Start at zero, on device."""
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, yb: torch.Tensor) -> None:
        """Count one batch: its mean loss (a 0-d tensor), its logits (B, 10) against its labels (B,)."""
        self.loss += loss.detach() * len(yb)
        self.correct += (logits.argmax(dim=1) == yb).sum()
        self.seen += len(yb)

    def averages(self) -> tuple[float, float]:
        """The mean loss and the accuracy so far (the one wait for the device); NaN before any batch."""
        seen = self.seen or float("nan")
        return self.loss.item() / seen, self.correct.item() / seen


class EpochProgress:
    """Sections 6 and 9: epochs first..last, each timed and shown: a bar (mode True), a line ("lines") or nothing."""

    def __init__(self, first: int, last: int, desc: str = "training", mode: bool | str = True, epochs_after: int = 0,
                 leave: bool = True):
        """Epochs first..last (first > 1 when resuming), shown as `desc`; mode is the notebook's PROGRESS; epochs_after:
        the epochs of the models still to come after this one, for the time left."""
        if not (isinstance(mode, bool) or mode == "lines"):  # not 1 or 0: papermill keeps types, so say True
            raise ValueError(f"PROGRESS must be True, False or 'lines', got {mode!r}.")
        self.last, self.desc, self.mode, self.epochs_after = last, desc, mode, epochs_after
        self.bar = _progress(range(first, last + 1), desc, mode, initial=first - 1, total=last, leave=leave)
        self.seconds: list[float] = []
        self.epoch, self.started = first, time.perf_counter()

    def __iter__(self) -> Iterator[int]:
        """Yield the epoch numbers first..last, starting each one's clock."""
        for epoch in self.bar:
            self.epoch, self.started = epoch, time.perf_counter()
            yield epoch

    def report(self, **figures: float) -> dict:
        """The finished epoch's row ({"epoch", **figures, "seconds"}), shown; time left: mean epoch x epochs to come."""
        row = {"epoch": self.epoch, **figures, "seconds": time.perf_counter() - self.started}
        self.seconds.append(row["seconds"])
        if self.mode is True:
            self.bar.set_postfix({key: f"{row[key]:.4f}" for key in ("train_loss", "valid_acc") if key in row})
        elif self.mode == "lines":
            left = (self.last - self.epoch + self.epochs_after) * float(np.mean(self.seconds))
            valid = f", valid acc {100 * row['valid_acc']:.2f}%" if "valid_acc" in row else ""
            print(f"{self.desc}, epoch {self.epoch:>{len(str(self.last))}}/{self.last}: train loss "
                  f"{row['train_loss']:.4f}{valid}, {row['seconds']:.1f} s, {tqdm.format_interval(left)} left",
                  flush=True)
        return row


# --- Checkpoints and resume (sections 6 and 9) -----------------------------------------------

Generators = torch.Generator | Sequence[torch.Generator] | None  # a run's own generators: shuffling, augmentation


def _as_list(generators: Generators) -> list[torch.Generator]:
    """One generator, several, or None, as a list."""
    return [] if generators is None else [generators] if isinstance(generators, torch.Generator) else list(generators)


def _rng_states(generators: Generators, device: torch.device | None = None) -> dict:
    """Every random state a resumed run needs, as tensors and plain values (loadable with weights_only=True)."""
    version, mt_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt_state), gauss],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
            "torch": torch.get_rng_state(),  # dropout masks on the CPU
            # dropout masks on the GPU: only the one this run trains on, so that a worker's checkpoint holds its own
            "cuda": [torch.cuda.get_rng_state(device)] if device is not None and device.type == "cuda" else [],
            "generators": [generator.get_state() for generator in _as_list(generators)]}  # shuffling, augmentation


def _restore_rng_states(states: dict, generators: Generators, device: torch.device | None = None) -> None:
    """Put back the random states saved by _rng_states; a GPU's onto this run's GPU, whichever GPU saved it."""
    version, mt_state, gauss = states["python"]
    random.setstate((version, tuple(mt_state), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"][0], device)
    for generator, state in zip(_as_list(generators), states["generators"]):
        generator.set_state(state)


@contextlib.contextmanager
def _ctrl_c_after_the_block() -> Iterator[None]:
    """Hold back Ctrl-C (a kernel interrupt) until the block is done, then let it act (only the main thread can)."""
    previous = signal.getsignal(signal.SIGINT)
    # Ignored (a run started by `nohup ... &`): nothing to hold back. None: a handler set outside Python, which
    # signal.signal could not put back. Either way the disposition found is left exactly as it is.
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return
    held: list = []
    signal.signal(signal.SIGINT, lambda *received: held.append(received))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):  # the interrupt that came during the block, now
            previous(*held[0])
        elif held:
            signal.raise_signal(signal.SIGINT)  # to the default disposition put back: it ends as Ctrl-C ends it


class TrainingCheckpoint:
    """Sections 6 and 9: a run's weights, optimizer, history and random states: save() each epoch, load() to resume."""

    def __init__(self, path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler=None, scheduler=None, generators: Generators = None, config: dict | None = None,
                 runtime: Runtime | None = None, rows: Sequence[np.ndarray] = ()):
        """config, a runtime's precision and the training rows' CRC must match to resume; the device is recorded."""
        self.path, self.model, self.optimizer = Path(path), model, optimizer
        self.scaler, self.scheduler, self.generators = scaler, scheduler, generators
        self.config = {**(config or {}), **({"FAST": runtime.fast, "PRECISION": runtime.precision} if runtime else {})}
        if len(rows):  # another split, seed or TRAIN_ROWS gives other rows: "33600 rows, crc32 123456789"
            crc = 0
            for array in rows:
                crc = zlib.crc32(np.ascontiguousarray(array), crc)
            self.config["ROWS"] = f"{len(rows[0])} rows, crc32 {crc}"
        self.facts = device_facts(runtime.device) if runtime else {}
        self.device = runtime.device if runtime else None  # whose GPU random state to save and restore
        self.history: list[dict] = []  # the epochs done, one dict each: load() fills it when resuming

    def save(self, epoch: int, history: Sequence[dict]) -> Path:
        """Write the state after `epoch` atomically, and whole even if Ctrl-C comes meanwhile (it counts after)."""
        with _ctrl_c_after_the_block():
            return self._write(epoch, history)

    def _write(self, epoch: int, history: Sequence[dict]) -> Path:
        """The atomic write itself: the previous file survives a failed one."""
        state = {"epoch": epoch, "history": [dict(row) for row in history], "config": {**self.config, **self.facts},
                 "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "rng": _rng_states(self.generators, self.device)}
        return atomic_write(self.path, lambda file: torch.save(state, file), binary=True)

    def load(self) -> list[dict]:
        """The history of the epochs already done, every state restored, and a line saying so; [] with no file yet."""
        if not self.path.exists():
            print(f"RESUME: no checkpoint at {self.path} yet, so training starts at epoch 1")
            return []
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)  # tensors and plain values only
        except Exception as error:  # truncated, not a checkpoint, or holding objects weights_only refuses
            raise ValueError(f"{self.path}: is not a readable checkpoint ({type(error).__name__}); "
                             "delete it, or run with RESUME=False to start over.") from None
        keys = {"epoch", "history", "config", "model", "optimizer", "scaler", "scheduler", "rng"}
        if not isinstance(state, dict) or not keys <= set(state):  # e.g. a bare state_dict saved under this name
            raise ValueError(f"{self.path}: is not a checkpoint of this notebook's training (it lacks "
                             f"{sorted(keys - set(state if isinstance(state, dict) else ()))[0]!r}); delete it, or "
                             "run with RESUME=False to start over.")
        self._check(state)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for target, saved in ((self.scaler, state["scaler"]), (self.scheduler, state["scheduler"])):
            if target is not None and saved is not None:
                target.load_state_dict(saved)
        _restore_rng_states(state["rng"], self.generators, self.device)
        print(f"resumed from {self.path}: {state['epoch']} of {self.config.get('EPOCHS', '?')} epochs already done")
        self.history = state["history"]
        return self.history

    def _check(self, state: dict) -> None:
        """Refuse in one line a checkpoint made with other parameters, or with another number of generators."""
        recorded = state["config"]
        made_on = f" on {recorded['DEVICE_NAME']}" if recorded.get("DEVICE_NAME") else ""
        for name, value in self.config.items():
            if recorded.get(name) != value:
                raise ValueError(f"{self.path}: was written with {name}={recorded.get(name)!r}{made_on} but this run "
                                 f"has {name}={value!r}; resume with the same parameters and the same kind of "
                                 "device, or RESUME=False to start over.")
        saved, given = len(state["rng"]["generators"]), len(_as_list(self.generators))
        if self.generators is not None and saved != given:  # restoring fewer or other generators would not repeat it
            raise ValueError(f"{self.path}: holds {saved} random generator state(s) but this run restores {given}; it "
                             "was written by another version of the training code, so run with RESUME=False to start "
                             "over.")


if __name__ == "__main__":  # Kaggle runs a utility script with no arguments when it saves a version: succeed
    print("mnist_helpers.py: the utilities that digit_recognizer.ipynb imports (import mnist_helpers as mh). "
          "Data and scoring from a terminal: python tools/get_data.py, python tools/score.py (in the repository).")
    sys.exit(0 if len(sys.argv) == 1 else 2)
