"""Shared fixtures: small generated digits CSVs, the notebook's own code, and the shared real data."""

from __future__ import annotations

import os
import runpy
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import settings

import mnist_helpers
from mnist_helpers import PIXEL_COLUMNS, TRAIN_COLUMNS
from notebook_cells import notebook_code_cells, run_notebook_cells

REPO_DIR = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_DIR / "digit_recognizer.ipynb"
SHARED_DATA_DIR = Path(os.environ.get("SHARED_DATA_DIR", REPO_DIR.parent / "shared" / "digit-recognizer"))

# Hypothesis: the same examples on every run and machine (derandomize), so that a failure in CI repeats anywhere, and
# no example database written beside the tests. `pytest --hypothesis-profile=explore` draws new examples each run.
settings.register_profile("repeatable", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile("repeatable")


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker (`make test` runs one per core), torch takes the worker's share of the cores."""
    # OpenMP threads spin while they wait: two workers of two threads each, on two cores, ran the suite no faster
    # than one process. The kernels, scripts and child pytests that tests start keep torch's default.
    workers = getattr(config, "workerinput", {}).get("workercount")  # set in xdist's workers only
    if workers:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA_DIR / "train.csv").is_file(),
    reason=f"real data not found at {SHARED_DATA_DIR} (set SHARED_DATA_DIR to a folder with train.csv, test.csv)",
)


@pytest.fixture(autouse=True)
def sigint_as_nohup_leaves_it(request) -> Iterator[None]:
    """Tests marked sigint start with SIGINT ignored, as `nohup ... &` and many CI runners start a process, however
    pytest itself was started: each must set the disposition it needs, in itself and in the children it starts."""
    if request.node.get_closest_marker("sigint") is None:
        yield
        return
    found = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, found)


def make_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, 784) uint8 'images' and (n,) int64 labels that cycle through 0-9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 784), dtype=np.uint8), np.arange(n, dtype=np.int64) % 10


def learnable_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 784) uint8 images whose label k is a bright 4x4 square at the k-th of ten places, on faint noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(y):
        row, col = 4 + 10 * (k // 5), 2 + 5 * (k % 5)
        images[i, row:row + 4, col:col + 4] = 255
    return images.reshape(n, 784), y.astype(np.int64)


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(B, 2) row and column of each (B, 1, 28, 28) image's centre of mass, in pixels (pixel i's centre is at i)."""
    grid = torch.arange(28, dtype=images.dtype)
    mass = images.sum(dim=(1, 2, 3))
    rows = (images.sum(dim=(1, 3)) * grid).sum(1) / mass
    cols = (images.sum(dim=(1, 2)) * grid).sum(1) / mass
    return torch.stack([rows, cols], 1)


def write_train_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    """Write a train.csv in the competition's layout (.gz compresses)."""
    frame = pd.DataFrame(np.column_stack([y, X]), columns=TRAIN_COLUMNS)
    frame.to_csv(path, index=False)
    return path


def write_test_csv(path: Path, X: np.ndarray) -> Path:
    """Write a test.csv in the competition's layout (.gz compresses)."""
    pd.DataFrame(X, columns=PIXEL_COLUMNS).to_csv(path, index=False)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A folder with a 60-row train.csv and a 20-row test.csv."""
    X, y = make_digits(60)
    write_train_csv(tmp_path / "train.csv", X, y)
    write_test_csv(tmp_path / "test.csv", make_digits(20, seed=1)[0])
    return tmp_path


def notebook_namespace(*tags: str) -> dict:
    """Execute the notebook's code cells with these tags, in order, and return their namespace."""
    return run_notebook_cells(NOTEBOOK, *tags)


def run_as_a_script(path: Path, *arguments: str) -> int:
    """Run a file as `python path arguments` does, but in this process, where its imports are loaded already: its
    exit code. For command lines whose output is checked: a fresh Python would spend seconds importing torch."""
    argv = sys.argv
    sys.argv = [path.name, *arguments]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit:
        if isinstance(exit.code, str):  # sys.exit("message"): Python prints it to stderr and exits with 1
            print(exit.code, file=sys.stderr)
            return 1
        return 0 if exit.code is None else exit.code
    finally:
        sys.argv = argv
    return 0


def run_notebook_in_process(parameters: dict, until_tag: str, after: dict | None = None) -> dict:
    """Run the notebook's code cells in this process, with parameters overridden, up to the cell tagged until_tag.

    after maps a tag to a function called with the namespace once that cell has run (to wrap a function, say).
    Faster than papermill, and a test can interrupt the run where it likes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    namespace: dict = {}
    for tags, source in notebook_code_cells(NOTEBOOK):
        exec(compile(source, f"{NOTEBOOK.name}[{','.join(tags)}]", "exec"), namespace)
        plt.close("all")  # no window shows them, and dozens left open make matplotlib warn
        if "parameters" in tags:
            namespace.update(parameters)
        for tag in tags:
            if after and tag in after:
                after[tag](namespace)
        if until_tag in tags:
            return namespace
    raise AssertionError(f"no code cell tagged {until_tag!r} in {NOTEBOOK}")


def gpu_tests_skip_reason() -> str | None:
    """Why tests/test_gpu.py cannot run here (no CUDA GPU, or one this PyTorch has no kernels for), or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (run on a GPU machine)"
    problem = mnist_helpers.unsupported_gpu_message(0)  # e.g. a P100 (sm_60) under a cu128 build: no kernel runs
    return None if problem is None else f"needs a GPU this PyTorch has kernels for: {problem.split('; ')[0]}"


KAGGLE_CU128_ARCHS = ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]


@pytest.fixture
def fake_gpu(monkeypatch):
    """Make this CPU-only PyTorch report one CUDA GPU with a given compute capability, name and build arch list.

    Only what torch.cuda's own functions read is faked (is_available, current_device, get_device_properties,
    get_arch_list, and the bf16 emulation probe, which says yes as on a T4): is_bf16_supported,
    get_device_capability and get_device_name stay real, so code that asks them gets what a real GPU would say.
    """
    import types

    def install(capability: tuple[int, int], name: str = "Fake GPU", arch_list: list[str] = KAGGLE_CU128_ARCHS):
        properties = types.SimpleNamespace(major=capability[0], minor=capability[1], name=name,
                                           total_memory=16 * 2**30, multi_processor_count=40)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)  # a bf16 tensor: yes
        return properties

    return install
